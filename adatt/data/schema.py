"""Feature and task schema shared by every data source.

A schema says what a batch holds: named dense (float) columns, named
categorical fields with their cardinalities, and the tasks (labels) with
their kind. Models are built from it (``dense_dim``, ``cat_cardinalities``,
``num_tasks``); losses and metrics read the task kinds.

Example:
    >>> s = FeatureSchema(dense=("age",), categorical=("sex",), cardinalities=(3,),
    ...                   tasks=(TaskSpec("income", "binary"),))
    >>> s.num_tasks, s.dense_dim, s.task_names
    (1, 1, ['income'])
    >>> buy = TaskSpec("buy", missing="mask", condition="income")
    >>> s2 = FeatureSchema((), (), (), (TaskSpec("income"), buy))
    >>> s2.partial, s2.to_dict()["tasks"][1]
    (True, {'name': 'buy', 'kind': 'binary', 'missing': 'mask', 'condition': 'income'})
    >>> FeatureSchema.from_dict(s2.to_dict()) == s2
    True
    >>> s3 = FeatureSchema((), ("sex",), (3,), (TaskSpec("income"),),
    ...                    multi_valued=(MultiValued("tags", 10, "mean", 4),))
    >>> s3.cat_width, s3.bag_specs, "multi_valued" in s.to_dict()
    (5, [(10, 'mean', 4)], False)
    >>> FeatureSchema.from_dict(s3.to_dict()) == s3
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["TaskSpec", "FeatureSchema", "MissingRule", "MultiValued", "POOLINGS"]

TaskKind = Literal["binary", "regression"]


MissingRule = Literal["error", "mask"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its label name and kind, and how its labels are observed.

    Args:
        name: the label (and task) name.
        kind: ``binary`` (BCE on logits) or ``regression`` (squared error).
        missing: ``error`` (every row has a label; a missing one is a data
            error) or ``mask`` (a row without a label is unlabelled for this
            task: it adds nothing to the task's loss, gradient or metrics).
            Unlabelled entries travel as NaN in ``labels [B, T]``.
        condition: the name of another *binary* task; this task is defined
            only on rows where that label is 1 (elsewhere its label is NaN).
        weight: the name of a per-task sample-weight column, multiplied into
            the per-row weight for this task's loss and metrics.
        center, scale: regression label standardisation fitted on the
            training split: the model learns ``(y - center) / scale`` and
            predictions and errors are reported as ``center + scale * output``
            (``0`` and ``1``: labels used as they are).

    A task may hold NaN labels (is *partial*) when ``missing`` is ``mask`` or
    it has a ``condition``.
    """

    name: str
    kind: TaskKind = "binary"
    missing: MissingRule = "error"
    condition: str | None = None
    weight: str | None = None
    center: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "regression"):
            raise ValueError(
                f"task {self.name!r}: kind must be binary or regression, got {self.kind!r}"
            )
        if self.missing not in ("error", "mask"):
            raise ValueError(
                f"task {self.name!r}: missing must be error or mask, got {self.missing!r}"
            )
        if self.condition == self.name:
            raise ValueError(f"task {self.name!r}: a task cannot be its own condition")
        if not (self.scale > 0 and math.isfinite(self.scale) and math.isfinite(self.center)):
            raise ValueError(
                f"task {self.name!r}: label center/scale must be finite with scale > 0, "
                f"got {self.center!r}/{self.scale!r}"
            )
        if self.kind == "binary" and (self.center, self.scale) != (0.0, 1.0):
            raise ValueError(f"task {self.name!r}: binary labels are not standardised")

    @property
    def partial(self) -> bool:
        """True when some rows may have no label for this task (NaN)."""
        return self.missing == "mask" or self.condition is not None


#: how a multi-valued feature's list is pooled
POOLINGS = ("sum", "mean")


@dataclass(frozen=True)
class MultiValued:
    """One multi-valued categorical feature (a list of categories per row).

    Args:
        name: the column name.
        cardinality: the number of indices (index 0: unknown values).
        pooling: ``sum`` or ``mean`` of the list's embedding rows; an empty list
            pools to zeros.
        max_length: the list's slot width in ``cat`` (longer lists are cut or
            refused when read, see :mod:`adatt.data.files`).

    In a batch, the multi-valued features ride in ``cat [B, F + L]`` after the F
    single-valued fields: feature ``m`` holds ``max_length`` columns with its
    indices, padded with -1 (L is the sum of the ``max_length``).
    """

    name: str
    cardinality: int
    pooling: str = "mean"
    max_length: int = 50

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"multi-valued {self.name!r}: pooling must be sum or mean, "
                             f"got {self.pooling!r}")
        if self.cardinality < 1 or self.max_length < 1:
            raise ValueError(f"multi-valued {self.name!r}: cardinality and max_length "
                             "must be >= 1")


_TASK_DEFAULTS = {
    "missing": "error", "condition": None, "weight": None, "center": 0.0, "scale": 1.0
}


@dataclass(frozen=True)
class FeatureSchema:
    """Columns of a data set as the models see them.

    Args:
        dense: names of the dense float columns, in batch column order.
        categorical: names of the categorical fields, in batch column order.
        cardinalities: per categorical field, the number of distinct indices
            (index 0 is reserved for unknown / missing values).
        tasks: the tasks, in label column order.
        multi_valued: the multi-valued categorical features, whose padded index
            lists follow the single-valued fields in ``cat`` (:class:`MultiValued`).
    """

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    tasks: tuple[TaskSpec, ...]
    multi_valued: tuple[MultiValued, ...] = ()

    def __post_init__(self) -> None:
        if len(self.categorical) != len(self.cardinalities):
            raise ValueError("one cardinality per categorical field is required")
        if not self.tasks:
            raise ValueError("a schema needs at least one task")
        kinds = {t.name: t.kind for t in self.tasks}
        for t in self.tasks:
            if t.condition is not None and kinds.get(t.condition) != "binary":
                what = "unknown" if t.condition not in kinds else "not binary"
                raise ValueError(
                    f"task {t.name!r}: condition {t.condition!r} must name another binary "
                    f"task ({what})"
                )

    @property
    def cat_width(self) -> int:
        """Columns of ``cat``: the single-valued fields plus every multi-valued slot."""
        return len(self.categorical) + sum(m.max_length for m in self.multi_valued)

    @property
    def bag_specs(self) -> list[tuple[int, str, int]]:
        """``(cardinality, pooling, max_length)`` per multi-valued feature: the models'
        ``multi_valued`` option."""
        return [(m.cardinality, m.pooling, m.max_length) for m in self.multi_valued]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def dense_dim(self) -> int:
        return len(self.dense)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def task_kinds(self) -> list[str]:
        return [t.kind for t in self.tasks]

    @property
    def partial(self) -> bool:
        """True when any task may hold NaN (unlabelled) entries."""
        return any(t.partial for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; task keys left at their defaults are omitted (saved
        schemas of fully-labelled, unstandardised data keep their old form)."""
        d = asdict(self)
        d["tasks"] = [
            {k: v for k, v in t.items() if k in ("name", "kind") or v != _TASK_DEFAULTS[k]}
            for t in d["tasks"]
        ]
        if not self.multi_valued:  # saved schemas without them keep their old form
            del d["multi_valued"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(
            dense=tuple(d["dense"]),
            categorical=tuple(d["categorical"]),
            cardinalities=tuple(int(c) for c in d["cardinalities"]),
            tasks=tuple(TaskSpec(**t) for t in d["tasks"]),
            multi_valued=tuple(MultiValued(**m) for m in d.get("multi_valued", ())),
        )
