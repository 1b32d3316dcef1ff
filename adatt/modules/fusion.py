"""Fusion levels: experts, gates and their combination, all units at once.

Notation: B batch, S input slots (units of the previous level), E experts of
this level, G gates (= fusion units that produce an output), K experts a gate
weighs, D input width, H first expert layer width, d expert output width.

One :class:`FusionLevel` covers AdaTT (Li et al., KDD'23, Eq. 4-11), PLE/CGC,
MMoE and multi-level MMoE; the models differ only in their :class:`LevelPlan`:
which slot each expert reads, which experts each gate weighs, and which
experts get a NativeExpertLF weight.

For gate ``g`` the combined expert weights are (Eq. 11)::

    C_g = pad(v_g) + scatter(softmax(W_g f_src(g)))      # [B, E]
    out_g = C_g^T E                                      # [B, d]

where ``v_g`` is learned (NativeExpertLF, Eq. 8) or fixed to 1 when the unit
has a single native expert. Equivalent to Eq. 7, ``G_g^T E + v_g^T E_native``.

Experts of the level run as batched products: one ``baddbmm`` over slots for
the first layer (experts and gates reading the same slot share one product),
one over experts for deeper expert layers. At the first level every expert
and gate reads ``x``; that product is done by the model's
:class:`~adatt.modules.layers.InputLinear` and handed in as pre-activations.

Example:
    >>> import torch
    >>> plan = LevelPlan(num_slots=2, expert_src=(0, 0, 1, 1),
    ...                  gates=(Gate(0, (0, 1, 2, 3), (0, 1)), Gate(1, (0, 1, 2, 3), (2, 3))))
    >>> level = FusionLevel(plan, in_dim=8, expert_sizes=[16])
    >>> out, weights = level(torch.randn(5, 2, 8), return_weights=True)
    >>> out.shape, weights.shape
    (torch.Size([5, 2, 16]), torch.Size([5, 2, 4]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adatt.modules.kernels import gate_softmax
from adatt.modules.layers import SlotLinear, activation_fn

__all__ = ["Gate", "LevelPlan", "FusionLevel"]


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
        K = [len(g.experts) for g in plan.gates]
        g1 = [gate_hidden[0] if gate_hidden else k for k in K]  # first gate layer widths

        # first layer: per slot [its experts (H each) | its internal gates (g1 each)]
        blocks: list[list[tuple[str, int, int]]] = [[] for _ in range(S)]  # (kind, id, width)
        for e, s in enumerate(plan.expert_src):
            blocks[s].append(("e", e, H))
        if not plan.external_gates:
            for g, gate in enumerate(plan.gates):
                blocks[gate.src].append(("g", g, g1[g]))
        widths = [sum(w for _, _, w in b) for b in blocks]
        W = max(widths)
        # fused: one product over slots for experts and gates together (no padding waste when
        # every slot is as wide); split: one product over experts, one over gates
        self.split_first = not first_external and any(w != W for w in widths)
        cols: dict[tuple[str, int], list[int]] = {}
        for s, b in enumerate(blocks):
            off = s * W
            for kind, i, w in b:
                cols[(kind, i)] = list(range(off, off + w))
                off += w
        expert_cols = [c for e in range(E) for c in cols[("e", e)]]
        gate_cols = [] if plan.external_gates else [c for g in range(G) for c in cols[("g", g)]]
        self.columns = cols  # (kind, id) -> columns of the flat first-layer output [B, S*W]
        self.first_width = W if first_external else None
        self.external_width = sum(g1) if plan.external_gates else 0
        self.first = self.expert_first = self.gate_first = None
        if self.split_first:
            self.expert_first = SlotLinear(E, in_dim, [H] * E)
            if not plan.external_gates:
                self.gate_first = SlotLinear(G, in_dim, g1)
            self.register_buffer("expert_src", torch.tensor(plan.expert_src), persistent=False)
            self.register_buffer("gate_src", torch.tensor(
                [g.src or 0 for g in plan.gates]), persistent=False)
        elif not first_external:
            self.first = SlotLinear(S, in_dim, widths)
        # every slot = [its m experts | its one gate], slot s holding experts s*m.. and gate s:
        # experts and gate logits are then views of the product, no column gathers
        m = E // S if S else 0
        self.unit_blocks = (
            self.first is not None and not plan.external_gates and G == S and m * S == E
            and all(g.src == i for i, g in enumerate(plan.gates))
            and list(plan.expert_src) == [e // m for e in range(E)]
            and all(blocks[s] == [("e", s * m + j, H) for j in range(m)] + [("g", s, g1[s])]
                    for s in range(S))
        )
        self._m, self._h = m, H
        self._expert_slice = _as_slice(expert_cols)
        self._gate_slice = _as_slice(gate_cols)
        # experts then gates, covering the flat first-layer output: one split, whose backward
        # is one concatenation (two slices would each zero-fill a full-size gradient)
        flat_width = W if first_external else S * W
        self._flat_split = (
            [len(expert_cols), len(gate_cols)]
            if self._expert_slice == slice(0, len(expert_cols))
            and self._gate_slice == slice(len(expert_cols), flat_width)
            and len(expert_cols) + len(gate_cols) == flat_width
            else None
        )
        self.register_buffer("expert_cols", torch.tensor(expert_cols), persistent=False)
        self.register_buffer("gate_cols", torch.tensor(gate_cols, dtype=torch.long),
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
            self.gate_layers.append(SlotLinear(G, dims[-1], K))

        # gate logits [B, sum K] -> padded [B, G, Kmax]; pads masked to -inf
        Kmax = max(K)
        self.gate_uniform = all(k == Kmax for k in K)
        pad_idx, mask, off = [], [], 0
        for k in K:
            pad_idx += list(range(off, off + k)) + [sum(K)] * (Kmax - k)
            mask += [False] * k + [True] * (Kmax - k)
            off += k
        if gate_hidden:  # the last gate layer already returns [G, B, Kmax] with zero pads
            pad_idx = list(range(G * Kmax))
        self.register_buffer("logit_index", torch.tensor(pad_idx), persistent=False)
        self.register_buffer("logit_mask", torch.tensor(mask).view(G, Kmax), persistent=False)
        # softmax over a gate's K experts -> its row of C [G, E]; others read the zero column
        self.all_experts = all(g.experts == tuple(range(E)) for g in plan.gates)
        comb = []
        for g, gate in enumerate(plan.gates):
            pos = {e: g * Kmax + j for j, e in enumerate(gate.experts)}
            comb += [pos.get(e, G * Kmax) for e in range(E)]
        self.register_buffer("comb_index", torch.tensor(comb), persistent=False)

        # NativeExpertLF: V [G, E] = fixed ones + learned v scattered to own experts
        base = torch.zeros(G, E)
        native_idx = [0] * (G * E)  # 0 -> the zero pad in front of the learned vector
        learned: list[float] = []
        for g, gate in enumerate(plan.gates):
            for e in gate.native:
                if gate.native_learned:
                    learned.append(1.0)
                    native_idx[g * E + e] = len(learned)
                else:
                    base[g, e] = 1.0
        self.has_native = any(g.native for g in plan.gates)
        self.register_buffer("native_base", base, persistent=False)
        self.register_buffer("native_index", torch.tensor(native_idx), persistent=False)
        self.native_weight = nn.Parameter(torch.empty(len(learned))) if learned else None
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
        self, x: Tensor, gate_pre: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        E, G = self.num_experts, self.num_gates
        z_slots = None  # gate pre-activations already in [G, B, g1] layout (split mode)
        if self.split_first:
            B = x.shape[0]
            xe = x.index_select(1, self.expert_src).transpose(0, 1)  # [B,S,D] -> [E,B,D]
            h = self.expert_first(xe).transpose(0, 1)  # [E,B,D] x [E,D,H] -> [B,E,H]
            if self.gate_first is not None:
                xg = x.index_select(1, self.gate_src).transpose(0, 1)  # [B,S,D] -> [G,B,D]
                z_slots = self.gate_first(xg)  # [G,B,D] x [G,D,g1] -> [G,B,g1]
        elif self.unit_blocks:
            y = self.first(x.transpose(0, 1))  # [B,S,D] -> [S,B,D] -> [S,B,W]
            S, B, mH = y.shape[0], y.shape[1], self._m * self._h
            h, z_slots = y.split([mH, y.shape[2] - mH], 2)  # [S,B,m*H], [S,B,K]: gate s's logits
            h = h.reshape(S, B, self._m, self._h)  # [S,B,m*H] -> [S,B,m,H]
            h = h.transpose(0, 1).reshape(B, E, self._h)  # [B,S,m,H] -> [B,E,H]
        else:
            if self.first_external:
                flat = x  # [B, W] pre-activations of experts and gates
            else:
                y = self.first(x.transpose(0, 1))  # [B,S,D] -> [S,B,D] -> [S,B,W]
                flat = y.transpose(0, 1).flatten(1)  # [S,B,W] -> [B,S*W]
            B = flat.shape[0]
            if self._flat_split is not None:
                h, gate_flat = flat.split(self._flat_split, 1)  # [B,E*H], [B,G*g1]
            elif self._expert_slice is not None:
                h = flat[:, self._expert_slice]
            else:
                h = flat.index_select(1, self.expert_cols)
            h = h.reshape(B, E, -1)  # [B,E*H] -> [B,E,H]

        # experts: [B, E, H] -> deeper layers -> [B, E, d]
        h = self.act(h)
        if len(self.expert_layers):
            h = h.transpose(0, 1)  # [B,E,H] -> [E,B,H]
            for layer in self.expert_layers:
                h = self.act(layer(h))  # [E,B,a] x [E,a,b] -> [E,B,b]
            h = h.transpose(0, 1)  # [E,B,d] -> [B,E,d]

        # gates: first-layer pre-activations -> logits [B, G, Kmax]
        if self.plan.external_gates:
            if gate_pre is None:
                raise ValueError("this level's gates need their pre-activations (gate_pre)")
            z = gate_pre  # [B, G*g1]
        elif z_slots is not None:
            z = z_slots
        elif self._flat_split is not None:
            z = gate_flat
        elif self._gate_slice is not None:
            z = flat[:, self._gate_slice]
        else:
            z = flat.index_select(1, self.gate_cols)
        if len(self.gate_layers):
            if z_slots is None:
                z = z.reshape(B, G, -1).transpose(0, 1)  # [B,G*h] -> [G,B,h]
            z = self.act(z)
            for i, layer in enumerate(self.gate_layers):
                z = layer(z)  # [G,B,a] x [G,a,b] -> [G,B,b]
                if i < len(self.gate_layers) - 1:
                    z = self.act(z)
            logits = z.transpose(0, 1)  # [G,B,Kmax] -> [B,G,Kmax]
        elif z_slots is not None:
            logits = z_slots.transpose(0, 1)  # [G,B,Kmax] -> [B,G,Kmax], zero pads
        elif self.gate_uniform:
            logits = z.reshape(B, G, -1)  # [B,G*K] -> [B,G,K]
        else:
            logits = F.pad(z, (0, 1))[:, self.logit_index].view(B, G, -1)  # -> [B,G,Kmax]
        if not self.gate_uniform:
            logits = logits.masked_fill(self.logit_mask, float("-inf"))
        probs = gate_softmax(logits)  # [B,G,Kmax]
        if self.all_experts:
            comb = probs  # Kmax == E, gate j weighs expert j
        else:
            comb = F.pad(probs.flatten(1), (0, 1))[:, self.comb_index].view(B, G, E)  # [B,G,E]
        if self.has_native:
            comb = comb + self.native_matrix()  # [B,G,E] + [G,E]
        if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU bf16 bmm loops over the B tiny products; this product is cheap in fp32
            with torch.autocast("cpu", enabled=False):
                out = torch.bmm(comb.float(), h.float())  # [B,G,E] x [B,E,d] -> [B,G,d]
        else:
            out = torch.bmm(comb, h)  # [B,G,E] x [B,E,d] -> [B,G,d]
        return (out, comb) if return_weights else out


def _as_slice(cols: list[int]) -> slice | None:
    """``slice`` when ``cols`` is a contiguous ascending range, else None."""
    if not cols:
        return slice(0, 0)
    if cols == list(range(cols[0], cols[0] + len(cols))):
        return slice(cols[0], cols[0] + len(cols))
    return None
