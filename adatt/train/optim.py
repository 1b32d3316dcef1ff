"""The optimizer, learning-rate schedule and step budget of a run, from its train config.

Every recipe (single model, seed ensemble, TorchRec) builds these three the same
way from :class:`~adatt.config.TrainConfig`:

* :func:`make_optimizer`: ``train.optimizer`` (Adam/AdamW fused into one
  kernel over all parameters, SGD and Adagrad with ``foreach``);
* :func:`make_schedule`: ``train.schedule`` as a ``LambdaLR`` factor (linear
  warm-up, then constant, step decay or cosine to ``min_lr_ratio``);
* :func:`training_plan`: steps per epoch and the example budget.

Example:
    >>> import torch
    >>> from adatt.config import TrainConfig
    >>> tc = TrainConfig(optimizer={"name": "sgd", "lr": 0.1},
    ...                  schedule={"name": "step", "step_size": 2, "gamma": 0.5})
    >>> opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], tc)
    >>> sched = make_schedule(opt, tc, total_steps=10)
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(sched.get_last_lr()[0]); opt.step(); sched.step()
    >>> lrs
    [0.1, 0.1, 0.05, 0.05]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from adatt.config import TrainConfig

__all__ = ["make_optimizer", "make_schedule", "training_plan"]


def make_optimizer(params: Iterable[Any], tc: TrainConfig,
                   compiled: bool = False) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params`` (tensors or parameter-group dicts).

    ``compiled``: for a ``torch.compile``d ``opt.step``
    (:class:`~adatt.train.compiled.TrainStep`): the single-tensor update,
    which Inductor fuses itself (the fused and ``foreach`` kernels are opaque
    to it), with the learning rate a float64 tensor that the schedule updates
    in place, so a changing rate does not recompile.
    """
    o = tc.optimizer
    common = dict(lr=o.lr, weight_decay=o.weight_decay)
    params = list(params)
    fast: dict[str, Any] = dict(foreach=True)
    if compiled:
        common["lr"] = torch.tensor(o.lr, dtype=torch.float64)
        fast = dict(foreach=False)
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        # eager: one kernel for all params
        return cls(params, betas=o.betas, **(fast if compiled else dict(fused=True)), **common)
    if o.name == "sgd":
        return torch.optim.SGD(params, momentum=o.momentum, **fast, **common)
    return torch.optim.Adagrad(params, **fast, **common)


def make_schedule(opt: torch.optim.Optimizer, tc: TrainConfig,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``train.schedule`` for ``opt`` over a run of ``total_steps`` optimizer steps."""
    s = tc.schedule

    def factor(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        k = step - s.warmup_steps
        if s.name == "step":
            return s.gamma ** (k // s.step_size)
        if s.name == "cosine":
            span = max(total_steps - s.warmup_steps, 1)
            cos = 0.5 * (1 + math.cos(math.pi * min(k / span, 1.0)))
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * cos
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def training_plan(n_train: int, tc: TrainConfig) -> tuple[int, int, int, int]:
    """``(n_train, steps_per_epoch, budget, total_steps)``: the budget is
    ``epochs`` passes over the training rows, capped by ``max_examples``.

    >>> training_plan(1000, TrainConfig(batch_size=300, epochs=2, max_examples=1500))
    (1000, 4, 1500, 5)
    """
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    budget = min(tc.max_examples or n_train * tc.epochs, n_train * tc.epochs)
    return n_train, steps_per_epoch, budget, math.ceil(budget / tc.batch_size)
