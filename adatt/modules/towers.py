"""Task towers: one MLP per task, all tasks run as batched products.

Notation: B batch, T tasks, D input width, h hidden widths.

Each tower is ``Linear -> act -> ... -> Linear(., 1)``; the output is one
raw logit per task (no sigmoid: that lives in losses and metrics).

Example:
    >>> import torch
    >>> towers = TowerBank(num_tasks=3, in_dim=16, hidden=[8])
    >>> towers(torch.randn(4, 3, 16)).shape
    torch.Size([4, 3])
    >>> TowerBank(3, 16, [8], shared_input=True)(torch.randn(4, 16)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adatt.modules.layers import SlotLinear, activation_fn, uniform_init_

__all__ = ["TowerBank"]


class TowerBank(nn.Module):
    """T task towers as batched products.

    Args:
        num_tasks: T.
        in_dim: D.
        hidden: hidden layer widths of each tower (may be empty: a linear head).
        activation: activation after each hidden layer.
        shared_input: every tower reads the same ``[B, D]`` (Shared-bottom);
            the first layers of all towers are then one matrix product.

    Shapes: ``[B, T, D]`` (or ``[B, D]`` with ``shared_input``) -> logits ``[B, T]``.
    """

    def __init__(
        self,
        num_tasks: int,
        in_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        shared_input: bool = False,
    ) -> None:
        super().__init__()
        self.num_tasks, self.shared_input = num_tasks, shared_input
        self.act = activation_fn(activation)
        dims = [int(in_dim), *[int(h) for h in hidden], 1]
        T = num_tasks
        if shared_input:
            self.first_weight = nn.Parameter(torch.empty(dims[0], T * dims[1]))
            self.first_bias = nn.Parameter(torch.empty(T * dims[1]))
            uniform_init_(self.first_weight, dims[0])
            uniform_init_(self.first_bias, dims[0])
            rest = list(zip(dims[1:-1], dims[2:], strict=True))
        else:
            rest = list(zip(dims[:-1], dims[1:], strict=True))
        self.layers = nn.ModuleList(SlotLinear(T, a, [b] * T) for a, b in rest)

    def forward(self, x: Tensor) -> Tensor:
        T = self.num_tasks
        if self.shared_input:
            h = torch.addmm(self.first_bias, x, self.first_weight)  # [B,D] x [D,T*h] -> [B,T*h]
            h = h.view(x.shape[0], T, -1).transpose(0, 1)  # [B,T*h] -> [T,B,h]
            if self.layers:
                h = self.act(h)
        else:
            h = x.transpose(0, 1)  # [B,T,D] -> [T,B,D]
        for i, layer in enumerate(self.layers):
            h = layer(h)  # [T,B,a] x [T,a,b] -> [T,B,b]
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h.squeeze(-1).transpose(0, 1)  # [T,B,1] -> [B,T]
