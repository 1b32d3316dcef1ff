"""Fusion levels: experts, gates and their combination, all units at once.

Notation: B batch, S input slots (units of the previous level), E experts of
this level, G gates (= fusion units that produce an output), K experts a gate
weighs, D input width, H first expert layer width, d expert output width.

One :class:`FusionLevel` covers AdaTT (Li et al., KDD'23, Eq. 4-11), PLE/CGC,
MMoE and multi-level MMoE; the models differ only in their :class:`LevelPlan`:
which slot each expert reads, which experts each gate weighs, and which
experts get a NativeExpertLF weight.

The level has two forward paths over the same parameters, side by side:

* the plain one (:meth:`FusionLevel.equations`, under
  :func:`~adatt.modules.kernels.plain_mode`), the paper as written: per
  expert its MLP on its unit's input (Eq. 4), stacked (Eq. 5-6); per unit
  ``G_t = softmax(W_t f_t)`` (Eq. 10) and ``G_t^T E + v_t^T E_t`` (Eq. 7-9);
* the fast one (the default), all units at once. For gate ``g`` the combined
  expert weights are (Eq. 11)::

      C_g = pad(v_g) + scatter(softmax(W_g f_src(g)))      # [B, E]
      out_g = C_g^T E                                      # [B, d]

  where ``v_g`` is learned (NativeExpertLF, Eq. 8) or fixed to 1 when the
  unit has a single native expert. Experts of the level run as batched
  products: one ``baddbmm`` over slots for the first layer (experts and gates
  reading the same slot share one product), one over experts for deeper
  expert layers. At the first level every expert and gate reads ``x``; that
  product is done by the model's :class:`~adatt.modules.layers.InputLinear`
  and handed in as pre-activations. Where each expert's and gate's columns
  lie in those products is a :class:`LevelLayout`, built once. Where the
  experts' columns come first (the ``units`` and ``external`` layouts) and the
  activation is ReLU, :func:`experts_and_gates` activates them straight into
  the ``[B, E, d]`` layout the combination reads and, backward, writes both
  parts' gradients into one buffer: no transpose copy, no concatenation.

Example:
    >>> import torch
    >>> from adatt.modules.kernels import plain_mode
    >>> plan = LevelPlan(num_slots=2, expert_src=(0, 0, 1, 1),
    ...                  gates=(Gate(0, (0, 1, 2, 3), (0, 1)), Gate(1, (0, 1, 2, 3), (2, 3))))
    >>> level = FusionLevel(plan, in_dim=8, expert_sizes=[16])
    >>> x = torch.randn(5, 2, 8)
    >>> out, weights = level(x, return_weights=True)
    >>> out.shape, weights.shape
    (torch.Size([5, 2, 16]), torch.Size([5, 2, 4]))
    >>> with plain_mode():
    ...     torch.allclose(level(x), out, atol=1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adatt.modules.kernels import drop_pad, exporting, fp32_bmm, gate_softmax, is_plain
from adatt.modules.layers import SlotLinear, activation_fn

__all__ = ["Gate", "LevelPlan", "LevelLayout", "FusionLevel", "experts_and_gates"]


@dataclass(frozen=True)
class Gate:
    """One fusion unit's gate.

    Args:
        src: input slot the gate reads, or None when its first-layer
            pre-activations are supplied by the caller (ML-MMoE gates read x).
        experts: the experts it weighs, in order; softmax over them.
        native: experts that also get a NativeExpertLF weight (its own experts).
        native_learned: learned ``v`` (True) or the constant 1 (False, one expert).
    """

    src: int | None
    experts: tuple[int, ...]
    native: tuple[int, ...] = ()
    native_learned: bool = True


@dataclass(frozen=True)
class LevelPlan:
    """Wiring of one level: slot of each expert, and the gates (outputs) in order."""

    num_slots: int
    expert_src: tuple[int, ...]
    gates: tuple[Gate, ...]

    def __post_init__(self) -> None:
        E = len(self.expert_src)
        if any(not 0 <= s < self.num_slots for s in self.expert_src):
            raise ValueError("expert_src out of range")
        for g in self.gates:
            if not g.experts or any(not 0 <= e < E for e in g.experts + g.native):
                raise ValueError("a gate must weigh at least one existing expert")
            if g.src is not None and not 0 <= g.src < self.num_slots:
                raise ValueError("gate src out of range")
        if len({g.src is None for g in self.gates}) > 1:
            raise ValueError("a level's gates are either all internal or all external")

    @property
    def external_gates(self) -> bool:
        return bool(self.gates) and self.gates[0].src is None


#: first-layer layouts of :class:`LevelLayout` (``mode``)
EXTERNAL, UNITS, FUSED, SPLIT = "external", "units", "fused", "split"


@dataclass(frozen=True)
class LevelLayout:
    """Where the fast path finds each expert and gate: the level's column bookkeeping.

    The first layer of every expert (width H) and internal gate (width ``g1``:
    the first hidden width, or K without hidden layers) reading slot ``s`` is
    one block of slot ``s``'s product; slot ``s`` holds ``[its experts | its
    gates]``, in index order, ``W`` columns wide (the widest slot). The flat
    first-layer output is ``[B, S*W]``: slot after slot. ``mode`` says how the
    fast path computes and reads it:

    * ``external``: the caller's product (level 0: the model's
      :class:`~adatt.modules.layers.InputLinear`) hands in the ``[B, W]``
      pre-activations of the single slot; experts and gates are its columns.
    * ``units``: every slot is ``[its m experts | its one gate]`` (AdaTT-sp,
      AdaTT and PLE levels after the first with equal counts): one
      :class:`~adatt.modules.layers.SlotLinear` over slots, whose output is
      ``[S, B, m*H | g1]``; experts and logits are views of it.
    * ``fused``: every slot equally wide otherwise: the same single product,
      experts and gates picked from the flat output by their columns.
    * ``split``: slots of different widths (padding them would waste work):
      one product over experts (each its own slot, ``[E, B, H]``) and one over
      gates (``[G, B, g1]``).

    Where a column list is one contiguous range it is read as a slice (a
    view), and where experts then gates cover the whole flat output as one
    ``split`` (its backward is one concatenation; two slices would each
    zero-fill a full-size gradient); otherwise an ``index_select``.

    Gate logits are ``[B, G, Kmax]``: gates over fewer than ``Kmax`` experts
    are padded (``logit_index`` reads a zero column) and masked to ``-inf``
    (``logit_mask``). Softmax rows become rows of the combined weights
    ``[B, G, E]`` through ``comb_index`` (a gate's expert ``e`` at its
    position, experts it does not weigh read a zero column), unless every
    gate weighs all experts in order (``all_experts``). NativeExpertLF:
    ``native_base [G, E]`` holds the constant ones, ``native_index [G*E]``
    the position (1-based, 0 = zero) of each learned weight in the level's
    ``native_weight`` vector.

    Example:
        >>> plan = LevelPlan(2, (0, 0, 1, 1), (Gate(0, (0, 1, 2, 3)), Gate(1, (0, 1, 2, 3))))
        >>> lay = LevelLayout.build(plan, expert_width=8, gate_hidden=(), first_external=False)
        >>> lay.mode, lay.slot_widths, lay.place[("g", 1)]
        ('units', (20, 20), (1, 16, 4))
    """

    mode: str
    #: first-layer width of every slot (experts and internal gates), and W = their max
    slot_widths: tuple[int, ...]
    width: int
    #: (kind, id) -> (slot of its product, first column in that slot, width);
    #: kind "e" expert, "g" gate; in ``split`` mode the slot is the expert's or gate's own
    place: dict[tuple[str, int], tuple[int, int, int]]
    #: (kind, id) -> its columns of the flat first-layer output ``[B, S*W]``
    columns: dict[tuple[str, int], list[int]]
    expert_cols: tuple[int, ...]
    gate_cols: tuple[int, ...]
    expert_slice: slice | None
    gate_slice: slice | None
    flat_split: list[int] | None
    experts_per_slot: int
    expert_width: int
    gate_first_widths: tuple[int, ...]
    experts_per_gate: tuple[int, ...]
    #: every gate weighs as many experts (no padded logits)
    gates_uniform: bool
    logit_index: tuple[int, ...]
    logit_mask: tuple[bool, ...]
    all_experts: bool
    comb_index: tuple[int, ...]
    native_base: tuple[float, ...]
    native_index: tuple[int, ...]
    num_native_learned: int

    @classmethod
    def build(cls, plan: LevelPlan, expert_width: int, gate_hidden: Sequence[int],
              first_external: bool) -> LevelLayout:
        """The layout of ``plan`` with experts' first layers ``expert_width`` wide."""
        E, G, S, H = len(plan.expert_src), len(plan.gates), plan.num_slots, expert_width
        K = tuple(len(g.experts) for g in plan.gates)
        g1 = tuple(gate_hidden[0] if gate_hidden else k for k in K)

        # first layer: slot s = [its experts | its internal gates], W = the widest slot
        blocks: list[list[tuple[str, int, int]]] = [[] for _ in range(S)]  # (kind, id, width)
        for e, s in enumerate(plan.expert_src):
            blocks[s].append(("e", e, H))
        if not plan.external_gates:
            for g, gate in enumerate(plan.gates):
                blocks[gate.src].append(("g", g, g1[g]))
        widths = tuple(sum(w for _, _, w in b) for b in blocks)
        W = max(widths)
        place, columns = {}, {}
        for s, b in enumerate(blocks):
            off = 0
            for kind, i, w in b:
                place[(kind, i)] = (s, off, w)
                columns[(kind, i)] = list(range(s * W + off, s * W + off + w))
                off += w
        m = E // S if S else 0
        if first_external:
            mode = EXTERNAL
        elif any(w != W for w in widths):
            mode = SPLIT
            place = {**{("e", e): (e, 0, H) for e in range(E)},
                     **{("g", g): (g, 0, g1[g]) for g in range(G) if not plan.external_gates}}
        elif (not plan.external_gates and G == S and m * S == E
              and all(g.src == i for i, g in enumerate(plan.gates))
              and list(plan.expert_src) == [e // m for e in range(E)]
              and all(blocks[s] == [("e", s * m + j, H) for j in range(m)] + [("g", s, g1[s])]
                      for s in range(S))):
            mode = UNITS
        else:
            mode = FUSED
        expert_cols = [c for e in range(E) for c in columns[("e", e)]]
        gate_cols = [] if plan.external_gates else [c for g in range(G) for c in columns[("g", g)]]
        expert_slice, gate_slice = _as_slice(expert_cols), _as_slice(gate_cols)
        flat_width = W if first_external else S * W
        covers = (expert_slice == slice(0, len(expert_cols))
                  and gate_slice == slice(len(expert_cols), flat_width)
                  and len(expert_cols) + len(gate_cols) == flat_width)

        # gate logits [B, sum K] -> padded [B, G, Kmax]; pads masked to -inf
        Kmax = max(K)
        logit_index, mask, off = [], [], 0
        for k in K:
            logit_index += list(range(off, off + k)) + [sum(K)] * (Kmax - k)
            mask += [False] * k + [True] * (Kmax - k)
            off += k
        if gate_hidden:  # the last gate layer already returns [G, B, Kmax] with zero pads
            logit_index = list(range(G * Kmax))
        # softmax over a gate's K experts -> its row of C [G, E]; others read the zero column
        comb = []
        for g, gate in enumerate(plan.gates):
            pos = {e: g * Kmax + j for j, e in enumerate(gate.experts)}
            comb += [pos.get(e, G * Kmax) for e in range(E)]

        # NativeExpertLF: V [G, E] = fixed ones + learned v scattered to own experts
        base, native_idx, learned = [0.0] * (G * E), [0] * (G * E), 0
        for g, gate in enumerate(plan.gates):
            for e in gate.native:
                if gate.native_learned:
                    learned += 1
                    native_idx[g * E + e] = learned  # 0 -> the zero pad before the vector
                else:
                    base[g * E + e] = 1.0

        return cls(
            mode=mode, slot_widths=widths, width=W, place=place, columns=columns,
            expert_cols=tuple(expert_cols), gate_cols=tuple(gate_cols),
            expert_slice=expert_slice, gate_slice=gate_slice,
            flat_split=[len(expert_cols), len(gate_cols)] if covers else None,
            experts_per_slot=m, expert_width=H, gate_first_widths=g1, experts_per_gate=K,
            gates_uniform=len(set(K)) == 1,
            logit_index=tuple(logit_index), logit_mask=tuple(mask),
            all_experts=all(g.experts == tuple(range(E)) for g in plan.gates),
            comb_index=tuple(comb), native_base=tuple(base), native_index=tuple(native_idx),
            num_native_learned=learned,
        )


class FusionLevel(nn.Module):
    """Experts, gates and gated combination of one level, batched over units.

    Args:
        plan: the wiring (see :class:`LevelPlan`).
        in_dim: D, width of each input slot (ignored when ``first_external``).
        expert_sizes: layer widths of every expert's MLP, e.g. ``[128]``.
        gate_hidden: hidden layer widths of every gate (default: none, a
            1-layer softmax gate).
        activation: activation after each expert / gate hidden layer.
        first_external: the first expert and gate layer is computed by the
            caller (first level: everything reads x); ``forward`` then takes
            the pre-activations ``[B, first_width]``.

    Shapes: ``x [B, S, D]`` (or ``[B, first_width]``), optional
    ``gate_pre [B, external_width]`` -> ``[B, G, d]``; with
    ``return_weights`` also the combined expert weights ``[B, G, E]``.

    Parameters: the first layer is ``first`` (one
    :class:`~adatt.modules.layers.SlotLinear` over slots) or, in the ``split``
    layout, ``expert_first`` and ``gate_first`` (one slot per expert, per
    gate); ``expert_layers`` and ``gate_layers`` hold the deeper layers (one
    slot per expert, per gate); ``native_weight`` the learned NativeExpertLF
    weights, gate after gate. Under :func:`~adatt.modules.kernels.plain_mode`
    ``forward`` runs :meth:`equations` on the same parameters.
    """

    def __init__(
        self,
        plan: LevelPlan,
        in_dim: int,
        expert_sizes: Sequence[int],
        gate_hidden: Sequence[int] = (),
        activation: str = "relu",
        first_external: bool = False,
    ) -> None:
        super().__init__()
        if not expert_sizes:
            raise ValueError("an expert needs at least one layer")
        if first_external and plan.num_slots != 1:
            raise ValueError("an external first layer needs a single input slot")
        self.plan, self.act = plan, activation_fn(activation)
        self.first_external = first_external
        sizes = [int(s) for s in expert_sizes]
        self.out_dim = sizes[-1]
        E, G, S, H = len(plan.expert_src), len(plan.gates), plan.num_slots, sizes[0]
        self.num_experts, self.num_gates = E, G
        gate_hidden = [int(h) for h in gate_hidden]
        self.layout = lay = LevelLayout.build(plan, H, gate_hidden, first_external)
        self.columns = lay.columns  # (kind, id) -> columns of the flat first-layer output
        self.split_first = lay.mode == SPLIT
        self.first_width = lay.width if first_external else None
        self.external_width = sum(lay.gate_first_widths) if plan.external_gates else 0

        # first layer (the caller's product when external)
        self.first = self.expert_first = self.gate_first = None
        if lay.mode == SPLIT:
            self.expert_first = SlotLinear(E, in_dim, [H] * E)
            if not plan.external_gates:
                self.gate_first = SlotLinear(G, in_dim, lay.gate_first_widths)
            self.register_buffer("expert_src", torch.tensor(plan.expert_src), persistent=False)
            self.register_buffer("gate_src", torch.tensor(
                [g.src or 0 for g in plan.gates]), persistent=False)
            # gate g reads slot g (AdaTT's unit gates): the slots are the gates' input as is
            self.gates_read_slots = [g.src for g in plan.gates] == list(range(S))
        elif lay.mode != EXTERNAL:
            self.first = SlotLinear(S, in_dim, lay.slot_widths)
        self.register_buffer("expert_cols", torch.tensor(lay.expert_cols, dtype=torch.long),
                             persistent=False)
        self.register_buffer("gate_cols", torch.tensor(lay.gate_cols, dtype=torch.long),
                             persistent=False)

        # deeper expert layers: one slot per expert
        self.expert_layers = nn.ModuleList(
            SlotLinear(E, a, [b] * E) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        # deeper gate layers (only with hidden gate layers): one slot per gate
        self.gate_layers = nn.ModuleList()
        if gate_hidden:
            dims = gate_hidden
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                self.gate_layers.append(SlotLinear(G, a, [b] * G))
            self.gate_layers.append(SlotLinear(G, dims[-1], lay.experts_per_gate))

        # gate logits and combined weights (see LevelLayout)
        Kmax = max(lay.experts_per_gate)
        self.register_buffer("logit_index", torch.tensor(lay.logit_index), persistent=False)
        self.register_buffer("logit_mask", torch.tensor(lay.logit_mask).view(G, Kmax),
                             persistent=False)
        self.register_buffer("comb_index", torch.tensor(lay.comb_index), persistent=False)

        # NativeExpertLF
        self.has_native = any(g.native for g in plan.gates)
        self.register_buffer("native_base", torch.tensor(lay.native_base).view(G, E),
                             persistent=False)
        self.register_buffer("native_index", torch.tensor(lay.native_index), persistent=False)
        n = lay.num_native_learned
        self.native_weight = nn.Parameter(torch.empty(n)) if n else None
        if self.native_weight is not None:
            with torch.no_grad():
                i = 0
                for gate in plan.gates:  # v_g ~ U(-1/sqrt(m_g), 1/sqrt(m_g)), m_g native experts
                    if gate.native and gate.native_learned:
                        m = len(gate.native)
                        bound = math.sqrt(1.0 / m)
                        self.native_weight[i : i + m].uniform_(-bound, bound)
                        i += m

    def native_matrix(self) -> Tensor:
        """NativeExpertLF weights padded to all experts, ``[G, E]`` (Eq. 11's pad(v))."""
        G, E = self.num_gates, self.num_experts
        if self.native_weight is None:
            return self.native_base
        v = F.pad(self.native_weight, (1, 0))[self.native_index]  # [1+n] -> [G*E]
        return self.native_base + v.view(G, E)  # [G*E] -> [G,E]

    def forward(
        self, x: Tensor, gate_pre: Tensor | None = None, return_weights: bool = False,
        width: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if self.plan.external_gates and gate_pre is None:
            raise ValueError("this level's gates need their pre-activations (gate_pre)")
        if width is not None and width != x.shape[-1] and not self.reads_padded():
            x, width = drop_pad(x, width), None  # [B,W+pad] -> [B,W], a view
        if is_plain():
            return self.equations(x, gate_pre, return_weights)
        h, z, z_slots, active = self._first_layer(x, gate_pre, width)  # [B,E,H]; gates
        B, E, G = h.shape[0], self.num_experts, self.num_gates

        # experts: [B, E, H] -> deeper layers -> [B, E, d]
        if not active:
            h = self.act(h)
        if len(self.expert_layers):
            h = h.transpose(0, 1)  # [B,E,H] -> [E,B,H]
            for layer in self.expert_layers:
                h = self.act(layer(h))  # [E,B,a] x [E,a,b] -> [E,B,b]
            h = h.transpose(0, 1)  # [E,B,d] -> [B,E,d]

        # gates: first-layer pre-activations -> logits [B, G, Kmax]
        if len(self.gate_layers):
            if not z_slots:
                z = z.reshape(B, G, -1).transpose(0, 1)  # [B,G*h] -> [G,B,h]
            z = self.act(z)
            for i, layer in enumerate(self.gate_layers):
                z = layer(z)  # [G,B,a] x [G,a,b] -> [G,B,b]
                if i < len(self.gate_layers) - 1:
                    z = self.act(z)
            logits = z.transpose(0, 1)  # [G,B,Kmax] -> [B,G,Kmax]
        elif z_slots:
            logits = z.transpose(0, 1)  # [G,B,Kmax] -> [B,G,Kmax], zero pads
        elif self.layout.gates_uniform:
            logits = z.reshape(B, G, -1)  # [B,G*K] -> [B,G,K]
        else:
            logits = F.pad(z, (0, 1))[:, self.logit_index].view(B, G, -1)  # -> [B,G,Kmax]
        if not self.layout.gates_uniform:
            logits = logits.masked_fill(self.logit_mask, float("-inf"))

        # combined weights C [B, G, E] (Eq. 11) and the one product C^T E
        probs = gate_softmax(logits)  # [B,G,Kmax]
        if self.layout.all_experts:
            comb = probs  # Kmax == E, gate j weighs expert j
        else:
            comb = F.pad(probs.flatten(1), (0, 1))[:, self.comb_index].view(B, G, E)  # [B,G,E]
        if self.has_native:
            comb = comb + self.native_matrix()  # [B,G,E] + [G,E]
        out = fp32_bmm(comb, h)  # [B,G,E] x [B,E,d] -> [B,G,d]
        return (out, comb) if return_weights else out

    def reads_padded(self) -> bool:
        """Does the fast path take level 0's input with the input layer's zero
        columns still on (``forward(..., width=W)``, see
        :meth:`~adatt.modules.layers.InputLinear.forward_padded`)? Where the
        experts' and gates' columns are read in one pass by
        :func:`experts_and_gates`: the padding then costs no backward pass."""
        lay = self.layout
        return (lay.mode == EXTERNAL and self.act is F.relu and lay.flat_split is not None
                and not self.plan.external_gates and not exporting() and not is_plain())

    def _first_layer(self, x: Tensor, gate_pre: Tensor | None, width: int | None = None
                     ) -> tuple[Tensor, Tensor, bool, bool]:
        """First-layer pre-activations of the experts ``[B, E, H]`` and of the gates.

        The gates' come as ``[G, B, g1]`` (third value True: ``split`` and
        ``units`` layouts, zero-padded to the widest gate) or flat ``[B, sum g1]``.
        Fourth value True: the experts' part is already activated (ReLU experts
        whose columns come first in a ``units`` or ``external`` product:
        :func:`experts_and_gates`, one pass that also replaces the split's
        concatenation in the backward).
        """
        lay, E = self.layout, self.num_experts
        if lay.mode == SPLIT:
            # gathered slab by slab from the [S,B,D] view: an index_select along dim 1
            # copies D floats at a time and its backward is several times slower
            xt = x.transpose(0, 1)  # [B,S,D] -> [S,B,D]
            xe = xt.index_select(0, self.expert_src)  # [S,B,D] -> [E,B,D]
            h = self.expert_first(xe).transpose(0, 1)  # [E,B,D] x [E,D,H] -> [B,E,H]
            if self.gate_first is None:
                return h, gate_pre, False, False
            xg = xt if self.gates_read_slots else xt.index_select(0, self.gate_src)  # [G,B,D]
            return h, self.gate_first(xg), True, False  # [G,B,D] x [G,D,g1] -> [G,B,g1]
        fuse = self.act is F.relu and not exporting()
        if lay.mode == UNITS:
            y = self.first(x.transpose(0, 1))  # [B,S,D] -> [S,B,D] -> [S,B,W]
            S, B, m, H = y.shape[0], y.shape[1], lay.experts_per_slot, lay.expert_width
            if fuse:  # relu(experts) as [B,E,H] and the gates' [S,B,K] in one pass
                h, z = experts_and_gates(y, m, H)  # [S,B,W] -> [B,E,H], [S,B,K]
                return h, z, True, True
            h, z = y.split([m * H, y.shape[2] - m * H], 2)  # [S,B,m*H], [S,B,K]: gate s's logits
            h = h.reshape(S, B, m, H)  # [S,B,m*H] -> [S,B,m,H]
            return h.transpose(0, 1).reshape(B, E, H), z, True, False  # [B,S,m,H] -> [B,E,H]
        if (lay.mode == EXTERNAL and fuse and lay.flat_split is not None
                and not self.plan.external_gates):  # [B, E*H | G*g1]: experts then gates
            h, z = experts_and_gates(x.unsqueeze(0), E, lay.expert_width,
                                     width)  # [1,B,W(+pad)] -> [B,E,H], [1,B,G*g1]
            return h, z.squeeze(0), False, True  # [1,B,G*g1] -> [B,G*g1]
        if lay.mode == EXTERNAL:
            flat = x  # [B, W] pre-activations of experts and gates
        else:
            y = self.first(x.transpose(0, 1))  # [B,S,D] -> [S,B,D] -> [S,B,W]
            flat = y.transpose(0, 1).flatten(1)  # [S,B,W] -> [B,S*W]
        B = flat.shape[0]
        if lay.flat_split is not None:  # experts then gates: one split
            h, z = flat.split(lay.flat_split, 1)  # [B,E*H], [B,G*g1]
        else:
            h = (flat[:, lay.expert_slice] if lay.expert_slice is not None
                 else flat.index_select(1, self.expert_cols))  # [B,E*H]
            if lay.gate_slice is not None:
                z = flat[:, lay.gate_slice]  # [B,G*g1]
            else:
                z = flat.index_select(1, self.gate_cols)  # [B,G*g1]
        if self.plan.external_gates:
            z = gate_pre  # [B, G*g1]
        return h.reshape(B, E, -1), z, False, False  # [B,E*H] -> [B,E,H]

    # ------------------------------------------------------------------ the plain path

    def equations(
        self, x: Tensor, gate_pre: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The level as the paper writes it (Eq. 4-10), unit by unit; slow, for reading and tests.

        The same parameters, inputs and outputs as :meth:`forward` (which runs
        this under :func:`~adatt.modules.kernels.plain_mode`). For every expert
        ``e`` of unit ``u``: ``E_e = MLP_e(f_u)`` (Eq. 4), stacked ``[B, E, d]``
        (Eq. 5-6); for every unit (gate) ``t``: ``G_t = softmax(W_t f_t)``
        (Eq. 10, with the gate's hidden layers if any) over the experts it
        weighs, ``out_t = G_t^T E + v_t^T E_t`` (Eq. 7-9: AllExpertGF plus
        NativeExpertLF over its native experts, ``v_t`` learned or 1).
        """
        act, B, E = self.act, x.shape[0], self.num_experts
        # Eq. 4-6: each expert's MLP on the input of its unit, stacked
        experts = []
        for e in range(E):
            h = act(self._unit_first_layer("e", e, x, gate_pre))  # [B, H]
            for layer in self.expert_layers:
                w, b = layer.slot(e)
                h = act(h @ w + b)  # [B,a] x [a,b] -> [B,b]
            experts.append(h)
        Eall = torch.stack(experts, dim=1)  # E x [B,d] -> [B,E,d]
        outs, weights, v_at = [], [], 0
        for g, gate in enumerate(self.plan.gates):
            # Eq. 10: G_t = softmax(W_t f_t), through the gate's hidden layers if any
            z = self._unit_first_layer("g", g, x, gate_pre)  # [B, g1]
            for layer in self.gate_layers:
                w, b = layer.slot(g)
                z = act(z) @ w + b  # [B,a] x [a,b] -> [B,b]
            G = torch.softmax(z, dim=-1)  # [B, K]
            weighed = torch.tensor(gate.experts, device=x.device)
            out = torch.einsum("bk,bkd->bd", G, Eall[:, weighed])  # Eq. 9: G_t^T E
            C = G.new_zeros(B, E).index_add(1, weighed, G)  # [B, E]
            if gate.native:  # Eq. 8: NativeExpertLF v_t^T E_t
                m, own = len(gate.native), torch.tensor(gate.native, device=x.device)
                if gate.native_learned:
                    v = self.native_weight[v_at : v_at + m]  # [m]
                    v_at += m
                else:
                    v = G.new_ones(m)  # a single native expert: the constant 1
                out = out + torch.einsum("m,bmd->bd", v, Eall[:, own])  # Eq. 7
                C = C.index_add(1, own, v.expand(B, m))  # pad(v) + G (Eq. 11's weights)
            outs.append(out)
            weights.append(C)
        out = torch.stack(outs, dim=1)  # G x [B,d] -> [B,G,d]
        return (out, torch.stack(weights, dim=1)) if return_weights else out  # [B,G,E]

    def _unit_first_layer(self, kind: str, i: int, x: Tensor, gate_pre: Tensor | None) -> Tensor:
        """Expert (``kind="e"``) or gate (``"g"``) ``i``'s first-layer pre-activations ``[B, w]``.

        From its own weight and bias (read out of the product that holds them)
        applied to its unit's input; at the first level, the columns of the
        caller's pre-activations; external gates, their columns of ``gate_pre``.
        """
        if kind == "g" and self.plan.external_gates:
            widths = self.layout.gate_first_widths
            off = sum(widths[:i])
            return gate_pre[:, off : off + widths[i]]  # [B, g1]
        slot, off, width = self.layout.place[(kind, i)]
        if self.first_external:
            return x[:, off : off + width]  # the caller's product, [B, w]
        if self.first is not None:
            product = self.first
        else:
            product = self.expert_first if kind == "e" else self.gate_first
        w, b = product.slot(slot)  # [D, W_slot], [W_slot]
        src = self.plan.expert_src[i] if kind == "e" else self.plan.gates[i].src
        return x[:, src] @ w[:, off : off + width] + b[off : off + width]  # [B,D] x [D,w] -> [B,w]


def _as_slice(cols: list[int]) -> slice | None:
    """``slice`` when ``cols`` is a contiguous ascending range, else None."""
    if not cols:
        return slice(0, 0)
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return slice(cols[0], cols[0] + len(cols))
    return None


class _ExpertsAndGates(torch.autograd.Function):
    """``relu`` of the experts' columns laid out ``[B, U*m, H]``, and the gates' columns.

    Forward: ``y [*, U, B, W]`` (U units, each ``[m experts of H | the rest]``)
    -> ``h [*, B, U*m, H]`` (written by ``relu`` straight into that layout,
    no separate transpose copy) and ``z [*, U, B, W - m*H]`` (a copy of the
    small rest). Backward: one buffer like ``y``; the ReLU gradient is written
    into its expert columns and ``z``'s gradient into the rest, instead of a
    ReLU backward, a transpose copy and a concatenation (the backward of a
    ``split``). The values are those of ``relu`` and ``split``, bit for bit.
    """

    @staticmethod
    def forward(y: Tensor, m: int, H: int, width: int | None) -> tuple[Tensor, Tensor]:
        *lead, U, B, _ = y.shape
        h = y.new_empty(*lead, B, U, m, H)  # [*,B,U,m,H]
        experts = y[..., : m * H].unflatten(-1, (m, H))  # [*,U,B,m*H] -> [*,U,B,m,H], a view
        torch.clamp_min(experts.transpose(-4, -3), 0, out=h)  # relu: [*,U,B,m,H] -> [*,B,U,m,H]
        z = y[..., m * H : width].clone()  # [*,U,B,K]
        return h.view(*lead, B, U * m, H), z  # [*,B,U,m,H] -> [*,B,U*m,H]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        y, m, H, width = inputs
        ctx.m, ctx.H, ctx.shape = m, H, y.shape
        ctx.width = y.shape[-1] if width is None else width
        ctx.save_for_backward(output[0])

    @staticmethod
    def backward(ctx, grad_h: Tensor | None, grad_z: Tensor | None):
        (h,) = ctx.saved_tensors
        m, H, width = ctx.m, ctx.H, ctx.width
        *lead, U, B, W = ctx.shape
        buf = h.new_empty(ctx.shape)  # [*,U,B,W]
        experts = buf[..., : m * H].unflatten(-1, (m, H)).transpose(-4, -3)  # [*,B,U,m,H] view
        if grad_h is None:
            experts.zero_()
        else:
            g = grad_h.reshape(*lead, B, U, m, H)  # [*,B,U*m,H] -> [*,B,U,m,H]
            torch.ops.aten.threshold_backward.grad_input(
                g, h.view(*lead, B, U, m, H), 0, grad_input=experts)  # relu's backward, in place
        rest = buf[..., m * H : width]  # [*,U,B,K]
        if grad_z is None:
            rest.zero_()
        else:
            rest.copy_(grad_z)
        if width < W:
            buf[..., width:].zero_()  # the padding's columns: no gradient
        return buf, None, None, None

    @staticmethod
    def vmap(info, in_dims, y: Tensor, m: int, H: int, width: int | None):
        """The ensemble's copies are one more leading dimension of ``y``."""
        if in_dims[0] is None:
            return _ExpertsAndGates.apply(y, m, H, width), (None, None)
        return _ExpertsAndGates.apply(y.movedim(in_dims[0], 0), m, H, width), (0, 0)


def experts_and_gates(y: Tensor, m: int, H: int, width: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """ReLU experts ``[*, B, U*m, H]`` and the rest ``[*, U, B, width-m*H]`` of ``y [*, U, B, W]``.

    The same values as ``relu(y[..., :m*H])`` rearranged to expert-major rows
    and ``y[..., m*H:width]``, forward and backward, in fewer passes over memory
    (see :class:`_ExpertsAndGates`). ``width`` (default ``W``): the columns
    from ``width`` on are padding (:meth:`~adatt.modules.layers.InputLinear.forward_padded`),
    read by nothing; their gradient is zero.

    Example:
        >>> y = torch.randn(2, 4, 7, requires_grad=True)  # 2 units of 2 experts of 3 + 1 gate
        >>> h, z = experts_and_gates(y, 2, 3)
        >>> h.shape, z.shape
        (torch.Size([4, 4, 3]), torch.Size([2, 4, 1]))
        >>> ref = torch.relu(y[..., :6]).reshape(2, 4, 2, 3).transpose(0, 1).reshape(4, 4, 3)
        >>> torch.equal(h, ref), torch.equal(z, y[..., 6:])
        (True, True)
    """
    return _ExpertsAndGates.apply(y, m, H, width)

