#!/usr/bin/env python3
"""Where int8 time goes: onnxruntime's own per-node profile of an fp32 and an int8 graph.

Runs each ONNX file in onnxruntime for Python on the same batches of pixels (2 threads, as
graft runs it on this machine), with `enable_profiling`, and prints the time of every op type
in each graph side by side, then the images/s of each graph. With `--ort-quantized DIR` it
also writes, with onnxruntime's own quantization tool, the fp32 graph quantized the ways
that tool offers (QDQ, per-channel weights: int8 weights with and without `reduce_range`,
uint8 weights), calibrated on the same pixels, and times them too: the formats graft could
choose between on this CPU.

    graft export MODEL --output fp32.onnx
    graft export MODEL --quantize int8 --output int8.onnx
    python scripts/profile_int8.py fp32.onnx int8.onnx [MORE.onnx ...] [--photos DIR] [--rounds R]
        [--ort-quantized DIR]

The first graph is the baseline the ratios divide by. Rounds alternate the graphs (each round
runs every graph once, in a new session); the op times are summed over the rounds and the
rates averaged.

Inputs are what `graft export` writes: uint8 pixels [N, S, S, 3] named in the graph; photos
are resized (PIL, bilinear) to S x S, else random pixels from a fixed seed are used. Needs
numpy, onnxruntime (and onnx and pillow for the options).
"""

import argparse
import collections
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def batches_for(session, photos, batch, count):
    """`count` batches of uint8 pixels in the layout the graph's first input takes."""
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in inp.shape]
    if photos:
        from PIL import Image

        size = shape[1] if shape[-1] == 3 else shape[2]
        files = sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(photos)
            for f in names
            if f.lower().endswith((".jpg", ".jpeg", ".png"))
        )
        if not files:
            sys.exit(f"{photos} holds no photos")
        pixels = []
        for f in files[: batch * count]:
            image = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            pixels.append(np.asarray(image, dtype=np.uint8))
        while len(pixels) < batch * count:
            pixels += pixels[: batch * count - len(pixels)]
        data = np.stack(pixels)
        if shape[-1] != 3:
            data = data.transpose(0, 3, 1, 2)
    else:
        rng = np.random.default_rng(0)
        data = rng.integers(0, 256, size=[batch * count] + shape[1:], dtype=np.uint8)
    if inp.type == "tensor(float)":
        data = data.astype(np.float32)
    return inp.name, [data[i * batch : (i + 1) * batch] for i in range(count)]


def profile(path, photos, batch, count, threads, workdir):
    """(seconds per op type, images/s over the timed batches) of one graph."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(workdir, os.path.basename(path) + "-profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name, batches = batches_for(session, photos, batch, count)
    session.run(None, {name: batches[0]})  # warm-up, left out of the rate
    started = time.perf_counter()
    for b in batches[1:]:
        session.run(None, {name: b})
    seconds = time.perf_counter() - started
    trace = session.end_profiling()
    per_op = collections.Counter()
    with open(trace) as f:
        events = json.load(f)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e6
    os.remove(trace)
    images = batch * (count - 1)
    return per_op, images / seconds


def ort_quantize(fp32, photos, batch, workdir):
    """The fp32 graph quantized by onnxruntime's tool, each format it offers: {name: path}."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    session = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"])
    name, batches = batches_for(session, photos, batch, 4)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    prepared = os.path.join(workdir, "prepared.onnx")
    quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
    formats = {
        "ort u8s8 per-channel": (QuantType.QInt8, False),
        "ort u8s8 per-channel, reduce_range (7-bit)": (QuantType.QInt8, True),
        "ort u8u8 per-channel": (QuantType.QUInt8, False),
    }
    out = {}
    for label, (weights, reduce_range) in formats.items():
        path = os.path.join(workdir, label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "") + ".onnx")
        quantize_static(
            prepared,
            path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=weights,
            per_channel=True,
            reduce_range=reduce_range,
        )
        out[label] = path
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", help="ONNX files; the first is the fp32 baseline")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--photos", help="folder of photos to run (default: random pixels)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6, help="timed batches + 1 warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--ort-quantized", metavar="DIR", help="also time onnxruntime's own int8 formats, written here")
    args = parser.parse_args()
    if len(args.graphs) < 2:
        parser.error("give the fp32 graph and at least one more")
    workdir = args.ort_quantized or os.path.dirname(os.path.abspath(args.graphs[0]))
    graphs = {os.path.splitext(os.path.basename(p))[0]: p for p in args.graphs}
    if args.ort_quantized:
        os.makedirs(args.ort_quantized, exist_ok=True)
        graphs.update(ort_quantize(args.graphs[0], args.photos, args.batch, args.ort_quantized))

    per_op = {label: collections.Counter() for label in graphs}
    rates = {label: [] for label in graphs}
    for _ in range(args.rounds):
        for label, path in graphs.items():
            ops, rate = profile(path, args.photos, args.batch, args.batches, args.threads, workdir)
            per_op[label].update(ops)
            rates[label].append(rate)
    results = {label: (per_op[label], sum(rates[label]) / len(rates[label])) for label in graphs}
    images = args.batch * args.batches * args.rounds
    print(f"## seconds per op type over {images} images, warm-up batches included ({args.threads} threads, batch {args.batch}, {args.rounds} round(s)), onnxruntime {ort.__version__}")
    labels = list(results)
    ops = sorted({op for per_op, _ in results.values() for op in per_op},
                 key=lambda op: -max(results[l][0].get(op, 0.0) for l in labels))
    print("| op type | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{results[l][0].get(op, 0.0):.2f}" for l in labels) + " |")
    print("| **all nodes** | " + " | ".join(f"{sum(results[l][0].values()):.2f}" for l in labels) + " |")
    print()
    base = results[labels[0]][1]
    print(f"| graph | images/s (each round) | / {labels[0]} |")
    print("|---|---|---|")
    for label in labels:
        rate = results[label][1]
        each = ", ".join(f"{r:.1f}" for r in rates[label])
        print(f"| {label} | {rate:.1f} ({each}) | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
