"""graft's extraction as a Ray Data stage.

    import ray, graft.ray
    ds = ray.data.read_binary_files(root, include_paths=True,
                                    file_extensions=graft.ray.FILE_EXTENSIONS)
    ds = ds.map_batches(graft.ray.GraftExtractor, fn_constructor_kwargs={"root": root},
                        concurrency=N, batch_size=B, batch_format="pyarrow")
    ds.write_parquet(out_dir)

Each actor loads the backbone once and turns a batch of encoded images into rows of the
features table ``graft extract --output x.parquet`` writes and ``graft train --features``
reads: ``path`` (relative to ``root``, ``/``-separated: its class folders are the label),
``sha256`` (of the file's bytes), ``backbone``, ``weights_sha256``, ``features``
(FixedSizeList<Float32, D>), with the ``graft.*`` key-value metadata.

Idempotence: a row depends only on the image's bytes and path, never on which actor, which
attempt or which batch produced it, so a task Ray retries after a worker dies recomputes
the same rows, and ``write_parquet`` writes each of its blocks to a file named by task and
block, overwriting what a failed attempt left. Rows are keyed by ``path``: a reader that
meets a path twice (output of two separate runs written to one folder, say) keeps one.
No process holds more than one batch of features.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from typing import Any, Dict, Optional

import numpy as np
import pyarrow as pa

from . import DEFAULT_BACKBONE, GraftError, IMAGE_EXTENSIONS, __version__, _native

#: ``file_extensions`` for ``ray.data.read_binary_files``: the files graft reads as images
#: (Ray matches extensions case-sensitively, so both cases are listed).
FILE_EXTENSIONS = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _bare(path: str) -> str:
    """A path without its filesystem scheme or leading and trailing slashes."""
    return _SCHEME.sub("", path).replace("\\", "/").strip("/")


def features_schema(backbone: str, weights_sha256: str, dim: int) -> pa.Schema:
    """The agreed Parquet features schema, with its ``graft.*`` metadata."""
    return pa.schema(
        [
            pa.field("path", pa.utf8(), nullable=False),
            pa.field("sha256", pa.utf8(), nullable=False),
            pa.field("backbone", pa.utf8(), nullable=False),
            pa.field("weights_sha256", pa.utf8(), nullable=False),
            pa.field("features", pa.list_(pa.field("item", pa.float32()), dim), nullable=False),
        ],
        metadata={
            "graft.version": __version__,
            "graft.backbone": backbone,
            "graft.weights_sha256": weights_sha256,
            "graft.feature_dim": str(dim),
        },
    )


def _rss_bytes() -> int:
    """This process's peak resident set size (VmHWM), 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _write_atomic(path: str, text: str) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


class GraftExtractor:
    """A callable class for ``Dataset.map_batches`` over ``read_binary_files(root,
    include_paths=True)``: pyarrow batches of ``bytes`` and ``path`` in, features rows out.

    ``root`` is the folder given to ``read_binary_files`` (paths are written relative to
    it). ``cache=False`` by default: a cluster's workers rarely share a disk, and the
    vectors land in Parquet anyway; with ``cache=True`` each worker uses graft's feature
    cache in its ``$GRAFT_HOME`` (or ``bottleneck_dir``). With ``rss_dir``, each actor
    writes its peak resident set size so far (bytes) to ``<rss_dir>/<pid>.rss`` after every
    batch, for measuring memory without changing the table.

    Images that cannot be decoded are left out and reported on the worker's standard
    error with the CLI's "skipped PATH: reason" line.
    """

    def __init__(
        self,
        root: str,
        backbone: str = DEFAULT_BACKBONE,
        *,
        engine: str = "auto",
        batch_size: Optional[int] = None,
        cache: bool = False,
        bottleneck_dir: Optional[str] = None,
        rss_dir: Optional[str] = None,
    ) -> None:
        self._root = _bare(os.fspath(root))
        self._extractor = _native.Extractor(backbone, engine, batch_size)
        self._cache = cache
        self._bottleneck_dir = None if bottleneck_dir is None else os.fspath(bottleneck_dir)
        self._rss_dir = None if rss_dir is None else os.fspath(rss_dir)
        self._schema = features_schema(
            self._extractor.backbone, self._extractor.weights_sha256, self._extractor.feature_dim
        )

    def _relative(self, path: str) -> str:
        bare = _bare(path)
        prefix = self._root + "/" if self._root else ""
        if not bare.startswith(prefix):
            raise GraftError(
                f"{path} is not under {self._root or '/'}; pass GraftExtractor the root "
                "folder given to read_binary_files"
            )
        return bare[len(prefix):]

    def __call__(self, batch: Any) -> pa.Table:
        if isinstance(batch, dict):  # batch_format="numpy" or "default"
            paths = [str(p) for p in batch["path"]]
            images = [bytes(b) for b in batch["bytes"]]
        else:
            paths = batch.column("path").to_pylist()
            images = batch.column("bytes").to_pylist()
        relative = [self._relative(p) for p in paths]
        rows, kept, _skipped = self._extractor.extract_bytes(
            images, relative, self._cache, self._bottleneck_dir
        )
        sha = {name: hashlib.sha256(data).hexdigest() for name, data in zip(relative, images)}
        dim = self._extractor.feature_dim
        values = pa.array(np.frombuffer(rows, dtype=np.float32), type=pa.float32())
        n = len(kept)
        columns: Dict[str, pa.Array] = {
            "path": pa.array(kept, pa.utf8()),
            "sha256": pa.array([sha[k] for k in kept], pa.utf8()),
            "backbone": pa.array([self._extractor.backbone] * n, pa.utf8()),
            "weights_sha256": pa.array([self._extractor.weights_sha256] * n, pa.utf8()),
            "features": pa.FixedSizeListArray.from_arrays(values, dim),
        }
        table = pa.Table.from_arrays(
            [columns[f.name] for f in self._schema],
            schema=self._schema,
        )
        if self._rss_dir is not None:
            _write_atomic(os.path.join(self._rss_dir, f"{os.getpid()}.rss"), str(_rss_bytes()))
        sys.stderr.flush()
        return table


__all__ = ["FILE_EXTENSIONS", "GraftExtractor", "features_schema"]
