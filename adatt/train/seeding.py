"""Seeding and random-number-generator state of a run.

A run seeds Python's ``random``, NumPy's global generator and torch's default
generator from one integer (:func:`seed_everything`) before it builds its
model, so the same seed gives the same initial weights. Checkpoints carry the
three generators' states (:func:`rng_state`) and ``--resume`` restores them
(:func:`set_rng_state`), so a resumed run draws what the uninterrupted one would.

Example:
    >>> import torch
    >>> seed_everything(3)
    >>> s = rng_state()
    >>> a = torch.rand(2)
    >>> set_rng_state(s)
    >>> torch.equal(a, torch.rand(2))
    True
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's default generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of the three generators (for a checkpoint)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`'s dict."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
