"""Shared-bottom and Cross-stitch baselines.

Notation: B batch, T tasks, D width.

* Shared-bottom (Caruana 1997): one shared MLP, then a tower per task.
* Cross-stitch (Misra et al., CVPR'16): one hidden stack per task; after each
  level a learned T x T matrix ``A`` mixes the tasks' hidden layers,
  ``h'_t = sum_s A[t, s] h_s`` (the same for all examples). ``A`` starts as
  in the AdaTT authors' code, with ``nn.Linear``'s default initialisation of a
  T x T layer: every entry i.i.d. U(-1/sqrt(T), 1/sqrt(T)) (``stitch_init=
  "authors"``); ``stitch_init="near_identity"`` is the earlier start, 0.9 on
  the diagonal and 0.1/(T-1) elsewhere, as in the cross-stitch paper.

Example:
    >>> import torch
    >>> m = CrossStitch(num_tasks=3, dense_dim=4, expert_sizes=[8, 4])
    >>> dense, cat = torch.randn(2, 4), torch.zeros(2, 0, dtype=torch.long)
    >>> logits, mix = m.forward_with_weights(dense, cat)
    >>> logits.shape, mix[0].shape
    (torch.Size([2, 3]), torch.Size([1, 3, 3]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adatt.models.base import MultiTaskModel, level_sizes
from adatt.models.registry import register_model
from adatt.modules.layers import InputLinear, SlotLinear, activation_fn, uniform_init_
from adatt.modules.towers import TowerBank

__all__ = ["SharedBottom", "CrossStitch", "STITCH_INITS"]

STITCH_INITS = ("authors", "near_identity")


@register_model
class SharedBottom(MultiTaskModel):
    """Shared-bottom: one MLP shared by all tasks, then task towers.

    Args:
        num_tasks, dense_dim, cat_cardinalities, embedding_dim: the input.
        multi_valued: per multi-valued feature ``(cardinality, pooling, max_length)``
            (from the data; see :class:`~adatt.modules.layers.InputLinear`).
        expert_sizes: the shared MLP's widths, level by level (flattened).
        tower_sizes: task tower hidden widths.
        activation: activation name.
    """

    name = "shared_bottom"
    description = "Shared-bottom: one shared MLP, then one tower per task (the reference)"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        super().__init__()
        widths = [w for lvl in level_sizes(expert_sizes) for w in lvl]
        self.num_tasks, self.act = num_tasks, activation_fn(activation)
        self.input = InputLinear(dense_dim, cat_cardinalities, embedding_dim, widths[0],
                                 multi_valued)
        self.bottom = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.towers = TowerBank(num_tasks, widths[-1], tower_sizes, activation, shared_input=True)

    def forward_from_input(self, z: Tensor, want_weights: bool = False) -> tuple[Tensor, list]:
        h = self.act(z)  # [B, w0]
        for layer in self.bottom:
            h = self.act(layer(h))  # [B,a] -> [B,b]
        return self.towers(h), []


@register_model
class CrossStitch(MultiTaskModel):
    """Cross-stitch: per-task stacks mixed after each level by a learned T x T matrix.

    Args:
        num_tasks, dense_dim, cat_cardinalities, embedding_dim: the input.
        multi_valued: per multi-valued feature ``(cardinality, pooling, max_length)``
            (from the data; see :class:`~adatt.modules.layers.InputLinear`).
        expert_sizes: per level, each task stack's MLP widths.
        tower_sizes: task tower hidden widths.
        activation: activation name.
        stitch_init: start of each level's mixing matrix ``A``: ``"authors"``
            (default; the authors' code, ``nn.Linear(T, T)``'s default init:
            i.i.d. U(-1/sqrt(T), 1/sqrt(T))) or ``"near_identity"`` (0.9 on the
            diagonal, 0.1/(T-1) elsewhere; the earlier default).

    ``forward_with_weights`` returns each level's mixing matrix ``[1, T, T]``.
    """

    name = "cross_stitch"
    description = "Cross-stitch: one stack per task, learned T x T mixing after each level"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        stitch_init: str = "authors",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        super().__init__()
        if stitch_init not in STITCH_INITS:
            raise ValueError(
                f"stitch_init must be one of {', '.join(STITCH_INITS)}, got {stitch_init!r}")
        T, sizes = num_tasks, level_sizes(expert_sizes)
        self.num_tasks, self.act = T, activation_fn(activation)
        self.input = InputLinear(dense_dim, cat_cardinalities, embedding_dim, T * sizes[0][0],
                                 multi_valued)
        layers, prev = [], None
        for lvl, s in enumerate(sizes):
            dims = ([] if lvl == 0 else [prev]) + s
            layers.append(
                nn.ModuleList(SlotLinear(T, a, [b] * T) for a, b in zip(dims[:-1], dims[1:],
                                                                        strict=True))
            )
            prev = s[-1]
        self.layers = nn.ModuleList(layers)
        if stitch_init == "authors":  # A[t, s] is nn.Linear(T, T).weight[t, s]: fan-in T
            init = uniform_init_(torch.empty(len(sizes), T, T), T)  # [L,T,T]
        else:
            off = 0.1 / (T - 1) if T > 1 else 0.0
            eye = torch.full((T, T), off) + torch.eye(T) * (0.9 - off if T > 1 else 1.0)
            init = eye.unsqueeze(0).repeat(len(sizes), 1, 1)  # [T,T] -> [L,T,T]
        self.stitch = nn.Parameter(init)  # [L,T,T]
        self.stitch_init = stitch_init
        self.towers = TowerBank(T, sizes[-1][-1], tower_sizes, activation)

    def forward_from_input(self, z: Tensor, want_weights: bool = False) -> tuple[Tensor, list]:
        B, T = z.shape[0], self.num_tasks
        h = self.act(z).view(B, T, -1).transpose(0, 1)  # [B,T*H] -> [T,B,H]
        for lvl, layers in enumerate(self.layers):
            for layer in layers:
                h = self.act(layer(h))  # [T,B,a] x [T,a,b] -> [T,B,b]
            h = torch.einsum("ts,sbd->tbd", self.stitch[lvl], h)  # [T,T] x [T,B,D] -> [T,B,D]
        weights = list(self.stitch.unsqueeze(1)) if want_weights else []  # L x [1,T,T]
        return self.towers(h.transpose(0, 1)), weights  # [T,B,D] -> [B,T,D]
