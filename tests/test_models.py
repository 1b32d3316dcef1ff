"""Model tests: the fast models against plain forms of the paper's equations,
and registry-wide checks (shape, gradients, NaN, determinism, parameter count)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from adatt.models import create_model, list_models
from adatt.modules.kernels import padding_mode
from tests import reference_models as ref

DENSE, CARDS = 5, [3, 4, 6]


def make_input(B=7, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(B, DENSE, generator=g) * scale
    cat = torch.stack([torch.randint(0, c, (B,), generator=g) for c in CARDS], dim=1)
    return dense, cat


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, dense_dim=DENSE, cat_cardinalities=CARDS, **kw).double()


def check(model, reference):
    dense, cat = make_input()
    dense = dense.double()
    with torch.no_grad():
        fast = model(dense, cat)
        slow = reference(model, dense, cat)
    assert fast.shape == slow.shape
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def perturb_native(model):
    """Native weights start random; also move them so a dropped term would show."""
    with torch.no_grad():
        for lv in getattr(model, "levels", []):
            if lv.native_weight is not None:
                lv.native_weight.add_(torch.randn_like(lv.native_weight))


SIZES = {1: [8], 2: [8, 6], 3: [8, 6, 5], 4: [9, 8, 6, 5], 5: [9, 8, 7, 6, 5]}


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, [1, 2, 3], [3, 1, 2]])
@pytest.mark.parametrize("native,rule", [(True, "authors"), (True, "per_unit"),
                                         (False, "authors")])
def test_adatt_sp_matches_equations(levels, m, native, rule):
    model = build("adatt_sp", num_tasks=3, expert_sizes=SIZES[levels], experts_per_task=m,
                  native_fusion=native, native_rule=rule)
    perturb_native(model)
    check(model, lambda mo, d, c: ref.adatt_reference(mo, d, c, shared=False, native=native))


@pytest.mark.parametrize("levels", [1, 2, 3, 5])
@pytest.mark.parametrize("m,ms", [(1, 1), (2, 3), ([1, 2, 3], 2), ([2, 1, 1], 0), (1, 4)])
@pytest.mark.parametrize("native,rule", [(True, "authors"), (True, "per_unit"),
                                         (False, "authors")])
def test_adatt_general_matches_equations(levels, m, ms, native, rule):
    model = build("adatt", num_tasks=3, expert_sizes=SIZES[levels], experts_per_task=m,
                  shared_experts=ms, native_fusion=native, native_rule=rule)
    perturb_native(model)
    check(model, lambda mo, d, c: ref.adatt_reference(mo, d, c, shared=True, native=native))


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("m,ms", [(1, 1), (2, 3), ([1, 2, 3], 2), (2, 0)])
def test_ple_matches_equations(levels, m, ms):
    model = build("ple", num_tasks=3, expert_sizes=SIZES[levels], experts_per_task=m,
                  shared_experts=ms)
    check(model, ref.ple_reference)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 4])
def test_ml_mmoe_matches_equations(levels, n):
    model = build("ml_mmoe", num_tasks=3, expert_sizes=SIZES[levels], num_experts=n)
    check(model, ref.mlmmoe_reference)


def test_mmoe_multilayer_experts_and_hidden_gates():
    model = build("mmoe", num_tasks=2, expert_sizes=[[8, 6]], num_experts=3, gate_hidden=[5])
    check(model, ref.mlmmoe_reference)
    model = build("ml_mmoe", num_tasks=2, expert_sizes=[[8, 7], [6]], num_experts=3,
                  gate_hidden=[5, 4])
    check(model, ref.mlmmoe_reference)


def test_hidden_gates_and_multilayer_experts_adatt_ple():
    model = build("adatt", num_tasks=3, expert_sizes=[[8, 7], [6, 5]], experts_per_task=[1, 2, 1],
                  shared_experts=2, gate_hidden=[4])
    perturb_native(model)
    check(model, lambda mo, d, c: ref.adatt_reference(mo, d, c, shared=True, native=True))
    model = build("ple", num_tasks=3, expert_sizes=[[8, 7], 6], experts_per_task=[1, 2, 1],
                  shared_experts=2, gate_hidden=[4, 3])
    check(model, ref.ple_reference)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_cross_stitch_matches_equations(levels):
    model = build("cross_stitch", num_tasks=3, expert_sizes=SIZES[levels])
    with torch.no_grad():
        model.stitch.add_(torch.randn_like(model.stitch))
    check(model, ref.cross_stitch_reference)


def test_shared_bottom_matches_equations():
    check(build("shared_bottom", num_tasks=3, expert_sizes=[8, 6]), ref.shared_bottom_reference)
    check(build("shared_bottom", num_tasks=2, expert_sizes=[8], tower_sizes=[]),
          ref.shared_bottom_reference)


@pytest.mark.parametrize("name,kw", [
    ("adatt_sp", dict(experts_per_task=[1, 3, 2])),
    ("adatt", dict(experts_per_task=[1, 3, 2], shared_experts=2)),
])
def test_eq7_equals_eq11_and_native_off_removes_only_v(name, kw):
    """Eq. 11 (one product with pad(v)+G) equals Eq. 7 (G^T E + v^T E_t); turning
    NativeExpertLF off, with the same remaining weights, removes exactly v^T E_t."""
    on = build(name, num_tasks=3, expert_sizes=[8, 6], native_fusion=True, **kw)
    perturb_native(on)
    off = build(name, num_tasks=3, expert_sizes=[8, 6], native_fusion=False, **kw)
    missing = off.load_state_dict(on.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {"levels.0.native_weight", "levels.1.native_weight"}
    assert not missing.missing_keys
    dense, cat = make_input()
    dense = dense.double()
    shared = name == "adatt"
    with torch.no_grad():
        _, w_on = on.forward_with_weights(dense, cat)
        _, w_off = off.forward_with_weights(dense, cat)
        # same input to level 0, so its gates agree and the weights differ by pad(v) exactly
        V = on.levels[0].native_matrix()
        torch.testing.assert_close(w_on[0] - w_off[0], V.expand_as(w_on[0]))
        own = V != 0  # v only on each unit's own experts
        assert own.sum() == sum(kw["experts_per_task"]) + (kw.get("shared_experts", 0))
        torch.testing.assert_close(
            off(dense, cat), ref.adatt_reference(off, dense, cat, shared=shared, native=False))


def test_native_rule_authors_learns_every_unit_unless_all_have_one_expert():
    """The authors' rule (default): one unit with several experts makes every unit,
    single-expert ones and the shared one included, learn v; all ones fix v = 1."""
    model = build("adatt", num_tasks=3, expert_sizes=[8, 6], experts_per_task=1,
                  shared_experts=3)
    # level 0: 3 task units of 1 + shared unit of 3; last level: task units only
    assert [lv.native_weight.numel() for lv in model.levels] == [6, 3]
    assert build("adatt_sp", num_tasks=3, expert_sizes=[8], experts_per_task=[1, 2, 1]
                 ).levels[0].native_weight.numel() == 4
    allone = build("adatt", num_tasks=3, expert_sizes=[8, 6], experts_per_task=1,
                   shared_experts=1)
    assert not any("native" in n for n, _ in allone.named_parameters())
    old = build("adatt", num_tasks=3, expert_sizes=[8, 6], experts_per_task=1,
                shared_experts=3, native_rule="per_unit")
    assert old.levels[0].native_weight.numel() == 3  # only the shared unit's v
    assert old.levels[1].native_weight is None
    with pytest.raises(ValueError, match="native_rule must be one of authors, per_unit"):
        build("adatt", num_tasks=3, native_rule="per-unit")
    with pytest.raises(ValueError, match="native_rule must be one of"):
        build("adatt_sp", num_tasks=3, native_rule="paper")


def test_single_native_expert_weight_is_constant_one():
    model = build("adatt_sp", num_tasks=3, expert_sizes=[8, 6], experts_per_task=[1, 2, 1],
                  native_rule="per_unit")
    for lv in model.levels:
        V = lv.native_matrix()
        assert V[0, 0].item() == 1.0 and V[2, 3].item() == 1.0  # tasks 0 and 2 own one expert
        assert lv.native_weight.numel() == 2  # only task 1's two weights are parameters
    allone = build("adatt_sp", num_tasks=3, expert_sizes=[8, 6], experts_per_task=1)
    assert not any("native" in n for n, _ in allone.named_parameters())
    torch.testing.assert_close(allone.levels[0].native_matrix(), torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["adatt_sp", "adatt", "ple", "ml_mmoe", "mmoe", "cross_stitch",
                                  "shared_bottom"])
def test_index_input_equals_onehot_columns(name):
    """Categorical indices through the embedding bag == the same input as one-hot columns."""
    a = build(name, num_tasks=3)
    b = create_model(name, num_tasks=3, dense_dim=DENSE + sum(CARDS)).double()
    sd = a.state_dict()
    sd["input.dense_weight"] = torch.cat([sd["input.dense_weight"], sd.pop("input.cat_weight")])
    b.load_state_dict(sd)
    dense, cat = make_input()
    dense = dense.double()
    onehot = ref.onehot_input(a, dense, cat)
    with torch.no_grad():
        torch.testing.assert_close(a(dense, cat), b(onehot, cat[:, :0]), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- registry-wide

CONFIGS = {
    "adatt_sp": dict(expert_sizes=[8, 6], experts_per_task=[1, 2, 3]),
    "adatt": dict(expert_sizes=[8, 6], experts_per_task=[2, 1, 1], shared_experts=2),
    "ple": dict(expert_sizes=[8, 6], experts_per_task=[2, 1, 1], shared_experts=2),
    "mmoe": dict(expert_sizes=[[8, 6]], num_experts=3),
    "ml_mmoe": dict(expert_sizes=[8, 6], num_experts=3),
    "cross_stitch": dict(expert_sizes=[8, 6]),
    "shared_bottom": dict(expert_sizes=[8, 6]),
}


@pytest.mark.parametrize("name", ["adatt", "ple"])
def test_no_shared_experts_means_no_shared_unit(name):
    model = build(name, num_tasks=3, expert_sizes=[8, 6], experts_per_task=2, shared_experts=0)
    dense, cat = make_input()
    model(dense.double(), cat).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert [lv.num_gates for lv in model.levels] == [3, 3]
    if name == "adatt":
        sp = build("adatt_sp", num_tasks=3, expert_sizes=[8, 6], experts_per_task=2)
        assert sp.num_parameters() == model.num_parameters()


def test_every_registered_model_is_covered():
    assert set(CONFIGS) == set(list_models())


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("emb", [None, 3])
def test_shape_gradients_finite_deterministic(name, emb):
    torch.manual_seed(0)
    model = create_model(name, num_tasks=3, dense_dim=DENSE, cat_cardinalities=CARDS,
                         embedding_dim=emb, **CONFIGS[name])
    dense, cat = make_input(B=16)
    out = model(dense, cat)
    assert out.shape == (16, 3)
    out.sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
    big = model(*make_input(B=16, scale=1e4))
    assert torch.isfinite(big).all()
    torch.manual_seed(0)
    again = create_model(name, num_tasks=3, dense_dim=DENSE, cat_cardinalities=CARDS,
                         embedding_dim=emb, **CONFIGS[name])
    torch.testing.assert_close(again(dense, cat), out, rtol=0, atol=0)


def mlp_params(d_in, widths):
    n, a = 0, d_in
    for b in widths:
        n += a * b + b
        a = b
    return n


def expected_params(name, T, Din, cfg, tower=(32,)):
    towers = T * mlp_params(cfg["d_out"], [*tower, 1])
    sizes = cfg.get("sizes")
    if name == "shared_bottom":
        return mlp_params(Din, [w for s in sizes for w in s]) + towers
    if name == "cross_stitch":
        n, D = 0, Din
        for s in sizes:
            n += T * mlp_params(D, s) + T * T
            D = s[-1]
        return n + towers
    L, n, D = len(sizes), 0, Din
    if name in ("mmoe", "ml_mmoe"):
        e = cfg["n"]
        for lvl, s in enumerate(sizes):
            G = T if lvl == L - 1 else e
            n += e * mlp_params(D, s) + G * (Din * e + e)  # every gate reads x
            D = s[-1]
        return n + towers
    m = cfg["m"]
    ms = cfg.get("ms")
    counts = m + ([ms] if ms is not None else [])
    E = sum(counts)
    for lvl, s in enumerate(sizes):
        last = lvl == L - 1
        n += E * mlp_params(D, s)
        units = range(T) if (last or ms is None) else range(T + 1)
        for u in units:
            if name == "ple":
                K = E if u == T else counts[u] + ms
            else:
                K = E
                learned = (any(c != 1 for c in counts) if cfg.get("rule", "authors")
                           == "authors" else counts[u] > 1)
                if cfg["native"] and learned:
                    n += counts[u]
            n += D * K + K
        D = s[-1]
    return n + towers


@pytest.mark.parametrize("name,kw,cfg", [
    ("adatt_sp", dict(expert_sizes=[[8, 5], 6], experts_per_task=[1, 2, 3]),
     dict(sizes=[[8, 5], [6]], m=[1, 2, 3], native=True, d_out=6)),
    ("adatt_sp", dict(expert_sizes=[8, 6, 4], experts_per_task=2, native_fusion=False),
     dict(sizes=[[8], [6], [4]], m=[2, 2, 2], native=False, d_out=4)),
    ("adatt", dict(expert_sizes=[8, 6], experts_per_task=[2, 1, 1], shared_experts=2),
     dict(sizes=[[8], [6]], m=[2, 1, 1], ms=2, native=True, d_out=6)),
    ("adatt", dict(expert_sizes=[8, 6], experts_per_task=1, shared_experts=3,
                   native_rule="per_unit"),
     dict(sizes=[[8], [6]], m=[1, 1, 1], ms=3, native=True, rule="per_unit", d_out=6)),
    ("adatt_sp", dict(expert_sizes=[8, 6], experts_per_task=[1, 2, 1], native_rule="per_unit"),
     dict(sizes=[[8], [6]], m=[1, 2, 1], native=True, rule="per_unit", d_out=6)),
    ("ple", dict(expert_sizes=[8, 6, 4], experts_per_task=[2, 1, 3], shared_experts=2),
     dict(sizes=[[8], [6], [4]], m=[2, 1, 3], ms=2, native=False, d_out=4)),
    ("mmoe", dict(expert_sizes=[[8, 6]], num_experts=4), dict(sizes=[[8, 6]], n=4, d_out=6)),
    ("ml_mmoe", dict(expert_sizes=[8, 6, 5], num_experts=4),
     dict(sizes=[[8], [6], [5]], n=4, d_out=5)),
    ("cross_stitch", dict(expert_sizes=[[8, 7], 6]), dict(sizes=[[8, 7], [6]], d_out=6)),
    ("shared_bottom", dict(expert_sizes=[8, 6]), dict(sizes=[[8], [6]], d_out=6)),
])
def test_parameter_count_closed_form(name, kw, cfg):
    model = create_model(name, num_tasks=3, dense_dim=DENSE, cat_cardinalities=CARDS, **kw)
    Din = DENSE + sum(CARDS)
    assert model.num_parameters() == expected_params(name, 3, Din, cfg)


def test_unknown_option_is_clear_error():
    with pytest.raises(ValueError, match="has no option 'experts'"):
        create_model("adatt_sp", num_tasks=2, dense_dim=3, experts=2)
    with pytest.raises(ValueError, match="experts_per_task has 2 entries for 3 tasks"):
        create_model("adatt_sp", num_tasks=3, dense_dim=3, experts_per_task=[1, 2])


def test_uses_batched_products_not_expert_loops():
    """The forward graph of a 2-level AdaTT-sp has a fixed, small number of matmuls,
    independent of the number of experts and tasks."""
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for T, m in itertools.product([2, 5], [1, 4]):
        model = create_model("adatt_sp", num_tasks=T, dense_dim=4, cat_cardinalities=[5],
                             expert_sizes=[8, 6], experts_per_task=m)
        dense, cat = torch.randn(3, 4), torch.zeros(3, 1, dtype=torch.long)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(dense, cat)
        names = [e.key for e in prof.key_averages()]
        counts.append(sum(prof.key_averages()[names.index(k)].count for k in names
                          if k in ("aten::addmm", "aten::baddbmm", "aten::bmm", "aten::mm")))
    assert len(set(counts)) == 1, counts
    F.relu  # noqa: B018


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_autocast_stays_close_to_fp32(name):
    torch.manual_seed(0)
    model = create_model(name, num_tasks=3, dense_dim=DENSE, cat_cardinalities=CARDS,
                         **CONFIGS[name])
    dense, cat = make_input(B=64)
    with torch.no_grad():
        ref_out = model(dense, cat)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(dense, cat).float()
    assert (low - ref_out).abs().max() < 0.05 * ref_out.abs().max() + 0.02


def test_cli_lists_models():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "adatt", "models"], capture_output=True, text=True)
    assert p.returncode == 0
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == sorted(list_models())


def test_embedding_product_table_equals_gather_then_product():
    """Embedding mode: the per-field product table path (big batches on CPU) gives the
    same output and gradients as the embedding gather followed by the product."""
    from adatt.modules.layers import InputLinear

    torch.manual_seed(0)
    cards = [3, 50, 7, 1, 20]
    lin = InputLinear(4, cards, 8, 33)
    dense = torch.randn(256, 4)
    cat = torch.stack([torch.randint(0, c, (256,)) for c in cards], 1)
    assert lin.use_product_table(cat) and not lin.use_product_table(cat[:100])  # 4*50 > 100
    up = torch.randn(256, 33)
    out = lin(dense, cat)
    (out * up).sum().backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    lin.pad_card = 10**9  # forces the gather path (over the table's size limit)
    assert not lin.use_product_table(cat)
    ref = lin(dense, cat)
    (ref * up).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, lin.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    assert "pad_rows" not in lin.state_dict()  # a derived buffer, not saved


def test_embedding_product_table_is_not_used_where_it_would_not_pay():
    from adatt.modules.kernels import MAX_TABLE_CARD
    from adatt.modules.layers import InputLinear

    big = InputLinear(0, [MAX_TABLE_CARD + 1, 3], 8, 4)
    assert big.pad_rows.numel() == 0  # no padded index for a large vocabulary
    cat = torch.zeros(10**5, 2, dtype=torch.long)
    assert not big.use_product_table(cat)
    small = InputLinear(0, [5, 3], 8, 4)
    assert small.use_product_table(cat[:20]) and not small.use_product_table(cat[:19])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not small.use_product_table(cat)
    assert not InputLinear(0, [5, 3], 2, 4).use_product_table(cat)  # tiny embeddings


@pytest.mark.parametrize("cards, emb", [((), None), ((4, 9), None), ((4, 9), 8)])
def test_input_linear_aligned_product_changes_no_value(cards, emb):
    """A wide dense part with an unaligned output width runs padded (a view of a wider
    product); values and gradients equal the plain product's."""
    from adatt.modules.layers import InputLinear

    torch.manual_seed(0)
    lin = InputLinear(300, cards, emb, 250).double()
    dense = torch.randn(40, 300, dtype=torch.float64)
    cat = torch.stack([torch.randint(0, c, (40,)) for c in cards], 1) if cards else \
        torch.zeros(40, 0, dtype=torch.long)
    with padding_mode("on"):  # whatever this host's default
        out = lin(dense, cat)
    assert out.shape == (40, 250) and out.stride(0) == 256  # the padded product
    ref = dense @ lin.dense_weight + lin.bias
    if cards:
        idx = cat + lin.offsets
        if emb is None:
            ref = ref + lin.cat_weight[idx].sum(1)
        else:
            ref = ref + lin.embedding.weight[idx].flatten(1) @ lin.cat_weight
    torch.testing.assert_close(out, ref)
    up = torch.randn(40, 250, dtype=torch.float64)
    got = torch.autograd.grad((out * up).sum(), list(lin.parameters()))
    want = torch.autograd.grad((ref * up).sum(), list(lin.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("widths", [[262, 262, 262], [262, 250, 100]])
def test_slot_linear_aligned_product_changes_no_value(widths):
    from adatt.modules.layers import SlotLinear

    torch.manual_seed(0)
    lin = SlotLinear(3, 256, widths).double()
    x = torch.randn(3, 20, 256, dtype=torch.float64, requires_grad=True)
    with padding_mode("on"):  # whatever this host's default
        out = lin(x)
    assert out.shape == (3, 20, 262) and out.stride(1) == 272  # the padded product
    w, b = lin.padded()
    ref = torch.baddbmm(b, x, w)
    torch.testing.assert_close(out, ref)
    up = torch.randn(3, 20, 262, dtype=torch.float64)
    got = torch.autograd.grad((out * up).sum(), [x, *lin.parameters()])
    want = torch.autograd.grad((ref * up).sum(), [x, *lin.parameters()])
    for g, v in zip(got, want, strict=True):
        torch.testing.assert_close(g, v)


@pytest.fixture
def threads():
    """Set torch's thread count for one test, restored after."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


@pytest.mark.parametrize("n_threads, widths", [(2, [272] * 3), (4, [272] * 3), (2, [262, 250, 100]),
                                               (2, [64] * 5)])
def test_slot_linear_row_split_product_changes_no_value(threads, n_threads, widths):
    """With the rows split for the threads, SlotLinear's output and every gradient
    equal one plain baddbmm's."""
    from adatt.modules.kernels import row_splits
    from adatt.modules.layers import SlotLinear

    threads(n_threads)
    torch.manual_seed(0)
    S = len(widths)
    lin = SlotLinear(S, 256, widths)
    x = torch.randn(S, 512, 256, requires_grad=True)
    w, b = lin.padded()
    assert row_splits(x, w) > 1
    out = lin(x)
    ref = torch.baddbmm(b, x, w)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    up = torch.randn_like(ref)
    got = torch.autograd.grad((out * up).sum(), [x, *lin.parameters()])
    want = torch.autograd.grad((ref * up).sum(), [x, *lin.parameters()])
    for g, v in zip(got, want, strict=True):
        torch.testing.assert_close(g, v, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("emb, B", [(None, 64), (8, 16), (8, 64)])  # one-hot, gather, table
@pytest.mark.parametrize("per_copy", [False, True])
def test_input_linear_forward_copies_equals_each_copy(emb, B, per_copy):
    """InputLinear.forward_copies: copy k's slice is the layer run with copy k's parameters
    (one-hot bags, embedding gather, product table), for one batch or one per copy."""
    from torch.func import functional_call

    from adatt.modules.layers import InputLinear

    torch.manual_seed(0)
    cards = [3, 9, 5]
    copies = [InputLinear(4, cards, emb, 11) for _ in range(3)]  # fp32: the table needs it
    lin = copies[0]
    params = {n: torch.stack([dict(c.named_parameters())[n] for c in copies])
              for n, _ in lin.named_parameters()}  # [S, ...]
    shape = (3, B) if per_copy else (B,)
    dense = torch.randn(*shape, 4)
    cat = torch.stack([torch.randint(0, c, shape) for c in cards], -1)
    assert lin.use_product_table(cat) == (emb is not None and B == 64)
    out = lin.forward_copies(dense, cat, params)
    assert out.shape == (3, B, 11)
    for k in range(3):
        p = {n: t[k] for n, t in params.items()}
        d, c = (dense[k], cat[k]) if per_copy else (dense, cat)
        torch.testing.assert_close(out[k], functional_call(lin, p, (d, c)))
