"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018, arXiv 1705.07115).

Notation: T tasks, ``s_t = log sigma_t^2`` a learned log-variance per task.

Each task loss is scaled by a learned precision and the log-variance is added
as a regulariser:

    binary task:      exp(-s_t) c_t L_t + s_t
    regression task:  0.5 exp(-s_t) c_t L_t + 0.5 s_t

Choice made here: the regression form is the Gaussian likelihood of the paper
(``1/(2 sigma^2) L + log sigma``, Eq. 7 of Kendall et al.); the binary form is
the widespread ``exp(-s) L + s`` (e.g. LibMTL) rather than the paper's
``exp(-s) L + s/2`` for classification. Both forms have their optimum at
``s_t = log(c_t L_t)``: the learned variance tracks the task loss, and the
effective weight is ``1 / L_t`` (times 1/2 for regression).

``s`` are parameters of this module (initialised to 0): the trainer adds
``weighting.parameters()`` to its optimizer (preferably without weight decay,
which would pull every ``s_t`` toward 0).

Example:
    >>> import math, torch
    >>> weighting = Uncertainty(2, task_kinds=["binary", "regression"])
    >>> x = torch.nn.Parameter(torch.tensor(1.0))
    >>> weighting.backward(torch.stack([2 * x, 4 * x]), [x])   # exp(0) * (1, 0.5)
    tensor([1.0000, 0.5000])
    >>> with torch.no_grad():                                    # s_t = log L_t
    ...     _ = weighting.log_vars.copy_(torch.tensor([math.log(2.0), math.log(4.0)]))
    >>> weighting.log_vars.grad = None
    >>> _ = weighting.backward(torch.stack([2 * x, 4 * x]), [x])
    >>> weighting.log_vars.grad.abs().max() < 1e-6               # stationary point
    tensor(True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Weighting

__all__ = ["Uncertainty"]


class Uncertainty(Weighting):
    """Learned homoscedastic-uncertainty weights; ``log_vars [T]`` is a parameter.

    Args:
        num_tasks: T.
        task_weights: static weights ``c_t`` (default all 1).
        task_kinds: T kinds; a regression task gets the 1/2 factors (default all binary).
    """

    name = "uncertainty"
    per_copy = True
    kind_factor: Tensor

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | None = None,
        task_kinds: Sequence[str] | None = None,
    ):
        super().__init__(num_tasks, task_weights, task_kinds)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))
        # 1 for binary, 0.5 for regression tasks.
        factor = [0.5 if k == "regression" else 1.0 for k in self.task_kinds]
        self.register_buffer("kind_factor", torch.tensor(factor))

    def expand_copies(self, copies: int) -> None:
        """One log-variance per copy and task: ``log_vars [S, T]``."""
        super().expand_copies(copies)
        self.log_vars = nn.Parameter(torch.zeros(copies, self.num_tasks,
                                                 device=self.log_vars.device))

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        self._check_losses(losses)
        s = self.log_vars.to(losses)  # [T] | [S,T]
        h = self.kind_factor.to(losses)  # [T]
        precision = h * torch.exp(-s)  # [T] | [S,T]
        total = (precision * self._static(losses) + h * s).sum()  # [T] | [S,T] -> scalar
        total.backward()
        return (precision * self.task_weights.to(losses)).detach()
