"""Shared fixtures: the graft binary, GRAFT_HOME, the grocery photos, and a reader for the
features files `graft extract` writes. A missing prerequisite fails the test that needs it,
saying what to do; nothing is skipped."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
GROCERY = REPO.parent / "shared" / "data" / "grocery-store" / "dataset"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a local Ray cluster over 2640 photos")


@pytest.fixture(scope="session")
def graft_bin() -> Path:
    path = Path(os.environ.get("GRAFT_BIN", REPO / "target" / "release" / "graft"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `cargo test --release --no-run` "
                    "(scripts/test.sh does) or set GRAFT_BIN")
    return path


@pytest.fixture(scope="session", autouse=True)
def graft_home() -> Path:
    home = os.environ.get("GRAFT_HOME")
    if not home:
        pytest.fail("GRAFT_HOME is not set: run through scripts/test.sh, or export "
                    "GRAFT_HOME=$PWD/target/graft-home (the tests share its weights)")
    return Path(home)


@pytest.fixture(scope="session")
def grocery() -> Path:
    if not (GROCERY / "train").is_dir():
        pytest.fail(f"{GROCERY} is missing: the tests use the grocery-store photos "
                    "beside the repo (../shared/data/grocery-store)")
    return GROCERY


def run_graft(graft_bin, *args, check=True):
    """Runs the CLI; returns the CompletedProcess (text)."""
    done = subprocess.run([str(graft_bin), *map(str, args)], capture_output=True, text=True)
    if check and done.returncode not in (0, 3):
        raise AssertionError(f"graft {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stderr}")
    return done


def cli_error(done) -> str:
    """The message the CLI printed after `error: `."""
    lines = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert lines, f"no error line in:\n{done.stderr}"
    return lines[-1][len("error: "):]


def read_features_file(path):
    """(features [N, D] float32, paths) of a `graft extract` safetensors file."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    info = header["features"]
    start, end = info["data_offsets"]
    body = data[8 + header_len:]
    rows = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
    return rows, json.loads(header["__metadata__"]["paths"])


def small_set(grocery: Path, dest: Path, classes=3, per_class=8) -> Path:
    """A class-folder tree of the first `per_class` photos of the first `classes`
    grocery classes (nested folders kept, as in the dataset)."""
    train = grocery / "train"
    leaves = sorted({p.parent for p in train.rglob("*.jpg")})[:classes]
    for leaf in leaves:
        target = dest / leaf.relative_to(train)
        target.mkdir(parents=True, exist_ok=True)
        for photo in sorted(leaf.glob("*.jpg"))[:per_class]:
            shutil.copy(photo, target / photo.name)
    return dest


def read_safetensors(path):
    """{name: float32 array} of every F32 tensor in a safetensors file."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
    return out
