#!/usr/bin/env python3
"""How close an exported network runs to this machine's float32 peak.

Prints, for an ONNX file written by `graft export-onnx`:
  - its multiply-adds per image (Conv and Gemm/MatMul nodes, shapes from ONNX shape inference),
    and their share per convolution kernel shape and stride (what a fast-convolution
    algorithm such as Winograd could act on: 3x3 stride 1, 1xN, Nx1);
  - the best dense float32 matrix product numpy (OpenBLAS) reaches here (4096^3, best of 5);
  - onnxruntime's inference-only rate on random input at each --batch, in images/s and
    GFLOP/s, and where its time goes by operator type (its own profiler, at the first batch).

    python scripts/peak_flops.py target/bench-extract/inception-v3.onnx --batch 8,16,32

Run it in the benchmark venv (onnxruntime, onnx, numpy), on a quiet machine. Used in
docs/benchmarks.md to show that Inception V3 is compute-bound at the float32 peak on this machine.
"""

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference


def multiply_adds(path: str) -> tuple[int, list[int], collections.Counter]:
    """Multiply-adds of one image through the graph, its input shape, and the Conv
    multiply-adds per kernel shape and stride ("3x3 s1")."""
    model = shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    total = 0
    by_kernel = collections.Counter()
    for node in graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = weights[node.input[1]]  # [out_channels, in_channels / groups, kh, kw]
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
            by_kernel[f"{w[2]}x{w[3]} s{strides[0]}"] += macs
            total += macs
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights.get(node.input[1])
            if w is not None:
                total += int(np.prod(w))
    input_shape = [d for d in shapes[graph.input[0].name]]
    return total, input_shape, by_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", help="a file from `graft export-onnx`")
    parser.add_argument("--batch", type=batch_sizes, default=[8], metavar="N[,N...]",
                        help="batch size, or several separated by commas")
    args = parser.parse_args()

    macs, shape, by_kernel = multiply_adds(args.onnx)
    print(f"{args.onnx}: {macs / 1e9:.3f} G multiply-adds per image, input {shape[1:]}")
    print("convolution multiply-adds by kernel: " + ", ".join(
        f"{kernel} {100 * m / macs:.1f}%" for kernel, m in by_kernel.most_common()))

    n = 4096
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    print(f"numpy sgemm {n}x{n}x{n}, best of 5: {best:.0f} GFLOP/s")

    batches = args.batch
    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in batches:
        x = np.random.rand(batch, *shape[1:]).astype(np.float32)
        session.run(None, {name: x})
        runs = max(2, int(48 / batch))
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, {name: x})
        rate = batch * runs / (time.perf_counter() - start)
        print(f"onnxruntime {ort.__version__}, inference only, batch {batch}: "
              f"{rate:.1f} images/s = {rate * 2 * macs / 1e9:.0f} GFLOP/s")
    print(f"onnxruntime time by operator type (profiler, batch {batches[0]}): " + ", ".join(
        f"{op} {share:.1f}%" for op, share in operator_shares(args.onnx, shape, batches[0])))


def batch_sizes(text: str) -> list[int]:
    """`--batch`: "8" or "8,16,32"."""
    sizes = [int(b) for b in text.split(",") if b.strip().isdigit() and int(b) > 0]
    if len(sizes) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"'{text}': give positive batch sizes separated by commas, e.g. 8,16,32")
    return sizes


def operator_shares(path: str, shape: list[int], batch: int) -> list[tuple[str, float]]:
    """Percent of onnxruntime's kernel time per operator type over a few profiled runs,
    the first (warm-up: allocations, first touches) left out."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = os.path.join(scratch, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        x = np.random.rand(batch, *shape[1:]).astype(np.float32)
        for _ in range(3):
            session.run(None, {session.get_inputs()[0].name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    first_run = min((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    warm = first_run["ts"] + first_run["dur"]
    time_by_op = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warm:
            time_by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(time_by_op.values())
    return [(op, 100 * t / total) for op, t in time_by_op.most_common() if 100 * t / total >= 0.1]


if __name__ == "__main__":
    main()
