"""Evaluation metrics: pure functions and a per-task accumulator, exact and in float64.

Notation: N examples in the evaluated set, B batch, T tasks, C columns (any
number of independent score columns), S ensemble copies.

Inputs are raw model outputs: a logit for a binary task (the sigmoid is applied
here), the prediction itself for a regression task. Every pure function reduces
over dim 0 (the examples) and accepts ``[N]`` or ``[N, C]`` scores with labels of
the same shape (or broadcastable to it) and optional per-example weights ``[N]``
(or per-column weights ``[N, C]``, the shape of the scores);
it returns a float64 tensor of shape ``scores.shape[1:]`` (0-dim for ``[N]``).
With weights ``w_i`` (1 when absent) and ``q_i = sigmoid(x_i)``:

- ``auc``: exact ROC AUC, the weighted Mann-Whitney statistic with ties counted
  one half, ``sum_{i pos, j neg} w_i w_j ([x_i > x_j] + [x_i = x_j] / 2) / (W+ W-)``;
  equal to the area under the (weighted) ROC curve with tied scores joined by a
  straight segment (what scikit-learn computes). NaN when a class is absent.
- ``log_loss``: ``-sum w (y log q + (1-y) log(1-q)) / sum w``, computed from the
  logit as ``softplus(x) - y x`` (no clipping needed).
- ``normalized_entropy`` (He et al., ADKDD 2014): log loss divided by the entropy
  ``-(p log p + (1-p) log(1-p))`` of the weighted positive rate ``p`` of the
  evaluated set. NaN when ``p`` is 0 or 1.
- ``calibration``: ``sum w q / sum w y`` (mean prediction over positive rate). NaN
  when there is no positive.
- ``mse``, ``mae``: weighted mean squared / absolute error of the raw output.

:class:`MetricAccumulator` keeps running float64 sums over the whole evaluation
set (never an average of per-batch values) plus the binary-task scores needed by
the exact AUC; :class:`EnsembleMetricAccumulator` does the same for ``S`` models
at once (outputs ``[S, B, T]``), with one batched sort for the AUC of all ``S x T``
columns. :func:`relative_to_baseline` gives the paper's reporting unit, the
relative NE (or MSE) difference from a baseline model in percent.

Example:
    >>> import torch
    >>> scores = torch.tensor([0.1, 0.4, 0.4, 0.8])
    >>> labels = torch.tensor([0.0, 0.0, 1.0, 1.0])
    >>> float(auc(scores, labels))          # pairs (pos, neg): 1 + 1 + 1/2 + 1 of 4
    0.875
    >>> acc = MetricAccumulator(["click"], ["binary"])
    >>> acc.update(torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [0.0], [0.0]]))
    >>> m = acc.compute()["click"]
    >>> round(m["logloss"], 4), round(m["ne"], 4), m["calibration"], m["count"]
    (0.6931, 1.2326, 2.0, 4)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "auc",
    "log_loss",
    "normalized_entropy",
    "calibration",
    "mse",
    "mae",
    "binary_entropy",
    "MetricAccumulator",
    "EnsembleMetricAccumulator",
    "relative_difference",
    "relative_to_baseline",
    "DEFAULT_METRIC_BY_KIND",
    "CHAINED_METRICS",
    "chained_metrics",
]

#: the chained-probability (CTCVR) metric keys added to a conditional binary task's dict
CHAINED_METRICS = ("ctcvr_auc", "ctcvr_logloss", "ctcvr_ne", "ctcvr_calibration",
                   "ctcvr_pos_rate", "ctcvr_count")

DEFAULT_METRIC_BY_KIND: Mapping[str, str] = MappingProxyType({"binary": "ne", "regression": "mse"})

# Score rows sorted together by the AUC are processed in chunks of about this many
# elements (rows x N), to bound peak memory on large evaluation sets.
_AUC_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------- helpers


def _prepare(
    scores: Tensor, labels: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 ``x [N,*]``, ``y [N,*]`` and ``w`` broadcast to ``[N,*]`` (ones if None)."""
    x = scores.detach().to(torch.float64)
    y = labels.detach().to(device=x.device, dtype=torch.float64)
    x, y = torch.broadcast_tensors(x, y)
    if x.dim() == 0:
        raise ValueError("scores must have an example dimension (dim 0)")
    if weight is None:
        w = torch.ones_like(x)
    elif weight.dim() > 1 and tuple(weight.shape) == tuple(x.shape):  # per-column weights
        w = weight.detach().to(device=x.device, dtype=torch.float64)
    else:
        if weight.dim() != 1 or weight.shape[0] != x.shape[0]:
            raise ValueError(f"weight must be [N] with N={x.shape[0]}, got {tuple(weight.shape)}")
        w = weight.detach().to(device=x.device, dtype=torch.float64)
        w = w.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x)  # [N] -> [N,*]
    return x, y, w


def _wmean(v: Tensor, w: Tensor) -> Tensor:
    """Weighted mean over dim 0: ``[N,*] -> [*]``."""
    return (v * w).sum(0) / w.sum(0)


def _bce64(x: Tensor, y: Tensor, from_logits: bool) -> Tensor:
    """Elementwise float64 binary cross-entropy, from logits or from probabilities."""
    if from_logits:
        return F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return -(torch.xlogy(y, x) + torch.xlogy(1.0 - y, 1.0 - x))


def binary_entropy(p: Tensor) -> Tensor:
    """Entropy in nats of a Bernoulli(p): ``-(p log p + (1-p) log(1-p))``, 0 at p in {0, 1}.

    Example:
        >>> round(float(binary_entropy(torch.tensor(0.5, dtype=torch.float64))), 6)
        0.693147
    """
    return -(torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p))


def _ne_from_means(mean_logloss: Tensor, pos_rate: Tensor) -> Tensor:
    h = binary_entropy(pos_rate)
    return torch.where(h > 0, mean_logloss / h, torch.full_like(h, math.nan))


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, NaN where ``den == 0``."""
    return torch.where(den != 0, num / den, torch.full_like(num, math.nan))


def _auc_rows(scores: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Exact weighted AUC along the last dim: ``scores [..., N]`` -> ``[...]`` (float64).

    ``pos`` / ``neg`` (broadcastable to ``scores``, e.g. expanded label rows shared
    by ensemble copies) are each example's positive / negative mass, ``w y`` and
    ``w (1 - y)``. One sort of every row in a single call; tied scores form a
    group, whose positives beat the negatives of every lower group and half of
    the negatives in their own group. Rows are processed in chunks (along dim 0)
    of about ``_AUC_CHUNK_ELEMENTS`` elements to bound peak memory.
    """
    if scores.dim() == 1:
        return _auc_rows(scores[None], pos[None], neg[None])[0]  # [N] -> [1,N] -> []
    pos = pos.expand(scores.shape)  # view, no copy
    neg = neg.expand(scores.shape)  # view, no copy
    rows = scores.shape[0]
    if scores.numel() > _AUC_CHUNK_ELEMENTS and rows > 1:
        step = max(1, _AUC_CHUNK_ELEMENTS * rows // scores.numel())
        return torch.cat(
            [
                _auc_rows(scores[i : i + step], pos[i : i + step], neg[i : i + step])
                for i in range(0, rows, step)
            ]
        )
    s, order = torch.sort(scores, dim=-1)  # [...,N], ascending per row
    p = pos.gather(-1, order)  # [...,N]
    q = neg.gather(-1, order)  # [...,N]
    new_group = torch.ones_like(s, dtype=torch.bool)  # [...,N]
    new_group[..., 1:] = s[..., 1:] != s[..., :-1]
    gid = new_group.long().cumsum(-1) - 1  # [...,N]: tie-group index within each row
    pos_g = torch.zeros_like(p).scatter_add_(-1, gid, p)  # [...,N]: positive mass of group g
    neg_g = torch.zeros_like(q).scatter_add_(-1, gid, q)  # [...,N]: negative mass of group g
    neg_below = neg_g.cumsum(-1) - neg_g  # [...,N]: negative mass strictly below group g
    wins = (pos_g * (neg_below + 0.5 * neg_g)).sum(-1)  # [...,N] -> [...]
    return _safe_ratio(wins, pos.sum(-1) * neg.sum(-1))  # [...]


# ----------------------------------------------------------------------------- pure functions


def auc(scores: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Exact ROC AUC (weighted Mann-Whitney with ties counted 1/2), NaN with one class.

    Args:
        scores: ``[N]`` or ``[N, C]``, any monotone score (logits or probabilities).
        labels: 0/1 labels, same shape (or broadcastable).
        weight: optional ``[N]`` example weights.

    Returns:
        float64 tensor of shape ``scores.shape[1:]``.

    Example:
        >>> import torch
        >>> float(auc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 1.0])))
        0.75
    """
    x, y, w = _prepare(scores, labels, weight)
    # examples last: [N,*] -> [*,N]
    x, y, w = (t.movedim(0, -1) for t in (x, y, w))
    return _auc_rows(x, w * y, w * (1.0 - y))  # [*,N] -> [*]


def log_loss(
    scores: Tensor, labels: Tensor, weight: Tensor | None = None, from_logits: bool = True
) -> Tensor:
    """Weighted mean binary cross-entropy (nats) in float64.

    Args:
        scores: ``[N]`` or ``[N, C]`` logits (or probabilities with ``from_logits=False``;
            a probability of exactly 0 or 1 on the wrong side gives ``inf``, no clipping).
        labels: labels in [0, 1], same shape (or broadcastable).
        weight: optional ``[N]`` example weights.
        from_logits: whether ``scores`` are logits.

    Returns:
        float64 tensor of shape ``scores.shape[1:]``.

    Example:
        >>> import torch
        >>> round(float(log_loss(torch.zeros(3), torch.tensor([0.0, 1.0, 1.0]))), 6)
        0.693147
    """
    x, y, w = _prepare(scores, labels, weight)
    return _wmean(_bce64(x, y, from_logits), w)


def normalized_entropy(
    scores: Tensor, labels: Tensor, weight: Tensor | None = None, from_logits: bool = True
) -> Tensor:
    """Normalized Entropy (He et al. 2014): log loss / entropy of the set's positive rate.

    ``NE = log_loss / -(p log p + (1-p) log(1-p))`` with ``p`` the (weighted)
    positive rate of the evaluated set; lower is better, 1 is the loss of always
    predicting ``p``. NaN when ``p`` is 0 or 1.

    Args:
        scores: ``[N]`` or ``[N, C]`` logits (probabilities with ``from_logits=False``).
        labels: labels in [0, 1], same shape (or broadcastable).
        weight: optional ``[N]`` example weights.
        from_logits: whether ``scores`` are logits.

    Returns:
        float64 tensor of shape ``scores.shape[1:]``.

    Example:
        >>> import torch
        >>> y = torch.tensor([0.0, 0.0, 0.0, 1.0])
        >>> round(float(normalized_entropy(torch.full((4,), 0.25), y, from_logits=False)), 6)
        1.0
    """
    x, y, w = _prepare(scores, labels, weight)
    return _ne_from_means(_wmean(_bce64(x, y, from_logits), w), _wmean(y, w))


def calibration(
    scores: Tensor, labels: Tensor, weight: Tensor | None = None, from_logits: bool = True
) -> Tensor:
    """Mean predicted probability over the positive rate (1 is perfectly calibrated).

    Returns NaN when the set has no positive.

    Example:
        >>> import torch
        >>> float(calibration(torch.zeros(4), torch.tensor([1.0, 0.0, 0.0, 0.0])))
        2.0
    """
    x, y, w = _prepare(scores, labels, weight)
    q = torch.sigmoid(x) if from_logits else x
    return _safe_ratio((q * w).sum(0), (y * w).sum(0))


def mse(predictions: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean squared error in float64.

    Example:
        >>> import torch
        >>> float(mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])))
        2.5
    """
    x, y, w = _prepare(predictions, labels, weight)
    return _wmean((x - y).square(), w)


def mae(predictions: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Weighted mean absolute error in float64.

    Example:
        >>> import torch
        >>> float(mae(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0])))
        1.5
    """
    x, y, w = _prepare(predictions, labels, weight)
    return _wmean((x - y).abs(), w)


def chained_metrics(logit_a: Tensor, logit_b: Tensor, label: Tensor, weight: Tensor,
                    count: int | None = None) -> list[dict[str, float]]:
    """Metrics of the chained probability ``p = sigmoid(x_A) * sigmoid(x_B)`` (ESMM's
    CTCVR view of a task B defined where task A is 1) against ``label = A and B``.

    Args:
        logit_a, logit_b: ``[S, N]`` (or ``[N]``) logits of A and of B given A.
        label: ``[N]`` 0/1, ``A and B``.
        weight: ``[N]`` example weights (0 leaves a row out).
        count: the reported ``ctcvr_count`` (default: rows of positive weight).

    Returns:
        One dict per row of the logits with the keys :data:`CHAINED_METRICS`: AUC of
        ``p``, log loss ``-(y log p + (1-y) log(1-p))`` computed from the logits,
        NE, calibration ``sum w p / sum w y``, the positive rate and the count.

    Example (two rows, each p = sigmoid(0) * sigmoid(0) = 0.25):
        >>> import torch
        >>> xa = torch.tensor([0.0, 0.0]); xb = torch.tensor([0.0, 0.0])
        >>> m = chained_metrics(xa, xb, torch.tensor([1.0, 0.0]), torch.ones(2))[0]
        >>> round(m["ctcvr_logloss"], 6) == round((-math.log(0.25) - math.log(0.75)) / 2, 6)
        True
        >>> m["ctcvr_calibration"], m["ctcvr_auc"], m["ctcvr_count"]
        (0.5, 0.5, 2)
    """
    xa = logit_a.detach().to(torch.float64)
    xb = logit_b.detach().to(device=xa.device, dtype=torch.float64)
    if xa.dim() == 1:
        xa, xb = xa[None], xb[None]  # [N] -> [1,N]
    y = label.detach().to(device=xa.device, dtype=torch.float64)  # [N]
    w = weight.detach().to(device=xa.device, dtype=torch.float64)  # [N]
    log_p = F.logsigmoid(xa) + F.logsigmoid(xb)  # [S,N]
    log_q = torch.log((-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny))  # log(1-p)
    ll = -(y * log_p + (1.0 - y) * log_q)  # [S,N]
    w_sum = w.sum()
    mean_ll = (ll * w).sum(-1) / w_sum  # [S]
    pos_rate = (w * y).sum() / w_sum  # []
    ne = _ne_from_means(mean_ll, pos_rate.expand_as(mean_ll))  # [S]
    cal = _safe_ratio((log_p.exp() * w).sum(-1), (w * y).sum().expand_as(mean_ll))  # [S]
    aucs = _auc_rows(log_p, (w * y)[None], (w * (1.0 - y))[None])  # [S,N] -> [S]
    n = int((w > 0).sum()) if count is None else int(count)
    rows = torch.stack([aucs, mean_ll, ne, cal, pos_rate.expand_as(mean_ll)], -1).tolist()
    return [dict(zip(CHAINED_METRICS, [*r, n], strict=True)) for r in rows]


# ----------------------------------------------------------------------------- accumulators


class EnsembleMetricAccumulator:
    """Per-task metrics of S models at once, accumulated over a whole evaluation set.

    Running float64 sums (weight, labels, log loss, predicted probability,
    squared and absolute error) are kept per (copy, task); the binary-task
    logits, labels and weights are kept for the exact AUC, computed at the end
    with one batched sort over all ``S x T_binary`` columns. State lives on the
    device of the first batch.

    Args:
        task_names: the T task names (keys of the result).
        task_kinds: the T task kinds, ``"binary"`` or ``"regression"``.
        conditions: ``{B: A}`` for binary tasks B defined where the binary task A
            is 1 (``TaskSpec.condition``): B's dict also gets the chained
            (ESMM's CTCVR) metrics :data:`CHAINED_METRICS` of ``P(A) * P(B | A)``.

    ``update(logits [S,B,T], labels [B,T], weight [B] | [B,T] | None)``;
    ``compute()`` returns S dicts ``{task: {metric: value}}`` with, for a binary
    task, ``auc, logloss, ne, calibration, pos_rate, count`` and for a regression
    task ``mse, mae, count``. Every metric of a task is over its *labelled* rows
    (a NaN label is unlabelled: it counts nowhere), weighted by the row weight
    ``[B]`` or the task's column of a per-task weight ``[B, T]``; ``count`` is the
    task's number of labelled rows (unweighted; 0 gives NaN metrics).

    Example:
        >>> import torch
        >>> acc = EnsembleMetricAccumulator(["y"], ["regression"])
        >>> acc.update(torch.tensor([[[1.0], [3.0]], [[0.0], [0.0]]]), torch.zeros(2, 1))
        >>> [r["y"]["mse"] for r in acc.compute()]
        [5.0, 0.0]
    """

    def __init__(self, task_names: Sequence[str], task_kinds: Sequence[str],
                 conditions: Mapping[str, str] | None = None):
        self.task_names = list(task_names)
        self.task_kinds = list(task_kinds)
        kind = dict(zip(self.task_names, self.task_kinds, strict=False))
        self.conditions = {b: a for b, a in (conditions or {}).items()
                           if kind.get(a) == "binary" and kind.get(b) == "binary"}
        if len(self.task_names) != len(self.task_kinds):
            raise ValueError("one kind per task name is required")
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task names must be unique, got {self.task_names}")
        for k in self.task_kinds:
            if k not in ("binary", "regression"):
                raise ValueError(f"task kind must be binary or regression, got {k!r}")
        self._bin = [i for i, k in enumerate(self.task_kinds) if k == "binary"]
        self._reg = [i for i, k in enumerate(self.task_kinds) if k == "regression"]
        self.reset()

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._copies: int | None = None
        self._count: Tensor | None = None  # [T] labelled rows per task
        self._sums: dict[str, Tensor] = {}
        self._scores: list[Tensor] = []  # each [S,B,Tb]
        self._labels: list[Tensor] = []  # each [B,Tb], NaN where unlabelled
        self._weights: list[Tensor] = []  # each [B] or [B,Tb]

    def _add(self, key: str, value: Tensor) -> None:
        if key in self._sums:
            self._sums[key] += value
        else:
            self._sums[key] = value

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> None:
        """Add one batch: ``logits [S,B,T]``, ``labels [B,T]`` (NaN: unlabelled),
        ``weight [B]``, ``[B,T]`` (per task) or None."""
        if logits.dim() != 3 or logits.shape[-1] != self.num_tasks:
            raise ValueError(f"logits must be [S, B, {self.num_tasks}], got {tuple(logits.shape)}")
        s, b, t = logits.shape
        if tuple(labels.shape) != (b, self.num_tasks):
            raise ValueError(f"labels must be [{b}, {self.num_tasks}], got {tuple(labels.shape)}")
        if self._copies is None:
            self._copies = s
        elif s != self._copies:
            raise ValueError(f"got {s} ensemble copies, earlier batches had {self._copies}")
        dev = logits.device
        x = logits.detach().to(torch.float64)  # [S,B,T]
        y = labels.detach().to(device=dev, dtype=torch.float64)  # [B,T]
        if weight is None:
            w = torch.ones(b, dtype=torch.float64, device=dev)
        else:
            if tuple(weight.shape) not in ((b,), (b, t)):
                raise ValueError(f"weight must be [{b}] or [{b}, {t}], got {tuple(weight.shape)}")
            w = weight.detach().to(device=dev, dtype=torch.float64)
        present = ~torch.isnan(y)  # [B,T]
        if w.dim() == 1 and bool(present.all()):
            # every entry labelled, one weight per row: the plain sums
            wc = w[:, None]  # [B] -> [B,1]
            self._add("w", w.sum().expand(t).clone())  # [T], the same sum for every task
            count = torch.full((t,), b, dtype=torch.int64, device=dev)
        else:
            w2 = w[:, None].expand(b, t) if w.dim() == 1 else w  # [B] -> [B,T]
            wc = torch.where(present, w2, torch.zeros_like(w2))  # [B,T], 0 where unlabelled
            y = torch.where(present, y, torch.zeros_like(y))  # [B,T], NaN never summed
            self._add("w", wc.sum(0))  # [B,T] -> [T]
            count = present.sum(0)  # [T]
            w = w2
        self._count = count if self._count is None else self._count + count
        if self._bin:
            bi = torch.tensor(self._bin, device=dev)
            xb = x.index_select(-1, bi)  # [S,B,T] -> [S,B,Tb]
            yb = y.index_select(-1, bi)  # [B,T] -> [B,Tb]
            wb = wc if wc.shape[-1] == 1 else wc.index_select(-1, bi)  # [B,1] | [B,Tb]
            self._add("wy", (yb * wb).sum(0))  # [B,Tb] -> [Tb]
            bce = _bce64(xb, yb.expand_as(xb), from_logits=True)  # [S,B,Tb]
            self._add("wll", (bce * wb).sum(1))  # [S,B,Tb] -> [S,Tb]
            self._add("wq", (torch.sigmoid(xb) * wb).sum(1))  # [S,B,Tb] -> [S,Tb]
            self._scores.append(logits.detach().index_select(-1, bi))  # [S,B,Tb], input dtype
            raw = labels.detach().to(device=dev, dtype=torch.float64)  # [B,T], NaN kept
            self._labels.append(raw.index_select(-1, bi))  # [B,Tb]
            self._weights.append(w if w.dim() == 1 else w.index_select(-1, bi))  # [B] | [B,Tb]
        if self._reg:
            ri = torch.tensor(self._reg, device=dev)
            wr = wc if wc.shape[-1] == 1 else wc.index_select(-1, ri)  # [B,1] | [B,Tr]
            err = x.index_select(-1, ri) - y.index_select(-1, ri)  # [S,B,Tr]
            self._add("wse", (err.square() * wr).sum(1))  # [S,B,Tr] -> [S,Tr]
            self._add("wae", (err.abs() * wr).sum(1))  # [S,B,Tr] -> [S,Tr]

    def _binary_columns(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The stored binary columns: scores ``[S,N,Tb]``, labels ``[N,Tb]`` (NaN:
        unlabelled), the labels with NaN as 0, and the masses ``[N,Tb]`` (weight
        where labelled, 0 elsewhere)."""
        scores = torch.cat(self._scores, dim=1)  # [S,N,Tb]
        tb = scores.shape[-1]
        y = torch.cat(self._labels, dim=0)  # [N,Tb]
        w = torch.cat([v[:, None].expand(-1, tb) if v.dim() == 1 else v
                       for v in self._weights], dim=0)  # [N,Tb]
        present = ~torch.isnan(y)  # [N,Tb]
        y0 = torch.where(present, y, torch.zeros_like(y))  # [N,Tb]
        return scores, y, y0, torch.where(present, w, torch.zeros_like(w))

    def _compute(self) -> list[dict[str, dict[str, float]]]:
        if self._copies is None or self._count is None:
            raise RuntimeError("compute() called before any update()")
        s = self._copies
        w_sum = self._sums["w"]  # [T]
        counts = self._count.tolist()
        out: list[dict[str, dict[str, float]]] = [{} for _ in range(s)]
        if self._bin:
            tb = len(self._bin)
            bi = torch.tensor(self._bin, device=w_sum.device)
            wb = w_sum.index_select(0, bi)  # [Tb]
            pos_rate = self._sums["wy"] / wb  # [Tb]
            mean_ll = self._sums["wll"] / wb  # [S,Tb]
            ne = _ne_from_means(mean_ll, pos_rate.expand(s, tb))  # [S,Tb]
            cal = _safe_ratio(self._sums["wq"], self._sums["wy"].expand(s, tb))  # [S,Tb]
            scores, _, y0, mass = self._binary_columns()
            # label masses shared by the S copies: [N,Tb] -> [1,Tb,N], broadcast, never copied
            aucs = _auc_rows(scores.transpose(1, 2), (mass * y0).T.contiguous()[None],
                             (mass * (1.0 - y0)).T.contiguous()[None])  # [S,Tb,N] -> [S,Tb]
            table = torch.stack(
                [aucs, mean_ll, ne, cal, pos_rate.expand(s, tb)], dim=-1
            ).tolist()  # [S,Tb,5]
            for j, t in enumerate(self._bin):
                for c in range(s):
                    a, ll, e, k, p = table[c][j]
                    out[c][self.task_names[t]] = {
                        "auc": a,
                        "logloss": ll,
                        "ne": e,
                        "calibration": k,
                        "pos_rate": p,
                        "count": counts[t],
                    }
            for task, metrics in self._chained().items():
                for c in range(s):
                    out[c][task].update(metrics[c])
        if self._reg:
            ri = torch.tensor(self._reg, device=w_sum.device)
            wr = w_sum.index_select(0, ri)[None]  # [1,Tr]
            table = torch.stack(
                [self._sums["wse"] / wr, self._sums["wae"] / wr], dim=-1
            ).tolist()  # [S,Tr,2]
            for j, t in enumerate(self._reg):
                for c in range(s):
                    se, ae = table[c][j]
                    out[c][self.task_names[t]] = {"mse": se, "mae": ae, "count": counts[t]}
        # Task order of the result follows task_names.
        return [{name: r[name] for name in self.task_names} for r in out]

    def _chained(self) -> dict[str, list[dict[str, float]]]:
        """Per binary task B with a binary ``condition`` A, per copy, the chained
        (CTCVR) metrics of ``P(A) * P(B | A)`` against ``A and B``
        (see :data:`CHAINED_METRICS`)."""
        if not self.conditions:
            return {}
        scores, y, _, _ = self._binary_columns()
        w_all = torch.cat([v[:, None].expand(-1, scores.shape[-1]) if v.dim() == 1 else v
                           for v in self._weights], dim=0)  # [N,Tb]
        col = {self.task_names[t]: j for j, t in enumerate(self._bin)}
        out: dict[str, list[dict[str, float]]] = {}
        for task, cond in self.conditions.items():
            if task not in col or cond not in col:
                continue
            a, bt = col[cond], col[task]
            ya, yb = y[:, a], y[:, bt]  # [N] each, NaN where unlabelled
            # rows where the chained label is known: A labelled, and B labelled unless A = 0
            rows = ~torch.isnan(ya) & ((ya == 0) | ~torch.isnan(yb))  # [N]
            label = torch.where(rows & (ya == 1) & (yb == 1), 1.0, 0.0).double()  # [N]
            mass = torch.where(rows, w_all[:, a], torch.zeros_like(w_all[:, a]))  # [N]
            xa = scores[..., a].double()  # [S,N]
            xb = scores[..., bt].double()  # [S,N]
            out[task] = chained_metrics(xa, xb, label, mass, count=int(rows.sum()))
        return out

    def compute(self) -> list[dict[str, dict[str, float]]]:
        """One ``{task: {metric: value}}`` dict per ensemble copy."""
        return self._compute()


class MetricAccumulator(EnsembleMetricAccumulator):
    """Per-task metrics of one model, accumulated over a whole evaluation set.

    Same as :class:`EnsembleMetricAccumulator` with ``logits [B,T]``; ``compute()``
    returns one ``{task: {metric: value}}`` dict.

    Args:
        task_names: the T task names (keys of the result).
        task_kinds: the T task kinds, ``"binary"`` or ``"regression"``.

    Example:
        >>> import torch
        >>> acc = MetricAccumulator(["ctr", "time"], ["binary", "regression"])
        >>> logits = torch.tensor([[2.0, 1.0], [-1.0, 0.0]])
        >>> labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> for _ in range(2):
        ...     acc.update(logits, labels)
        >>> r = acc.compute()
        >>> r["ctr"]["auc"], r["ctr"]["pos_rate"], r["time"]["mse"], r["time"]["count"]
        (1.0, 0.5, 0.5, 4)
    """

    def update(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> None:
        """Add one batch: ``logits [B,T]``, ``labels [B,T]``, ``weight [B]`` or None."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be [B, T], got {tuple(logits.shape)}")
        super().update(logits.unsqueeze(0), labels, weight)  # [B,T] -> [1,B,T]

    def compute(self) -> dict[str, dict[str, float]]:  # type: ignore[override]
        """``{task: {metric: value}}``."""
        return self._compute()[0]


# ----------------------------------------------------------------------------- reporting


def relative_difference(value: float, baseline: float) -> float:
    """``(value - baseline) / baseline * 100``, in percent.

    Example:
        >>> relative_difference(0.99, 1.0)
        -1.0000000000000009
    """
    if baseline == 0:
        raise ValueError("relative difference from a zero baseline is undefined")
    return (value - baseline) / baseline * 100.0


def relative_to_baseline(
    results: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    metric_by_kind: Mapping[str, str] = DEFAULT_METRIC_BY_KIND,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Per task, the relative difference (percent) of a model's metric from a baseline's.

    The paper's reporting unit: NE for binary tasks, MSE for regression tasks,
    relative to Shared-bottom; negative is better for both.

    Args:
        results: ``{task: {metric: value}}`` of the model (e.g. ``MetricAccumulator.compute()``).
        baseline: the same for the baseline model; must hold every task of ``results``.
        metric_by_kind: the metric compared for each task kind.
        kinds: ``{task: kind}``; when omitted a task holding ``"ne"`` is binary, one
            holding ``"mse"`` regression.

    Returns:
        ``{task: percent}`` in the task order of ``results``.

    Example:
        >>> relative_to_baseline({"a": {"ne": 0.8}, "b": {"mse": 3.0}},
        ...                      {"a": {"ne": 1.0}, "b": {"mse": 2.0}})
        {'a': -19.999999999999996, 'b': 50.0}
    """
    out: dict[str, float] = {}
    for task, metrics in results.items():
        if task not in baseline:
            raise KeyError(f"task {task!r} is missing from the baseline results")
        if kinds is not None:
            kind = kinds[task]
        elif "ne" in metrics:
            kind = "binary"
        elif "mse" in metrics:
            kind = "regression"
        else:
            raise ValueError(f"cannot tell the kind of task {task!r}; pass kinds=")
        if kind not in metric_by_kind:
            raise KeyError(f"no metric given for task kind {kind!r} in {dict(metric_by_kind)}")
        name = metric_by_kind[kind]
        out[task] = relative_difference(float(metrics[name]), float(baseline[task][name]))
    return out
