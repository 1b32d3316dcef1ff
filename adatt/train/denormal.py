"""Flush denormal floats to zero on CPU: training slows several-fold without it.

A float32 below 1.2e-38 in magnitude is *denormal*. x86 CPUs handle an
operation that reads or produces one in microcode, tens of times slower than a
normal one. Training drives some values there: with Adam and an L2 weight
decay, a weight whose gradient stays 0 (a dead ReLU unit, a one-hot row no
recent example holds) decays towards 0 without reaching it, and its optimizer
state with it. On census AdaTT after 10 epochs about 8% of the one-hot input
table and 6% of a level's weights were denormal, and the products that read
them ran 3.3x slower (a whole run: 13,700 against 44,700 training examples/s;
``benchmarks/denormal.py``). A fresh model has none, so a benchmark of early
steps never sees it.

:func:`flush_denormals` sets the CPU's flush-to-zero and denormals-are-zero
modes (``torch.set_flush_denormal``): denormal inputs read as 0 and results
that would be denormal are written as 0. Values change only below 1.2e-38
(a census run's selection score moved in the 7th digit); runs stay
deterministic. The recipes call it from their runtime setup with
``train.flush_denormal`` (default true); false keeps IEEE gradual underflow.

Example:
    >>> import torch
    >>> flush_denormals(True)
    True
    >>> (torch.tensor([1e-39]) * 1.0).item()
    0.0
    >>> flush_denormals(False)
    False
    >>> (torch.tensor([1e-39]) * 1.0).item() > 0
    True
"""

from __future__ import annotations

import torch

__all__ = ["flush_denormals"]


def flush_denormals(enabled: bool) -> bool:
    """Set (or clear) flush-to-zero for CPU floats in this process; True when it is on.

    False where the CPU has no such mode (then nothing changes). Measured to reach
    torch's intra-op threads too, those already started included."""
    return bool(torch.set_flush_denormal(enabled)) and enabled
