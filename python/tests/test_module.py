"""graft's Python module against the graft command: same features, same predictions, same
error text."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import graft
from conftest import cli_error, read_features_file, run_graft, small_set


@pytest.fixture(scope="module")
def photos(tmp_path_factory, grocery) -> Path:
    return small_set(grocery, tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def cli_features(photos, graft_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "features.safetensors"
    run_graft(graft_bin, "extract", photos, "--output", out, "--no-cache")
    return read_features_file(out)


def test_extract_folder_equals_cli(photos, cli_features):
    cli_rows, cli_paths = cli_features
    rows, paths, skipped = graft.extract(photos, cache=False)
    assert rows.dtype == np.float32 and rows.shape == cli_rows.shape
    assert rows.shape[1] == 1280
    assert paths == cli_paths
    assert skipped == []
    assert np.abs(rows - cli_rows).max() <= 1e-6


def test_extract_bytes_and_paths_equal_cli(photos, cli_features):
    cli_rows, cli_paths = cli_features
    files = [photos / p for p in cli_paths]
    from_bytes, names, _ = graft.extract([f.read_bytes() for f in files], cache=False,
                                         names=cli_paths)
    assert names == cli_paths
    assert np.abs(from_bytes - cli_rows).max() <= 1e-6
    from_paths, given, _ = graft.extract(files, cache=False)
    assert given == [str(f) for f in files]
    assert np.abs(from_paths - cli_rows).max() <= 1e-6


def test_extract_fills_and_reads_the_cli_cache(photos, cli_features, tmp_path, graft_bin):
    cli_rows, cli_paths = cli_features
    cache = tmp_path / "bottlenecks"
    first, _, _ = graft.extract(photos, bottleneck_dir=cache)
    assert (cache / "features.redb").is_file()
    # The CLI finds every vector the module stored: same keys.
    done = run_graft(graft_bin, "extract", photos, "--output", tmp_path / "f.safetensors",
                     "--bottleneck-dir", cache)
    assert f"{len(cli_paths)} of {len(cli_paths)} images came from the feature cache" in done.stderr
    # And bytes hit the same entries (keyed by content).
    again, _, _ = graft.extract([(photos / p).read_bytes() for p in cli_paths],
                                bottleneck_dir=cache)
    assert np.abs(first - cli_rows).max() <= 1e-6
    assert np.array_equal(first, again)


def test_train_and_predict_equal_cli(photos, graft_bin, tmp_path):
    options = dict(how_many_training_steps=30, seed=3, validation_percentage=25,
                   testing_percentage=25)
    cache = tmp_path / "bottlenecks"
    metrics = graft.train(photos, tmp_path / "py-model", bottleneck_dir=cache, **options)
    run_graft(graft_bin, "train", photos, "--output", tmp_path / "cli-model",
              "--bottleneck-dir", cache, *[a for k, v in options.items()
                                           for a in (f"--{k.replace('_', '-')}", v)])
    manifest = json.loads((tmp_path / "cli-model" / "manifest.json").read_text())
    assert metrics["labels"] == manifest["labels"]
    assert metrics["split_sizes"] == manifest["split_sizes"]
    assert metrics["test_accuracy"] == manifest["metrics"]["test_accuracy"]
    heads = [sorted(p.name for p in (tmp_path / m).iterdir()) for m in ("py-model", "cli-model")]
    assert heads[0] == heads[1]
    for name in heads[0]:
        if name.endswith(".safetensors"):
            assert (tmp_path / "py-model" / name).read_bytes() == \
                (tmp_path / "cli-model" / name).read_bytes(), name

    model = graft.Model.load(tmp_path / "py-model")
    assert model.labels == manifest["labels"]
    files = sorted(photos.rglob("*.jpg"))[::3]
    done = run_graft(graft_bin, "predict", tmp_path / "cli-model", *files,
                     "--top-k", 3, "--format", "json")
    expected = json.loads(done.stdout)
    got = model.predict(files, k=3)
    from_bytes = model.predict([f.read_bytes() for f in files], k=3)
    assert len(got) == len(expected) == len(files)
    for (labels, scores), (b_labels, b_scores), want in zip(got, from_bytes, expected):
        assert labels == [s["label"] for s in want["top"]]
        assert b_labels == labels
        assert np.allclose(scores, [s["score"] for s in want["top"]], atol=1e-6, rtol=0)
        assert np.allclose(b_scores, scores, atol=1e-6, rtol=0)
    # A folder predicts in graft's walk order, every image once.
    assert len(model.predict(photos, k=1)) == len(list(photos.rglob("*.jpg")))


def test_errors_carry_the_cli_message(photos, graft_bin, tmp_path):
    done = run_graft(graft_bin, "extract", photos, "--backbone", "nope", "--output",
                     tmp_path / "x.safetensors", check=False)
    assert done.returncode == 1
    with pytest.raises(graft.GraftError) as err:
        graft.extract(photos, backbone="nope")
    assert str(err.value) == cli_error(done)

    missing = tmp_path / "no-such-model"
    done = run_graft(graft_bin, "predict", missing, next(photos.rglob("*.jpg")), check=False)
    assert done.returncode == 1
    with pytest.raises(graft.GraftError) as err:
        graft.Model.load(missing)
    assert str(err.value) == cli_error(done)
    assert str(missing) in str(err.value)

    done = run_graft(graft_bin, "train", tmp_path / "no-such-folder", "--output",
                     tmp_path / "m", check=False)
    assert done.returncode == 1
    with pytest.raises(graft.GraftError) as err:
        graft.train(tmp_path / "no-such-folder", tmp_path / "m")
    assert str(err.value) == cli_error(done)


def test_bad_image_is_skipped_with_the_cli_reason(photos, graft_bin, tmp_path):
    broken = tmp_path / "set" / "broken"
    broken.mkdir(parents=True)
    (broken / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = next(photos.rglob("*.jpg"))
    (broken / "good.jpg").write_bytes(good.read_bytes())
    done = run_graft(graft_bin, "extract", tmp_path / "set", "--no-cache", "--output",
                     tmp_path / "f.safetensors")
    assert done.returncode == 3
    rows, paths, skipped = graft.extract(tmp_path / "set", cache=False)
    assert paths == ["broken/good.jpg"] and rows.shape[0] == 1
    assert len(skipped) == 1
    path, reason = skipped[0]
    assert path == str(broken / "bad.jpg")
    assert f"skipped {path}: {reason}" in done.stderr
    # In memory, the same reason under the given name.
    _, _, skipped = graft.extract([(broken / "bad.jpg").read_bytes()], cache=False,
                                  names=["broken/bad.jpg"])
    assert skipped == [("broken/bad.jpg", reason)]
    # Predicting on it is an error naming the file.
    model_dir = tmp_path / "m"
    graft.train(photos, model_dir, how_many_training_steps=5, bottleneck_dir=tmp_path / "b")
    with pytest.raises(graft.GraftError, match="cannot decode image .*bad.jpg"):
        graft.Model.load(model_dir).predict([broken / "bad.jpg"])


def test_bad_arguments_raise(photos):
    with pytest.raises(TypeError):
        graft.extract([1, 2])
    with pytest.raises(graft.GraftError, match="engine"):
        graft.extract(photos, engine="gpu")
    with pytest.raises(graft.GraftError, match="keep their sum below 100"):
        graft.train(photos, "unused", validation_percentage=60, testing_percentage=40)
