"""Batched linear building blocks shared by every model.

Notation: B batch, S slots (independent linear maps run as one batched
product), D input width, W output width, Dd dense width, F categorical fields.

* :class:`InputLinear` -- the first linear map applied to a raw example
  ``x = [dense, onehot(cat)]`` (or ``[dense, embed(cat)]``). In one-hot mode the
  categorical part is an embedding-bag *gather* of weight rows, never a
  product with one-hot columns: ``onehot(c) @ W == W[c]``.
* :class:`SlotLinear` -- S linear maps, slot ``s`` reading its own input
  ``x[s]``, computed as one ``baddbmm``. Slots may have different output widths;
  narrower slots are zero-padded to the widest.

Example:
    >>> import torch
    >>> lin = InputLinear(dense_dim=2, cardinalities=[3, 4], embedding_dim=None, out_features=5)
    >>> lin(torch.randn(8, 2), torch.zeros(8, 2, dtype=torch.long)).shape
    torch.Size([8, 5])
    >>> SlotLinear(3, 4, [2, 2, 2])(torch.randn(3, 8, 4)).shape
    torch.Size([3, 8, 2])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "activation_fn", "align_pad", "bag_sum", "gate_softmax",
           "InputLinear", "SlotLinear", "row_splits", "slot_baddbmm",
           "uniform_init_"]

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "leaky_relu": F.leaky_relu,
}


def activation_fn(name: str):
    """The element-wise activation called ``name`` (relu, gelu, silu, tanh, leaky_relu)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def uniform_init_(t: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


class _BagSum(torch.autograd.Function):
    """``out[b] = sum_f weight[idx[b, f]]`` whose weight gradient is an embedding bag itself.

    On CPU, ``embedding_bag``'s own backward is about twice as slow as its
    forward. The gradient of weight row ``r`` is the sum of the output
    gradients of the examples that hold ``r``: after one stable sort of the
    ``B * F`` indices that is a forward ``embedding_bag`` over the output
    gradient, with one bag per weight row (parallel over rows). Deterministic:
    the stable sort fixes the order of every sum.
    """

    @staticmethod
    def forward(ctx, idx: Tensor, weight: Tensor, fields_in_order: bool = False) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows, ctx.fields_in_order = weight.shape[0], fields_in_order
        # detached: the forward-only kernel, without the bookkeeping its own backward needs
        return F.embedding_bag(idx, weight.detach(), mode="sum")  # [B,F] -> [B,N]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (idx,) = ctx.saved_tensors
        examples, starts = _pairs_by_row(idx, ctx.rows, ctx.fields_in_order)
        # weight row r's gradient: the sum of grad_out over the examples that hold r
        return None, F.embedding_bag(examples, grad_out, starts, mode="sum"), None  # -> [C,N]


def _pairs_by_row(idx: Tensor, rows: int, fields_in_order: bool = False) -> tuple[Tensor, Tensor]:
    """The ``B * F`` (example, row) pairs of ``idx [B, F]`` grouped by row, stably.

    Returns ``examples [B*F]`` (the example of each pair, pairs of row 0 first,
    each row's pairs in example order) and ``starts [C]`` (each row's first
    pair). Up to 32,767 rows the indices fit int16, whose stable sort numpy
    does as a radix sort, several times faster than ``torch.sort``; the
    order is the same. ``fields_in_order``: every row of column ``f`` is
    below every row of column ``f + 1`` (one field per column, as
    :class:`InputLinear` lays them out); the order is then each column's own
    stable sort, column after column: F short sorts instead of one long one,
    whose positions are already the examples.
    """
    F_ = idx.shape[1]
    if rows <= np.iinfo(np.int16).max:
        if fields_in_order:
            cols = idx.t().to(torch.int16).numpy()  # [B,F] -> [F,B]: field f's rows, by example
            order = np.argsort(cols, axis=1, kind="stable")  # [F,B] examples by row, per field
            count = np.bincount(cols.reshape(-1), minlength=rows)  # [C] pairs per weight row
            return torch.from_numpy(order.reshape(-1)), torch.from_numpy(np.cumsum(count) - count)
        flat = idx.reshape(-1).to(torch.int16).numpy()  # [B,F] -> [B*F], entry b*F+f
        order = np.argsort(flat, kind="stable")  # [B*F] pairs by weight row, then example
        count = np.bincount(flat, minlength=rows)  # [C] pairs per weight row
        return torch.from_numpy(order // F_), torch.from_numpy(np.cumsum(count) - count)
    flat = idx.reshape(-1)  # [B,F] -> [B*F], entry b*F+f
    order = torch.sort(flat, stable=True).indices  # [B*F] pairs by weight row, then example
    count = torch.bincount(flat, minlength=rows)  # [C] pairs per weight row
    return order.div(F_, rounding_mode="floor"), count.cumsum(0) - count


def bag_sum(idx: Tensor, weight: Tensor, fields_in_order: bool = False) -> Tensor:
    """``sum_f weight[idx[:, f]]``: the one-hot input times ``weight``, as a gather.

    Shapes: ``idx [B, F]`` int64 global row indices, ``weight [C, N]`` -> ``[B, N]``.
    Same values as ``F.embedding_bag(idx, weight, mode="sum")``; when the
    weight needs a gradient on CPU, the backward is one sort and one forward
    embedding bag (:class:`_BagSum`) instead of the embedding-bag backward.
    ``fields_in_order``: the caller promises that every index of column ``f``
    is below every index of column ``f + 1``, which makes that sort cheaper.

    Example:
        >>> w = torch.arange(12.0).reshape(4, 3)
        >>> bag_sum(torch.tensor([[0, 2], [1, 3]]), w)
        tensor([[ 6.,  8., 10.],
                [12., 14., 16.]])
    """
    if weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu":
        return _BagSum.apply(idx, weight, fields_in_order)
    return F.embedding_bag(idx, weight, mode="sum")  # [B,F] -> [B,N]


#: last-dim widths up to which :func:`gate_softmax` computes with whole-tensor ops
SMALL_SOFTMAX_MAX = 16


#: embedding mode: largest field cardinality for which the product table may be used
MAX_TABLE_CARD = 8192
#: CPU products whose output width is not a multiple of this many floats (64 bytes, a
#: cache line) run with it padded up to one (see :func:`align_pad`)
ALIGN = 16


class _DropPad(torch.autograd.Function):
    """``t[..., :n]`` (a view) whose backward pads the gradient in one pass.

    Autograd's own slice backward (and ``F.pad``) zero-fills a full-width
    gradient and then copies into it; a concatenation with the zero columns
    writes each element once.
    """

    generate_vmap_rule = True  # SlotLinear runs under the ensemble's vmap

    @staticmethod
    def forward(t: Tensor, n: int) -> Tensor:
        return t.narrow(-1, 0, n)  # [..., n+pad] -> [..., n]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        t, n = inputs
        ctx.pad = t.shape[-1] - n

    @staticmethod
    def backward(ctx, grad: Tensor):
        zeros = grad.new_zeros((*grad.shape[:-1], ctx.pad))  # [..., pad]
        return torch.cat([grad, zeros], -1), None  # [..., n] -> [..., n+pad]


def align_pad(in_dim: int, out_dim: int, x: Tensor) -> int:
    """Zero columns to add to a ``[*, in_dim] x [in_dim, out_dim]`` product's weight.

    On CPU, a product whose output rows are not a whole number of 64-byte cache
    lines runs markedly slower: ``[1024, 512] x [512, 1554]`` (six experts of
    256 and three gates of 6, the industrial first layer) at 96 GFLOP/s
    against 139 padded to 1568 columns, on 2 threads of the development
    machine. Products large enough for that to matter (``in_dim * out_dim``
    at least 65,536, each at least 128) are computed with the weight padded by
    this many zero columns and the output sliced back, a view; the padding is
    not a parameter and changes no value. Smaller products (census sizes)
    gain nothing and pay for the copies, so they are left alone. 0 on GPU,
    when exporting and when the width is already aligned.
    """
    if (x.device.type != "cpu" or min(in_dim, out_dim) < 128 or in_dim * out_dim < 65_536
            or out_dim % ALIGN == 0 or _exporting()):
        return 0
    return -out_dim % ALIGN


def row_splits(x: Tensor, w: Tensor) -> int:
    """Row blocks per slot that keep a CPU batched product's threads equally busy.

    PyTorch's CPU ``bmm`` / ``baddbmm`` gives each thread whole matrices of the
    batch, so 3 slots on 2 threads take as long as 4: the industrial second
    level of AdaTT-sp (``x [3, 1024, 256]``, ``w [3, 256, 272]``) runs at 101
    GFLOP/s against 132-150 for 2, 4 or 1 slots, on 2 threads of the
    development machine. Splitting each slot's rows into ``k`` blocks
    (``S * k`` a multiple of the thread count) balances it again: forward and
    backward 1.28x faster there, 1.09-1.13x for census-size second levels
    (``[3, 512, 128] x [3, 128, 64]``). Returns that ``k``, or 1 where nothing
    is gained or it does not apply: one thread or a slot count the threads
    divide, small weights (``D * W`` under 8,192: tiny tower products got
    slower), blocks under 64 rows, GPU, not fp32, autocast, exporting, and
    under ``vmap`` (the ensemble's copies already fill the threads).

    Shapes: ``x [S, B, D]``, ``w [S, D, W]``.
    """
    S, B, D = x.shape
    threads = torch.get_num_threads()
    k = threads // math.gcd(S, threads)
    if (_exporting()  # first: no guard on the batch size in an exported graph
            or k == 1 or D * w.shape[-1] < 8192 or B % k or B // k < 64 or x.device.type != "cpu"
            or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or torch._C._functorch.is_batchedtensor(x)):
        return 1
    return k


def slot_baddbmm(b: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """``torch.baddbmm(b, x, w)`` with the threads balanced (see :func:`row_splits`).

    Shapes: ``b [S, 1, W]``, ``x [S, B, D]``, ``w [S, D, W]`` -> ``[S, B, W]``;
    the same values as ``baddbmm``, forward and backward.

    Example:
        >>> x, w, b = torch.randn(3, 256, 128), torch.randn(3, 128, 64), torch.randn(3, 1, 64)
        >>> torch.allclose(slot_baddbmm(b, x, w), torch.baddbmm(b, x, w), atol=1e-5)
        True
    """
    S, B, D = x.shape
    k = row_splits(x, w)
    if k == 1:
        return torch.baddbmm(b, x, w)  # [S,B,D] x [S,D,W] -> [S,B,W]
    W = w.shape[-1]
    # each slot's weight once per row block; its gradient sums the blocks' back
    out = torch.baddbmm(b.repeat_interleave(k, 0), x.reshape(S * k, B // k, D),  # [S*k,B/k,D]
                        w.repeat_interleave(k, 0))  # [S*k,B/k,D] x [S*k,D,W] -> [S*k,B/k,W]
    return out.view(S, B, W)  # [S*k,B/k,W] -> [S,B,W]


class _SmallSoftmax(torch.autograd.Function):
    """Softmax over a short last dimension from whole-tensor ops (see :func:`gate_softmax`)."""

    generate_vmap_rule = True  # the vectorised ensemble runs models under torch.func.vmap

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()  # [..., K]; -inf entries -> 0
        return e.div_(e.sum(-1, keepdim=True))  # [..., K] / [..., 1]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        gp = grad * p  # [..., K]
        return gp - p * gp.sum(-1, keepdim=True)  # p * (grad - <grad, p>)


def gate_softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dimension, fast when it is short (a gate over a few experts).

    On CPU PyTorch's softmax kernel works row by row; for rows of a few
    entries (gates over 2-16 experts, ``[B, G, K]``) that costs 3-4x more
    than whole-tensor ``amax``/``exp``/``sum``/``div`` ops, forward and
    backward together. This function uses those for float32/float64 CPU
    tensors with ``K <= 16`` and ``torch.softmax`` otherwise (GPU, bf16
    under autocast, long rows). Entries at ``-inf`` get weight 0, as with
    ``torch.softmax``; a row must hold at least one finite entry.

    Shapes: ``[..., K] -> [..., K]``.

    Example:
        >>> gate_softmax(torch.tensor([[0.0, float("-inf"), 0.0]]))
        tensor([[0.5000, 0.0000, 0.5000]])
    """
    if (logits.device.type == "cpu" and logits.shape[-1] <= SMALL_SOFTMAX_MAX
            and logits.dtype in (torch.float32, torch.float64) and not _exporting()):
        if torch.is_grad_enabled():  # (under vmap requires_grad is not visible)
            return _SmallSoftmax.apply(logits)
        return _SmallSoftmax.forward(logits)  # [..., K], inference
    return torch.softmax(logits, dim=-1)  # [..., K]


def _exporting() -> bool:
    """Tracing, scripting, compiling, ``torch.export`` or ONNX export: keep the graph's
    one softmax op and no branch on the batch size or the thread count."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())


class InputLinear(nn.Module):
    """First linear map of a raw example, for every consumer of ``x`` at once.

    ``x = [dense, onehot(cat_1), ..., onehot(cat_F)]`` when ``embedding_dim`` is
    None (the categorical part costs a gather of F weight rows per example), or
    ``x = [dense, E_1[cat_1], ..., E_F[cat_F]]`` with learned embeddings of size
    ``embedding_dim``.

    Args:
        dense_dim: Dd, width of the dense input (may be 0).
        cardinalities: per categorical field, its number of indices.
        embedding_dim: None for one-hot semantics, else the embedding size.
        out_features: N, total width of all consumers' first layers.

    Shapes: ``dense [B, Dd]``, ``cat [B, F]`` int64 -> ``[B, N]``.
    """

    def __init__(
        self,
        dense_dim: int,
        cardinalities: Sequence[int],
        embedding_dim: int | None,
        out_features: int,
    ) -> None:
        super().__init__()
        self.dense_dim = int(dense_dim)
        self.cardinalities = [int(c) for c in cardinalities]
        self.embedding_dim = embedding_dim
        self.out_features = int(out_features)
        if self.dense_dim == 0 and not self.cardinalities:
            raise ValueError("the model needs an input: dense_dim > 0 or categorical fields")
        if any(c < 1 for c in self.cardinalities):
            raise ValueError("every categorical cardinality must be >= 1")
        offsets = torch.tensor([0, *self.cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        n_cat = sum(self.cardinalities)
        if embedding_dim is None:
            fan_in = self.dense_dim + n_cat  # as nn.Linear over one-hot columns
            self.cat_weight = nn.Parameter(torch.empty(n_cat, out_features)) if n_cat else None
            self.embedding = None
        else:
            if embedding_dim < 1:
                raise ValueError("embedding_dim must be >= 1 (or null for one-hot input)")
            fan_in = self.dense_dim + len(self.cardinalities) * embedding_dim
            self.embedding = nn.Embedding(n_cat, embedding_dim) if n_cat else None
            self.cat_weight = (
                nn.Parameter(torch.empty(len(self.cardinalities) * embedding_dim, out_features))
                if n_cat
                else None
            )
        # embedding mode, product table: every field's rows padded to the largest field
        self.pad_card = max(self.cardinalities, default=0)
        pad_rows = []
        if self.embedding is not None and self.pad_card <= MAX_TABLE_CARD:
            pad_rows = [o + min(j, c - 1)
                        for o, c in zip(offsets.tolist(), self.cardinalities, strict=True)
                        for j in range(self.pad_card)]
        self.register_buffer("pad_rows", torch.tensor(pad_rows, dtype=torch.long),
                             persistent=False)  # [F*P] embedding row of each padded slot
        self.register_buffer("pad_base", torch.arange(len(self.cardinalities)) * self.pad_card,
                             persistent=False)  # [F] first padded slot of each field
        self.in_width = fan_in
        self.dense_weight = (
            nn.Parameter(torch.empty(self.dense_dim, out_features)) if self.dense_dim else None
        )
        self.bias = nn.Parameter(torch.empty(out_features))
        for p in (self.dense_weight, self.cat_weight, self.bias):
            if p is not None:
                uniform_init_(p, fan_in)

    def forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        pad = (align_pad(self.dense_dim, self.out_features, dense)
               if self.dense_weight is not None else 0)
        if pad:  # a large dense part: its product with cache-line rows (align_pad)
            out = torch.addmm(F.pad(self.bias, (0, pad)), dense,
                              F.pad(self.dense_weight, (0, pad)))  # -> [B,N+pad]
            if self.cat_weight is not None:
                out[:, : self.out_features] += self._categorical(cat)  # [B,N] part, in place
            return _DropPad.apply(out, self.out_features)  # [B,N+pad] -> [B,N], a view
        out = None
        if self.cat_weight is not None:
            idx = cat + self.offsets  # [B, F] global row indices
            if self.embedding is None and torch.onnx.is_in_onnx_export():
                # ONNX has no embedding bag (it would materialise [B, F, N]): the same sum as
                # a product with the one-hot rows, which ONNX Runtime runs as one GEMM
                w = self.cat_weight
                onehot = torch.zeros(idx.shape[0], w.shape[0], dtype=w.dtype,
                                     device=idx.device)  # [B, C]
                onehot = onehot.scatter(1, idx, 1.0)  # [B, C], F ones per row
                out = torch.addmm(self.bias, onehot, self.cat_weight)  # [B,C] x [C,N] -> [B,N]
            else:
                out = self._categorical(cat, self.bias)  # [B,F] -> [B,N]
        if self.dense_weight is not None:
            if out is None:
                out = torch.addmm(self.bias, dense, self.dense_weight)  # [B,Dd] x [Dd,N] -> [B,N]
            elif out.dtype != self.dense_weight.dtype:  # bf16 autocast: addmm_ would not cast
                out = torch.addmm(out, dense, self.dense_weight)  # [B,N] + [B,Dd] x [Dd,N]
            else:
                out = out.addmm_(dense, self.dense_weight)  # += [B,Dd] x [Dd,N], in place
        return out

    def _categorical(self, cat: Tensor, bias: Tensor | None = None) -> Tensor:
        """The categorical fields' part of the output (plus ``bias``): ``[B, F] -> [B, N]``.

        One-hot mode: a bag of F weight rows per example. Embedding mode: the
        product table's rows (:meth:`use_product_table`) or the embeddings
        times the weight.
        """
        if self.embedding is None or self.use_product_table(cat):
            if self.embedding is None:  # one bag of F rows per example: sum_f W[idx_f]
                out = bag_sum(cat + self.offsets, self.cat_weight, True)  # [B,F] -> [B,N]
            else:
                out = bag_sum(cat + self.pad_base, self.product_table(), True)  # [B,F] -> [B,N]
            # in place: the bag's backward does not need its output
            return out if bias is None else out.add_(bias)
        emb = self.embedding(cat + self.offsets).flatten(1)  # [B,F,k] -> [B,F*k]
        if bias is None:
            return emb @ self.cat_weight  # [B,F*k] x [F*k,N] -> [B,N]
        return torch.addmm(bias, emb, self.cat_weight)  # [B,F*k] x [F*k,N] -> [B,N]

    def use_product_table(self, cat: Tensor) -> bool:
        """Embedding mode: take the categorical part from :meth:`product_table`?

        ``cat`` is ``[B, F]`` (or ``[S, B, F]`` in the vectorised ensemble).

        ``E_f[c] @ W_f`` is row ``c`` of the field's product ``E_f @ W_f``, so the
        embedding gather and the ``[B, F*k] x [F*k, N]`` product can become one
        small batched product ``[F, P, k] x [F, k, N]`` (P the largest
        cardinality) and a gather-sum of F of its rows per example, as in
        one-hot mode. Chosen on CPU, in fp32 without autocast, when not
        exporting, for embeddings of 4 or more and when ``4 P <= B`` (the table
        is then at most a quarter of the batch's rows): at census size with
        embeddings of 8 this first layer trains 1.5-2.5x faster, with 16 about
        3x; with large vocabularies the table would cost more than it saves.
        """
        return (not _exporting()  # first: no guard on the batch size in an exported graph
                and self.embedding is not None and self.pad_card <= MAX_TABLE_CARD
                and cat.device.type == "cpu"
                and self.embedding_dim >= 4 and 4 * self.pad_card <= cat.shape[-2]
                and self.cat_weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu"))

    def product_table(self, emb_weight: Tensor | None = None,
                      cat_weight: Tensor | None = None) -> Tensor:
        """Per field the product of its embeddings with its slice of the weight.

        Shape ``[F*P, N]``: row ``f*P + c`` is ``E_f[c] @ W_f`` (rows past a
        field's cardinality repeat its last row and are never read). The
        vectorised ensemble passes its stacked weights (``[S, C, k]``,
        ``[S, F*k, N]``) and gets ``[S, F*P, N]``; by default, this module's.
        """
        E = self.embedding.weight if emb_weight is None else emb_weight  # [..., C, k]
        W = self.cat_weight if cat_weight is None else cat_weight  # [..., F*k, N]
        k, P, n_out = self.embedding_dim, self.pad_card, W.shape[-1]
        emb = E[..., self.pad_rows, :].reshape(-1, P, k)  # [..., F*P, k] -> [...*F, P, k]
        w = W.reshape(-1, k, n_out)  # [..., F*k, N] -> [...*F, k, N]
        table = torch.bmm(emb, w)  # [...*F,P,k] x [...*F,k,N] -> [...*F,P,N]
        return table.reshape(*W.shape[:-2], len(self.cardinalities) * P, n_out)  # [...,F*P,N]


class SlotLinear(nn.Module):
    """S independent linear maps run as one batched product.

    Slot ``s`` maps its own input ``x[s]`` of width D to ``widths[s]`` outputs;
    the output is zero-padded to ``W = max(widths)``.

    Args:
        num_slots: S.
        in_dim: D.
        widths: output width of each slot (length S).

    Shapes: ``x [S, B, D]`` -> ``[S, B, W]``.
    """

    def __init__(self, num_slots: int, in_dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != num_slots:
            raise ValueError("one width per slot is required")
        self.num_slots, self.in_dim, self.widths = num_slots, in_dim, widths
        self.out_dim = max(widths)
        self.uniform = all(w == self.out_dim for w in widths)
        if self.uniform:
            self.weight = nn.Parameter(torch.empty(num_slots, in_dim, self.out_dim))
            self.bias = nn.Parameter(torch.empty(num_slots, 1, self.out_dim))
        else:
            total = sum(widths)
            self.weight = nn.Parameter(torch.empty(in_dim, total))
            self.bias = nn.Parameter(torch.empty(total))
            # padded column s*W + j takes flat column off_s + j, pads take the zero column
            idx, off = [], 0
            for w in widths:
                idx += list(range(off, off + w)) + [total] * (self.out_dim - w)
                off += w
            self.register_buffer("pad_index", torch.tensor(idx), persistent=False)
        uniform_init_(self.weight, in_dim)
        uniform_init_(self.bias, in_dim)

    def padded(self) -> tuple[Tensor, Tensor]:
        """Weights ``[S, D, W]`` and biases ``[S, 1, W]`` with zero pads."""
        if self.uniform:
            return self.weight, self.bias
        S, D, W = self.num_slots, self.in_dim, self.out_dim
        w = F.pad(self.weight, (0, 1))[:, self.pad_index]  # [D, S*W]
        w = w.view(D, S, W).transpose(0, 1)  # [D,S,W] -> [S,D,W]
        b = F.pad(self.bias, (0, 1))[self.pad_index].view(S, 1, W)  # [S*W] -> [S,1,W]
        return w, b

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.padded()
        pad = align_pad(self.in_dim, self.out_dim, x)
        if pad:  # cache-line rows: [S,D,W+pad], the output sliced back to W (a view)
            out = slot_baddbmm(F.pad(b, (0, pad)), x, F.pad(w, (0, pad)))  # -> [S,B,W+pad]
            return _DropPad.apply(out, self.out_dim)  # [S,B,W+pad] -> [S,B,W], a view
        return slot_baddbmm(b, x, w)  # [S,B,D] x [S,D,W] -> [S,B,W]
