"""Does a temperature fitted on photos like the ones served lower the calibration error on
other such photos? Cross-fits on a folder the model never trained on (the grocery val/):
fits T on one half, measures expected calibration error (15 equal-width bins of the top
score, as `graft evaluate`) on the other half, both ways, for two ways of halving (a hash
of the path; odd and even photo numbers), against T = 1 and the model's stored T.

    graft predict MODEL VAL_DIR --top-k C --format json -o predictions.json   # C: all classes
    python scripts/calibration_crossfit.py predictions.json MODEL

The model's logits are recovered from its calibrated probabilities (T_stored * log p, up to
a constant per photo, which the softmax ignores). T is fitted by minimising the negative
log-likelihood over a grid of ln T in [-3, 3] (step 0.01). Needs numpy.
"""

import hashlib
import json
import sys

import numpy as np


def softmax(z, t):
    z = z / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(z, y, t):
    return -np.log(softmax(z, t)[np.arange(len(y)), y] + 1e-12).mean()


def ece(z, y, t, bins=15):
    p = softmax(z, t)
    conf, right = p.max(1), p.argmax(1) == y
    total = 0.0
    for b in range(bins):
        m = (conf > b / bins) & (conf <= (b + 1) / bins)
        if m.any():
            total += m.mean() * abs(right[m].mean() - conf[m].mean())
    return total


def fit(z, y):
    grid = np.exp(np.linspace(-3, 3, 601))
    return grid[np.argmin([nll(z, y, t) for t in grid])]


def main(predictions, model):
    manifest = json.load(open(f"{model}/manifest.json"))
    stored, labels = manifest.get("temperature", 1.0), manifest["labels"]
    z, y, paths = [], [], []
    for answer in json.load(open(predictions)):
        scores = {t["label"]: t["score"] for t in answer["top"]}
        if set(scores) != set(labels):
            sys.exit(f"{predictions}: pass --top-k {len(labels)} so every label is there")
        p = np.array([scores[l] for l in labels])
        z.append(stored * np.log(np.maximum(p, 1e-30)))
        y.append(labels.index(answer["path"].replace("\\", "/").split("/")[-2]))
        paths.append(answer["path"])
    z, y = np.array(z), np.array(y)
    print(f"{len(y)} photos, top-1 {np.mean(z.argmax(1) == y):.4f}; stored T {stored:.3f}: "
          f"ECE {ece(z, y, stored):.4f}, at T = 1: {ece(z, y, 1.0):.4f}")
    halvings = {
        "path hash": [hashlib.sha256(p.encode()).digest()[0] % 2 for p in paths],
        "photo number parity": [int(p.rsplit("_", 1)[-1].split(".")[0]) % 2 for p in paths],
    }
    for how, half in halvings.items():
        half = np.array(half)
        for a in (0, 1):
            fitted_on, other = half == a, half != a
            t = fit(z[fitted_on], y[fitted_on])
            print(f"{how}, fitted on half {a}: T {t:.3f}; ECE on the other half "
                  f"({other.sum()} photos): T = 1 {ece(z[other], y[other], 1.0):.4f}, "
                  f"stored {ece(z[other], y[other], stored):.4f}, "
                  f"fitted {ece(z[other], y[other], t):.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
