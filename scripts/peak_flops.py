#!/usr/bin/env python3
"""How close an exported network runs to this machine's float32 peak.

Prints, for an ONNX file written by `graft export-onnx`:
  - its multiply-adds per image (Conv and Gemm/MatMul nodes, shapes from ONNX shape inference);
  - the best dense float32 matrix product numpy (OpenBLAS) reaches here (4096^3, best of 5);
  - onnxruntime's inference-only rate on random input at --batch, in images/s and GFLOP/s.

    python scripts/peak_flops.py target/bench-extract/inception-v3.onnx --batch 8

Run it in the benchmark venv (onnxruntime, onnx, numpy), on a quiet machine. Used in the
README to show that Inception V3 is compute-bound at the float32 peak on this machine.
"""

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, shape_inference


def multiply_adds(path: str) -> tuple[int, list[int]]:
    """Multiply-adds of one image through the graph, and its input shape."""
    model = shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    weights = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = weights[node.input[1]]  # [out_channels, in_channels / groups, kh, kw]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights.get(node.input[1])
            if w is not None:
                total += int(np.prod(w))
    input_shape = [d for d in shapes[graph.input[0].name]]
    return total, input_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", help="a file from `graft export-onnx`")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    macs, shape = multiply_adds(args.onnx)
    print(f"{args.onnx}: {macs / 1e9:.3f} G multiply-adds per image, input {shape[1:]}")

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

    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.rand(args.batch, *shape[1:]).astype(np.float32)
    session.run(None, {name: x})
    runs = max(2, int(48 / args.batch))
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, {name: x})
    rate = args.batch * runs / (time.perf_counter() - start)
    print(f"onnxruntime {ort.__version__}, inference only, batch {args.batch}: "
          f"{rate:.1f} images/s = {rate * 2 * macs / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
