"""Where a run stands in its training: the counters a checkpoint carries, and how it is shown.

* :class:`Progress`: the training loop's counters (carried by checkpoints);
* :class:`ProgressLog`: what every recipe prints while it trains. In a
  terminal (stderr a TTY): a tqdm bar whose postfix (running loss, examples/s)
  is refreshed at least once a second; elsewhere (a log file, CI): no bar,
  one line per evaluation with the examples seen, the rate, the loss and the
  validation score.

Example:
    >>> p = Progress(next_eval=100)
    >>> p.step += 1; p.examples += 64
    >>> Progress.from_state_dict(p.state_dict()) == p
    True
    >>> import io, torch
    >>> out = io.StringIO()  # not a terminal: one line per evaluation
    >>> log = ProgressLog("run", total=128, stream=out)
    >>> p.train_time = 0.5
    >>> log.update(64, torch.tensor([0.25, 0.5]))
    >>> p.evals = 1
    >>> log.evaluation(p, loss=0.75, score=0.6931)
    >>> log.close()
    >>> print(out.getvalue(), end="")
    run eval 1: 64/128 examples (50%), 128 ex/s, loss 0.7500, valid score 0.6931
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import IO, Any

from torch import Tensor

__all__ = ["Progress", "ProgressLog"]


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


class ProgressLog:
    """A run's progress output on ``stream`` (default stderr).

    Args:
        desc: the run's name (the bar's label, each line's first word).
        total: the training budget in examples.
        initial: examples already seen (a resumed run).
        enabled: False: print nothing (``runtime.progress=false``, ranks but 0).
        stream: where to write; a TTY gets the bar, anything else the lines.
        interval: most seconds between two refreshes of the bar's postfix.
    """

    def __init__(self, desc: str, total: int, initial: int = 0, enabled: bool = True,
                 stream: IO[str] | None = None, interval: float = 1.0) -> None:
        self.desc, self.total, self.enabled = desc, total, enabled
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(enabled and isatty is not None and isatty())
        self.interval = interval
        self.running: float | None = None
        self._examples, self._t0, self._last = initial, time.perf_counter(), -float("inf")
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="ex", unit_scale=True,
                            desc=desc, dynamic_ncols=True, file=self.stream)

    def update(self, n: int, losses: Tensor | None = None) -> None:
        """``n`` more examples trained; ``losses``: the step's task losses (read, a
        host sync, only when the postfix is due: at most once per ``interval``)."""
        self._examples += n
        if self.bar is None:
            return
        self.bar.update(n)
        now = time.perf_counter()
        if now - self._last < self.interval:
            return
        self._last = now
        post = {}
        if losses is not None:
            cur = float(losses.detach().sum(-1).mean())  # [T] or [S,T] -> per-run loss sum
            self.running = cur if self.running is None else 0.7 * self.running + 0.3 * cur
            post["loss"] = f"{self.running:.4f}"
        post["ex_s"] = f"{(self._examples - self.bar.initial) / max(now - self._t0, 1e-9):,.0f}"
        self.bar.set_postfix(post)

    def evaluation(self, progress: Progress, loss: float | None, score: float | None) -> None:
        """After an evaluation: outside a terminal, one line (examples, rate, loss, score)."""
        if not self.enabled or self.tty:
            return
        rate = progress.examples / max(progress.train_time, 1e-9)
        pct = f" ({100 * progress.examples / self.total:.0f}%)" if self.total else ""
        parts = [f"{progress.examples:,}/{self.total:,} examples{pct}", f"{rate:,.0f} ex/s"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if score is not None:
            parts.append(f"valid score {score:.4f}")
        print(f"{self.desc} eval {progress.evals}: " + ", ".join(parts), file=self.stream,
              flush=True)

    def note(self, text: str) -> None:
        """One line of ``text`` (above the bar in a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"{self.desc}: {text}", file=self.stream)
        else:
            print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
