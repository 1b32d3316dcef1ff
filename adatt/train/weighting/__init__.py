"""Loss-weighting methods, one per file (file name = CLI name), and their factory.

Any method combines with any model: a method only sees the per-task losses
``[T]`` and the shared parameters. See :class:`~adatt.train.weighting.base.Weighting`.

Example:
    >>> w = create_weighting("dwa", num_tasks=3, temperature=2.0)
    >>> w.name, sorted(WEIGHTINGS)
    ('dwa', ['dwa', 'equal', 'gradnorm', 'pcgrad', 'uncertainty'])
    >>> create_weighting("nope", 3)
    Traceback (most recent call last):
    ...
    ValueError: unknown weighting 'nope'; known: dwa, equal, gradnorm, pcgrad, uncertainty
"""

from __future__ import annotations

from typing import Any

from .base import Weighting
from .dwa import DWA
from .equal import Equal
from .gradnorm import GradNorm
from .pcgrad import PCGrad
from .uncertainty import Uncertainty

__all__ = [
    "WEIGHTINGS",
    "Weighting",
    "Equal",
    "Uncertainty",
    "GradNorm",
    "DWA",
    "PCGrad",
    "create_weighting",
]


def _build_registry(*classes: type[Weighting]) -> dict[str, type[Weighting]]:
    registry: dict[str, type[Weighting]] = {}
    for cls in classes:
        if cls.name in registry:
            raise RuntimeError(f"weighting name {cls.name!r} registered twice")
        registry[cls.name] = cls
    return registry


WEIGHTINGS: dict[str, type[Weighting]] = _build_registry(Equal, Uncertainty, GradNorm, DWA, PCGrad)


def create_weighting(name: str, num_tasks: int, **kwargs: Any) -> Weighting:
    """Build the weighting method registered as ``name``.

    Args:
        name: a key of :data:`WEIGHTINGS`.
        num_tasks: T.
        **kwargs: the method's typed constructor arguments (``task_weights``,
            ``task_kinds``, and its own hyper-parameters); an unknown one is a
            ``TypeError`` from the constructor.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known: {', '.join(sorted(WEIGHTINGS))}")
    return WEIGHTINGS[name](num_tasks, **kwargs)
