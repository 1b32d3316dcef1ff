"""One evaluation: every metric of every task over a split, for any recipe's model.

Notation: N rows of the split, T tasks, S ensemble copies, W processes.

:func:`evaluate` scores a :class:`~adatt.data.batch.TensorDataset` in order,
in batches of ``batch_size`` rows (``batch_size // S`` for an ensemble of S
copies, whose logits are ``[S, B, T]``), and accumulates the metrics of
:class:`~adatt.train.metrics.MetricAccumulator` (or its ensemble form).

Distributed (a DDP run, or the TorchRec recipe): each rank scores the
contiguous rows :func:`~adatt.train.distributed.row_range` ``(N, r, W)`` in
batches of ``batch_size``; every rank makes the same number of forward calls
(a rank with fewer batches scores a stand-in row that counts for nothing), so
models whose forward is itself collective (TorchRec's sharded tables) work;
the logits are gathered, rank 0 accumulates them in the single-process batch
order and broadcasts the metrics, so every rank takes the same decisions.

Metrics are over each task's labelled rows (NaN labels of partial tasks count
nowhere; ``count`` is the labelled rows); a binary task with a binary
``condition`` also reports the chained metrics
:data:`~adatt.train.metrics.CHAINED_METRICS` (``ctcvr_auc``, ``ctcvr_ne``, ...).

Example:
    >>> import torch
    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> schema = FeatureSchema(("x",), (), (), (TaskSpec("y", "regression"),))
    >>> data = TensorDataset(torch.ones(5, 1), torch.zeros(5, 0, dtype=torch.long),
    ...                      torch.zeros(5, 1))
    >>> class Twice(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.scale = torch.nn.Parameter(torch.tensor(2.0))
    ...     def forward(self, dense, cat):
    ...         return self.scale * dense                    # [B, 1]
    >>> evaluate(Twice(), data, schema, batch_size=2)["y"]["mse"]
    4.0
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from adatt.data.schema import FeatureSchema
from adatt.train import distributed as ddp
from adatt.train.metrics import EnsembleMetricAccumulator, MetricAccumulator

__all__ = ["evaluate", "in_original_units"]


def _device(model: Any) -> torch.device:
    """``model.device`` when it has one (a sharded model), else its first parameter's."""
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(iter(model.parameters())).device


@torch.no_grad()
def evaluate(model: Any, data: Any, schema: FeatureSchema, batch_size: int = 8192,
             bf16: bool = False, *, params: dict[str, Tensor] | None = None,
             distributed: bool | None = None) -> Any:
    """Every metric of every task over the whole of ``data``.

    Args:
        model: ``model(dense [B,Dd], cat [B,F])`` -> logits ``[B,T]``; or an
            :class:`~adatt.train.ensemble.EnsembleModel` (it has ``num_copies``)
            giving ``[S,B,T]``. Put in eval mode for the pass.
        data: the split (``len`` and ``batch(slice)``).
        schema: the data's schema (task names and kinds).
        batch_size: rows per forward call (an ensemble: ``max(1, batch_size // S)``).
        bf16: run the forward under bfloat16 autocast.
        params: an ensemble's stacked parameters to score (default its own).
        distributed: a collective call over the default process group (default:
            :func:`~adatt.train.distributed.is_active`); every rank must make it.

    Returns:
        ``{task: {metric: value}}``; for an ensemble, one such dict per copy.
        Regression errors are in the labels' original units (:func:`in_original_units`).
    """
    copies = getattr(model, "num_copies", None)
    rows = batch_size if copies is None else max(1, batch_size // copies)
    conditions = {t.name: t.condition for t in schema.tasks if t.condition is not None}
    acc = (MetricAccumulator if copies is None else EnsembleMetricAccumulator)(
        schema.task_names, schema.task_kinds, conditions)
    extra = () if params is None else (params,)
    device = _device(model)
    distributed = ddp.is_active() if distributed is None else distributed
    w, r = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    n = len(data)
    was_training = getattr(model, "training", True)
    model.train(False)

    def forward(batch: Any) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(batch.dense, batch.cat, *extra).float()  # [B,T] | [S,B,T]

    if w == 1:
        for s in range(0, n, rows):
            b = data.batch(slice(s, s + rows)).to(device)
            acc.update(forward(b), b.labels, b.weight)
        model.train(was_training)
        return in_original_units(acc.compute(), schema)

    ranges = [ddp.row_range(n, k, w) for k in range(w)]
    start, stop = ranges[r]
    calls = max(math.ceil((hi - lo) / rows) for lo, hi in ranges)  # the same on every rank
    parts = []
    for i in range(calls):
        lo, hi = start + i * rows, min(start + (i + 1) * rows, stop)
        if lo < hi:
            parts.append(forward(data.batch(slice(lo, hi)).to(device)))  # [..,b,T]
        else:  # a stand-in row keeps collective forwards in step; its logits are dropped
            forward(data.batch(slice(0, 1)).to(device))
    model.train(was_training)
    longest = max(hi - lo for lo, hi in ranges)
    lead = () if copies is None else (copies,)
    mine = torch.zeros(*lead, longest, schema.num_tasks, device=device)  # [..,longest,T]
    if parts:
        mine[..., : stop - start, :] = torch.cat(parts, dim=-2)  # [..,B_r,T] into [..,longest,T]
    gathered = ddp.all_gather(mine)  # W x [..,longest,T]
    out: list[Any] = [None]
    if r == 0:
        logits = torch.cat([g[..., : hi - lo, :] for g, (lo, hi) in
                            zip(gathered, ranges, strict=True)], dim=-2)  # [..,N,T]
        for s in range(0, n, rows):
            b = data.batch(slice(s, s + rows)).to(device)
            acc.update(logits[..., s : s + rows, :], b.labels, b.weight)
        out[0] = acc.compute()
    return in_original_units(ddp.broadcast_object(out[0], mine.device), schema)


def in_original_units(metrics: Any, schema: FeatureSchema) -> Any:
    """``metrics`` (``{task: {metric: value}}``, or a list of them) with each
    regression task's errors in its labels' original units: ``mse * scale**2``,
    ``mae * scale`` (the schema's label standardisation, :mod:`adatt.data.label_scaling`).
    The same object when no task is standardised.

    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("y", "regression", center=5.0, scale=2.0),))
    >>> in_original_units({"y": {"mse": 0.5, "mae": 0.5, "count": 3}}, s)
    {'y': {'mse': 2.0, 'mae': 1.0, 'count': 3}}
    """
    scales = {t.name: t.scale for t in schema.tasks if t.kind == "regression" and t.scale != 1}
    if not scales:
        return metrics
    if isinstance(metrics, list):
        return [in_original_units(m, schema) for m in metrics]
    out = dict(metrics)
    for name, s in scales.items():
        m = dict(out[name])
        for key, power in (("mse", 2), ("mae", 1)):
            if key in m:
                m[key] = m[key] * s**power
        out[name] = m
    return out
