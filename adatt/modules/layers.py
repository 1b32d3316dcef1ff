"""Batched linear building blocks shared by every model.

Notation: B batch, S slots (independent linear maps run as one batched
product), D input width, W output width, Dd dense width, F categorical fields,
C one-hot columns (the sum of the cardinalities), k embedding size, M
multi-valued features, L their slot columns (the sum of their max lengths),
Cb their one-hot columns.

* :class:`InputLinear` -- the first linear map applied to a raw example
  ``x = [dense, onehot(cat)]`` (or ``[dense, embed(cat)]``). In one-hot mode the
  categorical part is an embedding-bag *gather* of weight rows, never a
  product with one-hot columns: ``onehot(c) @ W == W[c]``.
  :meth:`InputLinear.forward_copies` runs S copies of the layer at once (the
  vectorised seed ensemble). Multi-valued categorical features (a list of
  indices per row, in ``cat`` after the single-valued fields, padded with -1)
  are pooled by an embedding bag: the sum, or the mean, of their rows.
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

    A multi-valued feature of 6 values, lists of up to 3 (-1 pads), mean-pooled:

    >>> lin = InputLinear(0, [], None, 5, multi_valued=[(6, "mean", 3)])
    >>> out = lin(torch.zeros(2, 0), torch.tensor([[1, 4, -1], [-1, -1, -1]]))
    >>> torch.allclose(out[0], lin.bias + (lin.bag_weight[1] + lin.bag_weight[4]) / 2)
    True
    >>> torch.allclose(out[1], lin.bias)  # the empty list pools to zeros
    True
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
        multi_valued: per multi-valued feature ``(cardinality, pooling,
            max_length)``, pooling ``sum`` or ``mean``.

    Multi-valued features: feature ``m`` occupies ``max_length`` columns of
    ``cat`` after the F single-valued fields, its indices padded with -1. It
    is pooled like a one-hot field with several ones: one-hot mode adds
    ``sum_i w_i Wb[c_i]`` (``w_i`` 1 for ``sum``, ``1/len`` for ``mean``; rows of
    its own weight ``bag_weight [Cb, N]``); embedding mode feeds the pooled
    embedding ``sum_i w_i Eb[c_i]`` (``bag_embedding``) through
    ``bag_weight [M*k, N]``. An empty list (all -1) pools to zeros. Without
    multi-valued features the layer has no extra parameter and runs as before.

    Shapes: ``dense [B, Dd]``, ``cat [B, F + L]`` int64 -> ``[B, N]``.
    """

    def __init__(
        self,
        dense_dim: int,
        cardinalities: Sequence[int],
        embedding_dim: int | None,
        out_features: int,
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        super().__init__()
        self.dense_dim = int(dense_dim)
        self.cardinalities = [int(c) for c in cardinalities]
        self.embedding_dim = embedding_dim
        self.out_features = int(out_features)
        self.multi_valued = [(int(c), str(p), int(n)) for c, p, n in multi_valued]
        for c, p, n in self.multi_valued:
            if c < 1 or n < 1 or p not in ("sum", "mean"):
                raise ValueError("a multi-valued feature needs cardinality >= 1, pooling sum "
                                 f"or mean and max_length >= 1, got {(c, p, n)}")
        if self.dense_dim == 0 and not self.cardinalities and not self.multi_valued:
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
        self.n_fields = len(self.cardinalities)
        if self.multi_valued:
            fan_in = self.in_width = self._init_bags(fan_in)
        for p in (self.dense_weight, self.cat_weight, self.bias):
            if p is not None:
                uniform_init_(p, fan_in)
        if self.multi_valued:
            uniform_init_(self.bag_weight, fan_in)

    def _init_bags(self, fan_in: int) -> int:
        """The multi-valued features' parameters and buffers; returns the full fan-in."""
        cards = [c for c, _, _ in self.multi_valued]
        n_bag = sum(cards)
        starts = [0, *torch.tensor(cards).cumsum(0).tolist()[:-1]]
        # per slot column of cat[:, F:]: the first row of its feature in the bag table
        slot_rows = [o for o, (_, _, n) in zip(starts, self.multi_valued, strict=True)
                     for _ in range(n)]
        self.register_buffer("bag_offsets", torch.tensor(slot_rows, dtype=torch.long),
                             persistent=False)  # [L]
        self.bag_slices = []  # per feature, its columns [a, b) of cat[:, F:]
        a = 0
        for _, _, n in self.multi_valued:
            self.bag_slices.append((a, a + n))
            a += n
        n_out = self.out_features
        if self.embedding_dim is None:
            self.bag_embedding = None
            self.bag_weight = nn.Parameter(torch.empty(n_bag, n_out))  # [Cb, N]
            return fan_in + n_bag
        k = self.embedding_dim
        self.bag_embedding = nn.Embedding(n_bag, k)  # [Cb, k]
        self.bag_weight = nn.Parameter(torch.empty(len(cards) * k, n_out))  # [M*k, N]
        return fan_in + len(cards) * k

    def bag_rows(self, bags: Tensor) -> tuple[Tensor, Tensor]:
        """Rows of the bag table and their pooling weights for ``bags = cat[..., F:]``.

        Shapes: ``bags [..., B, L]`` (-1 pads) -> rows ``[..., B, L]`` (a pad reads
        its feature's row 0) and weights ``[..., B, L]`` float: 0 for a pad, else 1
        (``sum``) or 1 / the list's length (``mean``).
        """
        valid = bags >= 0  # [..., B, L]
        rows = bags.clamp_min(0) + self.bag_offsets  # [..., B, L] + [L]
        parts = []
        for (a, b), (_, pooling, _) in zip(self.bag_slices, self.multi_valued, strict=True):
            w = valid[..., a:b].to(self.bias.dtype)  # [..., B, n_m]
            if pooling == "mean":
                w = w / w.sum(-1, keepdim=True).clamp_min(1.0)  # [..., B, n_m] / [..., B, 1]
            parts.append(w)
        return rows, torch.cat(parts, dim=-1)  # [..., B, L]

    def _pool(self, rows: Tensor, w: Tensor, table: Tensor) -> Tensor:
        """``sum_l w[:, l] * table[rows[:, l]]``: ``rows, w [B', L'], table [R, D] -> [B', D]``.

        An embedding bag with per-sample weights; when exporting, a gather and a
        batched product (``[B',1,L'] x [B',L',D]``), plain ops every format takes.
        """
        if exporting():
            g = F.embedding(rows, table)  # [B',L',D]
            return torch.bmm(w.unsqueeze(1).to(g.dtype), g).squeeze(1)  # [B',1,L'] x [B',L',D]
        return F.embedding_bag(rows, table, mode="sum",
                               per_sample_weights=w.to(table.dtype))  # [B',L'] -> [B',D]

    def _bags(self, bags: Tensor) -> Tensor:
        """The multi-valued features' part of the output: ``bags [B, L] -> [B, N]``."""
        rows, w = self.bag_rows(bags)  # [B, L], [B, L]
        if self.bag_embedding is None:
            return self._pool(rows, w, self.bag_weight)  # [B,L] -> [B,N]
        pooled = [self._pool(rows[:, a:b], w[:, a:b], self.bag_embedding.weight)  # [B, k]
                  for a, b in self.bag_slices]
        return torch.cat(pooled, dim=1) @ self.bag_weight  # [B,M*k] x [M*k,N] -> [B,N]

    def forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        if is_plain():
            return self.plain_forward(dense, cat)
        if not self.multi_valued:
            return self._forward(dense, cat)
        bags = self._bags(cat[:, self.n_fields:])  # [B, L] -> [B, N]
        out = self._forward(dense, cat[:, : self.n_fields])  # [B, F] -> [B, N] (or None)
        return bags + self.bias if out is None else out + bags

    def forward_padded(self, dense: Tensor, cat: Tensor) -> Tensor:
        """The output with the zero columns of :func:`align_pad` still on: ``[B, N + pad]``.

        Column ``N`` onwards is exactly zero (its gradient is ignored). A reader
        that can take the padded product as it is (the first fusion level's
        :func:`~adatt.modules.fusion.experts_and_gates`) saves the padding's
        backward pass over the whole gradient; ``pad`` is 0 where
        :meth:`forward` would not pad (then the two are the same).
        """
        if is_plain() or self.multi_valued or self.dense_weight is None:
            return self.forward(dense, cat)
        out = self._forward(dense, cat, keep_pad=True)
        assert out is not None  # a dense part
        return out

    def _forward(self, dense: Tensor, cat: Tensor, keep_pad: bool = False) -> Tensor | None:
        """Dense and single-valued part plus the bias, ``[B, Dd], [B, F] -> [B, N]``
        (None when the layer has neither); ``keep_pad``: ``[B, N + pad]`` (see
        :meth:`forward_padded`)."""
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
        if self.dense_weight is None:
            return out
        # a large dense part may run with cache-line rows (align_pad): the same sums in the
        # same order on N + pad columns, the pad columns zero
        pad = align_pad(self.dense_dim, self.out_features, dense)
        w = F.pad(self.dense_weight, (0, pad)) if pad else self.dense_weight  # [Dd, N+pad]
        if out is None:
            bias = F.pad(self.bias, (0, pad)) if pad else self.bias  # [N+pad]
            out = torch.addmm(bias, dense, w)  # [B,Dd] x [Dd,N+pad] -> [B,N+pad]
        else:
            if pad:
                out = F.pad(out, (0, pad))  # [B,N] -> [B,N+pad]
            if out.dtype != w.dtype:  # bf16 autocast: addmm_ would not cast
                out = torch.addmm(out, dense, w)  # [B,N+pad] + [B,Dd] x [Dd,N+pad]
            else:
                out = out.addmm_(dense, w)  # += [B,Dd] x [Dd,N+pad], in place
        if pad and not keep_pad:
            return drop_pad(out, self.out_features)  # [B,N+pad] -> [B,N], a view
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
        bags = cat[:, self.n_fields:]  # [B, L] (empty without multi-valued features)
        cat = cat[:, : self.n_fields]  # [B, F]
        if self.cat_weight is not None:
            if self.embedding is None:
                parts += [F.one_hot(cat[:, f], c).to(self.bias.dtype)  # [B, c_f]
                          for f, c in enumerate(self.cardinalities)]
            else:
                parts.append(self.embedding(cat + self.offsets).flatten(1))  # [B,F,k] -> [B,F*k]
            weights.append(self.cat_weight)
        if self.multi_valued:
            parts += self._plain_bags(bags)
            weights.append(self.bag_weight)
        x = torch.cat(parts, dim=1)  # [B, Dd + C] (or [B, Dd + F*k])
        return x @ torch.cat(weights, dim=0) + self.bias  # [B,Dd+C] x [Dd+C,N] -> [B,N]

    def _plain_bags(self, bags: Tensor) -> list[Tensor]:
        """Per multi-valued feature its input as written: the list's one-hot rows
        summed, or averaged (``[B, c_m]``); embedding mode: the pooled embeddings
        ``[B, k]``. An empty list gives zeros."""
        out = []
        start = 0
        for (a, b), (c, pooling, _) in zip(self.bag_slices, self.multi_valued, strict=True):
            idx = bags[:, a:b]  # [B, n_m]
            valid = (idx >= 0).to(self.bias.dtype)  # [B, n_m]
            count = valid.sum(1, keepdim=True)  # [B, 1] list lengths
            if self.bag_embedding is None:
                x = torch.zeros(idx.shape[0], c, dtype=self.bias.dtype, device=idx.device)
                x = x.scatter_add(1, idx.clamp_min(0), valid)  # [B, c]: how often each index
            else:
                e = self.bag_embedding.weight[start + idx.clamp_min(0)]  # [B, n_m, k]
                x = (e * valid.unsqueeze(2)).sum(1)  # [B,n_m,k] * [B,n_m,1] -> [B,k]
            out.append(x / count.clamp_min(1.0) if pooling == "mean" else x)
            start += c
        return out

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
        if self.multi_valued:  # the single-valued part as before, plus the S copies' bags
            out = self._copies(dense, cat[..., : self.n_fields], params)  # -> [S,B,N]
            return out + self._bag_copies(cat[..., self.n_fields:], params)  # + [S,B,N]
        return self._copies(dense, cat, params)

    def _bag_copies(self, bags: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """The multi-valued part of S copies: ``bags [B, L] | [S, B, L] -> [S, B, N]``.

        One embedding bag over the S tables flattened (rows shifted by ``s*Cb``).
        """
        w_out = params["bag_weight"]  # [S,Cb,N] | [S,M*k,N]
        S, n_out = w_out.shape[0], w_out.shape[2]
        rows, w = self.bag_rows(bags)  # [(S,)B,L] each
        B, L = rows.shape[-2], rows.shape[-1]
        rows, w = rows.expand(S, B, L), w.expand(S, B, L)  # -> [S,B,L]
        if self.bag_embedding is None:
            n_bag = w_out.shape[1]
            rows = rows + (torch.arange(S, device=rows.device) * n_bag).view(S, 1, 1)
            table = w_out.reshape(S * n_bag, n_out)  # [S,Cb,N] -> [S*Cb,N]
            out = self._pool(rows.reshape(S * B, L), w.reshape(S * B, L), table)  # -> [S*B,N]
            return out.view(S, B, n_out)  # [S*B,N] -> [S,B,N]
        emb = params["bag_embedding.weight"]  # [S,Cb,k]
        n_bag, k = emb.shape[1], emb.shape[2]
        rows = rows + (torch.arange(S, device=rows.device) * n_bag).view(S, 1, 1)
        table = emb.reshape(S * n_bag, k)  # [S,Cb,k] -> [S*Cb,k]
        pooled = [self._pool(rows[..., a:b].reshape(S * B, b - a),  # [S,B,n_m] -> [S*B,n_m]
                             w[..., a:b].reshape(S * B, b - a), table).view(S, B, k)
                  for a, b in self.bag_slices]  # M x [S*B,k] -> [S,B,k]
        return torch.bmm(torch.cat(pooled, dim=2), w_out)  # [S,B,M*k] x [S,M*k,N] -> [S,B,N]

    def _copies(self, dense: Tensor, cat: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """:meth:`forward_copies` of the dense and single-valued part."""
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
