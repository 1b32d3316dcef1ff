"""Checkpoint selection on the validation split: the score and the typed selection state.

:func:`selection_score` turns validation metrics into one number
(``train.selection.metric``); a :class:`Selection` keeps the best score, where
it was reached, the patience counter and whether the last evaluation improved.
A single run holds one; the seed ensemble holds one per copy.

Example:
    >>> sel = Selection()
    >>> scores = [0.7, 0.8, 0.75, 0.79]
    >>> [sel.update(s, higher=True, at={"eval": i}, patience=2) for i, s in enumerate(scores)]
    [True, True, False, False]
    >>> sel.best_score, sel.best_eval, sel.bad_evals, sel.done
    (0.8, {'eval': 1}, 2, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from adatt.config import ConfigError
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema
from adatt.train.rundir import RunError

__all__ = ["Selection", "selection_score", "one_class_tasks", "warn_one_class",
           "labelled_counts", "check_labelled"]


@dataclass
class Selection:
    """The validation-based selection state of one model.

    Attributes:
        best_score: the best selection score so far (None before the first evaluation).
        best_eval: where it was reached: ``{eval, epoch, step, examples}``.
        bad_evals: evaluations since the last improvement (the patience counter).
        improved: whether the last :meth:`update` improved on ``best_score``.
        done: the patience ran out; training stops (a copy of an ensemble: its
            selection stops).
    """

    best_score: float | None = None
    best_eval: dict[str, int] | None = None
    bad_evals: int = 0
    improved: bool = False
    done: bool = False

    def update(self, score: float, higher: bool, at: dict[str, int],
               patience: int | None) -> bool:
        """Take one evaluation's ``score`` (``higher`` is better, or lower) reached
        ``at`` an evaluation; returns whether it improved."""
        best = self.best_score
        self.improved = best is None or (score > best if higher else score < best)
        if self.improved:
            self.best_score, self.best_eval, self.bad_evals = score, dict(at), 0
        else:
            self.bad_evals += 1
            if patience is not None and self.bad_evals >= patience:
                self.done = True
        return self.improved

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Selection:
        """From :meth:`state_dict` (or a checkpoint's flat state; other keys ignored)."""
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def one_class_tasks(data: Any, schema: FeatureSchema) -> list[str]:
    """The binary tasks whose labels in ``data`` (rows of positive weight) are all one
    class: their AUC and NE are undefined there. ``data`` without in-memory
    ``labels`` (``[N, T]``) has none.

    >>> import torch
    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b")))
    >>> d = TensorDataset(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.long),
    ...                   torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]))
    >>> one_class_tasks(d, s)
    ['b']
    """
    labels = getattr(data, "labels", None)
    if labels is None:
        return []
    weight = getattr(data, "weight", None)
    out = []
    for t, task in enumerate(schema.tasks):
        if task.kind == "binary":
            keep = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
            if weight is not None:
                keep &= (weight if weight.dim() == 1 else weight[:, t]) > 0
            if task.partial:
                keep &= ~torch.isnan(labels[:, t])  # unlabelled rows are no class
            y = labels[keep, t]  # [N']
            if y.numel() == 0 or bool((y == y[0]).all()):
                out.append(task.name)
    return out


def labelled_counts(data: Any, schema: FeatureSchema) -> dict[str, int] | None:
    """Per task, the rows of ``data`` with a label (not NaN); None when ``data`` holds
    no in-memory ``labels [N, T]`` (streamed shards).

    >>> import torch
    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b", missing="mask")))
    >>> d = TensorDataset(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.long),
    ...                   torch.tensor([[0.0, float("nan")], [1.0, 1.0], [0.0, float("nan")]]))
    >>> labelled_counts(d, s)
    {'a': 3, 'b': 1}
    """
    labels = getattr(data, "labels", None)
    if labels is None:
        return None
    n = (~torch.isnan(labels)).sum(dim=0).tolist()  # [N,T] -> [T]
    return {t.name: int(k) for t, k in zip(schema.tasks, n, strict=True)}


def check_labelled(splits: Any, schema: FeatureSchema) -> dict[str, dict[str, int]]:
    """The labelled rows per split and task of a schema with partial tasks, checked:
    ``{split: {task: count}}`` (``{}`` for a fully-labelled schema: nothing to count).

    A task with no labelled row in the training split cannot be trained, and one
    with none in the validation split leaves checkpoint selection without its
    metric: both are a one-line :class:`~adatt.data.errors.DataError` naming the
    task (never a NaN metric later). No labelled row in the test split is
    allowed: its test metrics are NaN with ``count`` 0. Splits not held in
    memory (streamed shards) are not counted.

    >>> import torch
    >>> from adatt.data.batch import TensorDataset
    >>> from adatt.data.schema import TaskSpec
    >>> from adatt.data.splits import Splits
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b", missing="mask")))
    >>> d = TensorDataset(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.long),
    ...                   torch.tensor([[0.0, float("nan")], [1.0, float("nan")]]))
    >>> check_labelled(Splits("x", s, d, d, d), s)
    Traceback (most recent call last):
    adatt.data.errors.DataError: task 'b' has no labelled row in the training split ...
    """
    if not schema.partial:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "valid", "test"):
        c = labelled_counts(getattr(splits, split, None), schema)
        if c is not None:
            counts[split] = c
    for split, what, why in (
        ("train", "training", "it cannot be trained"),
        ("valid", "validation", "checkpoint selection needs its validation metrics"),
    ):
        for task, n in counts.get(split, {}).items():
            if n == 0:
                raise DataError(f"task {task!r} has no labelled row in the {what} split ({why}); "
                                "label some of its rows there or remove the task")
    return counts


def warn_one_class(tasks: Collection[str], split: str, metric: str) -> None:
    """The warning for one-class ``tasks`` of ``split`` under ``train.selection.metric``."""
    for task in tasks:
        rule = ("it is left out of the selection score's mean"
                if metric in ("auc", "ne", "loss") else "its logloss still counts")
        warnings.warn(f"task {task!r} has one class in the {split} split: its AUC and NE are "
                      f"undefined there; {rule} (train.selection.metric={metric})",
                      stacklevel=2)


def selection_score(metrics: dict[str, dict[str, float]], schema: FeatureSchema,
                    metric: str, label_var: dict[str, float] | None = None,
                    one_class: Collection[str] = ()) -> tuple[float, bool]:
    """(score, higher_is_better) of validation ``metrics`` for checkpoint selection.

    The selection rule for tasks with one class on the validation split
    (``one_class``, see :func:`one_class_tasks`): their AUC and NE are undefined,
    so ``auc``, ``ne`` and ``loss`` selection average over the other tasks;
    ``logloss`` and ``mse`` selection keep every task. When every task is
    undefined the score is the worst possible, so it never wins. Any other
    non-finite metric (a model whose outputs are NaN or infinite) is a
    :class:`~adatt.train.rundir.RunError`: never a selected score.

    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b")))
    >>> ms = {"a": {"auc": 0.8, "logloss": 0.3}, "b": {"auc": float("nan"), "logloss": 0.1}}
    >>> selection_score(ms, s, "auc", one_class=["b"])
    (0.8, True)
    >>> ms["a"]["logloss"] = float("nan")
    >>> selection_score(ms, s, "auc", one_class=["b"])
    Traceback (most recent call last):
    adatt.train.rundir.RunError: non-finite validation logloss of task 'a' (the model's ...
    """
    binary = [t.name for t in schema.tasks if t.kind == "binary"]
    regression = [t.name for t in schema.tasks if t.kind == "regression"]
    for t in binary + regression:  # outputs that are not finite: never silently selected
        m = "logloss" if t in binary else "mse"
        v = metrics[t].get(m, 0.0)
        if not np.isfinite(v):
            raise RunError(f"non-finite validation {m} of task {t!r} (the model's outputs "
                           "are not finite)")
    if metric == "auc" and not binary:
        metric = "mse"
    defined = [t for t in binary if t not in one_class]
    if metric in ("auc", "ne", "logloss"):
        if not binary:
            raise ConfigError(f"train.selection.metric={metric} needs a binary task")
        tasks = binary if metric == "logloss" else defined
        pairs, higher = [(t, metrics[t][metric]) for t in tasks], metric == "auc"
    elif metric == "mse":
        if not regression:
            raise ConfigError("train.selection.metric=mse needs a regression task")
        pairs, higher = [(t, metrics[t]["mse"]) for t in regression], False
    else:
        var = label_var or {}
        pairs = [(t, metrics[t]["ne"]) for t in defined]
        pairs += [(t, metrics[t]["mse"] / max(var.get(t, 1.0), 1e-12)) for t in regression]
        higher = False
    bad = [t for t, v in pairs if not np.isfinite(v)]
    if bad:
        raise RunError(f"non-finite validation {metric} of task {bad[0]!r} (a task with one "
                       "class on the validation split has no AUC or NE)")
    values = [v for _, v in pairs]
    if not values:
        return (float("-inf") if higher else float("inf")), higher
    return float(np.mean(values)), higher
