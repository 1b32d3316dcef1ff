"""Regression labels standardised on the training split (``data.standardize_labels``).

Notation: N rows, T tasks.

Every source's splits pass through :func:`standardize_labels` in
:func:`adatt.data.config.load_splits` (``data.standardize_labels``, default
true), so each source gets it the same way. Per regression task:

* ``center``: the mean of the training split's labelled rows (NaN entries,
  unlabelled, are ignored); ``scale``: their *population* standard deviation
  (``ddof=0``, as the dense features are scaled), or 1 when the column is
  constant or nearly so (``std <= 1e-6 * max(1, |mean|)``: then the labels are
  only shifted); ``0`` / ``1`` for a task with no labelled training row.
  Row weights play no part.
* the labels of every split become ``(y - center) / scale`` (float64 arithmetic,
  stored float32; NaN stays NaN), and the schema's
  :class:`~adatt.data.schema.TaskSpec` records ``center`` / ``scale``, so they are
  saved with it in the run's ``data.json``.
* streamed shards (``source: stream``): the statistics of the encoding's fitting
  sample (the first ``ceil(fit_rows / shards)`` rows of every training shard, the
  labels as the stream encodes them); each training batch is transformed as it is
  read; validation and test, in memory, like any other split.

The models learn the standardised labels; what users read is in the original
units: reported MSE is multiplied by ``scale**2``, MAE by ``scale``
(:func:`adatt.train.evaluation.in_original_units`), predictions and exported
models output ``center + scale * output``
(:class:`adatt.serve.serving.ServingModel`). Binary tasks are never touched.

With ``data.standardize_labels: false`` the labels are used as they are and
:func:`warn_unscaled_labels` warns (one line per task) when a regression task's
training labels are far from standard: standard deviation outside
``[1/3, 3]`` or mean farther than 3 from 0.

Example:
    >>> import torch
    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> schema = FeatureSchema((), (), (), (TaskSpec("click"), TaskSpec("time", "regression")))
    >>> def ds(y):
    ...     return TensorDataset(torch.zeros(len(y), 0), torch.zeros(len(y), 0, dtype=torch.long),
    ...                          torch.tensor(y))
    >>> s = Splits("toy", schema, ds([[0, 2.0], [1, 6.0], [0, float("nan")]]),
    ...            ds([[1, 8.0]]), ds([[0, 4.0]]))
    >>> z = standardize_labels(s)
    >>> [(t.center, t.scale) for t in z.schema.tasks]
    [(0.0, 1.0), (4.0, 2.0)]
    >>> z.train.labels.tolist(), z.valid.labels.tolist()
    ([[0.0, -1.0], [1.0, 1.0], [0.0, nan]], [[1.0, 2.0]])
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema
from adatt.data.shard_stream import ParquetShards
from adatt.data.shards import READ_ROWS, next_batch, open_shard
from adatt.data.splits import Splits

__all__ = [
    "CONSTANT_TOLERANCE",
    "label_statistics",
    "scaled_schema",
    "LabelScaler",
    "standardize_labels",
    "warn_unscaled_labels",
]

#: a label column whose std is at most this times ``max(1, |mean|)`` keeps scale 1
CONSTANT_TOLERANCE = 1e-6
# the warning's bounds with standardisation off: std outside [1/3, 3], |mean| > 3
_STD_RANGE = (1 / 3, 3.0)
_MEAN_LIMIT = 3.0


def label_statistics(labels: Tensor | np.ndarray, schema: FeatureSchema) -> dict[str, tuple]:
    """Per regression task of ``schema``: ``(labelled rows, mean, population std)`` of
    its column of ``labels [N, T]`` over the non-NaN entries, in float64
    (``(0, nan, nan)`` when none is labelled).

    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("y", "regression"),))
    >>> label_statistics(np.array([[1.0], [3.0], [np.nan]]), s)
    {'y': (2, 2.0, 1.0)}
    """
    y_all = labels.double().cpu().numpy() if isinstance(labels, Tensor) else labels
    out: dict[str, tuple] = {}
    for j, task in enumerate(schema.tasks):
        if task.kind != "regression":
            continue
        y = np.asarray(y_all[:, j], dtype=np.float64)
        y = y[~np.isnan(y)]
        if y.size == 0:
            out[task.name] = (0, math.nan, math.nan)
        else:
            out[task.name] = (int(y.size), float(y.mean()), float(y.std()))
    return out


def scaled_schema(schema: FeatureSchema, stats: Mapping[str, tuple]) -> FeatureSchema:
    """``schema`` with ``center`` / ``scale`` of each regression task set from
    :func:`label_statistics` (module docstring: the constant-column and no-label rules)."""
    tasks = []
    for task in schema.tasks:
        if task.kind == "regression" and task.name in stats:
            n, mean, std = stats[task.name]
            center, scale = (0.0, 1.0) if n == 0 else (mean, std)
            if n and not std > CONSTANT_TOLERANCE * max(1.0, abs(mean)):
                scale = 1.0  # a constant column: only shifted
            task = dataclasses.replace(task, center=float(center), scale=float(scale))
        tasks.append(task)
    return dataclasses.replace(schema, tasks=tuple(tasks))


class LabelScaler:
    """``(y - center) / scale`` on the regression columns of ``labels [N, T]`` (the
    schema's ``center`` / ``scale``); other columns and NaN entries unchanged.

    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("y", "regression", center=1.0, scale=2.0),))
    >>> LabelScaler(s)(np.array([[5.0]], dtype=np.float32)).tolist()
    [[2.0]]
    """

    def __init__(self, schema: FeatureSchema):
        self.columns = [j for j, t in enumerate(schema.tasks)
                        if (t.center, t.scale) != (0.0, 1.0)]
        self.center = np.array([schema.tasks[j].center for j in self.columns])  # [T']
        self.scale = np.array([schema.tasks[j].scale for j in self.columns])  # [T']

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """float32 ``[N, T]`` -> float32 ``[N, T]`` (a new array)."""
        out = np.array(labels, dtype=np.float32, copy=True)
        if self.columns:
            y = labels[:, self.columns].astype(np.float64)  # [N, T']
            out[:, self.columns] = (y - self.center) / self.scale  # [N, T'] with [T'] broadcast
        return out

    def tensor(self, labels: Tensor) -> Tensor:
        """The same on a float32 ``[N, T]`` tensor (a new tensor, same device)."""
        return torch.from_numpy(self(labels.cpu().numpy())).to(labels.device)


def _sample_labels(data: ParquetShards, fit_rows: int) -> np.ndarray:
    """``labels [n, T]`` of the fitting sample: the first ``ceil(fit_rows / shards)`` rows
    of every shard, as the stream encodes them (:meth:`ParquetShards.encode_rows`)."""
    per_shard = math.ceil(fit_rows / len(data.shards))
    parts = []
    for shard in data.shards:
        got = 0
        batches = open_shard(shard.path).iter_batches(
            batch_size=min(per_shard, READ_ROWS), columns=data.file_schema.columns,
            use_threads=False)
        while got < per_shard and (rb := next_batch(batches, shard.path)) is not None:
            rb = rb.slice(0, per_shard - got)
            parts.append(data.encode_rows(rb, shard.path, got)[2])  # labels [b, T]
            got += rb.num_rows
    return np.concatenate(parts)  # [n, T]


def _train_statistics(splits: Splits, fit_rows: int | None) -> dict[str, tuple]:
    train: Any = splits.train
    if isinstance(train, ParquetShards):
        labels = _sample_labels(train, fit_rows or len(train))
        return label_statistics(labels, splits.schema)
    return label_statistics(train.labels, splits.schema)


def standardize_labels(splits: Splits, fit_rows: int | None = None) -> Splits:
    """``splits`` with every regression label standardised on the training split
    (module docstring); the splits themselves when the schema has no regression task.

    Args:
        splits: the loaded splits (raw labels); not modified.
        fit_rows: streamed training shards: the fitting sample's rows
            (default: every row).

    Returns:
        New :class:`Splits` (same features) whose schema holds ``center`` / ``scale``.
    """
    if "regression" not in splits.schema.task_kinds:
        return splits
    if any((t.center, t.scale) != (0.0, 1.0) for t in splits.schema.tasks):
        raise ValueError("these splits' labels are standardised already")
    schema = scaled_schema(splits.schema, _train_statistics(splits, fit_rows))
    scaler = LabelScaler(schema)

    def scaled(ds: TensorDataset) -> TensorDataset:
        return TensorDataset(ds.dense, ds.cat, scaler.tensor(ds.labels), ds.weight)

    train: Any = splits.train
    if isinstance(train, ParquetShards):
        train = copy.copy(train)  # the same shards and encoding; labels scaled as read
        train.schema, train.label_scaler = schema, scaler
    else:
        train = scaled(train)
    return dataclasses.replace(splits, schema=schema, train=train, valid=scaled(splits.valid),
                               test=scaled(splits.test))


def warn_unscaled_labels(splits: Splits, fit_rows: int | None = None) -> None:
    """Warn, one line per task, when a regression task's training labels are far from
    standard (std outside ``[1/3, 3]`` or ``|mean| > 3``): used with
    ``data.standardize_labels: false``."""
    if "regression" not in splits.schema.task_kinds:
        return
    for name, (n, mean, std) in _train_statistics(splits, fit_rows).items():
        if n and (not _STD_RANGE[0] <= std <= _STD_RANGE[1] or abs(mean) > _MEAN_LIMIT):
            warnings.warn(
                f"regression task {name!r} is trained on raw labels (mean {mean:.3g}, std "
                f"{std:.3g}; data.standardize_labels=false): expect slow, poor fits; "
                "standardise them (data.standardize_labels=true)", stacklevel=2)
