"""PCGrad, projecting conflicting gradients (Yu et al., NeurIPS 2020, arXiv 2001.06782).

Notation: T tasks, P scalars in the shared parameters, ``g_t [P]`` the gradient
of ``c_t L_t`` on the shared parameters.

For each task i, starting from ``g_i^PC = g_i``, the other tasks j are visited
in a random order and, when ``g_i^PC . g_j < 0``, the conflicting component is
removed: ``g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j`` (projection onto
the normal plane of the original ``g_j``). The shared parameters get
``sum_i g_i^PC``; every other parameter its ordinary gradient of ``sum_t c_t L_t``.

Implementation: every ``g_i^PC`` is a linear combination ``a_i^T g`` of the
original gradients, so the projections run on T x T coefficients with the Gram
matrix ``g g^T`` (one ``[T,P] x [P,T]`` product) and the result is one
``[T] x [T,P]`` product, instead of T^2 operations on P-vectors. The visiting
order is drawn from a generator seeded with ``seed + step``: deterministic and
restored with the module's state.

Example:
    >>> import torch
    >>> theta = torch.nn.Parameter(torch.zeros(2))
    >>> losses = torch.stack([theta @ torch.tensor([1.0, 0.0]), theta @ torch.tensor([-1.0, 1.0])])
    >>> _ = PCGrad(2).backward(losses, [theta])    # g1 = (1, 0), g2 = (-1, 1) conflict
    >>> theta.grad                                  # (0.5, 0.5) + (0, 1)
    tensor([0.5000, 1.5000])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Weighting, assign_flat_grad, task_gradients

__all__ = ["PCGrad", "project_conflicting"]


def project_conflicting(grads: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
    """PCGrad's combined gradient ``sum_i g_i^PC`` of ``grads [T,P]``, returned as ``[P]``.

    Args:
        grads: ``[T, P]`` per-task gradients.
        orders: for each task i, the order in which the other tasks are visited
            (entries equal to i are skipped).
    """
    t = grads.shape[0]
    g64 = grads.double()
    gram = g64 @ g64.T  # [T,P] x [P,T] -> [T,T]
    sq_norm = gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny)  # [T]
    coef = torch.eye(t, dtype=torch.float64, device=grads.device)  # row i: g_i^PC = coef[i] @ g
    for i in range(t):
        a = coef[i].clone()  # [T]
        for j in orders[i]:
            if j == i:
                continue
            dot = a @ gram[:, j]  # [T] . [T] -> []: g_i^PC . g_j
            a[j] -= dot.clamp(max=0.0) / sq_norm[j]  # only when conflicting (dot < 0)
        coef[i] = a
    return (coef.sum(0) @ g64).to(grads.dtype)  # [T] x [T,P] -> [P]


class PCGrad(Weighting):
    """Gradient surgery on the shared parameters; returns the static weights.

    Args:
        num_tasks: T.
        task_weights: static weights ``c_t`` (default all 1).
        task_kinds: unused.
        seed: seed of the random visiting order. Default 0.
    """

    name = "pcgrad"
    step: Tensor

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | None = None,
        task_kinds: Sequence[str] | None = None,
        seed: int = 0,
    ):
        super().__init__(num_tasks, task_weights, task_kinds)
        self.seed = int(seed)
        self.register_buffer("step", torch.tensor(0))

    def visiting_orders(self) -> list[list[int]]:
        """The random task orders of the current step (one permutation per task)."""
        gen = torch.Generator().manual_seed(self.seed + int(self.step))
        t = self.num_tasks
        return [torch.randperm(t, generator=gen).tolist() for _ in range(t)]

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        self._check_losses(losses)
        params = [p for p in shared_params if p.requires_grad]
        cl = self._static(losses)  # [T]
        grads = task_gradients(cl, params)  # [T,P]
        combined = project_conflicting(grads, self.visiting_orders())  # [P]
        self.step += 1
        previous = [p.grad for p in params]
        for p in params:
            p.grad = None
        cl.sum().backward()  # ordinary gradients for the task-specific parameters
        assign_flat_grad(params, combined, previous)  # replaces the plain sum on shared ones
        return self.task_weights.to(losses).detach().clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"
