#!/usr/bin/env python3
"""Ray Data path vs `graft extract` on the same photos, one run each, side by side.

    GRAFT_HOME=$PWD/target/graft-home python scripts/bench_ray.py \
        ../shared/data/grocery-store/dataset/train --actors 2

Both compute every vector afresh (`--no-cache`; the extractor with cache=False), with the
same backbone and engine. The Ray path is the whole job a user runs: read_binary_files,
map_batches over the actors (including their start and backbone load), write_parquet.
Prints both rates, Ray's overhead, the features' storage cost per image, the actors' peak
RSS, and a scaling estimate for a catalogue on K machines from the measured rate.
Needs the graft module installed (pip install ./python) with ray[data] and pyarrow.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--backbone", default="efficientnet-lite2")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="CPUs given to the local Ray cluster (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="Ray batch size")
    parser.add_argument("--graft", type=Path, default=REPO / "target" / "release" / "graft")
    parser.add_argument("--catalogue", type=float, default=10e6,
                        help="photos in the catalogue of the scaling estimate")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray

    import graft.ray

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        started = time.monotonic()
        done = subprocess.run(
            [str(args.graft), "extract", str(args.folder), "--backbone", args.backbone,
             "--no-cache", "--output", str(tmp / "cli.safetensors")],
            capture_output=True, text=True)
        cli_seconds = time.monotonic() - started
        if done.returncode not in (0, 3):
            sys.stderr.write(done.stderr)
            return 1
        images = int(re.search(r"extracted (\d+) images", done.stdout).group(1))
        engine = re.search(r" on (\S+) \(batch", done.stdout).group(1)

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        rss = tmp / "rss"
        rss.mkdir()
        started = time.monotonic()
        ds = ray.data.read_binary_files(str(args.folder), include_paths=True,
                                        file_extensions=graft.ray.FILE_EXTENSIONS)
        ds = ds.map_batches(
            graft.ray.GraftExtractor,
            fn_constructor_kwargs={"root": str(args.folder), "backbone": args.backbone,
                                   "cache": False, "rss_dir": str(rss)},
            concurrency=args.actors, batch_size=args.batch_size, batch_format="pyarrow",
            # Half the CPUs reserved by the actors: the rest lets Ray schedule the read
            # and write tasks (actors holding every CPU stall the pipeline).
            num_cpus=args.cpus / (2 * args.actors))
        ds.write_parquet(str(tmp / "parquet"))
        ray_seconds = time.monotonic() - started
        ray.shutdown()

        files = list((tmp / "parquet").glob("*.parquet"))
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        parquet_bytes = sum(f.stat().st_size for f in files)
        peak = max(int(p.read_text()) for p in rss.glob("*.rss"))

    cli_rate, ray_rate = images / cli_seconds, rows / ray_seconds
    overhead = ray_seconds / cli_seconds - 1
    print(f"photos: {images} ({args.folder}), backbone {args.backbone} on {engine}, "
          f"{os.cpu_count()} cores")
    print(f"{'path':<34}{'seconds':>9}{'images/s':>10}")
    print(f"{'graft extract --no-cache':<34}{cli_seconds:>9.1f}{cli_rate:>10.1f}")
    label = f"ray map_batches ({args.actors} actors, batch {args.batch_size})"
    print(f"{label:<34}{ray_seconds:>9.1f}{ray_rate:>10.1f}")
    print(f"ray overhead: {overhead * 100:+.1f}% (target <= 15%); rows written {rows}")
    print(f"parquet: {parquet_bytes} bytes, {parquet_bytes / max(rows, 1):.0f} bytes/image")
    print(f"actor peak RSS: {peak / 2**20:.0f} MiB")
    per_machine = ray_rate
    print(f"estimate for {args.catalogue:.0f} photos at {per_machine:.1f} images/s per machine "
          f"like this one (linear: extraction is independent per image; storage "
          f"{args.catalogue * parquet_bytes / max(rows, 1) / 1e9:.1f} GB):")
    for k in (1, 4, 16, 64):
        hours = args.catalogue / (per_machine * k) / 3600
        print(f"  K={k:<3} {hours:8.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
