"""Streaming training data from Parquet shards larger than memory, and the trainer's batch sources.

Notation: B batch size, Dd dense width, F categorical fields, T tasks, S
shuffle-buffer rows.

Layout (what :func:`write_sim_shards` writes; your own data can look the same)::

    DIR/schema.yaml                 the files schema (adatt.data.files), standardize: false
    DIR/train/part-00000.parquet    training shards, read a row group at a time
    DIR/train/part-00001.parquet    ...
    DIR/valid.parquet               validation and test: small, loaded in memory
    DIR/test.parquet

``data.train`` names the shards: a directory (every ``*.parquet`` / ``*.pq``
in it), a glob (``DIR/train/part-*.parquet``) or one file; shards are taken in
sorted path order. Only Parquet footers are read up front (row counts, column
types: every shard must have the schema's columns with the same types as the
first); row counts are therefore known before the first pass, so
``train.epochs`` and ``train.max_examples`` mean what they mean in memory and
the progress bar has its total.

Encoding (the same for the training stream and the in-memory valid / test)
    Fitted on a bounded sample: the first ``ceil(fit_rows / shards)`` rows of
    every training shard (all shards, whatever the rank, so every rank of a
    data-parallel run encodes alike).

    * categorical, ``cat_encoding: vocab`` (default): values compared as text,
      as :mod:`adatt.data.files` does; the vocabulary is the sorted set of
      values in the sample, coded ``1..V``; any other value is 0 (unknown).
      High-cardinality IDs absent from the sample all share index 0, so raise
      ``fit_rows`` until the sample covers the IDs that matter (memory: the
      sample's rows plus the vocabulary).
    * ``cat_encoding: hash``: no vocabulary; a value's text is hashed
      (pandas' SipHash with its fixed key, the same in every process) into
      ``1..hash_buckets``; unrelated values may share an index (collisions),
      none is unknown. Cardinality ``hash_buckets + 1`` for every field.
    * dense: with ``standardize`` (schema, default true) shifted and scaled by
      the sample's mean and standard deviation.
    * label variance (for ``train.selection.metric=loss``): the sample's.

Shuffling, per epoch ``e`` (all draws from ``numpy`` PCG64 streams keyed by
``(seed, e)``)
    1. this rank's shards in a random order, and each shard's row groups in a
       random order;
    2. rows pass through a shuffle buffer of ``S = max(shuffle_buffer, B)``
       rows: once it is full, each batch is ``B`` rows drawn at random from
       it, their slots refilled with the next ``B`` rows read; when the input
       is spent the rest is emitted in random order. An epoch yields
       ``ceil(rows / B)`` batches, only the last shorter.

Rank sharding: rank ``r`` of ``w`` reads the shards ``i`` with ``i % w == r``
(sorted order), so ranks see disjoint rows; each rank counts its own rows.
The trainer uses it with ``data.rank_shards`` (:class:`adatt.train.distributed.RankShards`
agrees on the steps per epoch and carries every rank's position).

Exact resumption: :meth:`ShardStream.state_dict` holds the epoch, the batch
count, the read position (shard in the epoch's order, row group in the shard's
order, row within the row group), the buffer's rows and the random generator's
state. A loaded stream reopens its row group, skips to the row and yields
exactly the batches an uninterrupted stream would have yielded. The cost: the
checkpoint carries the buffer (``S`` rows, about 200 bytes each for the
simulator), resumption re-reads part of one row group.

Memory: the buffer, one decoded record batch (``read_rows`` rows) and what
pyarrow holds for one row group -- write shards with row groups of moderate
size (the simulator writes 65,536 rows per row group).

Errors: a missing shard, an empty pattern, a file that is not Parquet, a
missing column, a shard whose column types differ from the first shard's, a
bad value (with the row within its file) are one-line
:class:`~adatt.data.errors.DataError` naming the file.

Example:
    >>> import tempfile
    >>> d = write_sim_shards(tempfile.mkdtemp(), "group1", rows=3_000, shard_rows=1_000,
    ...                      valid_rows=200, test_rows=200, row_group_rows=500)
    >>> sorted(p.name for p in (d / "train").iterdir())
    ['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet']
    >>> s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet")
    >>> s.sizes()
    {'train': 3000, 'valid': 200, 'test': 200}
    >>> stream = s.train.stream(batch_size=512, seed=0, shuffle_buffer=1024)
    >>> batches = list(stream.epoch_batches(0))
    >>> [len(b) for b in batches]
    [512, 512, 512, 512, 512, 440]
    >>> b = batches[-1]
    >>> tuple(b.dense.shape), tuple(b.cat.shape), tuple(b.labels.shape)
    ((440, 21), (440, 12), (440, 2))
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adatt.data.batch import Batch, TensorDataset, regression_label_variance
from adatt.data.errors import DataError
from adatt.data.files import FileSchema, read_file_schema
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits

__all__ = [
    "Shard",
    "StreamEncoder",
    "ParquetShards",
    "ShardStream",
    "InMemorySource",
    "batch_source",
    "find_shards",
    "load_stream",
    "write_sim_shards",
]

PathLike = str | os.PathLike[str]
CatEncoding = Literal["vocab", "hash"]
READ_ROWS = 65_536  # rows per decoded record batch
_PARQUET = (".parquet", ".pq")

# numpy arrays of one block of rows: dense [n, Dd] f32, cat [n, F] i64, labels [n, T] f32,
# weight [n] f32 or None
Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def _open(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path`` (one place, so tests can count opens)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def _open_checked(path: Path) -> Any:
    """:func:`_open`, its failures as one-line :class:`DataError` naming the file."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return _open(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read as Parquet ({msg})") from None


# --------------------------------------------------------------------------- shards


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
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _PARQUET and p.is_file())
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


def _inspect(paths: list[Path], fs: FileSchema) -> list[Shard]:
    """Footers of every shard, checked: the schema's columns, the same types as the first."""
    import pyarrow as pa

    from adatt.data.files import _missing

    shards: list[Shard] = []
    first: tuple[Path, dict[str, Any]] | None = None
    for path in paths:
        pf = _open_checked(path)
        arrow = pf.schema_arrow
        _missing(path, fs, arrow.names)
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


_ROW = re.compile(r", row (\d+):")


def _shift_rows(e: DataError, row0: int) -> DataError:
    """The same one-line error with its 1-based row moved from a block to its file."""
    msg = _ROW.sub(lambda m: f", row {int(m.group(1)) + row0}:", str(e), count=1)
    return DataError(msg)


# --------------------------------------------------------------------------- encoding


class StreamEncoder:
    """How raw columns become model inputs: vocabularies or hashing, and dense scaling.

    Args:
        fs: the files schema.
        cat_encoding: ``vocab`` or ``hash``.
        vocabularies: per categorical field the sorted values (``vocab``).
        hash_buckets: indices per field (``hash``).
        mean, std: per dense column, float64 (zeros / ones without scaling).
    """

    def __init__(
        self,
        fs: FileSchema,
        cat_encoding: CatEncoding,
        vocabularies: list[list[str]] | None,
        hash_buckets: int,
        mean: np.ndarray,
        std: np.ndarray,
    ):
        self.fs, self.cat_encoding, self.hash_buckets = fs, cat_encoding, int(hash_buckets)
        self.vocabularies, self.mean, self.std = vocabularies, mean, std
        self._text_index: list[Any] = [None] * len(fs.categorical)
        self._int_keys: list[tuple[np.ndarray, np.ndarray] | None] = []
        for vocab in vocabularies or []:
            self._int_keys.append(_integer_keys(vocab))

    @property
    def cardinalities(self) -> tuple[int, ...]:
        if self.cat_encoding == "hash":
            return (self.hash_buckets + 1,) * len(self.fs.categorical)
        assert self.vocabularies is not None
        return tuple(len(v) + 1 for v in self.vocabularies)

    def encode_field(self, j: int, col: Any) -> np.ndarray:
        """Indices ``int64 [n]`` of categorical field ``j`` from a pyarrow array (any type)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from adatt.data.files import _text

        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if self.cat_encoding == "vocab":
            keys = self._int_keys[j]
            signed = pa.types.is_signed_integer(col.type) or col.type in (
                pa.uint8(), pa.uint16(), pa.uint32())
            if keys is not None and signed and col.null_count == 0:
                # integer column, integer vocabulary: a binary search instead of hashing text
                v = pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
                skeys, codes = keys
                pos = np.minimum(np.searchsorted(skeys, v), len(skeys) - 1)
                return np.where(skeys[pos] == v, codes[pos], 0)
        text = _text(col).to_numpy(zero_copy_only=False)  # object [n] of str
        if self.cat_encoding == "hash":
            import pandas as pd

            h = pd.util.hash_array(text.astype(object))  # uint64 [n]
            return (h % np.uint64(self.hash_buckets)).astype(np.int64) + 1
        if self._text_index[j] is None:
            import pandas as pd

            assert self.vocabularies is not None
            self._text_index[j] = pd.Index(np.array(self.vocabularies[j], dtype=object),
                                           dtype=object)
        return self._text_index[j].get_indexer(text.astype(object)).astype(np.int64) + 1

    def encode_table(self, table: Any, path: Path, row0: int = 0) -> Rows:
        """A pyarrow table / record batch of the schema's columns as encoded arrays.

        ``row0``: rows of the file before ``table`` (errors name the row in the file).
        """
        from adatt.data.files import _numeric_columns

        fs = self.fs
        n = table.num_rows
        try:
            dense, labels, weight = _numeric_columns(table, path, fs)
        except DataError as e:
            raise _shift_rows(e, row0) from None
        cat = np.zeros((n, len(fs.categorical)), dtype=np.int64)
        for j, c in enumerate(fs.categorical):
            cat[:, j] = self.encode_field(j, table.column(c))
        dense = ((dense - self.mean) / self.std).astype(np.float32)  # [n, Dd]
        return dense, cat, labels, weight

    def encode_file(self, path: Path) -> TensorDataset:
        """A whole (small) file, as :func:`adatt.data.files.load_files` reads it, encoded."""
        from adatt.data.files import _read_table

        table = _read_table(path, self.fs)
        d, c, y, w = self.encode_table(table, path)
        return TensorDataset(torch.from_numpy(d), torch.from_numpy(c), torch.from_numpy(y),
                             None if w is None else torch.from_numpy(w))

    def encoding_info(self) -> dict[str, Any] | None:
        """The vocabulary encoding in the form :mod:`adatt.serve.predict` reads (None: hash)."""
        if self.cat_encoding != "vocab":
            return None
        fs = self.fs
        assert self.vocabularies is not None
        return {
            "kind": "files",
            "dense": list(fs.dense),
            "categorical": list(fs.categorical),
            "cardinalities": list(self.cardinalities),
            "standardize": ({"mean": [float(x) for x in self.mean],
                             "std": [float(x) for x in self.std]} if fs.standardize else None),
            "vocabularies": {c: list(v) for c, v in
                             zip(fs.categorical, self.vocabularies, strict=True)},
            "delimiter": fs.delimiter,
        }


def _integer_keys(vocab: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(sorted int64 keys, their codes)`` when every value is a canonical integer, else None."""
    if not vocab or not all(re.fullmatch(r"-?(0|[1-9][0-9]{0,17})", v) for v in vocab):
        return None
    keys = np.array([int(v) for v in vocab], dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], (order + 1).astype(np.int64)


class _Moments:
    """Running count, mean and sum of squared deviations per column (Chan et al.'s merge)."""

    def __init__(self, width: int):
        self.n, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)

    def add(self, x: np.ndarray) -> None:  # x [n, width] float64
        k = x.shape[0]
        if k == 0:
            return
        mean = x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        n = self.n + k
        delta = mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * k / n)
        self.n = n


def _fit(shards: list[Shard], fs: FileSchema, cat_encoding: CatEncoding, fit_rows: int,
         hash_buckets: int) -> tuple[StreamEncoder, dict[str, float], int]:
    """The encoder, the label variance per regression task and the sample's row count.

    Memory: the vocabularies (distinct values) and one record batch; the dense and
    label moments are accumulated batch by batch.
    """
    import pyarrow as pa

    from adatt.data.census import build_vocabulary
    from adatt.data.files import _numbers, _text

    per_shard = math.ceil(fit_rows / len(shards))
    texts: list[list[Any]] = [[] for _ in fs.categorical]
    dense, labels = _Moments(len(fs.dense)), _Moments(len(fs.labels))
    for shard in shards:
        got = 0
        pf = _open_checked(shard.path)
        for rb in pf.iter_batches(batch_size=min(per_shard, READ_ROWS), columns=fs.columns,
                                  use_threads=False):
            rb = rb.slice(0, per_shard - got)
            try:
                if cat_encoding == "vocab":
                    for j, c in enumerate(fs.categorical):
                        texts[j].append(_unique(_text(rb.column(c))))
                d = np.zeros((rb.num_rows, len(fs.dense)))
                for j, c in enumerate(fs.dense):
                    d[:, j] = _numbers(rb.column(c), shard.path, c)
                y = np.zeros((rb.num_rows, len(fs.labels)))
                for j, (c, _) in enumerate(fs.labels):
                    y[:, j] = _numbers(rb.column(c), shard.path, c)
            except DataError as e:
                raise _shift_rows(e, got) from None
            dense.add(d)
            labels.add(y)
            got += rb.num_rows
            if got >= per_shard:
                break
    n = dense.n
    vocabs = None
    if cat_encoding == "vocab":
        vocabs = [build_vocabulary(pa.chunked_array(t, type=pa.string())) for t in texts]
    if fs.standardize and fs.dense:
        mean, std = dense.mean, np.sqrt(dense.m2 / n)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(len(fs.dense)), np.ones(len(fs.dense))
    var = {c: float(labels.m2[j] / (n - 1)) if n > 1 else 1.0
           for j, (c, kind) in enumerate(fs.labels) if kind == "regression"}
    enc = StreamEncoder(fs, cat_encoding, vocabs, hash_buckets, mean, std)
    return enc, var, n


def _unique(col: Any) -> Any:
    """Distinct values of a pyarrow array (keeps the fitting sample's memory to the vocabulary)."""
    import pyarrow.compute as pc

    return pc.unique(col)


# --------------------------------------------------------------------------- the training set


class ParquetShards:
    """The training split as Parquet shards on disk: never loaded whole.

    ``len()`` is the row count of every shard (from the footers);
    :meth:`stream` makes a :class:`ShardStream` for one rank.

    Args:
        shards: the checked shards, in sorted path order.
        encoder: the fitted encoding.
        schema: the feature schema the encoder produces.
        label_variance: per regression task, the fitting sample's label variance.
        shuffle_buffer: default buffer rows of :meth:`stream`.
    """

    def __init__(self, shards: list[Shard], encoder: StreamEncoder, schema: FeatureSchema,
                 label_variance: dict[str, float], shuffle_buffer: int = 131_072):
        self.shards, self.encoder, self.schema = shards, encoder, schema
        self._label_variance, self.shuffle_buffer = label_variance, int(shuffle_buffer)

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    def rows_for(self, rank: int = 0, world: int = 1) -> int:
        """Rows of the shards rank ``rank`` of ``world`` reads."""
        return sum(s.rows for i, s in enumerate(self.shards) if i % world == rank)

    def label_variance(self, schema: FeatureSchema | None = None) -> dict[str, float]:
        """Per regression task, the label variance of the fitting sample."""
        return dict(self._label_variance)

    def stream(self, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
               shuffle_buffer: int | None = None, device: torch.device | str = "cpu",
               read_rows: int = READ_ROWS) -> ShardStream:
        """A shuffled, resumable stream of batches over rank ``rank``'s shards."""
        buf = self.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        return ShardStream(self, batch_size, seed, rank, world, buf, device, read_rows)


class ShardStream:
    """Batches of one rank's shards, shuffled per epoch, with an exact resumption position.

    See the module docstring for the shuffling. :meth:`epoch_batches` yields an
    epoch's batches (``dense [B, Dd]``, ``cat [B, F]``, ``labels [B, T]``,
    ``weight [B]`` or None, on ``device``); :meth:`state_dict` after any batch
    and :meth:`load_state_dict` on a new stream continue exactly there.
    """

    def __init__(self, data: ParquetShards, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle_buffer: int = 131_072,
                 device: torch.device | str = "cpu", read_rows: int = READ_ROWS):
        if batch_size < 1 or read_rows < 1 or shuffle_buffer < 0:
            raise DataError("stream: batch_size and read_rows must be >= 1, shuffle_buffer >= 0")
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"stream: rank {rank} is not in [0, {world})")
        n = len(data.shards)
        if n < world:
            raise DataError(f"stream: {n} training shards cannot feed {world} ranks "
                            "(every rank reads whole shards; write more, smaller shards)")
        self.data, self.enc = data, data.encoder
        self.batch_size, self.seed, self.rank, self.world = int(batch_size), seed, rank, world
        self.device, self.read_rows = torch.device(device), int(read_rows)
        self.mine = [i for i in range(n) if i % world == rank]
        self.rows = sum(data.shards[i].rows for i in self.mine)
        self.capacity = min(max(int(shuffle_buffer), self.batch_size), self.rows)
        self._start_epoch(0)

    # ---- randomness and position -------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        ss = np.random.SeedSequence(self.seed % 2**63, spawn_key=key)
        return np.random.Generator(np.random.PCG64(ss))

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = epoch, 0
        perm = self._rng(0, epoch, self.rank).permutation(len(self.mine))
        self.order = [self.mine[int(i)] for i in perm]  # shard indices, this epoch's order
        self.shard_pos = self.rg_pos = self.row_in_rg = 0
        self.rng = self._rng(2, epoch, self.rank)
        self.draining = False
        self.count = 0
        self._groups_key: tuple[int, int] | None = None
        self._groups = np.zeros(0, dtype=np.int64)
        self._buf: list[np.ndarray | None] | None = None
        self._reset_reader()
        self._normalise()

    def _reset_reader(self) -> None:
        self._it: Iterator[Any] | None = None  # record batches of the current row group
        self._it_row = 0  # row (in the row group) where the iterator's next batch starts
        self._pending: tuple[Rows, int] | None = None  # decoded rows and their first row

    def _rg_order(self, shard_index: int) -> np.ndarray:
        groups = len(self.data.shards[shard_index].row_groups)
        return self._rng(1, self.epoch, shard_index).permutation(groups)

    def _normalise(self) -> None:
        """Move the read position past finished (or empty) row groups and shards."""
        while self.shard_pos < len(self.order):
            shard = self.data.shards[self.order[self.shard_pos]]
            key = (self.epoch, self.order[self.shard_pos])
            if self._groups_key != key:
                self._groups, self._groups_key = self._rg_order(key[1]), key
            groups = self._groups
            while self.rg_pos < len(groups) and (
                self.row_in_rg >= shard.row_groups[groups[self.rg_pos]]
            ):
                self.rg_pos, self.row_in_rg = self.rg_pos + 1, 0
                self._reset_reader()
            if self.rg_pos < len(groups):
                return
            self.shard_pos, self.rg_pos, self.row_in_rg = self.shard_pos + 1, 0, 0
            self._reset_reader()

    @property
    def input_left(self) -> bool:
        """Whether rows of this epoch are still unread."""
        return self.shard_pos < len(self.order)

    # ---- reading -----------------------------------------------------------------------
    def _chunk(self) -> tuple[Rows, int]:
        """Decoded rows of the current row group from ``row_in_rg`` on: ``(rows, offset)``."""
        if self._pending is not None:
            rows, start = self._pending
            if start <= self.row_in_rg < start + len(rows[2]):
                return rows, self.row_in_rg - start
        shard = self.data.shards[self.order[self.shard_pos]]
        rg = int(self._groups[self.rg_pos])
        if self._it is None:
            pf = _open_checked(shard.path)
            self._it = pf.iter_batches(batch_size=self.read_rows, row_groups=[rg],
                                       columns=list(self.enc.fs.columns), use_threads=False)
            self._it_row = 0
        while True:
            rb = next(self._it, None)
            if rb is None:
                raise DataError(f"{shard.path}: row group {rg} ended after {self._it_row} rows; "
                                f"its footer says {shard.row_groups[rg]} (file changed?)")
            start, self._it_row = self._it_row, self._it_row + rb.num_rows
            if self._it_row > self.row_in_rg:  # skip rows read before a resumption
                rb = rb.slice(self.row_in_rg - start)
                row0 = sum(shard.row_groups[:rg]) + self.row_in_rg
                rows = self.enc.encode_table(rb, shard.path, row0)
                self._pending = (rows, self.row_in_rg)
                return rows, 0

    def _take(self, n: int) -> Rows | None:
        """Up to ``n`` next rows of the epoch's input (None when it is spent)."""
        parts: list[Rows] = []
        while n > 0 and self.input_left:
            rows, off = self._chunk()
            k = min(n, len(rows[2]) - off)
            parts.append(_slice(rows, off, off + k))
            self.row_in_rg += k
            n -= k
            self._normalise()
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else _concat(parts)

    # ---- the shuffle buffer ------------------------------------------------------------
    def _put(self, rows: Rows, at: np.ndarray | slice) -> None:
        if self._buf is None:
            self._buf = [
                None if a is None else np.empty((self.capacity, *a.shape[1:]), a.dtype)
                for a in rows
            ]
        for b, a in zip(self._buf, rows, strict=True):
            if b is not None:
                b[at] = a

    def _get(self, at: np.ndarray | slice) -> Rows:
        assert self._buf is not None
        return tuple(None if b is None else b[at].copy() for b in self._buf)  # type: ignore[return-value]

    def next_rows(self) -> Rows | None:
        """The next batch of this epoch as numpy arrays (None at the epoch's end)."""
        B = self.batch_size
        if not self.draining:
            while self.count < self.capacity and self.input_left:
                rows = self._take(self.capacity - self.count)
                assert rows is not None
                k = len(rows[2])
                self._put(rows, slice(self.count, self.count + k))
                self.count += k
            if self.input_left:  # full: draw B rows, refill their slots
                idx = self.rng.choice(self.capacity, B, replace=False)
                out = self._get(idx)
                new = self._take(B)
                m = 0 if new is None else len(new[2])
                if new is not None:
                    self._put(new, idx[:m])
                if m < B:  # the input ran out: close the holes
                    keep = np.ones(self.count, dtype=bool)
                    keep[idx[m:]] = False
                    self._put(self._get(np.flatnonzero(keep)), slice(0, self.count - (B - m)))
                    self.count -= B - m
                self.batch += 1
                return out
            self.draining = True
            if self.count:
                self._put(self._get(self.rng.permutation(self.count)), slice(0, self.count))
        if self.count == 0:
            return None
        k = min(B, self.count)
        out = self._get(slice(self.count - k, self.count))
        self.count -= k
        self.batch += 1
        return out

    def epoch_batches(self, epoch: int, start_batch: int = 0,
                      limit: int | None = None) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch ``start_batch`` on, at most ``limit`` rows in all.

        Continues from the stream's position when it is ``(epoch, start_batch)``
        (a fresh stream, the previous epoch's end, or a loaded state); otherwise
        starts the epoch over and skips ``start_batch`` batches (exact, slower).
        """
        if (self.epoch, self.batch) != (epoch, start_batch):
            self._start_epoch(epoch)
            for _ in range(start_batch):
                if self.next_rows() is None:
                    break
        left = limit
        while left is None or left > 0:
            rows = self.next_rows()
            if rows is None:
                return
            if left is not None:
                rows = _slice(rows, 0, left)
                left -= len(rows[2])
            yield _to_batch(rows, self.device)

    def indexed_batches(self, epoch: int, start_batch: int = 0,
                        limit: int | None = None) -> Iterator[tuple[torch.Tensor, TensorDataset]]:
        """:meth:`epoch_batches` in the trainer's form: ``(index [B], rows)``, the
        batch being ``rows.batch(index)`` (``index`` is ``arange(B)`` on ``device``)."""
        for b in self.epoch_batches(epoch, start_batch, limit):
            index = torch.arange(len(b), device=self.device)
            yield index, TensorDataset(b.dense, b.cat, b.labels, b.weight)

    def label_variance(self, schema: FeatureSchema | None = None) -> dict[str, float]:
        return self.data.label_variance(schema)

    # ---- resumption --------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "shards": [(self.data.shards[i].path.name, self.data.shards[i].rows)
                       for i in self.mine],
            "seed": self.seed, "rank": self.rank, "world": self.world,
            "batch_size": self.batch_size, "capacity": self.capacity,
        }

    def state_dict(self) -> dict[str, Any]:
        """The exact position: epoch, batch, read position, buffer rows, generator state."""
        buf = None if self._buf is None else [None if b is None else b[: self.count].copy()
                                              for b in self._buf]
        return {
            "format": 1, **self._identity(),
            "epoch": self.epoch, "batch": self.batch, "shard_pos": self.shard_pos,
            "rg_pos": self.rg_pos, "row_in_rg": self.row_in_rg, "draining": self.draining,
            "count": self.count, "buffer": buf, "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from ``state`` (None: nothing to load); it must be of the same shards."""
        if state is None:
            return
        if "ranks" in state:  # adatt.train.distributed.RankShards: one position per process
            w = state.get("world")
            raise DataError(f"stream: the checkpoint holds one stream position per process "
                            f"(saved with data.rank_shards=true by {w} processes); resume "
                            f"with data.rank_shards=true on {w} processes")
        ident = self._identity()
        for key, want in ident.items():
            got = state.get(key)
            if key == "shards":
                got = [tuple(x) for x in got or []]
                want = [tuple(x) for x in want]
            if got != want:
                raise DataError(f"stream: the saved position was made with another {key} "
                                f"({_short(got)}, now {_short(want)}); cannot resume exactly")
        self._start_epoch(int(state["epoch"]))
        self.batch, self.draining = int(state["batch"]), bool(state["draining"])
        self.shard_pos, self.rg_pos = int(state["shard_pos"]), int(state["rg_pos"])
        self.row_in_rg, self.count = int(state["row_in_rg"]), int(state["count"])
        self.rng.bit_generator.state = state["rng"]
        self._reset_reader()
        self._normalise()
        if state["buffer"] is not None:
            rows = tuple(state["buffer"])
            self._buf = None
            self._put(rows, slice(0, self.count))  # type: ignore[arg-type]


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def _slice(rows: Rows, a: int, b: int) -> Rows:
    return tuple(None if x is None else x[a:b] for x in rows)  # type: ignore[return-value]


def _concat(parts: list[Rows]) -> Rows:
    return tuple(None if xs[0] is None else np.concatenate(xs)  # type: ignore[return-value]
                 for xs in zip(*parts, strict=True))


def _to_batch(rows: Rows, device: torch.device) -> Batch:
    d, c, y, w = (None if x is None else torch.from_numpy(np.ascontiguousarray(x)) for x in rows)
    b = Batch(d, c, y, w)  # type: ignore[arg-type]
    return b if device.type == "cpu" else b.to(device)


# --------------------------------------------------------------------------- batch sources


class InMemorySource:
    """The trainer's in-memory batches: each epoch a permutation drawn from a
    generator seeded by ``seed * 1_000_003 + epoch``; batches are slices of it.

    The position is the trainer's ``(epoch, batch)``: no state of its own.

    >>> ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10, 0, dtype=torch.long),
    ...                    torch.arange(10.0)[:, None])
    >>> src = InMemorySource(ds, batch_size=4, seed=0, device="cpu")
    >>> [len(rows.batch(idx)) for idx, rows in src.indexed_batches(0, start_batch=1, limit=5)]
    [4, 1]
    """

    def __init__(self, data: TensorDataset, batch_size: int, seed: int,
                 device: torch.device | str):
        self.data, self.batch_size, self.seed = data.to(device), batch_size, seed
        self.device = torch.device(device)
        self.rows = len(self.data)

    def indexed_batches(self, epoch: int, start_batch: int = 0,
                        limit: int | None = None) -> Iterator[tuple[torch.Tensor, TensorDataset]]:
        """``(index [B], data)`` per batch of ``epoch`` from ``start_batch`` on, at
        most ``limit`` rows in all: ``index`` rows of the epoch's permutation."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.rows, generator=gen).to(self.device)
        left = limit
        for b in range(start_batch, math.ceil(self.rows / self.batch_size)):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            if left is not None:
                if left <= 0:
                    return
                idx = idx[:left]
                left -= idx.numel()
            yield idx, self.data

    def label_variance(self, schema: FeatureSchema) -> dict[str, float]:
        return regression_label_variance(self.data, schema)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        return None


def batch_source(train: TensorDataset | ParquetShards, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0,
                 world: int = 1) -> InMemorySource | ShardStream:
    """The trainer's source of training batches for ``splits.train``.

    An in-memory :class:`TensorDataset` gives an :class:`InMemorySource`
    (``rank`` / ``world`` must be 0 / 1: every rank sees the same permutation);
    Parquet shards give rank ``rank``'s :class:`ShardStream`. Both have
    ``rows`` (per epoch), ``indexed_batches(epoch, start_batch, limit)``
    yielding ``(index [B], rows)`` (the batch is ``rows.batch(index)``),
    ``label_variance(schema)``, ``state_dict()`` and ``load_state_dict(state)``
    (None / no-op in memory, where the trainer's ``(epoch, batch)`` is the position).
    """
    if isinstance(train, ParquetShards):
        return train.stream(batch_size, seed, rank, world, device=device)
    if world != 1 or rank != 0:
        raise ValueError("an in-memory training set is split between ranks by its caller")
    return InMemorySource(train, batch_size, seed, device)


# --------------------------------------------------------------------------- loading


def load_stream(
    schema: PathLike,
    train: PathLike,
    valid: PathLike,
    test: PathLike,
    *,
    shuffle_buffer: int = 131_072,
    cat_encoding: CatEncoding = "vocab",
    fit_rows: int = 1_000_000,
    hash_buckets: int = 1_000_000,
) -> Splits:
    """Training shards streamed from disk, validation and test in memory.

    Args:
        schema: the YAML files schema (:mod:`adatt.data.files`).
        train: a directory, glob pattern or file of Parquet shards.
        valid, test: CSV or Parquet files, loaded whole.
        shuffle_buffer: default buffer rows of the training stream.
        cat_encoding, fit_rows, hash_buckets: see the module docstring.

    Returns:
        :class:`Splits` whose ``train`` is a :class:`ParquetShards` (``len()``
        its rows) and whose ``valid`` / ``test`` are ``TensorDataset``.
    """
    if cat_encoding not in ("vocab", "hash"):
        raise DataError(f"cat_encoding must be vocab or hash, got {cat_encoding!r}")
    if fit_rows < 1 or hash_buckets < 1 or shuffle_buffer < 0:
        raise DataError("fit_rows and hash_buckets must be >= 1, shuffle_buffer >= 0")
    fs = read_file_schema(schema)
    shards = _inspect(find_shards(train), fs)
    enc, label_var, n_fit = _fit(shards, fs, cat_encoding, fit_rows, hash_buckets)
    sets = {k: enc.encode_file(Path(p)) for k, p in (("valid", valid), ("test", test))}
    feature_schema = FeatureSchema(
        dense=fs.dense,
        categorical=fs.categorical,
        cardinalities=enc.cardinalities,
        tasks=tuple(TaskSpec(c, k) for c, k in fs.labels),  # type: ignore[arg-type]
    )
    data = ParquetShards(shards, enc, feature_schema, label_var, shuffle_buffer)
    info: dict[str, Any] = {
        "source": "stream",
        "schema_file": str(schema),
        "train": str(train),
        "shards": len(shards),
        "train_rows": len(data),
        "files": {"valid": str(valid), "test": str(test)},
        "cat_encoding": cat_encoding,
        "fit_rows": n_fit,
        "shuffle_buffer": shuffle_buffer,
    }
    if cat_encoding == "hash":
        info["hash_buckets"] = hash_buckets
    else:
        info["vocabulary_sizes"] = dict(zip(fs.categorical,
                                            (c - 1 for c in enc.cardinalities), strict=True))
        info["unseen_categories"] = {
            split: dict(zip(fs.categorical, (int(x) for x in (ds.cat == 0).sum(0)), strict=True))
            for split, ds in sets.items()
        }
        info["encoding"] = enc.encoding_info()
    if fs.standardize:
        info["standardize"] = {
            "mean": dict(zip(fs.dense, map(float, enc.mean), strict=True)),
            "std": dict(zip(fs.dense, map(float, enc.std), strict=True)),
        }
    p = Path(train)
    name = p.name if p.is_dir() else p.parent.name if glob.has_magic(str(train)) else p.stem
    return Splits(f"stream:{name}", feature_schema, data, sets["valid"], sets["test"],  # type: ignore[arg-type]
                  info)


# --------------------------------------------------------------------------- writing


def write_sim_shards(
    out: PathLike,
    preset: str = "group1",
    rows: int = 1_000_000,
    *,
    seed: int = 0,
    shard_rows: int = 500_000,
    valid_rows: int | None = None,
    test_rows: int | None = None,
    row_group_rows: int = 65_536,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write simulator rows as Parquet shards, valid / test files and a schema; returns ``out``.

    The simulated data set has ``rows + valid_rows + test_rows`` rows (its
    world is sized by that total): rows ``[0, rows)`` go to
    ``out/train/part-NNNNN.parquet`` (``shard_rows`` each, row groups of
    ``row_group_rows``), the next ``valid_rows`` to ``out/valid.parquet``, the
    last ``test_rows`` to ``out/test.parquet`` (each default
    ``min(rows // 10, 100_000)``, at least 1). The rows are those of
    :func:`adatt.data.simulator.iter_chunks` with the same total, generated a
    row group at a time (memory: one row group). ``out/schema.yaml`` is a
    :mod:`adatt.data.files` schema with ``standardize: false`` (the simulator's
    dense features are already standardised). Categorical columns hold the
    simulator's integer IDs, labels float32, dense float32.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from tqdm import tqdm

    from adatt.data.simulator import CATEGORICAL, DENSE, PRESETS, TASKS, Simulator

    if preset not in PRESETS:
        raise DataError(f"unknown simulator preset {preset!r}; known: {list(PRESETS)}")
    default = max(1, min(rows // 10, 100_000))
    valid_rows = default if valid_rows is None else valid_rows
    test_rows = default if test_rows is None else test_rows
    if rows < 1 or shard_rows < 1 or row_group_rows < 1 or valid_rows < 1 or test_rows < 1:
        raise DataError("rows, shard_rows, row_group_rows, valid_rows and test_rows must be >= 1")
    out = Path(out)
    train_dir = out / "train"
    old = sorted(train_dir.glob("part-*.parquet")) if train_dir.is_dir() else []
    if old and not overwrite:
        raise DataError(f"{out}: already holds shards ({len(old)} in {train_dir}); "
                        "pass --overwrite to replace them")
    for p in old:
        p.unlink()
    train_dir.mkdir(parents=True, exist_ok=True)
    tasks = PRESETS[preset].tasks
    fields = ([pa.field(c, pa.float32()) for c in DENSE]
              + [pa.field(c, pa.int64()) for c in CATEGORICAL]
              + [pa.field(t, pa.float32()) for t in tasks])
    arrow_schema = pa.schema(fields)
    sim = Simulator(preset, rows + valid_rows + test_rows, seed)
    bar = tqdm(total=rows + valid_rows + test_rows, unit="row", unit_scale=True,
               disable=not progress, desc="write shards")

    def write(path: Path, start: int, stop: int) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with pq.ParquetWriter(tmp, arrow_schema, compression="snappy") as w:
            for b in sim.chunks(row_group_rows, start, stop):
                d, c, y = b.dense.numpy(), b.cat.numpy(), b.labels.numpy()
                cols = ([pa.array(d[:, j]) for j in range(d.shape[1])]
                        + [pa.array(c[:, j]) for j in range(c.shape[1])]
                        + [pa.array(y[:, j]) for j in range(y.shape[1])])
                w.write_table(pa.Table.from_arrays(cols, schema=arrow_schema))
                bar.update(len(b))
        os.replace(tmp, path)

    n_shards = math.ceil(rows / shard_rows)
    for s in range(n_shards):
        write(train_dir / f"part-{s:05d}.parquet", s * shard_rows, min(rows, (s + 1) * shard_rows))
    write(out / "valid.parquet", rows, rows + valid_rows)
    write(out / "test.parquet", rows + valid_rows, rows + valid_rows + test_rows)
    bar.close()
    header = (f"# simulator preset {preset}, seed {seed}: {rows} training rows in {n_shards} "
              f"shards, {valid_rows} valid, {test_rows} test rows\n")
    doc = {"dense": list(DENSE), "categorical": list(CATEGORICAL),
           "labels": {t: TASKS[t].kind for t in tasks}, "standardize": False}
    (out / "schema.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return out
