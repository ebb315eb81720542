#!/usr/bin/env python3
"""Acceptance check for issue 20: fine and coarse top-1 recomputed from the predictions of
`graft evaluate` and the dataset's classes.csv, against what `evaluate` reported.

    graft evaluate MODEL .../grocery-store/dataset/val --output-dir EVAL
    scripts/check_levels.py EVAL .../grocery-store/dataset/classes.csv

Reads EVAL/predictions.csv (path,true,predicted,...) and maps each fine class to its
"Coarse Class Name" through classes.csv, independently of graft's class paths; then
compares with EVAL/metrics.json: top1_accuracy (fine) and the level whose groups are the
coarse classes ("level 2" for the grocery photos). Exit 0 when both agree, 1 otherwise.
"""
import csv
import json
import sys
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    eval_dir, classes_csv = Path(sys.argv[1]), Path(sys.argv[2])
    coarse = {}
    with open(classes_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name, group = row["Class Name (str)"], row["Coarse Class Name (str)"]
            if coarse.get(name, group) != group:
                print(f"{classes_csv}: class {name} has two coarse classes", file=sys.stderr)
                return 1
            coarse[name] = group
    with open(eval_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = sorted({r[k] for r in rows for k in ("true", "predicted")} - coarse.keys())
    if missing:
        print(f"classes not in {classes_csv}: {', '.join(missing)}", file=sys.stderr)
        return 1
    n = len(rows)
    fine = sum(r["true"] == r["predicted"] for r in rows) / n
    coarse_top1 = sum(coarse[r["true"]] == coarse[r["predicted"]] for r in rows) / n
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    groups = len(set(coarse.values()))
    level = next((l for l in metrics["levels"] if len(l["labels"]) == groups), None)
    if level is None:
        print(f"metrics.json has no level with {groups} groups", file=sys.stderr)
        return 1
    ok = abs(fine - metrics["top1_accuracy"]) < 1e-9 and abs(coarse_top1 - level["top1_accuracy"]) < 1e-9
    print(f"photos {n}")
    print(f"fine   top-1: script {fine:.6f}  evaluate {metrics['top1_accuracy']:.6f}")
    print(f"coarse top-1: script {coarse_top1:.6f}  evaluate {level['top1_accuracy']:.6f} ({level['name']}, {groups} groups)")
    print("OK: equal" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
