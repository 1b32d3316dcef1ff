"""Batched linear building blocks shared by every model.

Notation: B batch, S slots (independent linear maps run as one batched
product), D input width, W output width, Dd dense width, F categorical fields,
C one-hot columns (the sum of the cardinalities), k embedding size.

* :class:`InputLinear` -- the first linear map applied to a raw example
  ``x = [dense, onehot(cat)]`` (or ``[dense, embed(cat)]``). In one-hot mode the
  categorical part is an embedding-bag *gather* of weight rows, never a
  product with one-hot columns: ``onehot(c) @ W == W[c]``.
  :meth:`InputLinear.forward_copies` runs S copies of the layer at once (the
  vectorised seed ensemble).
* :class:`SlotLinear` -- S linear maps, slot ``s`` reading its own input
  ``x[s]``, computed as one ``baddbmm``. Slots may have different output widths;
  narrower slots are zero-padded to the widest.

Both keep their plain form beside the fast one, selected by
:func:`~adatt.modules.kernels.plain_mode`; the speed devices they use live in
:mod:`adatt.modules.kernels`.

Example:
    >>> import torch
    >>> from adatt.modules.kernels import plain_mode
    >>> lin = InputLinear(dense_dim=2, cardinalities=[3, 4], embedding_dim=None, out_features=5)
    >>> dense, cat = torch.randn(8, 2), torch.zeros(8, 2, dtype=torch.long)
    >>> lin(dense, cat).shape
    torch.Size([8, 5])
    >>> with plain_mode():
    ...     torch.allclose(lin(dense, cat), lin(dense, cat).detach())
    True
    >>> SlotLinear(3, 4, [2, 2, 2])(torch.randn(3, 8, 4)).shape
    torch.Size([3, 8, 2])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adatt.modules.kernels import (
    MAX_TABLE_CARD,
    align_pad,
    bag_sum,
    drop_pad,
    exporting,
    is_plain,
    product_table,
    slot_baddbmm,
)

__all__ = ["ACTIVATIONS", "activation_fn", "InputLinear", "SlotLinear", "uniform_init_"]

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
        if is_plain():
            return self.plain_forward(dense, cat)
        pad = (align_pad(self.dense_dim, self.out_features, dense)
               if self.dense_weight is not None else 0)
        if pad:  # a large dense part: its product with cache-line rows (align_pad)
            out = torch.addmm(F.pad(self.bias, (0, pad)), dense,
                              F.pad(self.dense_weight, (0, pad)))  # -> [B,N+pad]
            if self.cat_weight is not None:
                out[:, : self.out_features] += self._categorical(cat)  # [B,N] part, in place
            return drop_pad(out, self.out_features)  # [B,N+pad] -> [B,N], a view
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
        return (not exporting()  # first: no guard on the batch size in an exported graph
                and self.embedding is not None and self.pad_card <= MAX_TABLE_CARD
                and cat.device.type == "cpu"
                and self.embedding_dim >= 4 and 4 * self.pad_card <= cat.shape[-2]
                and self.cat_weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu"))

    def product_table(self, emb_weight: Tensor | None = None,
                      cat_weight: Tensor | None = None) -> Tensor:
        """Per field the product of its embeddings with its slice of the weight.

        Shape ``[F*P, N]``: row ``f*P + c`` is ``E_f[c] @ W_f`` (rows past a
        field's cardinality repeat its last row and are never read); see
        :func:`~adatt.modules.kernels.product_table`. Stacked weights
        (``[S, C, k]``, ``[S, F*k, N]``) give ``[S, F*P, N]``; by default,
        this module's.
        """
        E = self.embedding.weight if emb_weight is None else emb_weight  # [..., C, k]
        W = self.cat_weight if cat_weight is None else cat_weight  # [..., F*k, N]
        return product_table(E, W, self.pad_rows, self.pad_card)  # [..., F*P, N]

    def plain_forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        """The layer as written: ``[dense, onehot(cat)] @ [W_dense; W_cat] + b``.

        Embedding mode: ``[dense, E[cat_1], ..., E[cat_F]] @ [W_dense; W_cat] + b``.
        The same parameters and values as :meth:`forward` (which gathers weight
        rows instead of multiplying by one-hot columns); what
        :func:`~adatt.modules.kernels.plain_mode` runs.

        Shapes: ``dense [B, Dd]``, ``cat [B, F]`` -> ``[B, N]``.
        """
        parts, weights = [], []
        if self.dense_weight is not None:
            parts.append(dense)
            weights.append(self.dense_weight)
        if self.cat_weight is not None:
            if self.embedding is None:
                parts += [F.one_hot(cat[:, f], c).to(self.bias.dtype)  # [B, c_f]
                          for f, c in enumerate(self.cardinalities)]
            else:
                parts.append(self.embedding(cat + self.offsets).flatten(1))  # [B,F,k] -> [B,F*k]
            weights.append(self.cat_weight)
        x = torch.cat(parts, dim=1)  # [B, Dd + C] (or [B, Dd + F*k])
        return x @ torch.cat(weights, dim=0) + self.bias  # [B,Dd+C] x [Dd+C,N] -> [B,N]

    def forward_copies(self, dense: Tensor, cat: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """S copies of this layer at once, each with its own parameters.

        ``params`` maps this module's parameter names (``bias``, ``dense_weight``,
        ``cat_weight``, ``embedding.weight``) to the S copies' values stacked
        ``[S, ...]``; this module's own parameters are not read (its buffers
        and shapes are). Inputs are per copy (``dense [S,B,Dd]``, ``cat
        [S,B,F]``) or one batch shared by all copies (``[B,Dd]``, ``[B,F]``).

        One-hot mode: one :func:`~adatt.modules.kernels.bag_sum` over ``S*B``
        bags (the S tables flattened to ``[S*C, N]``, indices shifted by
        ``s*C``). Embedding mode: one embedding gather plus one ``baddbmm``, or,
        where :meth:`use_product_table` decides so for the single layer, the
        copies' product tables and one gather-sum. Then one batched product
        for the dense part, added in place (no second ``[S, B, N]`` tensor;
        the bias is not added to the bags' output in place: that is a view of
        the ``[S*B, N]`` bags, and an in-place change of a view costs its
        backward a copy of the whole gradient).

        Shapes: -> ``[S, B, N]``.

        Example:
            >>> lin = InputLinear(2, [3, 4], None, 5)
            >>> p = {n: torch.stack([t, t + 1]) for n, t in lin.named_parameters()}
            >>> dense, cat = torch.randn(6, 2), torch.randint(0, 3, (6, 2))
            >>> out = lin.forward_copies(dense, cat, p)
            >>> out.shape, torch.allclose(out[0], lin(dense, cat))
            (torch.Size([2, 6, 5]), True)
        """
        bias = params["bias"]  # [S,N]
        S, n_out = bias.shape
        B = cat.shape[-2]
        out = bias.unsqueeze(1)  # [S,N] -> [S,1,N]
        if self.cat_weight is not None:
            C = sum(self.cardinalities)
            shift = torch.arange(S, device=cat.device) * C  # table s starts at row s*C
            idx = (cat + self.offsets).expand(S, B, cat.shape[-1])  # [B,F] | [S,B,F] -> [S,B,F]
            idx = idx + shift.view(S, 1, 1)  # [S,B,F] + [S,1,1] -> [S,B,F] rows of the flat table
            if self.embedding is None:
                table = params["cat_weight"].reshape(S * C, n_out)  # [S,C,N] -> [S*C,N]
                flat = idx.reshape(S * B, -1)  # [S,B,F] -> [S*B,F]: one bag per (copy, row)
                bags = bag_sum(flat, table)  # [S*B,F] -> [S*B,N]
                out = bags.view(S, B, n_out) + out  # [S*B,N] -> [S,B,N], + [S,1,N]
            elif self.use_product_table(cat):
                # per copy and field E_f @ W_f (product_table), then a gather-sum
                n_f, P = len(self.cardinalities), self.pad_card
                table = self.product_table(params["embedding.weight"], params["cat_weight"])
                table = table.reshape(S * n_f * P, n_out)  # [S,F*P,N] -> [S*F*P,N]
                rows = (cat + self.pad_base).expand(S, B, n_f)  # [B,F] | [S,B,F] -> [S,B,F]
                rows = rows + (torch.arange(S, device=cat.device) * (n_f * P)).view(S, 1, 1)
                bags = bag_sum(rows.reshape(S * B, n_f), table)  # [S*B,F] -> [S*B,N]
                out = bags.view(S, B, n_out) + out  # [S*B,N] -> [S,B,N], + [S,1,N]
            else:
                k = self.embedding_dim
                table = params["embedding.weight"].reshape(S * C, k)  # [S,C,k] -> [S*C,k]
                emb = F.embedding(idx, table).flatten(2)  # [S,B,F,k] -> [S,B,F*k]
                w = params["cat_weight"]  # [S,F*k,N]
                out = torch.baddbmm(out, emb, w)  # [S,B,F*k] x [S,F*k,N] -> [S,B,N]
        if self.dense_weight is not None:
            w = params["dense_weight"]  # [S,Dd,N]
            if dense.dim() == 2:  # one batch for every copy
                dense = dense.expand(S, B, dense.shape[-1])  # [B,Dd] -> [S,B,Dd], a view
            if (self.cat_weight is not None and out.dtype == w.dtype
                    and not torch.is_autocast_enabled(out.device.type)):  # += in place
                out = out.baddbmm_(dense, w)  # [S,B,N] += [S,B,Dd] x [S,Dd,N]
            else:
                out = torch.baddbmm(out, dense, w)  # [S,B,Dd] x [S,Dd,N] -> [S,B,N]
        if out.shape[1] != B:
            out = out.expand(S, B, n_out)  # [S,1,N] -> [S,B,N]
        return out


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

    def slot(self, s: int) -> tuple[Tensor, Tensor]:
        """Slot ``s``'s own weight ``[D, widths[s]]`` and bias ``[widths[s]]`` (views).

        Example:
            >>> lin = SlotLinear(2, 4, [3, 1])
            >>> [tuple(t.shape) for t in lin.slot(1)]
            [(4, 1), (1,)]
        """
        if self.uniform:
            return self.weight[s], self.bias[s, 0]
        off, w = sum(self.widths[:s]), self.widths[s]
        return self.weight[:, off:off + w], self.bias[off:off + w]

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.padded()
        if is_plain():
            return torch.baddbmm(b, x, w)  # [S,B,D] x [S,D,W] -> [S,B,W]
        pad = align_pad(self.in_dim, self.out_dim, x)
        if pad:  # cache-line rows: [S,D,W+pad], the output sliced back to W (a view)
            out = slot_baddbmm(F.pad(b, (0, pad)), x, F.pad(w, (0, pad)))  # -> [S,B,W+pad]
            return drop_pad(out, self.out_dim)  # [S,B,W+pad] -> [S,B,W], a view
        return slot_baddbmm(b, x, w)  # [S,B,D] x [S,D,W] -> [S,B,W]
