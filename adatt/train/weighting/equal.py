"""Equal weighting: the (static-)weighted sum of the task losses.

The paper's training setup: ``L = sum_t c_t L_t`` with every ``c_t = 1`` unless
static ``task_weights`` are given. Notation: T tasks, S ensemble copies.

``backward`` also accepts losses ``[S, T]`` (S models trained together): the
copies are independent, so the sum over all of them gives each copy its own
gradient.

Example:
    >>> import torch
    >>> x = torch.nn.Parameter(torch.tensor(3.0))
    >>> weighting = Equal(2, task_weights=[1.0, 0.5])
    >>> weighting.backward(torch.stack([x, x ** 2]), [x])
    tensor([1.0000, 0.5000])
    >>> x.grad                                     # 1 + 0.5 * 2x
    tensor(4.)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .base import Weighting

__all__ = ["Equal"]


class Equal(Weighting):
    """``L = sum_t c_t L_t``; the weights are the static ones.

    Args:
        num_tasks: T.
        task_weights: static weights ``c_t`` (default all 1).
        task_kinds: unused (accepted so every method takes the same arguments).
    """

    name = "equal"
    per_copy = True

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        if losses.shape[-1] != self.num_tasks or losses.dim() not in (1, 2):
            raise ValueError(f"losses must be [T] or [S, T], got {tuple(losses.shape)}")
        c = self.task_weights.to(losses)
        (losses * c).sum().backward()  # [..,T] * [T] -> scalar
        return c.detach().clone()
