"""The training split as Parquet shards, and its shuffled, resumable stream of batches.

Notation: B batch size, Dd dense width, F categorical fields, T tasks, S
shuffle-buffer rows.

:class:`ParquetShards` is what :func:`adatt.data.stream.load_stream` returns as
the training split: the checked shards (:mod:`adatt.data.shards`) and the
fitted :class:`~adatt.data.encoding.FeatureEncoding`, never loaded whole.
:meth:`ParquetShards.stream` makes one rank's :class:`ShardStream`.

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

Integrity: a shard listed in an ``adatt-manifest.json`` beside it (written
by ``adatt data write-shards``) is checked against its SHA-256 when this
process first opens it (:mod:`adatt.data.manifest`); a shard that cannot be
decoded (a damaged page) is a :class:`~adatt.data.errors.DataError` naming the
shard and the row group.

Memory: the buffer, one decoded record batch (``read_rows`` rows) and what
pyarrow holds for one row group -- write shards with row groups of moderate
size (the simulator writes 65,536 rows per row group).

Example:
    >>> import tempfile
    >>> from adatt.data.shard_writer import write_sim_shards
    >>> from adatt.data.stream import load_stream
    >>> d = write_sim_shards(tempfile.mkdtemp(), "group1", rows=3_000, shard_rows=1_000,
    ...                      valid_rows=200, test_rows=200, row_group_rows=500)
    >>> s = load_stream(d / "schema.yaml", d / "train", d / "valid.parquet", d / "test.parquet")
    >>> stream = s.train.stream(batch_size=512, seed=0, shuffle_buffer=1024)
    >>> batches = list(stream.epoch_batches(0))
    >>> [len(b) for b in batches]
    [512, 512, 512, 512, 512, 440]
    >>> b = batches[-1]
    >>> tuple(b.dense.shape), tuple(b.cat.shape), tuple(b.labels.shape)
    ((440, 21), (440, 12), (440, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adatt.data.batch import Batch, TensorDataset
from adatt.data.encoding import FeatureEncoding, Rows
from adatt.data.errors import DataError
from adatt.data.manifest import prefetch, verify
from adatt.data.schema import FeatureSchema
from adatt.data.shards import READ_ROWS, Shard, next_batch, open_shard
from adatt.data.tables import FileSchema

__all__ = ["ParquetShards", "ShardStream"]


class ParquetShards:
    """The training split as Parquet shards on disk: never loaded whole.

    ``len()`` is the row count of every shard (from the footers);
    :meth:`stream` makes a :class:`ShardStream` for one rank.

    Args:
        shards: the checked shards, in sorted path order.
        file_schema: the files schema (column roles).
        encoder: the fitted encoding.
        schema: the feature schema the encoder produces.
        label_variance: per regression task, the fitting sample's label variance
            (original units).
        shuffle_buffer: default buffer rows of :meth:`stream`.
        label_scaler: applied to the labels of every row read (``labels [n, T]`` ->
            ``[n, T]``: :class:`adatt.data.label_scaling.LabelScaler`), or None.
    """

    def __init__(self, shards: list[Shard], file_schema: FileSchema, encoder: FeatureEncoding,
                 schema: FeatureSchema, label_variance: dict[str, float],
                 shuffle_buffer: int = 131_072,
                 label_scaler: Callable[[np.ndarray], np.ndarray] | None = None):
        self.shards, self.file_schema, self.encoder = shards, file_schema, encoder
        self.schema, self.label_scaler = schema, label_scaler
        self._label_variance, self.shuffle_buffer = label_variance, int(shuffle_buffer)

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    def rows_for(self, rank: int = 0, world: int = 1) -> int:
        """Rows of the shards rank ``rank`` of ``world`` reads."""
        return sum(s.rows for i, s in enumerate(self.shards) if i % world == rank)

    def label_variance(self, schema: FeatureSchema | None = None) -> dict[str, float]:
        """Per regression task, the label variance of the fitting sample."""
        return dict(self._label_variance)

    def encode_rows(self, table: Any, path: Path, row0: int = 0) -> Rows:
        """A record batch of a shard as training rows (``row0``: the file's rows before it)."""
        rows = self.encoder.encode_rows(table, path, self.file_schema, row0)
        if self.label_scaler is None:
            return rows
        return (*rows[:2], self.label_scaler(rows[2]), *rows[3:])  # type: ignore[return-value]

    def stream(self, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
               shuffle_buffer: int | None = None, device: torch.device | str = "cpu",
               read_rows: int = READ_ROWS) -> ShardStream:
        """A shuffled, resumable stream of batches over rank ``rank``'s shards."""
        buf = self.shuffle_buffer if shuffle_buffer is None else shuffle_buffer
        return ShardStream(self, batch_size, seed, rank, world, buf, device, read_rows)


class ShardStream:
    """Batches of one rank's shards, shuffled per epoch, with an exact resumption position.

    See the module docstring for the shuffling. :meth:`epoch_batches` yields an
    epoch's batches (``dense [B, Dd]``, ``cat [B, F]``, ``labels [B, T]`` with NaN
    where unlabelled, ``weight [B]``, ``[B, T]`` (per-task weights) or None, on
    ``device``); :meth:`state_dict` after any batch
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
        self.data = data
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
            verify(shard.path)  # once per shard per process, when a manifest lists it
            if self.shard_pos + 1 < len(self.order):  # hash the next shard meanwhile
                prefetch(self.data.shards[self.order[self.shard_pos + 1]].path)
            pf = open_shard(shard.path)
            self._it = pf.iter_batches(batch_size=self.read_rows, row_groups=[rg],
                                       columns=self.data.file_schema.columns, use_threads=False)
            self._it_row = 0
        while True:
            rb = next_batch(self._it, shard.path, rg)
            if rb is None:
                raise DataError(f"{shard.path}: row group {rg} ended after {self._it_row} rows; "
                                f"its footer says {shard.row_groups[rg]} (file changed?)")
            start, self._it_row = self._it_row, self._it_row + rb.num_rows
            if self._it_row > self.row_in_rg:  # skip rows read before a resumption
                rb = rb.slice(self.row_in_rg - start)
                row0 = sum(shard.row_groups[:rg]) + self.row_in_rg
                rows = self.data.encode_rows(rb, shard.path, row0)
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
