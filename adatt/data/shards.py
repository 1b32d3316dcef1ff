"""Parquet shard files: finding them, opening them, reading their footers.

``data.train`` of a streamed source names the shards: a directory (every
``*.parquet`` / ``*.pq`` in it), a glob (``DIR/train/part-*.parquet``) or one
file; shards are taken in sorted path order. Only the footers are read up
front (row counts, row groups, column types), checked: every shard must have
the schema's columns, with the same types as the first shard, and the size
an ``adatt-manifest.json`` beside it records, if any (:mod:`adatt.data.manifest`;
the stream checks the SHA-256 when it reads the shard).

Example:
    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> from adatt.data.tables import FileSchema
    >>> d = Path(tempfile.mkdtemp())
    >>> for i in range(2):
    ...     pq.write_table(pa.table({"x": [1.0] * 5, "y": [0] * 5}), d / f"p{i}.parquet",
    ...                    row_group_size=2)
    >>> fs = FileSchema(dense=("x",), categorical=(), labels=(("y", "binary"),))
    >>> [(s.path.name, s.rows, s.row_groups) for s in inspect_shards(find_shards(d), fs)]
    [('p0.parquet', 5, (2, 2, 1)), ('p1.parquet', 5, (2, 2, 1))]
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adatt.data.errors import DataError
from adatt.data.manifest import check_size
from adatt.data.tables import PARQUET_SUFFIXES, FileSchema, check_columns, check_unique

__all__ = ["READ_ROWS", "Shard", "find_shards", "open_shard", "next_batch", "inspect_shards"]

READ_ROWS = 65_536  # rows per decoded record batch

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Shard:
    """One Parquet file: its path, row count and rows per row group (from its footer)."""

    path: Path
    rows: int
    row_groups: tuple[int, ...]


def find_shards(spec: PathLike) -> list[Path]:
    """The shard files ``spec`` names: a directory, a glob pattern or one file (sorted)."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in PARQUET_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: no .parquet / .pq files in this directory")
        return files
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise DataError(f"{text}: no file matches this pattern")
        return files
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return [path]


def _open(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path`` (one place, so tests can count opens)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def open_shard(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path``; a failure is a one-line
    :class:`DataError` naming the file."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return _open(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read as Parquet ({msg})") from None


def next_batch(batches: Iterator[Any], path: Path, row_group: int | None = None) -> Any:
    """The next record batch of a shard's ``iter_batches`` (None at the end); a damaged
    page or column chunk is a one-line :class:`DataError` naming the shard."""
    import pyarrow as pa

    try:
        return next(batches, None)
    except (pa.ArrowException, OSError, ValueError) as e:
        where = f", row group {row_group}" if row_group is not None else ""
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{path}{where}: damaged, cannot decode ({msg}); restore the shard "
                        "or write it again") from None


def inspect_shards(paths: list[Path], fs: FileSchema) -> list[Shard]:
    """Footers of every shard, checked: the schema's columns, the same types as the first."""
    import pyarrow as pa

    shards: list[Shard] = []
    first: tuple[Path, dict[str, Any]] | None = None
    for path in paths:
        if path.is_file():
            check_size(path)  # against adatt-manifest.json, when one lists the shard
        pf = open_shard(path)
        arrow = pf.schema_arrow
        check_unique(path, arrow.names)
        check_columns(path, fs, arrow.names)
        types = {c: arrow.field(c).type for c in fs.columns}
        for c in fs.categorical:
            if pa.types.is_nested(types[c]):
                raise DataError(f"{path}: column {c!r} has type {types[c]}, which cannot be "
                                "read as categories (one string or number per row)")
        if first is None:
            first = (path, types)
        else:
            for c in fs.columns:
                if types[c] != first[1][c]:
                    raise DataError(
                        f"{path}: column {c!r} has type {types[c]}, but {first[0].name} has "
                        f"{first[1][c]} (every shard needs the same column types)"
                    )
        md = pf.metadata
        groups = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
        shards.append(Shard(path, int(md.num_rows), groups))
    if sum(s.rows for s in shards) == 0:
        raise DataError(f"{paths[0].parent}: the training shards have no rows")
    return shards
