#!/usr/bin/env python3
"""Checks that a graft bundle (fine-tuned or not) predicts what PyTorch predicts with the
same weights: probabilities within --tolerance (default 1e-4) of `graft predict --format json`.

PyTorch side: the published checkpoint of the bundle's backbone (its sha256 must be the
bundle's `weights_sha256`, and `fine_tune.base_weights_sha256` when fine-tuned), with every
tensor of the bundle's `backbone.safetensors` put in place by checkpoint key (its sha256
must be `fine_tune.tensors_sha256`; an unknown key or a shape that differs is an error),
then the bundle's head (`head.safetensors`: `weight` [D, N], `bias` [N]) and softmax of
logits / `temperature` (1 when the manifest has none).

Both sides see the same pixels: each photo's centre square is resized by PIL to
(size + 32) x (size + 32) and saved as PNG; graft's EfficientNet-Lite preprocessing crops
size / (size + 32) of it, which is exactly the centred size x size square at offset 16
(a resize by 1, which leaves the pixels as they are), and PyTorch takes that square.

    /work/venv/bin/python scripts/check_finetuned.py BUNDLE --graft target/release/graft \\
        [--images PHOTO ...] [--count 6] [--predict-args '...']

Exit status 0 when every probability agrees, 1 otherwise. Needs torch, numpy, pillow and the
efficientnet-lite packages (see scripts/golden_finetune.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_common as common  # noqa: E402

MARGIN = 16  # (size + 32 - size) / 2


def load_bundle_model(bundle: Path):
    """(model with the bundle's backbone weights, head weight [D, N], bias [N], labels,
    temperature, size, what was overridden)."""
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"{manifest_path} is missing; pass a model folder written by `graft train`")
    manifest = json.loads(manifest_path.read_text())
    variant = common.variant_by_name(manifest["backbone"])
    size = int(manifest["preprocess"]["size"])
    model, sha = common.load_model(variant, image_size=size)
    if sha != manifest["weights_sha256"]:
        sys.exit(f"{manifest_path}: weights_sha256 {manifest['weights_sha256']} is not the installed "
                 f"checkpoint's {sha}")
    overridden = []
    fine = manifest.get("fine_tune")
    tuned_path = bundle / "backbone.safetensors"
    if fine is not None:
        if fine.get("base_weights_sha256") != sha:
            sys.exit(f"{manifest_path}: fine_tune.base_weights_sha256 {fine.get('base_weights_sha256')} "
                     f"is not the installed checkpoint's {sha}")
        if not tuned_path.is_file():
            sys.exit(f"{tuned_path} is missing but {manifest_path} has fine_tune")
        digest = common.sha256_file(tuned_path)
        if digest != fine.get("tensors_sha256"):
            sys.exit(f"{tuned_path} has sha256 {digest}, the manifest says {fine.get('tensors_sha256')}")
        tuned, _ = common.read_safetensors(tuned_path)
        state = model.state_dict()
        for key, value in sorted(tuned.items()):
            if key not in state:
                sys.exit(f"{tuned_path}: {key} is not a key of {variant.name}'s checkpoint")
            if tuple(state[key].shape) != value.shape:
                sys.exit(f"{tuned_path}: {key} has shape {list(value.shape)}, "
                         f"the checkpoint's is {list(state[key].shape)}")
            state[key] = torch.from_numpy(value.astype(np.float32))
            overridden.append(key)
        model.load_state_dict(state, strict=True)
    elif tuned_path.exists():
        sys.exit(f"{tuned_path} exists but {manifest_path} has no fine_tune")
    head, _ = common.read_safetensors(bundle / "head.safetensors")
    temperature = float(manifest.get("temperature", 1.0))
    return model, head["weight"], head["bias"], manifest["labels"], temperature, size, overridden


def default_images(count: int) -> list[Path]:
    """The first photo of `count` classes spread over the val folder."""
    val = common.DEFAULT_DATASET / "val"
    folders = sorted({p.parent for p in val.rglob("*.jpg")})
    if not folders:
        sys.exit(f"no photos under {val}; pass --images")
    step = max(1, len(folders) // count)
    return [sorted(f.glob("*.jpg"))[0] for f in folders[::step][:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--graft", type=Path, required=True, help="graft binary")
    parser.add_argument("--images", type=Path, nargs="+", help="photos (default: --count from val/)")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--predict-args", default="", help="more flags for graft predict")
    parser.add_argument("--graft-home", type=Path, help="GRAFT_HOME for graft (default: the environment's)")
    args = parser.parse_args()
    torch.set_num_threads(2)

    model, weight, bias, labels, temperature, size, overridden = load_bundle_model(args.bundle)
    print(f"{args.bundle}: {len(overridden)} tuned tensors"
          + (f" ({overridden[0]} ... {overridden[-1]})" if overridden else "")
          + f", {len(labels)} classes, input {size}, temperature {temperature}")
    photos = args.images or default_images(args.count)
    with tempfile.TemporaryDirectory(prefix="check-finetuned-") as tmp:
        pngs, pixels = [], []
        for i, photo in enumerate(photos):
            image = common.centre_image(photo, size + 2 * MARGIN)
            png = Path(tmp) / f"{i:03d}-{photo.stem}.png"
            image.save(png)
            pngs.append(png)
            inner = image.crop((MARGIN, MARGIN, MARGIN + size, MARGIN + size))
            pixels.append(common.normalise(inner))
        env = dict(os.environ)
        if args.graft_home:
            env["GRAFT_HOME"] = str(args.graft_home)
        command = [str(args.graft), "predict", str(args.bundle), *map(str, pngs), "--format", "json",
                   "--top-k", str(len(labels)), *shlex.split(args.predict_args)]
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"graft predict exited with {done.returncode}:\n{done.stderr[-3000:]}")
        predictions = json.loads(done.stdout)

    with torch.inference_mode():
        maps = model.extract_features(torch.stack(pixels))
        features = torch.flatten(model._avg_pooling(maps), 1).double()
        logits = features @ torch.from_numpy(weight).double() + torch.from_numpy(bias).double()
        probs = torch.softmax(logits / temperature, dim=1).numpy()

    by_name = {Path(p["path"]).name: p for p in predictions}
    worst = 0.0
    for png, row in zip(pngs, probs):
        p = by_name.get(png.name)
        if p is None:
            sys.exit(f"graft predict gave no answer for {png.name}")
        graft_probs = np.zeros(len(labels))
        index = {label: i for i, label in enumerate(labels)}
        for scored in p["top"]:
            graft_probs[index[scored["label"]]] = scored["score"]
        diff = float(np.abs(graft_probs - row).max())
        worst = max(worst, diff)
        top = int(row.argmax())
        print(f"  {png.name}: pytorch top-1 {labels[top]} ({row[top]:.4f}), graft top-1 "
              f"{p['top'][0]['label']} ({p['top'][0]['score']:.4f}), max |diff| {diff:.2e}")
    verdict = "agree" if worst <= args.tolerance else "DIFFER"
    print(f"{len(pngs)} images x {len(labels)} classes: max |graft - pytorch| probability = {worst:.3e} "
          f"(tolerance {args.tolerance:g}): {verdict}")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
