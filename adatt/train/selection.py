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

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from adatt.config import ConfigError
from adatt.data.schema import FeatureSchema

__all__ = ["Selection", "selection_score"]


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


def selection_score(metrics: dict[str, dict[str, float]], schema: FeatureSchema,
                    metric: str, label_var: dict[str, float] | None = None) -> tuple[float, bool]:
    """(score, higher_is_better) of validation ``metrics`` for checkpoint selection.

    Tasks whose metric is undefined on the validation split (NaN: e.g. a rare task
    with no positive there) are left out of the mean; when every task is undefined
    the score is the worst possible, so it never wins.

    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b")))
    >>> selection_score({"a": {"auc": 0.8}, "b": {"auc": float("nan")}}, s, "auc")
    (0.8, True)
    """
    binary = [t.name for t in schema.tasks if t.kind == "binary"]
    regression = [t.name for t in schema.tasks if t.kind == "regression"]
    if metric == "auc" and not binary:
        metric = "mse"
    if metric in ("auc", "ne", "logloss"):
        if not binary:
            raise ConfigError(f"train.selection.metric={metric} needs a binary task")
        values, higher = [metrics[t][metric] for t in binary], metric == "auc"
    elif metric == "mse":
        if not regression:
            raise ConfigError("train.selection.metric=mse needs a regression task")
        values, higher = [metrics[t]["mse"] for t in regression], False
    else:
        var = label_var or {}
        values = [metrics[t]["ne"] for t in binary]
        values += [metrics[t]["mse"] / max(var.get(t, 1.0), 1e-12) for t in regression]
        higher = False
    finite = [v for v in values if v == v]
    if not finite:
        return (float("-inf") if higher else float("inf")), higher
    return float(np.mean(finite)), higher
