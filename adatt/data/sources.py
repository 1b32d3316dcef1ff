"""Batch sources: where the trainer takes its training batches from, behind one protocol.

Notation: B batch size, N rows of the training split.

A :class:`BatchSource` yields an epoch's batches as ``(index [B], rows)``,
the batch being ``rows.batch(index)`` (:class:`~adatt.data.batch.TensorDataset`),
and carries its own read position for exact resumption. The sources:

* :class:`InMemorySource`: a :class:`~adatt.data.batch.TensorDataset`, each
  epoch a seeded permutation; its position is the trainer's ``(epoch, batch)``.
* :class:`~adatt.data.shard_stream.ShardStream`: Parquet shards streamed
  through a shuffle buffer (:func:`adatt.data.stream.load_stream`).
* :class:`adatt.train.distributed.RankShards`: each data-parallel process
  streams only its own shard files (``data.rank_shards``).

:func:`batch_source` picks the first two for a split's ``train``.

Example:
    >>> import torch
    >>> ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10, 0, dtype=torch.long),
    ...                    torch.arange(10.0)[:, None])
    >>> src = batch_source(ds, batch_size=4, seed=0)
    >>> isinstance(src, BatchSource), src.rows
    (True, 10)
    >>> [len(rows.batch(idx)) for idx, rows in src.indexed_batches(0, start_batch=1, limit=5)]
    [4, 1]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from adatt.data.batch import TensorDataset, regression_label_variance
from adatt.data.schema import FeatureSchema
from adatt.data.shard_stream import ParquetShards, ShardStream

__all__ = ["SourceState", "BatchSource", "InMemorySource", "batch_source"]

# a source's read position as saved in checkpoint.pt (None: the trainer's (epoch, batch) is it)
SourceState = dict[str, Any] | None


@runtime_checkable
class BatchSource(Protocol):
    """What the trainer takes training batches from.

    ``rows``: rows trained per epoch (over all processes).
    ``indexed_batches(epoch, start_batch, limit)``: ``(index [B], rows)`` per batch
    of ``epoch`` from batch ``start_batch`` on, at most ``limit`` rows in all; the
    batch is ``rows.batch(index)``.
    ``label_variance(schema)``: per regression task, the training labels' variance
    (the loss-based selection metric's scale).
    ``state_dict()`` / ``load_state_dict(state)``: the exact read position after the
    last batch yielded, and continuing from one (None: nothing to save / load).
    """

    @property
    def rows(self) -> int: ...

    def indexed_batches(self, epoch: int, start_batch: int = 0,
                        limit: int | None = None) -> Iterator[tuple[Tensor, TensorDataset]]: ...

    def label_variance(self, schema: FeatureSchema) -> dict[str, float]: ...

    def state_dict(self) -> SourceState: ...

    def load_state_dict(self, state: SourceState) -> None: ...


class InMemorySource:
    """The trainer's in-memory batches: each epoch a permutation drawn from a
    generator seeded by ``seed * 1_000_003 + epoch``; batches are slices of it.

    The position is the trainer's ``(epoch, batch)``: no state of its own.
    """

    def __init__(self, data: TensorDataset, batch_size: int, seed: int,
                 device: torch.device | str):
        self.data, self.batch_size, self.seed = data.to(device), batch_size, seed
        self.device = torch.device(device)
        self.rows = len(self.data)

    def indexed_batches(self, epoch: int, start_batch: int = 0,
                        limit: int | None = None) -> Iterator[tuple[Tensor, TensorDataset]]:
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

    def load_state_dict(self, state: SourceState) -> None:
        return None


def batch_source(train: TensorDataset | ParquetShards, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0,
                 world: int = 1) -> InMemorySource | ShardStream:
    """The trainer's source of training batches for ``splits.train`` (a :class:`BatchSource`).

    An in-memory :class:`TensorDataset` gives an :class:`InMemorySource`
    (``rank`` / ``world`` must be 0 / 1: every rank sees the same permutation);
    Parquet shards give rank ``rank``'s :class:`~adatt.data.shard_stream.ShardStream`.
    """
    if isinstance(train, ParquetShards):
        return train.stream(batch_size, seed, rank, world, device=device)
    if world != 1 or rank != 0:
        raise ValueError("an in-memory training set is split between ranks by its caller")
    return InMemorySource(train, batch_size, seed, device)
