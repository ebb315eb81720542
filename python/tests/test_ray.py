"""graft.ray.GraftExtractor on a local Ray cluster over the 2640 grocery train/ photos:
every image once, the CLI's features, a head trained from the Parquet equal to one trained
from the cache, and a killed worker that changes none of it."""

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import graft
import graft.ray
from conftest import read_features_file, read_safetensors, run_graft

pytestmark = pytest.mark.slow

ACTORS = 2
BATCH = 64


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def train_dir(grocery) -> Path:
    return grocery / "train"


@pytest.fixture(scope="module")
def cli_features(train_dir, graft_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "train.safetensors"
    run_graft(graft_bin, "extract", train_dir, "--output", out)
    rows, paths = read_features_file(out)
    assert len(paths) == 2640
    return dict(zip(paths, rows))


def run_pipeline(ray, root: Path, out: Path, rss_dir: Path):
    ds = ray.data.read_binary_files(str(root), include_paths=True,
                                    file_extensions=graft.ray.FILE_EXTENSIONS)
    ds = ds.map_batches(
        graft.ray.GraftExtractor,
        fn_constructor_kwargs={"root": str(root), "cache": False, "rss_dir": str(rss_dir)},
        concurrency=ACTORS,
        batch_size=BATCH,
        batch_format="pyarrow",
        # Half a CPU each: the actors must leave Ray room to schedule the read and write
        # tasks, or the pipeline waits forever for a free CPU.
        num_cpus=0.5,
    )
    ds.write_parquet(str(out))


def read_rows(out: Path):
    files = sorted(out.glob("*.parquet"))
    assert files, f"no Parquet files in {out}"
    tables = [pq.read_table(f) for f in files]
    return files, pa.concat_tables(tables)


def check_exactly_once(table, cli_features):
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "an image was written twice"
    assert set(paths) == set(cli_features), "images missing or unknown"


def peak_rss(rss_dir: Path) -> int:
    values = [int(p.read_text()) for p in rss_dir.glob("*.rss")]
    assert values, "no actor reported its RSS"
    return max(values)


@pytest.fixture(scope="module")
def ray_parquet(ray_cluster, train_dir, tmp_path_factory):
    """The train/ photos through 2 GraftExtractor actors into Parquet, computed afresh."""
    tmp = tmp_path_factory.mktemp("ray")
    out, rss = tmp / "parquet", tmp / "rss"
    rss.mkdir()
    started = time.monotonic()
    run_pipeline(ray_cluster, train_dir, out, rss)
    return out, rss, time.monotonic() - started


def test_ray_extraction_writes_every_image_once_with_the_cli_features(
        ray_parquet, train_dir, cli_features):
    out, rss, seconds = ray_parquet
    files, table = read_rows(out)
    check_exactly_once(table, cli_features)

    schema = pq.read_schema(files[0])
    assert schema.names == ["path", "sha256", "backbone", "weights_sha256", "features"]
    assert pa.types.is_fixed_size_list(schema.field("features").type)
    assert schema.field("features").type.list_size == 1280
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["graft.backbone"] == "efficientnet-lite2"
    assert meta["graft.feature_dim"] == "1280"
    assert set(table.column("backbone").to_pylist()) == {"efficientnet-lite2"}
    assert set(table.column("weights_sha256").to_pylist()) == {meta["graft.weights_sha256"]}

    features = np.asarray(table.column("features").combine_chunks().flatten()).reshape(-1, 1280)
    worst = 0.0
    for path, row in zip(table.column("path").to_pylist(), features):
        worst = max(worst, float(np.abs(row - cli_features[path]).max()))
    assert worst <= 1e-5, f"largest difference from graft extract: {worst}"
    for path, sha in zip(table.column("path").to_pylist()[:50],
                         table.column("sha256").to_pylist()[:50]):
        assert sha == hashlib.sha256((train_dir / path).read_bytes()).hexdigest()

    rss_peak = peak_rss(rss)
    # Bounded: the backbone, onnxruntime and one batch; nowhere near what a process
    # holding the set's photos (about 200 MB of JPEG) and its 2640 x 1280 matrix would add.
    assert rss_peak < 1.5 * 2**30, f"actor peak RSS {rss_peak / 2**20:.0f} MiB"
    print(f"ray: {len(table)} images in {seconds:.1f}s with {ACTORS} actors, batch {BATCH}; "
          f"largest difference {worst:.2e}; actor peak RSS {rss_peak / 2**20:.0f} MiB")


def test_train_from_the_ray_parquet_gives_the_cache_head(
        ray_parquet, train_dir, graft_bin, tmp_path):
    out, _, _ = ray_parquet
    steps = ["--how-many-training-steps", "300", "--seed", "7"]
    run_graft(graft_bin, "train", train_dir, "--output", tmp_path / "from-cache", *steps)
    run_graft(graft_bin, "train", "--features", str(out / "*.parquet"),
              "--output", tmp_path / "from-parquet", *steps)
    a = json.loads((tmp_path / "from-cache" / "manifest.json").read_text())
    b = json.loads((tmp_path / "from-parquet" / "manifest.json").read_text())
    assert a["labels"] == b["labels"] and a["split_sizes"] == b["split_sizes"]
    heads = [read_safetensors(tmp_path / m / "head.safetensors")
             for m in ("from-cache", "from-parquet")]
    assert heads[0].keys() and heads[0].keys() == heads[1].keys()
    for name in heads[0]:
        assert np.allclose(heads[0][name], heads[1][name], atol=1e-4, rtol=0), name


def _extractor_workers():
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "GraftExtractor" in cmd and "ray::" in cmd:
            found.append(proc.info["pid"])
    return found


def test_killed_worker_still_gives_every_image_once(
        ray_cluster, train_dir, cli_features, tmp_path):
    out, rss = tmp_path / "parquet", tmp_path / "rss"
    rss.mkdir()
    failure = []

    def pipeline():
        try:
            run_pipeline(ray_cluster, train_dir, out, rss)
        except BaseException as err:  # reported by the test thread below
            failure.append(err)

    thread = threading.Thread(target=pipeline)
    thread.start()
    killed = None
    deadline = time.monotonic() + 300
    # Kill an actor once it has done some batches, while the rest are still to come.
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        workers = _extractor_workers()
        if len(list(rss.glob("*.rss"))) >= 1 and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
    thread.join(timeout=900)
    assert not thread.is_alive(), "the pipeline did not finish"
    assert killed is not None, "no extractor worker was found to kill"
    assert not failure, f"the pipeline failed after the kill: {failure[0]!r}"
    _, table = read_rows(out)
    check_exactly_once(table, cli_features)
