"""CPU kernels: speed devices that change how a value is computed, never which value.

Everything here computes something a one-line PyTorch expression also
computes (an ``embedding_bag``, a softmax, a ``baddbmm``, a slice), with the
same values forward and backward; what differs is the speed on CPU. The
semantic modules (:mod:`~adatt.modules.layers`, :mod:`~adatt.modules.fusion`,
:mod:`~adatt.modules.towers`) call them; each module also keeps the plain form
of its computation, selected by :func:`plain_mode`.

Notation: B batch, S slots, D input width, W output width, C weight rows,
F index columns (fields), K entries of a softmax row.

* :func:`bag_sum` -- ``sum_f weight[idx[:, f]]``, with a backward that is one
  stable (radix) sort and one forward embedding bag (:func:`pairs_by_row`).
* :func:`gate_softmax` -- softmax over a short last dimension from
  whole-tensor ops.
* :func:`slot_baddbmm` -- ``baddbmm`` over S slots with each slot's rows split
  in :func:`row_splits` blocks so the threads stay equally busy.
* :func:`align_pad` / :func:`drop_pad` -- products whose output rows are a
  whole number of cache lines, sliced back to the true width, on hosts below
  AVX-512 (:func:`padding_mode` forces it either way).
* :func:`product_table` -- per field, embeddings times their slice of the
  first-layer weight, so an embedding input becomes a gather-sum.
* :func:`fp32_bmm` -- the fusion's small batched product in fp32 under CPU
  autocast.

Example:
    >>> import torch
    >>> w = torch.arange(6.0).reshape(3, 2)
    >>> bag_sum(torch.tensor([[0, 2]]), w)
    tensor([[4., 6.]])
    >>> with plain_mode():
    ...     is_plain()
    True
    >>> is_plain()
    False
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ALIGN", "MAX_TABLE_CARD", "PAD_MODES", "SMALL_SOFTMAX_MAX", "align_pad", "bag_sum",
           "drop_pad", "exporting", "fp32_bmm", "gate_softmax", "is_plain", "padding_mode",
           "pairs_by_row", "plain_mode", "product_table", "row_splits", "slot_baddbmm"]

#: last-dim widths up to which :func:`gate_softmax` computes with whole-tensor ops
SMALL_SOFTMAX_MAX = 16
#: embedding mode: largest field cardinality for which :func:`product_table` may be used
MAX_TABLE_CARD = 8192
#: CPU products whose output width is not a multiple of this many floats (64 bytes, a
#: cache line) may run with it padded up to one (see :func:`align_pad`)
ALIGN = 16

_plain = False


@contextmanager
def plain_mode(enabled: bool = True) -> Iterator[None]:
    """Run the modules' plain forms (the paper's equations as written) inside the block.

    The switch of the fast and the plain path, side by side in each module
    (the nanoGPT way): :class:`~adatt.modules.fusion.FusionLevel` computes
    Eq. 4-10 unit by unit (each expert's MLP, each gate's softmax, ``G^T E +
    v^T E_native``), :class:`~adatt.modules.layers.InputLinear` multiplies the
    explicit ``[dense, onehot(cat)]`` (or ``[dense, embeddings]``) by its weight,
    :class:`~adatt.modules.layers.SlotLinear` is one plain ``baddbmm``. The
    parameters are the same ones, so one model can be run both ways and its
    outputs and gradients compared. Slow: for reading and for tests.
    Restores the previous setting on exit (nestable).
    """
    global _plain
    before, _plain = _plain, bool(enabled)
    try:
        yield
    finally:
        _plain = before


def is_plain() -> bool:
    """Inside :func:`plain_mode`?"""
    return _plain


def exporting() -> bool:
    """Tracing, scripting, compiling, ``torch.export`` or ONNX export: keep the graph's
    plain ops and no branch on the batch size or the thread count."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch.compiler.is_exporting())


# ----------------------------------------------------------------------------- bag_sum


# The gather-sum as a ``torch.library`` custom op: ``torch.compile`` keeps it as one opaque
# node (its shapes from the fake kernel) instead of tracing the numpy sort of its backward,
# so a compiled training step has no graph break there; eager runs call the same functions.


@torch.library.custom_op("adatt::bag_sum", mutates_args=())
def _bag_sum_op(idx: Tensor, weight: Tensor, fields_in_order: bool) -> Tensor:
    """``out[b] = sum_f weight[idx[b, f]]`` whose weight gradient is an embedding bag itself.

    On CPU, ``embedding_bag``'s own backward is about twice as slow as its
    forward. The gradient of weight row ``r`` is the sum of the output
    gradients of the examples that hold ``r``: after one stable sort of the
    ``B * F`` indices that is a forward ``embedding_bag`` over the output
    gradient, with one bag per weight row (parallel over rows,
    :func:`_bag_sum_grad`). Deterministic: the stable sort fixes the order of
    every sum.
    """
    return F.embedding_bag(idx, weight, mode="sum")  # [B,F] -> [B,N]


@_bag_sum_op.register_fake
def _(idx: Tensor, weight: Tensor, fields_in_order: bool) -> Tensor:
    return weight.new_empty(idx.shape[0], weight.shape[1])  # [B,N]


def _weight_grad(idx: Tensor, grad_out: Tensor, rows: int, fields_in_order: bool) -> Tensor:
    """The weight gradient ``[C, N]`` of ``sum_f weight[idx[:, f]]`` for ``grad_out [B, N]``:
    one stable sort of the pairs, then one embedding bag per weight row."""
    examples, starts = pairs_by_row(idx, rows, fields_in_order)
    # weight row r's gradient: the sum of grad_out over the examples that hold r
    return F.embedding_bag(examples, grad_out, starts, mode="sum")  # -> [C,N]


@torch.library.custom_op("adatt::bag_sum_grad", mutates_args=())
def _bag_sum_grad(idx: Tensor, grad_out: Tensor, rows: int, fields_in_order: bool) -> Tensor:
    """The weight gradient ``[C, N]`` of :func:`_bag_sum_op` (:func:`_weight_grad`)."""
    return _weight_grad(idx, grad_out, rows, fields_in_order)


@_bag_sum_grad.register_fake
def _(idx: Tensor, grad_out: Tensor, rows: int, fields_in_order: bool) -> Tensor:
    return grad_out.new_empty(rows, grad_out.shape[1])  # [C,N]


def _bag_sum_setup(ctx, inputs, output) -> None:
    idx, weight, fields_in_order = inputs
    ctx.save_for_backward(idx)
    ctx.rows, ctx.fields_in_order = weight.shape[0], fields_in_order


def _bag_sum_backward(ctx, grad_out: Tensor):
    (idx,) = ctx.saved_tensors
    return None, _bag_sum_grad(idx, grad_out.contiguous(), ctx.rows, ctx.fields_in_order), None


_bag_sum_op.register_autograd(_bag_sum_backward, setup_context=_bag_sum_setup)


def pairs_by_row(idx: Tensor, rows: int, fields_in_order: bool = False) -> tuple[Tensor, Tensor]:
    """The ``B * F`` (example, row) pairs of ``idx [B, F]`` grouped by row, stably.

    Returns ``examples [B*F]`` (the example of each pair, pairs of row 0 first,
    each row's pairs in example order) and ``starts [C]`` (each row's first
    pair). Up to 32,767 rows the indices fit int16, whose stable sort numpy
    does as a radix sort, several times faster than ``torch.sort``; the
    order is the same. ``fields_in_order``: every row of column ``f`` is
    below every row of column ``f + 1`` (one field per column, as
    :class:`~adatt.modules.layers.InputLinear` lays them out); the order is
    then each column's own stable sort, column after column: F short sorts
    instead of one long one, whose positions are already the examples.

    Example:
        >>> pairs_by_row(torch.tensor([[2, 0], [0, 1]]), rows=3)
        (tensor([0, 1, 1, 0]), tensor([0, 2, 3]))
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


class _BagSum(torch.autograd.Function):
    """Eager form of the custom op ``adatt::bag_sum``: the same computation (an embedding
    bag forward, :func:`_weight_grad` backward, so the same values bit for bit) without
    the custom op's per-call dispatch. An eager census step
    calls it once forward and once backward; the custom op's Python dispatch cost
    about 0.1 ms more per step than this Function on 2 cores (Shared-bottom's whole
    step is 1.7-1.9 ms)."""

    @staticmethod
    def forward(idx: Tensor, weight: Tensor, fields_in_order: bool) -> Tensor:
        return F.embedding_bag(idx, weight, mode="sum")  # [B,F] -> [B,N]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _bag_sum_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (idx,) = ctx.saved_tensors
        return None, _weight_grad(idx, grad_out.contiguous(), ctx.rows, ctx.fields_in_order), None


def bag_sum(idx: Tensor, weight: Tensor, fields_in_order: bool = False) -> Tensor:
    """``sum_f weight[idx[:, f]]``: the one-hot input times ``weight``, as a gather.

    Shapes: ``idx [B, F]`` int64 global row indices, ``weight [C, N]`` -> ``[B, N]``.
    Same values as ``F.embedding_bag(idx, weight, mode="sum")``; when the
    weight needs a gradient on CPU, the backward is one sort and one forward
    embedding bag instead of the embedding-bag backward: an autograd Function
    in eager mode, the custom op ``adatt::bag_sum`` (which ``torch.compile``
    keeps whole) when compiling; both run the same functions.
    ``fields_in_order``: the caller promises that every index of column ``f``
    is below every index of column ``f + 1``, which makes that sort cheaper.

    Example:
        >>> w = torch.arange(12.0).reshape(4, 3)
        >>> bag_sum(torch.tensor([[0, 2], [1, 3]]), w)
        tensor([[ 6.,  8., 10.],
                [12., 14., 16.]])
    """
    if weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu":
        if exporting():  # compiled: one opaque node, no graph break at the numpy sort
            return _bag_sum_op(idx, weight, fields_in_order)
        return _BagSum.apply(idx, weight, fields_in_order)
    return F.embedding_bag(idx, weight, mode="sum")  # [B,F] -> [B,N]


# ----------------------------------------------------------------------------- products


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


def drop_pad(t: Tensor, n: int) -> Tensor:
    """``t[..., :n]``, a view, whose gradient is padded back with zeros in one pass.

    The other half of :func:`align_pad`: a product computed with padded
    weight columns is sliced back to its true width ``n``.

    Example:
        >>> t = torch.arange(8.0).view(2, 4).requires_grad_()
        >>> out = drop_pad(t, 3)
        >>> out.sum().backward()
        >>> out.shape, t.grad[0].tolist()
        (torch.Size([2, 3]), [1.0, 1.0, 1.0, 0.0])
    """
    return _DropPad.apply(t, n)


def align_pad(in_dim: int, out_dim: int, x: Tensor) -> int:
    """Zero columns to add to a ``[*, in_dim] x [in_dim, out_dim]`` product's weight.

    On some CPUs a product whose output rows are not a whole number of 64-byte
    cache lines runs markedly slower: ``[1024, 512] x [512, 1554]`` (six
    experts of 256 and three gates of 6, the industrial first layer) ran at 96
    GFLOP/s against 139 padded to 1568 columns on 2 threads of an AMD EPYC
    host with AVX2. On an Intel Xeon with AVX-512 the padded product gains
    nothing, and the padding's copies (the weight padded forward, its gradient
    sliced back) made industrial training steps 1-5% slower
    (``benchmarks/padding.py``). So by default (``"auto"``) products are padded
    where PyTorch's CPU kernels run below AVX-512
    (``torch.backends.cpu.get_cpu_capability()``), and not on AVX-512 hosts;
    :func:`padding_mode` forces either way. The choice is fixed per host, not
    timed: the padded product's outputs are bit-identical to the plain one's,
    but a bias gradient summed over the wider rows can differ in the last bit,
    and a host's runs must repeat exactly.

    Only products large enough to matter are considered (``in_dim * out_dim``
    at least 65,536, each at least 128); census-size products pay for the
    copies. The padding is not a parameter; the output is sliced back by the
    caller (:func:`drop_pad`, a view). 0 on GPU, when exporting or compiling,
    and when the width is already aligned.

    Shapes: ``x [..., in_dim]``.

    Example:
        >>> x = torch.zeros(2, 2)
        >>> with padding_mode("on"):
        ...     align_pad(512, 1554, x), align_pad(512, 1568, x), align_pad(128, 134, x)
        (14, 0, 0)
        >>> with padding_mode("off"):
        ...     align_pad(512, 1554, x)
        0
    """
    if (x.device.type != "cpu" or min(in_dim, out_dim) < 128 or in_dim * out_dim < 65_536
            or out_dim % ALIGN == 0 or exporting()):
        return 0
    if _pad_mode == "off" or (_pad_mode == "auto" and _vector_width_512()):
        return 0
    return -out_dim % ALIGN


#: :func:`align_pad`'s settings: "auto" (by the host's CPU capability), "on", "off"
PAD_MODES = ("auto", "on", "off")
_pad_mode = "auto"


@contextmanager
def padding_mode(mode: str) -> Iterator[None]:
    """Force :func:`align_pad` inside the block: ``"on"`` (pad wherever the size
    qualifies), ``"off"`` (never) or ``"auto"`` (the default: below AVX-512 only).
    Restores the previous setting on exit.

    Example:
        >>> with padding_mode("off"):
        ...     align_pad(512, 1554, torch.zeros(2, 2))
        0
    """
    global _pad_mode
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    before, _pad_mode = _pad_mode, mode
    try:
        yield
    finally:
        _pad_mode = before


@functools.cache
def _vector_width_512() -> bool:
    """Do PyTorch's CPU kernels run with AVX-512 (or wider) on this host?"""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


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

    Example:
        >>> before = torch.get_num_threads()
        >>> torch.set_num_threads(2)
        >>> row_splits(torch.zeros(3, 1024, 256), torch.zeros(3, 256, 272))
        2
        >>> torch.set_num_threads(before)
    """
    if exporting():  # first: no guard on the batch size (nor thread count) in a graph
        return 1
    S, B, D = x.shape
    threads = torch.get_num_threads()
    k = threads // math.gcd(S, threads)
    if (k == 1 or D * w.shape[-1] < 8192 or B % k or B // k < 64 or x.device.type != "cpu"
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


def fp32_bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm(a, b)``, in fp32 when CPU autocast is on.

    CPU bf16 ``bmm`` loops over the batch's tiny products (the fusion's
    ``[B, G, E] x [B, E, d]``: B products of a few rows); in fp32 it is cheap.

    Shapes: ``a [B, G, E]``, ``b [B, E, d]`` -> ``[B, G, d]``.

    Example:
        >>> fp32_bmm(torch.ones(2, 1, 3), torch.ones(2, 3, 4)).shape
        torch.Size([2, 1, 4])
    """
    if b.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return torch.bmm(a.float(), b.float())  # [B,G,E] x [B,E,d] -> [B,G,d]
    return torch.bmm(a, b)  # [B,G,E] x [B,E,d] -> [B,G,d]


def product_table(emb: Tensor, weight: Tensor, pad_rows: Tensor, pad_card: int) -> Tensor:
    """Per field, its embeddings times its slice of the first-layer weight.

    ``E_f[c] @ W_f`` is row ``c`` of the field's product ``E_f @ W_f``, so an
    embedding gather followed by the ``[B, F*k] x [F*k, N]`` product equals a
    gather-sum (:func:`bag_sum`) of F rows of this table. ``pad_rows [F*P]``
    is the embedding row of each padded slot (field ``f``'s rows padded to
    ``P = pad_card`` by repeating its last row).

    Shapes: ``emb [..., C, k]``, ``weight [..., F*k, N]`` -> ``[..., F*P, N]``,
    row ``f*P + c`` being ``E_f[c] @ W_f``; leading dims are copies (the
    vectorised ensemble's ``S``).

    Example:
        >>> E, W = torch.randn(5, 2), torch.randn(4, 3)  # fields of 2 and 3 rows, k=2, N=3
        >>> rows = torch.tensor([0, 1, 1, 2, 3, 4])  # P=3: field 0 repeats its last row
        >>> t = product_table(E, W, rows, 3)
        >>> t.shape, torch.allclose(t[4], E[3] @ W[2:])
        (torch.Size([6, 3]), True)
    """
    k, n_out = emb.shape[-1], weight.shape[-1]
    n_fields = weight.shape[-2] // k
    e = emb[..., pad_rows, :].reshape(-1, pad_card, k)  # [..., F*P, k] -> [...*F, P, k]
    w = weight.reshape(-1, k, n_out)  # [..., F*k, N] -> [...*F, k, N]
    table = torch.bmm(e, w)  # [...*F,P,k] x [...*F,k,N] -> [...*F,P,N]
    return table.reshape(*weight.shape[:-2], n_fields * pad_card, n_out)  # -> [..., F*P, N]


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
            and logits.dtype in (torch.float32, torch.float64) and not exporting()):
        if torch.is_grad_enabled():  # (under vmap requires_grad is not visible)
            return _SmallSoftmax.apply(logits)
        return _SmallSoftmax.forward(logits)  # [..., K], inference
    return torch.softmax(logits, dim=-1)  # [..., K]
