"""The non-finite loss guard shared by every recipe (``train.nonfinite``).

Notation: T tasks, S ensemble copies.

A step whose task losses are not all finite (a diverging run, an infinite
learning rate, a bad batch) either stops the run (``stop``, the default) with
a one-line :class:`~adatt.train.rundir.RunError` naming the step and the task
-- before the step updates the weights, so the last checkpoint written is the
last good one -- or, with ``train.nonfinite=skip``, is skipped: no optimizer
update, the batch counted in ``skipped`` (``results.json``:
``nonfinite_skipped``). The check costs one host sync per step.

Example:
    >>> import torch
    >>> g = NonFiniteGuard("skip", ["ctr", "cvr"])
    >>> ok, bad = torch.tensor([0.5, 0.7]), torch.tensor([0.5, float("nan")])
    >>> g.check(ok, step=1), g.check(bad, step=2)
    (False, True)
    >>> g.skipped
    1
    >>> NonFiniteGuard("stop", ["ctr", "cvr"]).check(torch.tensor([float("inf"), 0.1]), step=7)
    Traceback (most recent call last):
    adatt.train.rundir.RunError: non-finite training loss (inf) at step 7 in task 'ctr': ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from adatt.train.rundir import RunError

__all__ = ["NonFiniteGuard"]


class NonFiniteGuard:
    """Checks each step's task losses (``[T]``, or ``[S,T]`` for an ensemble).

    Args:
        mode: ``"stop"`` or ``"skip"`` (``train.nonfinite``).
        task_names: the T task names, for the message.
        copy_names: an ensemble's S copy names (e.g. ``seed 3``), for the message.
        skipped: the count carried over from a resumed run.
    """

    def __init__(self, mode: str, task_names: Sequence[str],
                 copy_names: Sequence[str] | None = None, skipped: int = 0) -> None:
        self.mode, self.task_names, self.copy_names = mode, list(task_names), copy_names
        self.skipped = skipped

    def check(self, losses: Tensor, step: int) -> bool:
        """Whether the ``step``'s batch is skipped; raises :class:`RunError` under ``stop``."""
        finite = torch.isfinite(losses.detach())  # [T] | [S,T]
        if bool(finite.all()):
            return False
        if self.mode == "skip":
            self.skipped += 1
            return True
        bad = (~finite).nonzero()[0].tolist()  # [t] | [s, t]
        value = float(losses.detach()[tuple(bad)])
        where = f"in task {self.task_names[bad[-1]]!r}"
        if len(bad) == 2 and self.copy_names is not None:
            where += f" of {self.copy_names[bad[0]]}"
        raise RunError(f"non-finite training loss ({value}) at step {step} {where}: the run "
                       "stopped, its last checkpoint is kept (lower train.optimizer.lr, set "
                       "train.grad_clip, or train.nonfinite=skip to skip such batches)")
