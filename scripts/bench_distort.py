#!/usr/bin/env python3
"""Issue 6 measurement: training-time distortions on the Grocery Store dataset.

Trains on train/ with the default backbone and retrain.py's distortion flags
(--flip-left-right --random-crop 10 --random-scale 10 --random-brightness 10), evaluates every
model on val/, and prints a markdown table: validation top-1, wall time of `graft train`, the
head's training time, and the one-off extraction of distorted variants.

    python3 scripts/bench_distort.py                       # everything below
    python3 scripts/bench_distort.py --online-steps 1000   # online mode's step count

Rows:
  - no distortion, cached distortion with K = 1, 2, 4, 8, 16, 32 variants (--variants), each
    with --seeds seeds (default 0 1 2), 4000 steps (retrain.py's default);
  - test-time augmentation (--tta 2 and 10) on every cached and the undistorted models;
  - online mode (retrain.py's way: a fresh distortion per sample per step) for --online-steps
    steps (default 1000: 100,000 forward passes; 4000 steps take about four times as long) with
    the first --online-seeds seeds (default 1), next to cached (every K) and undistorted runs with
    the same step count, so accuracy is compared like for like.
    Its time for 4000 steps is extrapolated from the measured run, and said so.

Every command it runs is printed first (to stderr), so any number can be rerun by hand. Models
go under --out (default target/bench-distort); the feature cache is graft's default one
(GRAFT_HOME), so a second run reuses every vector: delete the cache (graft cache clear) to time
the variant extraction again.

Environment: GRAFT (default target/release/graft, built with cargo if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISTORT = ["--flip-left-right", "--random-crop", "10", "--random-scale", "10", "--random-brightness", "10"]


def graft_binary() -> str:
    graft = os.environ.get("GRAFT", str(ROOT / "target/release/graft"))
    if not Path(graft).is_file():
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return graft


def run(cmd: list[str]) -> tuple[str, str, float]:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return done.stdout, done.stderr, seconds


def train(graft: str, data: Path, out: Path, name: str, flags: list[str]) -> dict:
    model = out / name
    stdout, stderr, seconds = run([graft, "train", str(data / "train"), "--output", str(model), *flags])
    head = re.search(r"head trained in ([0-9.]+)s", stdout)
    variants = re.search(r"distorted variants: (\d+) from cache, (\d+) extracted(?: \(([0-9.]+) images/s\))?", stderr)
    return {
        "model": model,
        "wall": seconds,
        "head": float(head.group(1)) if head else None,
        "variants_extracted": int(variants.group(2)) if variants else 0,
        "variants_rate": float(variants.group(3)) if variants and variants.group(3) else None,
    }


def evaluate(graft: str, data: Path, model: Path, tta: int) -> float:
    out_dir = model.parent / f"{model.name}-eval-tta{tta}"
    stdout, _, _ = run([graft, "evaluate", str(model), str(data / "val"), "--tta", str(tta),
                        "--output-dir", str(out_dir), "--format", "json"])
    return json.loads(stdout)["top1_accuracy"]


def spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f}%"
    return f"{mean:.2f}% ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/grocery-store/dataset",
                        help="folder with train/ and val/")
    parser.add_argument("--out", type=Path, default=ROOT / "target/bench-distort")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--online-steps", type=int, default=1000, help="0 skips online mode")
    parser.add_argument("--online-seeds", type=int, default=1,
                        help="online runs (the first N of --seeds; each ~25 min per 1000 steps)")
    args = parser.parse_args()
    for split in ("train", "val"):
        if not (args.data / split).is_dir():
            sys.exit(f"{args.data / split} not found; pass --data FOLDER with train/ and val/")
    args.out.mkdir(parents=True, exist_ok=True)
    graft = graft_binary()
    rows = []

    def row(what: str, runs: list[dict], tta: int = 1, note: str = "") -> None:
        accuracy = [evaluate(graft, args.data, r["model"], tta) for r in runs]
        wall = [r["wall"] for r in runs]
        head = [r["head"] for r in runs if r["head"] is not None]
        extracted = max(r["variants_extracted"] for r in runs)
        rate = next((r["variants_rate"] for r in runs if r["variants_rate"]), None)
        rows.append((
            what,
            spread(accuracy),
            f"{min(wall):.1f}–{max(wall):.1f} s" if len(wall) > 1 else f"{wall[0]:.1f} s",
            f"{sum(head) / len(head):.1f} s" if head else "",
            (f"{extracted} ({rate:.1f}/s)" if rate else str(extracted)) if extracted else "",
            note,
        ))

    def seeds(name: str, flags: list[str]) -> list[dict]:
        # The first seed's run extracts what is missing; later seeds find it in the cache.
        return [train(graft, args.data, args.out, f"{name}-seed{s}", [*flags, "--seed", str(s)])
                for s in args.seeds]

    none = seeds("none", [])
    row("no distortion", none)
    cached = {}
    for k in sorted(args.variants):
        cached[k] = seeds(f"cached{k}", [*DISTORT, "--distorted-variants", str(k)])
        row(f"cached distortion, K={k}", cached[k])
    row("no distortion + TTA 2", none, tta=2)
    row("no distortion + TTA 10", none, tta=10)
    for k in sorted(args.variants):
        row(f"cached distortion, K={k} + TTA 2", cached[k], tta=2)
        row(f"cached distortion, K={k} + TTA 10", cached[k], tta=10)

    if args.online_steps > 0:
        steps = ["--how-many-training-steps", str(args.online_steps)]
        row(f"no distortion, {args.online_steps} steps", seeds(f"none-{args.online_steps}", steps))
        for k in sorted(args.variants):
            row(f"cached distortion, K={k}, {args.online_steps} steps",
                seeds(f"cached{k}-{args.online_steps}", [*DISTORT, "--distorted-variants", str(k), *steps]))
        # Online runs take ~25 min each per 1000 steps here: --online-seeds picks how many.
        online = [train(graft, args.data, args.out, f"online-{args.online_steps}-seed{s}",
                        [*DISTORT, "--distortion-mode", "online", *steps, "--seed", str(s)])
                  for s in args.seeds[: args.online_seeds]]
        estimate = online[0]["wall"] * 4000 / args.online_steps
        row(f"online distortion (retrain.py), {args.online_steps} steps", online,
            note=f"4000 steps: about {estimate / 60:.0f} min (extrapolated)")

    print(f"graft train on {args.data / 'train'}, evaluated on {args.data / 'val'}; seeds {args.seeds}; "
          f"distortions: {' '.join(DISTORT)}; {os.cpu_count()} cores")
    print("| run | val top-1, mean (range over seeds) | graft train wall time | head training | variants extracted |  |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
