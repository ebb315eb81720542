#!/usr/bin/env python3
"""Reference for graft's softmax head: a tuned multinomial logistic regression
(scikit-learn, L-BFGS) fitted on the very same cached features graft trains on.

Usage (a throwaway venv is enough: `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install
numpy scikit-learn`):

    graft extract ../shared/data/grocery-store/dataset/train --output train.safetensors
    graft extract ../shared/data/grocery-store/dataset/val   --output val.safetensors
    python scripts/reference_logreg.py train.safetensors val.safetensors

`graft extract` reads the feature cache that `graft train` / `graft evaluate` filled, so the
vectors are bit-identical to the ones the head saw. The class of each row is the name of its
image's folder, as in `graft train`. Prints validation top-1 accuracy for each L2 strength
and the best one.
"""
import json
import struct
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression


def load(path):
    """Reads a graft features file (safetensors: u64 header length, JSON header, data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__")
    t = header["features"]
    start, end = t["data_offsets"]
    x = np.frombuffer(data[start:end], dtype="<f4").reshape(t["shape"])
    paths = json.loads(meta["paths"])
    labels = [p.rsplit("/", 2)[-2] for p in paths]
    return x, labels, meta


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    xtr, ytr, mtr = load(sys.argv[1])
    xva, yva, mva = load(sys.argv[2])
    assert mtr["backbone"] == mva["backbone"], "train and val come from different backbones"
    classes = sorted(set(ytr))
    index = {c: i for i, c in enumerate(classes)}
    ytr_i = np.array([index[c] for c in ytr])
    keep = [i for i, c in enumerate(yva) if c in index]
    yva_i = np.array([index[yva[i]] for i in keep])
    xva = xva[keep]
    print(f"{mtr['backbone']}: {len(ytr)} train, {len(keep)} val images, {len(classes)} classes, dim {xtr.shape[1]}")
    best = (0.0, None)
    for c in [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]:
        clf = LogisticRegression(C=c, max_iter=3000, tol=1e-6)
        clf.fit(xtr, ytr_i)
        acc = float((clf.predict(xva) == yva_i).mean())
        print(f"  C={c:<5} (weight decay {1 / (c * len(ytr)):.2e} per sample): val top-1 {acc * 100:.2f}%")
        best = max(best, (acc, c))
    print(f"best: C={best[1]}: val top-1 {best[0] * 100:.2f}%")


if __name__ == "__main__":
    main()
