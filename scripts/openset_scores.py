"""Which "known" score separates photos of known products from photos of products held out
of training best? A wider comparison than `graft evaluate --open-set-classes` makes (which
runs graft's own head on 3 draws): more draws, and two more feature-space scores.

    graft extract TRAIN_DIR -o train.parquet
    graft extract VAL_DIR -o val.parquet
    python scripts/openset_scores.py train.parquet val.parquet [--draws 8] [--held-out 10]

Per draw, `--held-out` classes are picked at random (numpy seed = draw) and left out of
training; a multinomial logistic regression (scikit-learn, C = 1: level with graft's head
on the grocery photos) is trained on the other classes' training features; the photos of
VAL_DIR are scored, known classes against held-out ones, and each score's AUROC printed:
max-softmax, energy (logsumexp of the logits), max logit, cosine to the nearest class mean,
cosine to the k-th nearest training photo (k = 1, 5, 20), and Mahalanobis distance to the
nearest class mean with a tied covariance shrunk towards its diagonal mean (shrinkage 0.1
and 0.5), on raw and on L2-normalised features. Draws without a held-out photo in VAL_DIR
are skipped. Needs numpy, pyarrow and scikit-learn.
"""

import argparse

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def load(path):
    table = pq.read_table(path, columns=["path", "features"]).to_pandas()
    features = np.stack(table["features"].values).astype(np.float64)
    labels = np.array([p.replace("\\", "/").split("/")[-2] for p in table["path"]])
    return features, labels


def l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scores(train_x, train_y, n_classes, val_x):
    clf = LogisticRegression(C=1.0, max_iter=300).fit(train_x, train_y)
    z = clf.decision_function(val_x)
    top = z.max(1, keepdims=True)
    out = {
        "max-softmax": 1.0 / np.exp(z - top).sum(1),
        "energy": np.log(np.exp(z - top).sum(1)) + top[:, 0],
        "max logit": top[:, 0],
    }
    f, v = l2(train_x), l2(val_x)
    means = l2(np.stack([f[train_y == c].mean(0) for c in range(n_classes)]))
    out["cosine to class mean"] = (v @ means.T).max(1)
    sims = np.sort(v @ f.T, 1)
    for k in (1, 5, 20):
        out[f"cosine to {k}-th neighbour"] = sims[:, -k]
    for name, a, b in (("", train_x, val_x), (" (L2-normalised)", f, v)):
        mu = np.stack([a[train_y == c].mean(0) for c in range(n_classes)])
        r = a - mu[train_y]
        cov = r.T @ r / len(r)
        for shrink in (0.1, 0.5):
            c = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
            p = np.linalg.inv(c)
            bp = b @ p
            d = (bp * b).sum(1)[:, None] - 2 * bp @ mu.T + ((mu @ p) * mu).sum(1)[None]
            out[f"Mahalanobis{name}, shrinkage {shrink}"] = -d.min(1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("val")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=10)
    args = ap.parse_args()
    train_x, train_y = load(args.train)
    val_x, val_y = load(args.val)
    classes = sorted(set(train_y))
    aurocs = {}
    for draw in range(args.draws):
        held = set(np.random.default_rng(draw).choice(classes, args.held_out, replace=False))
        known = [c for c in classes if c not in held]
        index = {c: i for i, c in enumerate(known)}
        keep = np.array([y in index for y in train_y])
        is_known = np.array([y in index for y in val_y])
        if is_known.all():
            print(f"draw {draw}: no held-out photo in {args.val}, skipped")
            continue
        y = np.array([index[c] for c in train_y[keep]])
        for name, s in scores(train_x[keep], y, len(known), val_x).items():
            aurocs.setdefault(name, []).append(roc_auc_score(is_known, s))
        print(f"draw {draw}: {(~is_known).sum()} held-out photos, {is_known.sum()} known;",
              ", ".join(f"{n} {v[-1]:.3f}" for n, v in aurocs.items()))
    print(f"mean AUROC over {len(aurocs['max-softmax'])} draws:")
    for name, v in sorted(aurocs.items(), key=lambda kv: -np.mean(kv[1])):
        print(f"  {np.mean(v):.3f}  {name}")


if __name__ == "__main__":
    main()
