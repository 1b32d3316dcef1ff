"""Parity with the authors' code: their models' weights copied into ours, float64.

The authors' reference implementation (``mtl_lib.py`` of facebookresearch/AdaTT,
MIT) is imported from ``../shared/reference/adatt-authors/`` relative to the
repository, or from ``$ADATT_REFERENCE_DIR``; the tests are skipped with a
reason when it is absent. It is imported from there, never copied.

For every family and a grid of configurations, a model of theirs and one of ours
are built, every parameter of theirs is copied into ours (:class:`Copier`, the
one place that knows both layouts; it checks that every entry on both sides is
used exactly once), and the outputs and the gradients of a loss are compared to
1e-10. The gradients are compared by sending theirs through the same copy.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adatt.models import create_model
from adatt.modules.layers import uniform_init_

REFERENCE_ENV = "ADATT_REFERENCE_DIR"
REF_DIR = Path(
    os.environ.get(REFERENCE_ENV)
    or Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "adatt-authors"
)
REF_FILE = REF_DIR / "mtl_lib.py"

pytestmark = pytest.mark.skipif(
    not REF_FILE.is_file(),
    reason=f"the authors' mtl_lib.py is not in {REF_DIR} (set {REFERENCE_ENV} to its folder)",
)

T, D_IN, B, TOL = 3, 5, 6, 1e-10
TOWER = [4]


def authors():
    """Their module, imported once from its file."""
    name = "adatt_authors_mtl_lib"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REF_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def linears(module: nn.Module) -> list[nn.Linear]:
    """The linear layers of an MLP / gate of theirs, in forward order."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


class Copier:
    """Builds, for each of our parameters, a tensor from their tensors.

    ``get`` reads a parameter of theirs (its value, or its gradient). Every
    entry of every parameter, ours and theirs, must be used exactly once.
    """

    def __init__(self, ours: nn.Module, theirs: nn.Module, get) -> None:
        self.get = get
        self.out = {id(p): torch.zeros_like(p) for p in ours.parameters()}
        self.hits = {id(p): torch.zeros_like(p, dtype=torch.long) for p in ours.parameters()}
        self.taken = {id(p): torch.zeros_like(p, dtype=torch.long) for p in theirs.parameters()}
        self.names = {id(p): n for n, p in ours.named_parameters()}
        self.their_names = {id(p): n for n, p in theirs.named_parameters()}

    def take(self, p: Tensor, index=...) -> Tensor:
        self.taken[id(p)][index] += 1
        return self.get(p)[index]

    def put(self, p: Tensor, index, value: Tensor) -> None:
        self.out[id(p)][index] = value
        self.hits[id(p)][index] += 1

    def linear_columns(self, w: Tensor, b: Tensor, cols: list[int], lin: nn.Linear) -> None:
        """Our ``[in, N]`` weight / ``[N]`` bias, columns ``cols`` <- their Linear."""
        self.put(w, (slice(None), cols), self.take(lin.weight).T)
        self.put(b, (cols,), self.take(lin.bias))

    def slot(self, sl, s: int, off: int, lin: nn.Linear) -> None:
        """Slot ``s`` of our SlotLinear, output columns ``off..`` <- their Linear."""
        o = lin.out_features
        if sl.uniform:  # weight [S, D, W], bias [S, 1, W]
            self.put(sl.weight, (s, slice(None), slice(off, off + o)), self.take(lin.weight).T)
            self.put(sl.bias, (s, 0, slice(off, off + o)), self.take(lin.bias))
        else:  # weight [D, sum widths], bias [sum widths]
            start = sum(sl.widths[:s]) + off
            self.linear_columns(sl.weight, sl.bias, list(range(start, start + o)), lin)

    def result(self) -> dict[str, Tensor]:
        for k, h in self.hits.items():
            assert (h == 1).all(), f"ours {self.names[k]}: entries set {h.min()}..{h.max()} times"
        for k, h in self.taken.items():
            assert (h == 1).all(), f"theirs {self.their_names[k]}: used {h.min()}..{h.max()} times"
        return {self.names[k]: v for k, v in self.out.items()}


# ------------------------------------------------------------------ weight copy


def first_layer(c: Copier, ours, lvl: int, kind: str, i: int, lin: nn.Linear) -> None:
    """First layer of expert (``kind="e"``) or gate (``"g"``) ``i`` of level ``lvl``."""
    level, inp = ours.levels[lvl], ours.input
    if kind == "g" and level.plan.external_gates:  # reads x: the input layer, part lvl
        start = sum(ours.split[:lvl]) + i * lin.out_features
        c.linear_columns(inp.dense_weight, inp.bias,
                         list(range(start, start + lin.out_features)), lin)
    elif lvl == 0:  # level 0 reads x: the input layer's first part
        c.linear_columns(inp.dense_weight, inp.bias, level.columns[(kind, i)], lin)
    elif level.split_first:
        c.slot(level.expert_first if kind == "e" else level.gate_first, i, 0, lin)
    else:
        cols, W = level.columns[(kind, i)], level.first.out_dim
        c.slot(level.first, cols[0] // W, cols[0] % W, lin)


def copy_mlp_unit(c: Copier, ours, lvl: int, kind: str, i: int, module: nn.Module) -> None:
    """An expert or gate of theirs: first layer, then the deeper layers of slot ``i``."""
    lins = linears(module)
    first_layer(c, ours, lvl, kind, i, lins[0])
    level = ours.levels[lvl]
    deeper = level.expert_layers if kind == "e" else level.gate_layers
    assert len(deeper) == len(lins) - 1
    for layer, lin in zip(deeper, lins[1:], strict=True):
        c.slot(layer, i, 0, lin)


def copy_towers(c: Copier, ours, arch) -> None:
    tw = ours.towers
    for t, module in enumerate(arch.task_modules):
        lins = linears(module)
        if tw.shared_input:  # first layers of all towers: one [D, T*h] matrix
            h = lins[0].out_features
            c.linear_columns(tw.first_weight, tw.first_bias, list(range(t * h, (t + 1) * h)),
                             lins[0])
            lins = lins[1:]
        assert len(tw.layers) == len(lins)
        for layer, lin in zip(tw.layers, lins, strict=True):
            c.slot(layer, t, 0, lin)


def copy_fused(c: Copier, ours, theirs, family: str) -> None:
    """AdaTT-sp, AdaTT, PLE, MMoE, ML-MMoE."""
    arch = theirs.mtl_arch
    for lvl, level in enumerate(ours.levels):
        for e, expert in enumerate(arch.experts[lvl]):
            copy_mlp_unit(c, ours, lvl, "e", e, expert)
        gates = arch.gates[lvl] if family in ("mmoe", "ml_mmoe") else arch.gate_weights[lvl]
        assert len(gates) == level.num_gates
        for g, gate in enumerate(gates):
            copy_mlp_unit(c, ours, lvl, "g", g, gate)
        if level.native_weight is None:
            continue
        off = 0
        for g, gate in enumerate(level.plan.gates):
            if not (gate.native and gate.native_learned):
                continue
            m = len(gate.native)
            if family == "adatt_sp":  # theirs: per level a [T, m_t] matrix
                v = c.take(arch.self_exp_weights[lvl], (g,))
            else:  # theirs: per unit a [levels (-1 for the shared unit), m_u] matrix
                v = c.take(arch.self_exp_weights[g], (lvl,))
            c.put(level.native_weight, slice(off, off + m), v)
            off += m
    copy_towers(c, ours, theirs)


def copy_cross_stitch(c: Copier, ours, theirs) -> None:
    arch, inp = theirs.mtl_arch, ours.input
    for lvl, layers in enumerate(ours.layers):
        for t, expert in enumerate(arch.experts[lvl]):
            lins = linears(expert)
            if lvl == 0:  # task t's first layer reads x: input columns t*H..(t+1)*H
                H = lins[0].out_features
                c.linear_columns(inp.dense_weight, inp.bias, list(range(t * H, (t + 1) * H)),
                                 lins[0])
                lins = lins[1:]
            for layer, lin in zip(layers, lins, strict=True):
                c.slot(layer, t, 0, lin)
        # theirs: Linear(T, T) over the task axis, out[t] = sum_s W[t, s] h_s; ours A[t, s]
        c.put(ours.stitch, (lvl,), c.take(arch.stitchs[lvl].weight))
    copy_towers(c, ours, theirs)


def copy_shared_bottom(c: Copier, ours, theirs) -> None:
    lins = linears(theirs.mtl_arch.bottom_projection)
    inp = ours.input
    c.linear_columns(inp.dense_weight, inp.bias, list(range(lins[0].out_features)), lins[0])
    for layer, lin in zip(ours.bottom, lins[1:], strict=True):  # nn.Linear: same layout
        c.put(layer.weight, ..., c.take(lin.weight))
        c.put(layer.bias, ..., c.take(lin.bias))
    copy_towers(c, ours, theirs)


def transfer(ours, theirs, family: str, get) -> dict[str, Tensor]:
    c = Copier(ours, theirs, get)
    if family == "cross_stitch":
        copy_cross_stitch(c, ours, theirs)
    elif family == "shared_bottom":
        copy_shared_bottom(c, ours, theirs)
    else:
        copy_fused(c, ours, theirs, family)
    return c.result()


# ------------------------------------------------------------------ building both


THEIR_NAME = {"adatt_sp": "att_sp", "adatt": "att_g", "ple": "ple", "mmoe": "mmoe",
              "ml_mmoe": "mmoe", "cross_stitch": "cross_st", "shared_bottom": "share_bottom"}


def build_pair(family: str, sizes: list[list[int]], m: int | tuple[int, ...] = 1, ms: int = 1,
               gate_hidden: list[int] | None = None, seed: int = 0, **our_kw):
    """Their model (random init) and ours with their weights copied in, float64."""
    lib = authors()
    torch.manual_seed(seed)
    cfg = lib.MtlConfigs(mtl_model=THEIR_NAME[family], num_task_experts=m if isinstance(m, int)
                         else 1, num_shared_experts=ms, expert_out_dims=sizes)
    theirs = lib.CentralTaskArch(cfg, lib.ArchInputs(num_task=T, task_mlp=TOWER), D_IN)
    if gate_hidden:  # CentralTaskArch builds MMoE gates without hidden layers; MLMMoE can
        theirs.mtl_arch = lib.MLMMoE(D_IN, sizes, [list(gate_hidden)] * len(sizes), T, ms)
    if not isinstance(m, int):  # one count per task: their classes take a list directly
        if family == "adatt":
            theirs.mtl_arch = lib.AdaTTWSharedExps(D_IN, sizes, T, ms,
                                                   num_task_expert_list=list(m))
        else:
            theirs.mtl_arch = lib.PLE(D_IN, sizes, T, list(m), ms)
    theirs = theirs.double()
    kw = dict(num_tasks=T, dense_dim=D_IN, expert_sizes=sizes, tower_sizes=TOWER, **our_kw)
    if family in ("adatt_sp", "adatt", "ple"):
        kw["experts_per_task"] = m if isinstance(m, int) else list(m)
    if family in ("adatt", "ple"):
        kw["shared_experts"] = ms
    if family in ("mmoe", "ml_mmoe"):
        kw["num_experts"] = ms
        kw["gate_hidden"] = gate_hidden or []
    ours = create_model(family, **kw).double()
    ours.load_state_dict(transfer(ours, theirs, family, lambda p: p.detach()))
    return theirs, ours


def compare(theirs, ours, family: str, seed: int = 1) -> tuple[float, float]:
    """Largest |difference| of the outputs and of the gradients of a loss."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (B, T), generator=g).double()
    ref = torch.cat(theirs(x), dim=1)  # T x [B, 1] -> [B, T]
    out = ours(x, torch.zeros(B, 0, dtype=torch.long))  # [B, T]
    assert out.shape == ref.shape == (B, T)
    for model, logits in ((theirs, ref), (ours, out)):
        model.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits, y) + (logits ** 2).mean()
        loss.backward()
    their_grads = transfer(ours, theirs, family, lambda p: p.grad)
    out_diff = (out - ref).abs().max().item()
    grad_diff = max((p.grad - their_grads[n]).abs().max().item()
                    for n, p in ours.named_parameters())
    return out_diff, grad_diff


def check(family: str, sizes, **kw) -> None:
    theirs, ours = build_pair(family, sizes, **kw)
    out_diff, grad_diff = compare(theirs, ours, family)
    assert out_diff <= TOL and grad_diff <= TOL, (out_diff, grad_diff)


# ------------------------------------------------------------------ the grid

ONE_LAYER = [[8], [6]]  # two levels of 1-layer experts
TWO_LAYER = [[8, 7], [6, 5]]  # two levels of 2-layer experts
THREE_LEVELS = [[8], [7], [6]]
SIZES = {"1-layer": ONE_LAYER, "2-layer": TWO_LAYER, "3-level": THREE_LEVELS,
         "1-layer-single": [[8]], "2-layer-single": [[8, 6]]}  # the last two: one level

GRID = (
    [("adatt_sp", s, dict(m=m)) for m in (1, 2, 3) for s in SIZES]
    + [("adatt", s, dict(m=m, ms=ms)) for m, ms in ((1, 1), (1, 3), (1, 6), (2, 1), (2, 3), (3, 3))
       for s in SIZES]
    + [("adatt", s, dict(m=(1, 2, 1), ms=ms)) for ms in (1, 2) for s in ("1-layer", "3-level")]
    + [("ple", s, dict(m=m, ms=ms)) for m, ms in ((1, 1), (1, 3), (2, 3), ((1, 2, 1), 2))
       for s in SIZES]
    + [("ml_mmoe", s, dict(ms=n, gate_hidden=gh)) for n in (2, 4) for s in SIZES
       for gh in (None, [5], [5, 4])]
    + [("mmoe", s, dict(ms=n, gate_hidden=gh)) for n in (1, 3)
       for s in ("1-layer-single", "2-layer-single") for gh in (None, [5])]
    + [("cross_stitch", s, {}) for s in ("1-layer", "2-layer", "3-level", "2-layer-single")]
    + [("shared_bottom", s, {}) for s in ("1-layer", "2-layer", "3-level")]
)


def case_id(case) -> str:
    family, sizes, kw = case
    return "-".join([family, sizes] + [f"{k}={v}" for k, v in kw.items() if v is not None])


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_outputs_and_gradients_match_the_authors_code(case):
    family, sizes, kw = case
    check(family, SIZES[sizes], **kw)


def test_native_rule_authors_is_theirs_and_per_unit_pins_single_expert_units():
    """Mixed counts (m_t = 1, m_s = 3): the default matches their model; the earlier
    per-unit reading is their model with the single-expert units' v fixed to 1."""
    lib_theirs, ours = build_pair("adatt", ONE_LAYER, m=1, ms=3)
    assert all(lv.native_weight is not None for lv in ours.levels)
    torch.manual_seed(0)
    per_unit = create_model("adatt", num_tasks=T, dense_dim=D_IN, expert_sizes=ONE_LAYER,
                            tower_sizes=TOWER, experts_per_task=1, shared_experts=3,
                            native_rule="per_unit").double()
    x = torch.randn(B, D_IN, dtype=torch.float64)
    cat = torch.zeros(B, 0, dtype=torch.long)
    with torch.no_grad():
        ref = torch.cat(lib_theirs(x), dim=1)
        # the earlier reading differs from theirs (same weights, v of the task units = 1) ...
        sd = {k: v for k, v in ours.state_dict().items() if "native" not in k}
        sd["levels.0.native_weight"] = ours.levels[0].native_weight[T:]  # the shared unit's v
        per_unit.load_state_dict(sd)
        assert (per_unit(x, cat) - ref).abs().max() > 1e-4
        # ... and equals theirs once their task units' v are 1
        for u in range(T):
            lib_theirs.mtl_arch.self_exp_weights[u].fill_(1.0)
        torch.testing.assert_close(per_unit(x, cat), torch.cat(lib_theirs(x), dim=1),
                                   rtol=0, atol=TOL)


def test_cross_stitch_init_is_their_linear_default():
    """Same seed, same draws: our default start of A is their nn.Linear(T, T) init,
    U(-1/sqrt(T), 1/sqrt(T)); "near_identity" is the earlier 0.9 / 0.1 start."""
    torch.manual_seed(3)
    lin = nn.Linear(T, T, bias=False)
    torch.manual_seed(3)
    expected = uniform_init_(torch.empty(T, T), T)
    torch.testing.assert_close(lin.weight.detach(), expected)
    torch.manual_seed(0)
    model = create_model("cross_stitch", num_tasks=T, dense_dim=D_IN, expert_sizes=[8, 6])
    A = model.stitch.detach()
    assert A.abs().max() <= 1 / T ** 0.5 and A.std() > 0.1
    old = create_model("cross_stitch", num_tasks=T, dense_dim=D_IN, expert_sizes=[8, 6],
                       stitch_init="near_identity").stitch.detach()
    torch.testing.assert_close(old[0].diagonal(), torch.full((T,), 0.9))
    with pytest.raises(ValueError, match="stitch_init must be one of authors, near_identity"):
        create_model("cross_stitch", num_tasks=T, dense_dim=D_IN, stitch_init="eye")
