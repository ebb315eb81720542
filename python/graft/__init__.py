"""graft from Python: backbone features as numpy arrays, training and prediction.

The work is done by the same Rust library as the ``graft`` command, with the GIL released,
on the onnxruntime library of the ``onnxruntime`` wheel this package depends on. Results
equal the command line's: ``extract`` gives the vectors ``graft extract`` writes, and
``Model.predict`` the scores ``graft predict`` prints. Errors are :class:`GraftError`
carrying the message the command line prints after ``error:``.

``graft.ray`` holds :class:`graft.ray.GraftExtractor`, for ``Dataset.map_batches``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np


def _use_wheel_onnxruntime() -> None:
    # graft loads onnxruntime at run time from ORT_DYLIB_PATH (else it fetches a wheel with
    # pip into its home). The wheel this package depends on already has the library: point
    # graft at it, unless the user chose one. Found by path so that the Python onnxruntime
    # package itself (and its own copy of the runtime state) is never imported.
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return  # graft falls back to its own runtime, or to the burn engine.
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "capi", "libonnxruntime.so*")))
        found += sorted(glob.glob(os.path.join(folder, "capi", "libonnxruntime*.dylib")))
        found += sorted(glob.glob(os.path.join(folder, "capi", "onnxruntime.dll")))
        if found:
            os.environ["ORT_DYLIB_PATH"] = found[-1]
            return


_use_wheel_onnxruntime()

from . import _native  # noqa: E402  (needs ORT_DYLIB_PATH set first)

GraftError = _native.GraftError
__version__: str = _native.version()

#: The backbone graft uses when none is named.
DEFAULT_BACKBONE = "efficientnet-lite2"

#: File extensions graft reads as images (any letter case).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff")

PathLike = Union[str, "os.PathLike[str]"]
Skipped = List[Tuple[str, str]]

_extractors: Dict[Tuple[str, str, Any], "_native.Extractor"] = {}


def _extractor(backbone: str, engine: str, batch_size: Any) -> "_native.Extractor":
    # One loaded backbone per setting for the life of the process: loading one builds an
    # onnxruntime session (about a second), which a loop over calls should pay once.
    key = (backbone.lower(), engine.lower(), batch_size)
    if key not in _extractors:
        _extractors[key] = _native.Extractor(backbone, engine, batch_size)
    return _extractors[key]


def _classify(images: Any) -> Tuple[str, Any]:
    """('folder', path) | ('paths', [path]) | ('bytes', [bytes])."""
    if isinstance(images, (bytes, bytearray, memoryview)):
        return "bytes", [bytes(images)]
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        return ("folder", path) if os.path.isdir(path) else ("paths", [path])
    items = list(images)
    if all(isinstance(i, (bytes, bytearray, memoryview)) for i in items):
        return "bytes", [bytes(i) for i in items]
    if all(isinstance(i, (str, os.PathLike)) for i in items):
        return "paths", [os.fspath(i) for i in items]
    raise TypeError("give a folder, a list of image paths, or a list of encoded image bytes")


def _as_matrix(buffer: bytearray, dim: int) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.float32).reshape(-1, dim)


def extract(
    images: Union[PathLike, Sequence[PathLike], Sequence[bytes], bytes],
    backbone: str = DEFAULT_BACKBONE,
    *,
    cache: bool = True,
    bottleneck_dir: "PathLike | None" = None,
    batch_size: "int | None" = None,
    engine: str = "auto",
    names: "Sequence[str] | None" = None,
) -> Tuple[np.ndarray, List[str], Skipped]:
    """Backbone features of images, as ``graft extract`` computes them.

    ``images`` is a folder (every image under it, recursively; the returned paths are
    relative to it, ``/``-separated, as ``graft extract`` writes them), a list of image
    files (returned as given), or a list of encoded image bytes (named by ``names``, by
    default ``image-<index>``).

    With ``cache`` (the default) vectors come from and go to graft's feature cache, keyed
    by the SHA-256 of the image bytes, as the command line uses it: ``bottleneck_dir``,
    else ``<graft home>/bottlenecks`` (``$GRAFT_HOME``).

    Returns ``(features, paths, skipped)``: a float32 array ``[N, D]`` with one row per
    image that could be used, the paths (or names) of those rows in order, and
    ``(path, reason)`` of each image that could not be decoded (the CLI's "skipped" lines).
    """
    extractor = _extractor(backbone, engine, batch_size)
    kind, value = _classify(images)
    folder = os.fspath(bottleneck_dir) if bottleneck_dir is not None else None
    if kind == "bytes":
        rows, paths, skipped = extractor.extract_bytes(
            value, None if names is None else list(names), cache, folder
        )
    elif kind == "folder":
        rows, paths, skipped = extractor.extract_files(value, None, cache, folder)
    else:
        rows, paths, skipped = extractor.extract_files(None, value, cache, folder)
    return _as_matrix(rows, extractor.feature_dim), paths, skipped


def train(
    image_dir: "PathLike | None" = None, output: PathLike = "graft-model", **options: Any
) -> Dict[str, Any]:
    """``graft train``: trains a head on ``image_dir``'s class folders and writes the
    bundle to ``output``.

    Every flag of ``graft train`` is a keyword argument spelt in snake case, with the same
    default: ``labels``/``images`` (a labels CSV instead of folders), ``backbone``,
    ``bottleneck_dir``, ``how_many_training_steps=4000``, ``learning_rate=0.001``,
    ``train_batch_size=100``, ``eval_step_interval=10``, ``validation_batch_size=100``,
    ``test_batch_size=-1``, ``validation_percentage=10``, ``testing_percentage=10``,
    ``optimizer="adam"``, ``weight_decay=0``, ``seed=0``, ``summaries_dir``,
    ``intermediate_store_frequency=0``, ``intermediate_output_dir``, ``batch_size``,
    ``flip_left_right=False``, ``random_crop=0``, ``random_scale=0``,
    ``random_brightness=0``, ``distortion_mode="cached"``, ``distorted_variants=16``.

    Returns the bundle's metrics (``test_accuracy``, ``validation_accuracy``, ...) with
    ``labels``, ``split_sizes``, ``head_seconds``, ``skipped`` and ``output``.
    """
    for key in ("labels", "images", "bottleneck_dir", "summaries_dir", "intermediate_output_dir"):
        if options.get(key) is not None:
            options[key] = os.fspath(options[key])
    manifest_json, head_seconds, skipped = _native.train(
        None if image_dir is None else os.fspath(image_dir), os.fspath(output), **options
    )
    manifest = json.loads(manifest_json)
    metrics = dict(manifest.get("metrics", {}))
    metrics.update(
        labels=manifest["labels"],
        split_sizes=manifest["split_sizes"],
        head_seconds=head_seconds,
        skipped=skipped,
        output=os.fspath(output),
    )
    return metrics


class Model:
    """A trained bundle (``graft train --output``) with its backbone, ready to classify."""

    def __init__(self, native: "_native.Model") -> None:
        self._native = native

    @classmethod
    def load(cls, bundle: PathLike) -> "Model":
        """Loads the bundle at ``bundle``, refusing one whose backbone weights differ."""
        return cls(_native.Model.load(os.fspath(bundle)))

    @property
    def labels(self) -> List[str]:
        """Class names; index = class id."""
        return self._native.labels

    @property
    def backbone(self) -> str:
        return self._native.backbone

    def predict(
        self,
        images: Union[PathLike, Sequence[PathLike], Sequence[bytes], bytes],
        k: int = 5,
        *,
        batch_size: "int | None" = None,
    ) -> List[Tuple[List[str], List[float]]]:
        """Top-``k`` ``(labels, scores)`` per image, best first, in input order (a folder:
        its images in graft's sorted walk order), the scores ``graft predict`` prints.
        At most as many labels as the model has. An image that cannot be decoded raises
        :class:`GraftError` naming it."""
        kind, value = _classify(images)
        if kind == "bytes":
            return self._native.predict_bytes(value, k, batch_size)
        if kind == "folder":
            value = _native.folder_images(value)
        return self._native.predict_files(value, k, batch_size)


__all__ = [
    "DEFAULT_BACKBONE",
    "GraftError",
    "IMAGE_EXTENSIONS",
    "Model",
    "extract",
    "train",
]
