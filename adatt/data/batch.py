"""Batches of tensors and in-memory data sets that yield them.

Notation: B batch size, Dd dense width, F categorical fields, T tasks.

A :class:`Batch` holds ``dense [B, Dd] float32``, ``cat [B, F] int64``
(per-field indices, each in ``[0, cardinality)``), ``labels [B, T] float32``
and an optional ``weight [B] float32`` (per-example loss weight).

:class:`TensorDataset` keeps whole columns as tensors and batches by slicing
a shuffled index (no per-row Python objects).

Example:
    >>> import torch
    >>> ds = TensorDataset(torch.zeros(10, 2), torch.zeros(10, 1, dtype=torch.long),
    ...                    torch.ones(10, 3))
    >>> [b.labels.shape[0] for b in ds.batches(4)]
    [4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Batch", "TensorDataset", "regression_label_variance"]


@dataclass
class Batch:
    """One batch: ``dense [B, Dd]``, ``cat [B, F]``, ``labels [B, T]``, ``weight [B]`` or None."""

    dense: Tensor
    cat: Tensor
    labels: Tensor
    weight: Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.dense.to(device),
            self.cat.to(device),
            self.labels.to(device),
            None if self.weight is None else self.weight.to(device),
        )


class TensorDataset:
    """Whole columns held as tensors; batches are slices of a (shuffled) index.

    Args:
        dense: ``[N, Dd]`` float32.
        cat: ``[N, F]`` int64.
        labels: ``[N, T]`` float32.
        weight: ``[N]`` float32 or None.
    """

    def __init__(self, dense: Tensor, cat: Tensor, labels: Tensor, weight: Tensor | None = None):
        n = labels.shape[0]
        for name, t in (("dense", dense), ("cat", cat), ("weight", weight)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows, labels have {n}")
        self.dense = dense.float()
        self.cat = cat.long()
        self.labels = labels.float()
        self.weight = None if weight is None else weight.float()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device | str) -> TensorDataset:
        """The same columns on ``device`` (self when already there)."""
        if self.labels.device == torch.device(device):
            return self
        w = None if self.weight is None else self.weight.to(device)
        return TensorDataset(self.dense.to(device), self.cat.to(device), self.labels.to(device), w)

    def subset(self, index: Tensor) -> TensorDataset:
        """Rows ``index`` as a new data set."""
        w = None if self.weight is None else self.weight[index]
        return TensorDataset(self.dense[index], self.cat[index], self.labels[index], w)

    def batch(self, index: Tensor | slice) -> Batch:
        w = None if self.weight is None else self.weight[index]
        return Batch(self.dense[index], self.cat[index], self.labels[index], w)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches in order, or in a random order drawn from ``generator``."""
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                if drop_last and idx.numel() < batch_size:
                    return
                yield self.batch(idx)
        else:
            for start in range(0, n, batch_size):
                if drop_last and start + batch_size > n:
                    return
                yield self.batch(slice(start, start + batch_size))


def regression_label_variance(data: TensorDataset, schema) -> dict[str, float]:
    """Per regression task of ``schema``, the variance of its labels in ``data``
    (the scale of a normalised MSE)."""
    labels = data.labels
    if bool(torch.isnan(labels).any()):  # partial tasks: the variance of the labelled rows
        var = torch.stack([labels[:, i][~torch.isnan(labels[:, i])].var()
                           for i in range(labels.shape[1])])  # [T]
    else:
        var = labels.var(dim=0)  # [T]
    return {t.name: float(var[i]) for i, t in enumerate(schema.tasks) if t.kind == "regression"}
