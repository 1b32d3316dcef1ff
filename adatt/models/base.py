"""Common base of every multi-task model.

Notation: B batch, Dd dense width, F categorical fields, T tasks, G fusion
units of a level, E experts of a level.

A model maps raw feature tensors ``dense [B, Dd]`` and ``cat [B, F]`` to raw
logits ``[B, T]``. With multi-valued categorical features (the ``multi_valued``
option, from the data) ``cat`` is ``[B, F + L]``: after the F single-valued
fields, each multi-valued feature's ``max_length`` columns of indices, padded
with -1 (:class:`~adatt.modules.layers.InputLinear` pools them).
:meth:`MultiTaskModel.forward_with_weights` also returns, per level, the
combined expert weights of every fusion unit ``[B, G, E]`` (AdaTT: ``pad(v_t) +
G_t``, Eq. 11; MMoE/PLE: the gate weights).

Example:
    >>> import torch
    >>> from adatt.models import create_model
    >>> m = create_model("adatt_sp", num_tasks=3, dense_dim=5, cat_cardinalities=[4, 7])
    >>> dense, cat = torch.randn(2, 5), torch.zeros(2, 2, dtype=torch.long)
    >>> logits, weights = m.forward_with_weights(dense, cat)
    >>> logits.shape, [tuple(w.shape) for w in weights]
    (torch.Size([2, 3]), [(2, 3, 6), (2, 3, 6)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

__all__ = ["MultiTaskModel", "level_sizes", "per_task_counts"]


def level_sizes(expert_sizes: Sequence[int | Sequence[int]]) -> list[list[int]]:
    """Normalise per-level expert sizes: an int ``n`` means a 1-layer expert ``[n]``.

    >>> level_sizes([128, [64, 32]])
    [[128], [64, 32]]
    """
    out = []
    for s in expert_sizes:
        layers = [int(s)] if isinstance(s, int) else [int(v) for v in s]
        if not layers or any(v < 1 for v in layers):
            raise ValueError(f"expert sizes must be positive, got {s!r}")
        out.append(layers)
    if not out:
        raise ValueError("expert_sizes needs at least one level")
    return out


def per_task_counts(counts: int | Sequence[int], num_tasks: int, what: str) -> list[int]:
    """An int for every task, or one count per task.

    >>> per_task_counts(2, 3, "experts_per_task"), per_task_counts([1, 2], 2, "x")
    ([2, 2, 2], [1, 2])
    """
    out = [int(counts)] * num_tasks if isinstance(counts, int) else [int(c) for c in counts]
    if len(out) != num_tasks:
        raise ValueError(f"{what} has {len(out)} entries for {num_tasks} tasks")
    if any(c < 1 for c in out):
        raise ValueError(f"{what} must be >= 1 for every task, got {out}")
    return out


class MultiTaskModel(nn.Module):
    """Base class: ``forward(dense, cat) -> logits [B, T]``.

    A model is ``self.input`` (an :class:`~adatt.modules.layers.InputLinear`: the
    first layer of everything that reads the raw input, one product) followed by
    ``forward_from_input(z, want_weights) -> (logits, weights)``; the task towers
    live in ``self.towers``. The split lets an ensemble of copies run the input
    layer as one gather over all copies and the rest under ``torch.func.vmap``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    num_tasks: int

    def forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        return self._forward(dense, cat, False)[0]

    def forward_with_weights(self, dense: Tensor, cat: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, T]`` and, per level, combined expert weights ``[B, G, E]``."""
        return self._forward(dense, cat, True)

    def _forward(self, dense: Tensor, cat: Tensor, want_weights: bool) -> tuple[Tensor, list]:
        return self.forward_from_input(self.input(dense, cat), want_weights)

    def forward_from_input(self, z: Tensor, want_weights: bool = False) -> tuple[Tensor, list]:
        """Logits ``[B, T]`` (and weights) from the input layer's output ``z [B, N]``."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters below the task towers (what loss-weighting methods balance)."""
        return [p for n, p in self.named_parameters() if not n.startswith("towers.")]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
