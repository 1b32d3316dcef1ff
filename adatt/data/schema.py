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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["TaskSpec", "FeatureSchema"]

TaskKind = Literal["binary", "regression"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its label name and kind (``binary`` or ``regression``)."""

    name: str
    kind: TaskKind = "binary"

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "regression"):
            raise ValueError(
                f"task {self.name!r}: kind must be binary or regression, got {self.kind!r}"
            )


@dataclass(frozen=True)
class FeatureSchema:
    """Columns of a data set as the models see them.

    Args:
        dense: names of the dense float columns, in batch column order.
        categorical: names of the categorical fields, in batch column order.
        cardinalities: per categorical field, the number of distinct indices
            (index 0 is reserved for unknown / missing values).
        tasks: the tasks, in label column order.
    """

    dense: tuple[str, ...]
    categorical: tuple[str, ...]
    cardinalities: tuple[int, ...]
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        if len(self.categorical) != len(self.cardinalities):
            raise ValueError("one cardinality per categorical field is required")
        if not self.tasks:
            raise ValueError("a schema needs at least one task")

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(
            dense=tuple(d["dense"]),
            categorical=tuple(d["categorical"]),
            cardinalities=tuple(int(c) for c in d["cardinalities"]),
            tasks=tuple(TaskSpec(**t) for t in d["tasks"]),
        )
