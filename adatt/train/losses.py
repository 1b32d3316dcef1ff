"""Per-task training losses: binary cross-entropy and squared error, computed at once.

Notation: B batch, T tasks, S ensemble copies (independently initialised models
trained together; their outputs carry a leading ``S`` dimension).

Models output raw scores ``[B, T]`` (or ``[S, B, T]``): a logit for a binary task,
the prediction itself for a regression task. The sigmoid lives here and in
:mod:`adatt.train.metrics`, never in the models.

Per task t, with per-example weights ``w_b`` (1 when absent), the loss is the
weighted mean over the batch

    L_t = sum_b w_b l(x_bt, y_bt) / sum_b w_b,

(0 for a batch whose weights are all 0),

with ``l`` the binary cross-entropy with logits for a binary task and the squared
error ``(x - y)^2`` for a regression task (the paper: cross-entropy for binary
tasks, MSE for regression). Both forms are computed on the whole ``[B, T]`` block
and one is picked per column with a precomputed mask, so there is no Python loop
over tasks. When every task has the same kind only that form is computed.

Partial labels and per-task weights. A task of a schema may be *partial*
(``TaskSpec.partial``: ``missing: mask`` or a ``condition``): its unlabelled
entries are NaN in ``labels [B, T]``. With ``partial`` tasks (or a per-task
weight ``[B, T]``) the loss is, per task,

    L_t = sum_b m_bt w_bt l(x_bt, y_bt) / sum_b m_bt w_bt,

with ``m_bt = 1`` where the label is present (0 where it is NaN) and ``w_bt``
the task's weight column (``w_b`` broadcast when the weight is ``[B]``). The
NaN labels are replaced (``torch.where``) before the loss is computed, so no
NaN reaches a value or a gradient; a task with no labelled row in the batch
has loss 0 and no gradient. A schema with no partial task and a ``[B]`` (or
no) weight takes the path above unchanged.

Example:
    >>> import torch
    >>> loss = TaskLoss(["binary", "regression"], task_weights=[1.0, 0.5])
    >>> logits = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    >>> labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> per_task = loss(logits, labels)          # [T]: BCE = log 2, MSE = (1 + 4) / 2
    >>> per_task
    tensor([0.6931, 2.5000])
    >>> loss.total(per_task)                     # 1.0 * log 2 + 0.5 * 2.5
    tensor(1.9431)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TASK_KINDS", "TaskLoss", "task_losses", "elementwise_losses", "masked_elementwise",
           "global_batch_losses", "labelled_weights"]

TASK_KINDS = ("binary", "regression")


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    kinds = list(kinds)
    if not kinds:
        raise ValueError("at least one task kind is required")
    for k in kinds:
        if k not in TASK_KINDS:
            raise ValueError(f"task kind must be one of {TASK_KINDS}, got {k!r}")
    return kinds


def elementwise_losses(logits: Tensor, labels: Tensor, kinds: Sequence[str]) -> Tensor:
    """Unreduced per-example, per-task losses.

    Args:
        logits: ``[..., B, T]`` raw model outputs (leading dims, e.g. ``S``, allowed).
        labels: ``[B, T]`` (or broadcastable to ``logits``).
        kinds: T task kinds.

    Returns:
        ``[..., B, T]`` losses, in the dtype of ``logits``.
    """
    kinds = _check_kinds(kinds)
    mask = torch.tensor([k == "binary" for k in kinds], device=logits.device)
    return masked_elementwise(logits, labels, mask, all(mask.tolist()), not any(mask.tolist()))


def masked_elementwise(
    logits: Tensor, labels: Tensor, is_binary: Tensor, all_binary: bool, all_regression: bool
) -> Tensor:
    """:func:`elementwise_losses` with the kind mask ``is_binary [T]`` precomputed
    (``all_binary``/``all_regression``: every task of one kind, only that form computed);
    ``labels`` broadcast to ``logits [..., B, T]``."""
    labels = labels.to(logits.dtype).expand_as(logits)  # [B,T] -> [...,B,T]
    if all_binary:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if all_regression:
        return (logits - labels).square()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [...,B,T]
    se = (logits - labels).square()  # [...,B,T]
    return torch.where(is_binary, bce, se)  # [T] mask broadcast over [...,B,T]


def _batch_mean(per_example: Tensor, weight: Tensor | None) -> Tensor:
    """(Weighted) mean over the batch dim (-2): ``[..., B, T] -> [..., T]``."""
    if weight is None:
        return per_example.mean(dim=-2)
    if weight.dim() != 1 or weight.shape[0] != per_example.shape[-2]:
        raise ValueError(
            f"weight must be [B] with B={per_example.shape[-2]}, got {tuple(weight.shape)}"
        )
    w = weight.to(per_example.dtype)
    # a batch whose weights are all 0 has loss 0 (no gradient), not 0/0
    total = w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    return (per_example * w[:, None]).sum(dim=-2) / total  # [...,B,T] * [B,1] -> [...,T]


def labelled_weights(labels: Tensor, weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Per-entry loss weights ``[..., B, T]``: the weight (``[..., B]`` broadcast over
    tasks, ``[..., B, T]`` as it is, 1 when None) where the label is present, 0 where
    it is NaN (unlabelled).

    Example:
        >>> import torch
        >>> y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
        >>> labelled_weights(y, torch.tensor([2.0, 3.0]), torch.float32)
        tensor([[2., 0.],
                [3., 3.]])
    """
    present = ~torch.isnan(labels)  # [...,B,T]
    if weight is None:
        return present.to(dtype)
    w = weight.to(dtype)
    if w.dim() == labels.dim() - 1:
        w = w[..., None]  # [...,B] -> [...,B,1]
    elif tuple(w.shape) != tuple(labels.shape):
        raise ValueError(f"weight must be [B] or [B, T] with labels {tuple(labels.shape)}, "
                         f"got {tuple(w.shape)}")
    return torch.where(present, w, torch.zeros((), dtype=dtype, device=w.device))  # [...,B,T]


def _labelled_mean(per_example: Tensor, mass: Tensor) -> Tensor:
    """``sum_b m_bt l_bt / sum_b m_bt`` over the batch dim (-2): ``[..., B, T] -> [..., T]``
    with ``mass [B, T]`` (0 for an unlabelled entry); 0 for a task with no mass."""
    total = mass.sum(dim=-2).clamp_min(torch.finfo(mass.dtype).tiny)  # [...,T]
    return (per_example * mass).sum(dim=-2) / total  # [...,B,T] -> [...,T]


def _check_shapes(logits: Tensor, labels: Tensor, num_tasks: int) -> None:
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [B, T] or [S, B, T], got {tuple(logits.shape)}")
    if tuple(labels.shape) != tuple(logits.shape[-2:]):
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    if logits.shape[-1] != num_tasks:
        raise ValueError(f"logits have {logits.shape[-1]} tasks, expected {num_tasks}")


def task_losses(
    logits: Tensor,
    labels: Tensor,
    kinds: Sequence[str],
    weight: Tensor | None = None,
) -> Tensor:
    """Per-task losses, each a (weighted) mean over the batch.

    Args:
        logits: ``[B, T]`` or ``[S, B, T]`` raw model outputs.
        labels: ``[B, T]`` float labels (0/1 for binary tasks).
        kinds: T task kinds, ``"binary"`` (BCE with logits) or ``"regression"`` (MSE).
        weight: optional ``[B]`` per-example weights, or ``[B, T]`` per-task weights.

    NaN labels (unlabelled entries) count for nothing (see the module docs).

    Returns:
        ``[T]`` (or ``[S, T]``) losses with the graph attached.

    Example:
        >>> import torch
        >>> task_losses(torch.zeros(3, 2), torch.ones(3, 2), ["binary", "regression"])
        tensor([0.6931, 1.0000])
    """
    kinds = _check_kinds(kinds)
    _check_shapes(logits, labels, len(kinds))
    if (weight is None or weight.dim() == 1) and not bool(torch.isnan(labels).any()):
        return _batch_mean(elementwise_losses(logits, labels, kinds), weight)
    mass = labelled_weights(labels, weight, logits.dtype)  # [B,T]
    clean = torch.where(mass > 0, labels, torch.zeros_like(labels))  # NaN never reaches the loss
    return _labelled_mean(elementwise_losses(logits, clean, kinds), mass)


class TaskLoss(nn.Module):
    """Per-task losses with the task-kind mask and static task weights precomputed.

    Args:
        kinds: T task kinds, ``"binary"`` or ``"regression"``.
        task_weights: T static weights for :meth:`total` (default all 1, the
            paper's equal-weight sum).
        partial: T flags, True for a task whose labels may be NaN (unlabelled;
            ``TaskSpec.partial``). With none (the default) the loss takes the
            fully-labelled path, with no per-step mask.

    ``forward(logits [B,T] | [S,B,T], labels [B,T], weight [B] | [B,T] | None)``
    returns the per-task losses ``[T]`` (or ``[S,T]``), each normalised by the
    number (or weight) of labelled rows of its task; :meth:`total` returns their
    static-weighted sum over tasks (a scalar, or ``[S]``).

    Example:
        >>> import torch
        >>> loss = TaskLoss(["regression", "regression"], partial=[False, True])
        >>> labels = torch.tensor([[0.0, float("nan")], [0.0, 1.0]])
        >>> loss(torch.ones(2, 2), labels)          # task 2: the labelled row only
        tensor([1., 0.])
    """

    is_binary: Tensor
    task_weights: Tensor

    def __init__(self, kinds: Sequence[str], task_weights: Sequence[float] | None = None,
                 partial: Sequence[bool] | None = None):
        super().__init__()
        self.kinds = _check_kinds(kinds)
        t = len(self.kinds)
        if partial is not None and len(partial) != t:
            raise ValueError(f"partial must have {t} entries, got {len(partial)}")
        self.partial = bool(partial is not None and any(partial))
        w = torch.ones(t) if task_weights is None else torch.as_tensor(task_weights).float()
        if w.shape != (t,):
            raise ValueError(f"task_weights must have {t} entries, got {tuple(w.shape)}")
        self.register_buffer("is_binary", torch.tensor([k == "binary" for k in self.kinds]))
        self.register_buffer("task_weights", w)
        self._all_binary = all(k == "binary" for k in self.kinds)
        self._all_regression = all(k == "regression" for k in self.kinds)

    @classmethod
    def for_schema(cls, schema: Any, task_weights: Sequence[float] | None = None) -> TaskLoss:
        """The loss of a :class:`~adatt.data.schema.FeatureSchema`'s tasks (kinds, partial)."""
        return cls(schema.task_kinds, task_weights, [t.partial for t in schema.tasks])

    @property
    def num_tasks(self) -> int:
        return len(self.kinds)

    def per_task(self, weight: Tensor | None) -> bool:
        """Whether a batch with ``weight`` takes the per-task (masked) path."""
        return self.partial or (weight is not None and weight.dim() == 2)

    def mass(self, labels: Tensor, weight: Tensor | None) -> Tensor:
        """``[T]`` float64: per task the labelled rows' weight sum (their count without
        weights), the denominator of :meth:`forward`'s per-task mean."""
        return labelled_weights(labels, weight, torch.float64).sum(dim=0)  # [B,T] -> [T]

    def forward(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        _check_shapes(logits, labels, self.num_tasks)
        # Same-kind fast paths decided at construction: no device sync per step.
        mask = self.is_binary.to(logits.device)
        if not self.per_task(weight):
            per = masked_elementwise(logits, labels, mask, self._all_binary, self._all_regression)
            return _batch_mean(per, weight)  # [...,B,T] -> [...,T]
        mass = labelled_weights(labels, weight, logits.dtype)  # [B,T], 0 where unlabelled
        clean = torch.where(mass > 0, labels, torch.zeros_like(labels))  # [B,T], no NaN
        per = masked_elementwise(logits, clean, mask, self._all_binary, self._all_regression)
        return _labelled_mean(per, mass)  # [...,B,T] -> [...,T]

    def total(self, losses: Tensor) -> Tensor:
        """Static-weighted sum over tasks: ``[..., T] -> [...]``."""
        return (losses * self.task_weights.to(losses)).sum(dim=-1)

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}, task_weights={self.task_weights.tolist()}"


def global_batch_losses(loss_fn: TaskLoss, logits: Tensor, labels: Tensor,
                        weight: Tensor | None, *, distributed: bool = False,
                        live: bool = True) -> Tensor:
    """Per-task losses ``[T]`` of the global batch when each process holds part of it.

    In one process (``distributed=False``): ``loss_fn(logits, labels, weight)``.
    Distributed, per task the global-batch loss is ``L_t = sum_b w_b l_bt / sum_b
    w_b`` over the rows of every process (``w_b = 1`` without weights). This
    process's share is ``L_t^r = sum_{b in B_r} w_b l_bt / sum_b w_b``; one
    all-reduce of ``[T + 1]`` numbers per step gives the numerators and the global
    weight sum. The result has the value ``L_t`` and the gradient of the share
    (``share + (L_t - share).detach()``): summing gradients over processes gives
    ``d L_t / d theta`` (averaging them: multiply the loss by the process count),
    and whatever reads the values (a weighting, the logged loss) sees the
    single-process numbers on every process.

    Args:
        loss_fn: the run's :class:`TaskLoss`.
        logits: ``[B_r, T]`` this process's outputs.
        labels: ``[B_r, T]``; weight: ``[B_r]`` or None.
        distributed: a collective call over the default process group.
        live: False when this process has no row of the batch and computes one
            stand-in row whose loss counts for nothing.

    Example:
        >>> import torch
        >>> loss = TaskLoss(["regression"])
        >>> global_batch_losses(loss, torch.ones(2, 1), torch.zeros(2, 1), None)
        tensor([1.])
    """
    if not distributed:
        return loss_fn(logits, labels, weight)
    if getattr(loss_fn, "per_task", lambda _: False)(weight):
        return _global_per_task(loss_fn, logits, labels, weight, live)
    w = weight
    if w is None:
        mass = logits.new_tensor(float(labels.shape[0]) if live else 0.0, dtype=torch.float64)
        local = loss_fn(logits, labels, None)  # [T] mean over this process's rows
    else:
        mass = w.detach().double().sum() if live else w.new_zeros((), dtype=torch.float64)
        # all-zero local weights (or a stand-in row): any finite mean, times mass 0
        local = loss_fn(logits, labels, torch.where(mass > 0, w, torch.ones_like(w)))
    # [T] local sums of w*l, then [1] local weight sum -> [T+1], summed over processes
    buf = torch.cat([local.detach().double() * mass, mass.reshape(1)])
    dist.all_reduce(buf)
    total = buf[-1].clamp_min(torch.finfo(buf.dtype).tiny)  # all weights 0: loss 0
    value = (buf[:-1] / total).to(local.dtype)  # [T] global-batch losses
    share = local * (mass / total).to(local.dtype)  # [T] sum_{b in B_r} w_b l_bt / sum_b w_b
    return share + (value - share.detach())


def _global_per_task(loss_fn: TaskLoss, logits: Tensor, labels: Tensor, weight: Tensor | None,
                     live: bool) -> Tensor:
    """:func:`global_batch_losses` with a per-task mass (partial labels or ``[B, T]``
    weights): one all-reduce of ``[2T]`` numbers, the local numerators and masses."""
    t = labels.shape[-1]
    if live:
        mass = loss_fn.mass(labels, weight)  # [T] float64
    else:
        mass = torch.zeros(t, dtype=torch.float64, device=logits.device)
    local = loss_fn(logits, labels, weight)  # [T] mean over this process's labelled rows
    buf = torch.cat([local.detach().double() * mass, mass])  # [2T]
    dist.all_reduce(buf)
    total = buf[t:].clamp_min(torch.finfo(buf.dtype).tiny)  # [T]; a task with no label: 0
    value = (buf[:t] / total).to(local.dtype)  # [T] global-batch losses
    share = local * (mass / total).to(local.dtype)  # [T] this process's share
    return share + (value - share.detach())
