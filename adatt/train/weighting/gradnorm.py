"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018, arXiv 1711.02257).

Notation: T tasks, P scalars in the shared parameters W, ``w_t`` the learned
loss weights, ``c_t L_t`` the (statically weighted) task losses.

The model is trained on ``L = sum_t w_t c_t L_t``. The weights are trained to
equalise the per-task gradient norms on the shared parameters, scaled by each
task's relative inverse training rate:

    G_t = || d(w_t c_t L_t) / dW ||_2 = w_t n_t,  n_t = || d(c_t L_t) / dW ||_2
    r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0))          (L_t(0): first step's loss)
    L_grad = sum_t | G_t - mean_k(G_k) r_t^alpha |          (target held constant)
    w <- w - step(dL_grad/dw),  w <- T w / sum(w)

Because ``G_t = w_t n_t`` exactly (``w_t > 0``), ``dL_grad/dw_t =
sign(G_t - target_t) n_t``: no second-order backward is needed, only the T
per-task gradients on W (one backward pass each, plus one for the model).

The weight update is internal so the trainer stays generic: the weights are a
buffer, not a parameter (``weighting.parameters()`` is empty), updated after
each :meth:`GradNorm.backward` by Adam with its own learning rate ``lr``
(Adam's sign-like steps make the update insensitive to the scale of the
gradient norms). Choice made here: after the step the weights are floored at
``1e-6`` before the renormalisation to sum T, so a weight never turns negative.
The weights returned by ``backward`` are those used for this step's gradients
(times ``c_t``); the update applies from the next step.

Example:
    >>> import torch
    >>> theta = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> weighting = GradNorm(2, alpha=1.5, lr=0.1)
    >>> for _ in range(200):                # grad norms 1 and 4, equal training rates
    ...     theta.grad = None
    ...     _ = weighting.backward(torch.stack([theta[0], 4 * theta[1]]), [theta])
    >>> [round(v, 1) for v in weighting.weights.tolist()]   # -> proportional to 1/n, sum 2
    [1.6, 0.4]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Weighting, task_gradient_norms

__all__ = ["GradNorm"]


class GradNorm(Weighting):
    """Loss weights trained to balance gradient norms on the shared parameters.

    Args:
        num_tasks: T.
        task_weights: static weights ``c_t`` (default all 1).
        task_kinds: unused.
        alpha: strength of the restoring force toward equal training rates (paper's
            alpha; 0 equalises the raw gradient norms). Default 1.5.
        lr: Adam learning rate of the loss weights. Default 0.025.
        betas: Adam betas. Default (0.9, 0.999).
    """

    name = "gradnorm"
    weights: Tensor
    initial_losses: Tensor
    initialized: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | None = None,
        task_kinds: Sequence[str] | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        betas: tuple[float, float] = (0.9, 0.999),
    ):
        super().__init__(num_tasks, task_weights, task_kinds)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.register_buffer("weights", torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.ones(num_tasks))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("step", torch.tensor(0))

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        self._check_losses(losses)
        params = [p for p in shared_params if p.requires_grad]
        cl = self._static(losses)  # [T]
        cl_now = cl.detach().float()  # [T]
        # L_t(0): the first step's losses (torch.where: no host sync on an accelerator);
        # a task with loss 0 there (no labelled row of a partial task) takes its first positive
        keep = self.initialized & (self.initial_losses > 0)  # [T]
        self.initial_losses.copy_(torch.where(keep, self.initial_losses, cl_now))
        self.initialized.fill_(True)
        norms = task_gradient_norms(cl, params).to(self.weights)  # [T]
        w_used = self.weights.clone()  # [T]
        (w_used.to(cl) * cl).sum().backward()  # model gradients, [T] -> scalar
        self._update_weights(cl_now, norms)
        return (w_used * self.task_weights).detach()

    @torch.no_grad()
    def _update_weights(self, cl: Tensor, norms: Tensor) -> None:
        g = self.weights * norms  # [T]: G_t = w_t n_t
        known = self.initial_losses > 0  # [T]: a task with no L_t(0) yet has ratio 1
        ratio = torch.where(known, cl / self.initial_losses.clamp_min(1e-30),
                            torch.ones_like(cl))  # [T]: L_t / L_t(0)
        rate = ratio / ratio.mean()  # [T]: relative inverse training rate r_t
        target = g.mean() * rate.pow(self.alpha)  # [T], held constant
        grad = torch.sign(g - target) * norms  # [T]: d L_grad / d w_t
        b1, b2 = self.betas
        self.step += 1
        k = self.step.to(grad.dtype)  # [] tensor: bias correction without a host sync
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.exp_avg / (1 - torch.pow(b1, k))
        v_hat = self.exp_avg_sq / (1 - torch.pow(b2, k))
        self.weights.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))
        self.weights.clamp_(min=1e-6)
        self.weights.mul_(self.num_tasks / self.weights.sum())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, lr={self.lr}"
