#!/usr/bin/env python3
"""Check that graft's hand-written TensorBoard event files load in real TensorBoard.

graft writes TFRecord/protobuf event files itself (src/report/tensorboard.rs), without TensorFlow.
This dev script loads a summaries folder with TensorBoard's own EventAccumulator and
prints what it finds, failing when a run or an expected tag is missing or a value is
not finite. It is a developer check, not part of the test suite: it needs the
`tensorboard` Python package, which the Rust build does not.

How to run it:

    python3 -m venv /tmp/venv-tb
    /tmp/venv-tb/bin/pip install tensorboard
    /tmp/venv-tb/bin/python scripts/check_tensorboard.py SUMMARIES_DIR \
        [--scalar accuracy --scalar cross_entropy] [--histogram final_layer/weights] \
        [--runs train validation]

SUMMARIES_DIR is the folder given to `graft train --summaries-dir`, holding one
subfolder per run (`train/`, `validation/`). Each --scalar tag must exist in every run;
each --histogram tag must exist in at least one run (graft records weight histograms
for the training run only). Exit status: 0 when everything is there, 1 otherwise.
"""

import argparse
import math
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries_dir", help="folder with one subfolder per run")
    parser.add_argument("--runs", nargs="+", default=["train", "validation"])
    parser.add_argument("--scalar", action="append", dest="scalars")
    parser.add_argument("--histogram", action="append", dest="histograms")
    args = parser.parse_args()
    scalars = args.scalars or ["accuracy", "cross_entropy"]
    histograms = args.histograms or []

    try:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
            HISTOGRAMS,
            SCALARS,
        )
        from tensorboard.backend.event_processing.plugin_event_accumulator import (
            EventAccumulator as PluginEventAccumulator,
            TENSORS,
        )
        from tensorboard.util.tensor_util import make_ndarray
    except ImportError:
        print(
            "error: the tensorboard package is missing; install it with\n"
            "  python3 -m venv /tmp/venv-tb && /tmp/venv-tb/bin/pip install tensorboard\n"
            "and run this script with /tmp/venv-tb/bin/python",
            file=sys.stderr,
        )
        return 1

    problems = []
    histogram_tags_seen = set()
    for run in args.runs:
        path = os.path.join(args.summaries_dir, run)
        if not os.path.isdir(path):
            problems.append(f"run folder {path} is missing")
            continue
        # 0 = keep every event, so the counts printed are the real ones.
        accumulator = EventAccumulator(path, size_guidance={SCALARS: 0, HISTOGRAMS: 0})
        accumulator.Reload()
        tags = accumulator.Tags()
        print(f"run {run}: file version {accumulator.file_version!r}")
        print(f"  scalar tags: {sorted(tags['scalars'])}")
        print(f"  histogram tags: {sorted(tags['histograms'])}")
        # TensorBoard parses "brain.Event:2" into the number 2.0.
        if accumulator.file_version != 2.0:
            problems.append(f"{run}: file_version is {accumulator.file_version!r}")

        for tag in sorted(tags["scalars"]):
            events = accumulator.Scalars(tag)
            values = [e.value for e in events]
            print(
                f"  scalar {tag}: {len(events)} points, steps {events[0].step}..{events[-1].step}, "
                f"first {values[0]:.4f}, last {values[-1]:.4f}"
            )
            if not all(math.isfinite(v) for v in values):
                problems.append(f"{run}/{tag}: non-finite scalar values")
        for tag in scalars:
            if tag not in tags["scalars"]:
                problems.append(f"{run}: scalar tag {tag!r} is missing")

        for tag in sorted(tags["histograms"]):
            histogram_tags_seen.add(tag)
            events = accumulator.Histograms(tag)
            last = events[-1].histogram_value
            print(
                f"  histogram {tag}: {len(events)} steps; last step {events[-1].step}: "
                f"num {last.num:.0f}, min {last.min:.4f}, max {last.max:.4f}, "
                f"{len(last.bucket)} buckets summing to {sum(last.bucket):.0f}"
            )
            if abs(sum(last.bucket) - last.num) > 0.5:
                problems.append(f"{run}/{tag}: bucket counts do not add up to num")
            if len(last.bucket) != len(last.bucket_limit):
                problems.append(f"{run}/{tag}: {len(last.bucket)} buckets but {len(last.bucket_limit)} limits")

        # What the histograms dashboard actually reads: the plugin accumulator migrates
        # each HistogramProto into a [buckets, 3] tensor of (left, right, count).
        plugin = PluginEventAccumulator(path, size_guidance={TENSORS: 0})
        plugin.Reload()
        for tag in sorted(tags["histograms"]):
            tensor = make_ndarray(plugin.Tensors(tag)[-1].tensor_proto)
            print(f"  histograms dashboard {tag}: last step tensor shape {list(tensor.shape)}, "
                  f"range {tensor[0][0]:.4f}..{tensor[-1][1]:.4f}, count {tensor[:, 2].sum():.0f}")
            if tensor.ndim != 2 or tensor.shape[1] != 3:
                problems.append(f"{run}/{tag}: dashboard tensor has shape {list(tensor.shape)}")

    for tag in histograms:
        if tag not in histogram_tags_seen:
            problems.append(f"histogram tag {tag!r} is in no run")

    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("OK: TensorBoard reads every run and tag")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
