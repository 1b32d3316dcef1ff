"""Where a run stands in its training: the counters a checkpoint carries.

Example:
    >>> p = Progress(next_eval=100)
    >>> p.step += 1; p.examples += 64
    >>> Progress.from_state_dict(p.state_dict()) == p
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import Tensor

__all__ = ["Progress"]


@dataclass
class Progress:
    """The training loop's counters.

    Attributes:
        step: optimizer steps taken.
        examples: training examples seen (over all processes; per copy in an ensemble).
        epoch: the current epoch (0-based).
        batch_in_epoch: the next batch of the current epoch.
        evals: evaluations done.
        train_time: seconds spent in training steps.
        next_eval: ``examples`` at which the next evaluation happens.
        wall_time: wall seconds of the earlier sessions of a resumed run.
        epoch_loss: the current epoch's per-task loss sum (a ``[T]`` tensor in
            the loop, a list in a checkpoint; None before the epoch's first step).
        epoch_steps: steps of the current epoch.
        source: the batch source's position (a stream's; None in memory).
    """

    step: int = 0
    examples: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    evals: int = 0
    train_time: float = 0.0
    next_eval: int = 0
    wall_time: float = 0.0
    epoch_loss: Any = None
    epoch_steps: int = 0
    source: Any = None

    def at(self) -> dict[str, int]:
        """``{eval, epoch, step, examples}``: where an evaluation happens."""
        return {"eval": self.evals, "epoch": self.epoch, "step": self.step,
                "examples": self.examples}

    def state_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.epoch_loss, Tensor):
            d["epoch_loss"] = self.epoch_loss.tolist()
        return d

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Progress:
        """From :meth:`state_dict` (or a checkpoint's flat state; other keys ignored)."""
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})
