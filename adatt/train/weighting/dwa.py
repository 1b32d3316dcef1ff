"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019, arXiv 1803.10704).

Notation: T tasks, k the epoch (1-based), ``L_t(k)`` task t's mean training
loss over epoch k, ``Temp`` the temperature (2 in the paper).

    r_t(k-1) = L_t(k-1) / L_t(k-2)
    w_t(k)   = T exp(r_t(k-1) / Temp) / sum_i exp(r_i(k-1) / Temp)

with ``w_t = 1`` for the first two epochs. The weights sum to T; the model is
trained on ``sum_t w_t c_t L_t``. The trainer reports each epoch's mean losses
through :meth:`DWA.epoch_end`.

Example:
    >>> import torch
    >>> dwa = DWA(2)
    >>> dwa.current_weights()
    tensor([1., 1.])
    >>> dwa.epoch_end(torch.tensor([1.0, 1.0]))
    >>> dwa.epoch_end(torch.tensor([0.5, 1.0]))     # task 0 learns faster -> smaller weight
    >>> dwa.current_weights()                       # 2 softmax([0.25, 0.5])
    tensor([0.8756, 1.1244])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Weighting

__all__ = ["DWA"]


class DWA(Weighting):
    """Weights from the ratio of the last two epochs' mean task losses.

    Args:
        num_tasks: T.
        task_weights: static weights ``c_t`` (default all 1).
        task_kinds: unused.
        temperature: softmax temperature. Default 2.
    """

    name = "dwa"
    per_copy = True
    weights: Tensor
    last_losses: Tensor
    previous_losses: Tensor
    epochs_seen: Tensor

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | None = None,
        task_kinds: Sequence[str] | None = None,
        temperature: float = 2.0,
    ):
        super().__init__(num_tasks, task_weights, task_kinds)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("weights", torch.ones(num_tasks))
        self.register_buffer("last_losses", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("previous_losses", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.tensor(0))

    def expand_copies(self, copies: int) -> None:
        """One loss history and weight vector per copy: ``[S, T]`` buffers."""
        super().expand_copies(copies)
        for name in ("weights", "last_losses", "previous_losses"):
            b = getattr(self, name)
            setattr(self, name, b.expand(copies, self.num_tasks).clone())  # [T] -> [S,T]

    def current_weights(self) -> Tensor:
        """``[T]`` DWA weights for the coming epoch (static weights not included)."""
        return self.weights.clone()

    def epoch_end(self, mean_losses: Tensor) -> None:
        mean_losses = mean_losses.detach().to(self.last_losses)
        if tuple(mean_losses.shape) != self._loss_shape():
            raise ValueError(
                f"mean_losses must be {list(self._loss_shape())}, got {tuple(mean_losses.shape)}"
            )
        self.previous_losses.copy_(self.last_losses)
        self.last_losses.copy_(mean_losses)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:  # once per epoch; equal weights before
            r = self.last_losses / self.previous_losses  # [T] | [S,T]: r_t(k-1)
            self.weights.copy_(self.num_tasks * torch.softmax(r / self.temperature, dim=-1))

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        self._check_losses(losses)
        w = self.weights * self.task_weights  # [T]
        (w.to(losses) * losses).sum().backward()  # [T] | [S,T] -> scalar
        return w.detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature}"
