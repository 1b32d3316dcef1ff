"""Base class of the loss-weighting methods and the gradient helpers they share.

Notation: T tasks, P number of scalars in the shared parameters (all shared
parameter tensors flattened and concatenated).

A weighting method turns the per-task losses ``[T]`` of one step into gradients
on the model: :meth:`Weighting.backward` runs the backward pass itself (so that
gradient-surgery methods such as PCGrad fit the same interface as loss-scaling
methods) and returns the per-task weights it used. ``shared_params`` are the
parameters that feed every task (the ones whose per-task gradients GradNorm
measures and PCGrad projects); every other parameter receives its ordinary
gradient of the weighted loss sum.

Gradients accumulate into ``.grad`` like ``Tensor.backward`` does: the caller
zeroes them (``optimizer.zero_grad()``) before the step.

State (static weights, learned weights, loss histories) lives in parameters
and buffers: move the module to the model's device (``weighting.to(device)``).

Static per-task weights ``c_t`` (``task_weights``, default 1) scale the task
losses before the method acts: every method sees ``c_t L_t`` as task t's loss.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> losses = torch.stack([w.sum(), (w ** 2).sum()])      # [T] = [2]
    >>> task_gradients(losses, [w])                           # [T,P]: d L_t / d w
    tensor([[1., 1.],
            [2., 4.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Weighting", "task_gradients", "task_gradient_norms", "assign_flat_grad"]


def task_gradients(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """Gradient of each task loss with respect to ``params``, flattened: ``[T, P]``.

    The graph is retained (one backward pass per task); a parameter a task does
    not reach gets a zero gradient.

    Args:
        losses: ``[T]`` task losses with the graph attached.
        params: tensors requiring grad.

    Returns:
        ``[T, P]`` with P the total number of scalars in ``params``.
    """
    if losses.dim() != 1:
        raise ValueError(f"losses must be [T], got {tuple(losses.shape)}")
    if not params:
        raise ValueError("task_gradients needs at least one parameter")
    rows = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)  # [*p] -> [p]
                    for p, g in zip(params, grads, strict=True)
                ]
            )  # -> [P]
        )
    return torch.stack(rows)  # T x [P] -> [T,P]


def task_gradient_norms(losses: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``[T]`` L2 norm of each task loss's gradient on ``params`` (all of them as one vector).

    Same passes as :func:`task_gradients` without materialising the ``[T, P]`` matrix.
    """
    if losses.dim() != 1:
        raise ValueError(f"losses must be [T], got {tuple(losses.shape)}")
    if not params:
        raise ValueError("task_gradient_norms needs at least one parameter")
    norms = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        sq = [g.double().square().sum() for g in grads if g is not None]
        norms.append(
            torch.stack(sq).sum().sqrt() if sq else losses.new_zeros((), dtype=torch.float64)
        )
    return torch.stack(norms)  # T x [] -> [T]


def assign_flat_grad(
    params: Sequence[Tensor], flat: Tensor, previous: Sequence[Tensor | None]
) -> None:
    """Set ``p.grad = previous + flat[slice of p]`` for each parameter (``flat [P]``)."""
    chunks = torch.split(flat, [p.numel() for p in params])  # [P] -> [p_1], [p_2], ...
    for p, g, prev in zip(params, chunks, previous, strict=True):
        g = g.view_as(p).to(p.dtype)  # [p] -> [*p]
        p.grad = g.clone() if prev is None else prev + g


class Weighting(nn.Module):
    """A loss-weighting method: turns per-task losses into gradients on the model.

    Args:
        num_tasks: T.
        task_weights: T static weights ``c_t`` applied to the task losses before the
            method acts (default all 1).
        task_kinds: T task kinds (``"binary"`` / ``"regression"``), for methods whose
            rule depends on the kind (Uncertainty); default all binary.

    Own trainable parameters (``weighting.parameters()``) go to the trainer's
    optimizer; state a method updates by itself is kept in buffers.
    """

    name: ClassVar[str]
    # Whether the method can hold one state per ensemble copy (expand_copies): true for
    # methods that only scale the task losses; false for those that need each task's
    # gradient of the shared parameters (gradient norms, projections).
    per_copy: ClassVar[bool] = False
    task_weights: Tensor

    def __init__(
        self,
        num_tasks: int,
        task_weights: Sequence[float] | None = None,
        task_kinds: Sequence[str] | None = None,
    ):
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        c = torch.ones(num_tasks) if task_weights is None else torch.as_tensor(task_weights).float()
        if c.shape != (num_tasks,):
            raise ValueError(f"task_weights must have {num_tasks} entries, got {tuple(c.shape)}")
        self.register_buffer("task_weights", c)
        kinds = ["binary"] * num_tasks if task_kinds is None else list(task_kinds)
        if len(kinds) != num_tasks or any(k not in ("binary", "regression") for k in kinds):
            raise ValueError(f"task_kinds must be {num_tasks} of binary/regression, got {kinds}")
        self.task_kinds = kinds
        self.copies: int | None = None

    def expand_copies(self, copies: int) -> None:
        """Hold one state per copy of a seed ensemble: :meth:`backward` then takes
        losses ``[S, T]`` (S = ``copies``, each copy its own task losses) and
        :meth:`epoch_end` ``[S, T]`` means; copy k's state evolves as a single
        run's would. Only for methods with ``per_copy``; call before training."""
        if not self.per_copy:
            raise ValueError(f"weighting {self.name} has no per-copy form")
        self.copies = int(copies)

    def _loss_shape(self) -> tuple[int, ...]:
        return (self.num_tasks,) if self.copies is None else (self.copies, self.num_tasks)

    def _check_losses(self, losses: Tensor) -> None:
        if tuple(losses.shape) != self._loss_shape():
            raise ValueError(f"losses must be {list(self._loss_shape())}, "
                             f"got {tuple(losses.shape)}")

    def _static(self, losses: Tensor) -> Tensor:
        """Static-weighted losses ``c_t L_t``: ``[T] -> [T]``."""
        return losses * self.task_weights.to(losses)

    def backward(self, losses: Tensor, shared_params: Sequence[Tensor]) -> Tensor:
        """Run the backward pass for the task losses.

        Args:
            losses: ``[T]`` task losses with the graph attached.
            shared_params: parameters that feed every task.

        Returns:
            ``[T]`` the weights used this step (detached).
        """
        raise NotImplementedError

    def epoch_end(self, mean_losses: Tensor) -> None:
        """Called after each training epoch with its mean task losses ``[T]``; default no-op."""

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, task_weights={self.task_weights.tolist()}"
