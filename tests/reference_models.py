"""Plain, loop-based forms of the paper's equations, for checking the fast models.

Each function reads the fast model's weights through the documented column
layout and recomputes the forward pass expert by expert and task by task,
from the equations in the paper (AdaTT Eq. 1-10; MMoE Eq. 12-13; PLE; ML-MMoE;
cross-stitch), with the categorical input expanded to explicit one-hot columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def onehot_input(model, dense: Tensor, cat: Tensor) -> Tensor:
    """``x = [dense, onehot(cat_1), ..., onehot(cat_F)]``  [B, Dd + sum cards]."""
    parts = [dense] + [
        F.one_hot(cat[:, f], c).float() for f, c in enumerate(model.input.cardinalities)
    ]
    return torch.cat(parts, dim=1)


def input_weight(model) -> tuple[Tensor, Tensor]:
    """The input layer as a matrix over one-hot columns: [Dd + sum cards, N], [N]."""
    ws = [w for w in (model.input.dense_weight, model.input.cat_weight) if w is not None]
    return torch.cat(ws, dim=0), model.input.bias


class LevelWeights:
    """Per expert / per gate weights of one FusionLevel, read through its column map."""

    def __init__(self, model, lvl: int):
        self.level = level = model.levels[lvl]
        if lvl == 0:
            W, b = input_weight(model)
            self.W, self.b = W[:, : level.first_width], b[: level.first_width]
        elif level.split_first:
            self.W = self.b = None
        else:
            w, b = level.first.padded()  # [S,D,W], [S,1,W]
            S, D, Wd = w.shape
            self.W = w.transpose(0, 1).reshape(D, S * Wd)
            self.b = b.reshape(S * Wd)
        self.ext = None
        if level.plan.external_gates:
            W, b = input_weight(model)
            start = sum(model.split[:lvl])
            width = model.split[lvl]
            self.ext = (W[:, start : start + width], b[start : start + width])

    def expert(self, e: int, x: Tensor, act) -> Tensor:
        if self.W is None:  # split first layer: one slot per expert
            first = self.level.expert_first
            h = act(x @ first.weight[e] + first.bias[e, 0])
        else:
            cols = self.level.columns[("e", e)]
            h = act(x @ self.W[:, cols] + self.b[cols])
        for layer in self.level.expert_layers:
            h = act(h @ layer.weight[e] + layer.bias[e, 0])
        return h

    def gate_logits(self, g: int, x: Tensor, act) -> Tensor:
        K = len(self.level.plan.gates[g].experts)
        if self.ext is not None:
            W, b = self.ext
            g1 = W.shape[1] // self.level.num_gates
            cols = list(range(g * g1, (g + 1) * g1))
        elif self.W is None:  # split first layer: one slot per gate
            w, bb = self.level.gate_first.padded()
            g1 = self.level.gate_first.widths[g]
            W, b, cols = w[g], bb[g, 0], list(range(g1))
        else:
            W, b = self.W, self.b
            cols = self.level.columns[("g", g)]
        z = x @ W[:, cols] + b[cols]
        for layer in self.level.gate_layers:
            z = act(z)
            w, bb = layer.padded()
            z = z @ w[g] + bb[g, 0]
        return z[:, :K]


def towers(model, f: list[Tensor], act) -> Tensor:
    """y_t = h_t(f_t)  (Eq. 1), one tower at a time.  -> [B, T]"""
    out = []
    for t, ft in enumerate(f):
        h = ft
        layers = list(model.towers.layers)
        for i, layer in enumerate(layers):
            w, b = layer.padded()
            h = h @ w[t] + b[t, 0]
            if i < len(layers) - 1:
                h = act(h)
        out.append(h[:, 0])
    return torch.stack(out, dim=1)


def adatt_reference(model, dense, cat, shared: bool, native: bool, act=F.relu) -> Tensor:
    """AdaTT-sp (shared=False) or general AdaTT (shared=True), Eq. 2-10 with Eq. 7."""
    T = model.num_tasks
    # the shared unit exists when it has experts (m_s = 0 is AdaTT-sp)
    m = list(model.experts_per_task) + ([model.shared_experts] if shared else [])
    if shared and model.shared_experts == 0:
        m, shared = m[:-1], False
    U = len(m)
    own, off = [], 0
    for c in m:
        own.append(list(range(off, off + c)))
        off += c
    # which units learn v: the authors' code fixes v = 1 only when every unit has one
    # expert; the "per_unit" option fixes it exactly for the units with one expert
    if model.native_rule == "authors":
        learned = [any(c != 1 for c in m)] * U
    else:
        learned = [c > 1 for c in m]
    x = onehot_input(model, dense, cat)
    f = [x] * U  # Eq. 2: f^0_u = x
    L = len(model.levels)
    for lvl in range(L):
        lw = LevelWeights(model, lvl)
        inp = f
        # Eq. 4: unit u's experts read unit u's previous output
        experts = [lw.expert(e, inp[u], act) for u in range(U) for e in own[u]]
        Eall = torch.stack(experts, dim=1)  # [B, E, d]  (Eq. 6)
        units = range(T) if (lvl == L - 1 or not shared) else range(U)
        new_f = []
        for g, u in enumerate(units):
            G = torch.softmax(lw.gate_logits(g, inp[u], act), dim=-1)  # Eq. 10, reads f_u
            out = torch.einsum("be,bed->bd", G, Eall)  # AllExpertGF, Eq. 9
            if native:
                Eu = Eall[:, own[u]]  # [B, m_u, d]  (Eq. 5)
                if not learned[u]:
                    v = torch.ones(len(own[u]))  # the fixed unit weight
                else:
                    v = lw.level.native_matrix()[g, own[u]]
                out = out + torch.einsum("m,bmd->bd", v, Eu)  # NativeExpertLF, Eq. 8
            new_f.append(out)
        f = new_f
    return towers(model, f, act)


def ple_reference(model, dense, cat, act=F.relu) -> Tensor:
    """PLE: task gate t weighs [own experts, shared experts]; shared gate weighs all."""
    T = model.num_tasks
    m = list(model.experts_per_task) + [model.shared_experts]
    own, off = [], 0
    for c in m:
        own.append(list(range(off, off + c)))
        off += c
    x = onehot_input(model, dense, cat)
    f = [x] * (T + 1)
    L = len(model.levels)
    for lvl in range(L):
        lw = LevelWeights(model, lvl)
        experts = {e: lw.expert(e, f[u], act) for u in range(T + 1) for e in own[u]}
        units = range(T) if lvl == L - 1 or not model.shared_experts else range(T + 1)
        new_f = []
        for g, u in enumerate(units):
            sel = own[u] + own[T] if u < T else list(range(sum(m)))
            S = torch.stack([experts[e] for e in sel], dim=1)  # [B, K, d]
            G = torch.softmax(lw.gate_logits(g, f[u], act), dim=-1)
            new_f.append(torch.einsum("bk,bkd->bd", G, S))
        f = new_f
    return towers(model, f, act)


def mlmmoe_reference(model, dense, cat, act=F.relu) -> Tensor:
    """ML-MMoE: level l's gates all read x; their outputs feed level l+1's experts."""
    n, L = model.num_experts, len(model.levels)
    x = onehot_input(model, dense, cat)
    inp = [x] * n
    for lvl in range(L):
        lw = LevelWeights(model, lvl)
        Eall = torch.stack([lw.expert(e, inp[e], act) for e in range(n)], dim=1)
        G_count = model.num_tasks if lvl == L - 1 else n
        inp = [
            torch.einsum("be,bed->bd", torch.softmax(lw.gate_logits(g, x, act), -1), Eall)
            for g in range(G_count)
        ]
    return towers(model, inp, act)


def cross_stitch_reference(model, dense, cat, act=F.relu) -> Tensor:
    """Per-task stacks; after each level h'_t = sum_s A[t, s] h_s."""
    T = model.num_tasks
    x = onehot_input(model, dense, cat)
    W, b = input_weight(model)
    H = W.shape[1] // T
    h = [act(x @ W[:, t * H : (t + 1) * H] + b[t * H : (t + 1) * H]) for t in range(T)]
    for lvl, layers in enumerate(model.layers):
        for layer in layers:
            h = [act(h[t] @ layer.weight[t] + layer.bias[t, 0]) for t in range(T)]
        A = model.stitch[lvl]
        h = [sum(A[t, s] * h[s] for s in range(T)) for t in range(T)]
    return towers(model, h, act)


def shared_bottom_reference(model, dense, cat, act=F.relu) -> Tensor:
    x = onehot_input(model, dense, cat)
    W, b = input_weight(model)
    h = act(x @ W + b)
    for layer in model.bottom:
        h = act(layer(h))
    tw = model.towers
    out = []
    for t in range(model.num_tasks):
        H = tw.first_weight.shape[1] // model.num_tasks
        z = h @ tw.first_weight[:, t * H : (t + 1) * H] + tw.first_bias[t * H : (t + 1) * H]
        layers = list(tw.layers)
        if layers:
            z = act(z)
        for i, layer in enumerate(layers):
            z = z @ layer.weight[t] + layer.bias[t, 0]
            if i < len(layers) - 1:
                z = act(z)
        out.append(z[:, 0])
    return torch.stack(out, dim=1)
