"""Train / validation / test splits of one data set, with the schema that describes them.

Every data source (:mod:`adatt.data.census`, :mod:`adatt.data.simulator`,
:mod:`adatt.data.mmoe_synthetic`, :mod:`adatt.data.files`) returns a
:class:`Splits`; :func:`adatt.data.config.load_splits` dispatches to them.

Example:
    >>> import torch
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> schema = FeatureSchema(("x",), (), (), (TaskSpec("y", "regression"),))
    >>> ds = TensorDataset(torch.zeros(4, 1), torch.zeros(4, 0, dtype=torch.long), torch.ones(4, 1))
    >>> s = Splits("toy", schema, ds, ds, ds, {"seed": 0})
    >>> s.sizes()
    {'train': 4, 'valid': 4, 'test': 4}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema

__all__ = ["Splits", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Splits:
    """Three in-memory data sets sharing one schema.

    Args:
        name: the data set's name (``census``, ``sim:group1``, ...).
        schema: columns and tasks of every split.
        train, valid, test: the splits; ``dense [N, Dd]``, ``cat [N, F]``,
            ``labels [N, T]``, ``weight [N]`` or None.
        info: free-form facts about how the splits were made (seed, cache key,
            scaler statistics, ...); JSON-serialisable.
    """

    name: str
    schema: FeatureSchema
    train: TensorDataset
    valid: TensorDataset
    test: TensorDataset
    info: dict[str, Any] = field(default_factory=dict)

    def items(self) -> Iterator[tuple[str, TensorDataset]]:
        """``(split name, data set)`` for train, valid, test in that order."""
        yield from (("train", self.train), ("valid", self.valid), ("test", self.test))

    def sizes(self) -> dict[str, int]:
        """Row count per split."""
        return {k: len(v) for k, v in self.items()}
