"""Recommender simulator and the MMoE synthetic generator: determinism, rates, correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adatt.data.errors import DataError
from adatt.data.mmoe_synthetic import load_mmoe_synthetic, mmoe_synthetic_arrays
from adatt.data.simulator import (
    BLOCK_ROWS,
    PRESETS,
    TASKS,
    SimPreset,
    Simulator,
    iter_chunks,
    load_sim,
)

ROWS = 40_000  # > one 32,768-row block, so block boundaries are exercised


@pytest.fixture(scope="module")
def group3() -> Simulator:
    return Simulator("group3", rows=ROWS, seed=0)


def test_same_seed_same_data_other_seed_other_data(group3: Simulator):
    d1, c1, y1 = group3.arrays()
    d2, c2, y2 = Simulator("group3", rows=ROWS, seed=0).arrays()
    assert np.array_equal(d1, d2) and np.array_equal(c1, c2) and np.array_equal(y1, y2)
    d3, _, _ = Simulator("group3", rows=ROWS, seed=1).arrays()
    assert not np.array_equal(d1, d3)


@pytest.mark.parametrize("chunk_rows", [1_000, 7_777, BLOCK_ROWS, 100_000])
def test_chunk_size_does_not_change_the_data(group3: Simulator, chunk_rows: int):
    d, c, y = group3.arrays()
    chunks = list(group3.chunks(chunk_rows))
    assert [len(b) for b in chunks[:-1]] == [chunk_rows] * (len(chunks) - 1)
    assert torch.equal(torch.cat([b.dense for b in chunks]), torch.from_numpy(d))
    assert torch.equal(torch.cat([b.cat for b in chunks]), torch.from_numpy(c))
    assert torch.equal(torch.cat([b.labels for b in chunks]), torch.from_numpy(y))


def test_row_ranges_and_iter_chunks(group3: Simulator):
    d, _, y = group3.arrays()
    part = group3.arrays(30_000, 35_000)  # crosses the block boundary at 32,768
    assert np.array_equal(part[0], d[30_000:35_000]) and np.array_equal(part[2], y[30_000:35_000])
    streamed = list(iter_chunks("group3", ROWS, 0, chunk_rows=3_000, start=31_000, stop=34_000))
    assert torch.equal(torch.cat([b.labels for b in streamed]), torch.from_numpy(y[31_000:34_000]))
    with pytest.raises(DataError, match="row range"):
        group3.arrays(10, 5)


def test_features_are_in_range(group3: Simulator):
    d, c, _ = group3.arrays()
    card = np.array(group3.schema.cardinalities)
    assert c.min() >= 1 and (c < card).all()  # 0 is reserved for unknown
    assert d.shape[1] == group3.schema.dense_dim and np.isfinite(d).all()
    assert np.abs(d.mean(0)).max() < 0.1 and np.abs(d.std(0) - 1).max() < 0.1  # standardised


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_positive_rates_match_the_design(preset: str):
    rows = 100_000
    sim = Simulator(preset, rows=rows, seed=3)
    _, _, y = sim.arrays(observed=False)  # a partial preset's true labels
    assert sim.schema.task_names == list(PRESETS[preset].tasks)
    for j, name in enumerate(sim.schema.task_names):
        task = TASKS[name]
        if task.kind == "regression":
            assert 1.0 < y[:, j].mean() < 3.0 and y[:, j].std() > 0.5  # log1p(seconds)
            continue
        rate = task.rate
        sd = np.sqrt(rate * (1 - rate) / rows)
        assert abs(y[:, j].mean() - rate) < 5 * sd + 0.05 * rate, (name, y[:, j].mean(), rate)


def test_groups_follow_the_paper():
    g1, g2, g3 = PRESETS["group1"], PRESETS["group2"], PRESETS["group3"]
    fam = [TASKS[t].family for t in g1.tasks]
    assert sorted(fam) == ["consumption", "engagement"]
    assert [TASKS[t].family for t in g2.tasks] == ["consumption", "consumption"]
    assert g2.tasks[0] == "view" and g1.tasks[0] == "view"  # group 2 reuses group 1's task
    eng = next(t for t in g1.tasks if TASKS[t].family == "engagement")
    assert TASKS[g2.tasks[1]].rate == pytest.approx(TASKS[eng].rate, rel=0.3)
    kinds = [TASKS[t].kind for t in g3.tasks]
    assert len(g3.tasks) == 5 and kinds.count("regression") == 1
    assert [TASKS[t].family for t in g3.tasks].count("consumption") == 3
    assert "dislike" in g3.tasks and any(TASKS[t].auxiliary for t in g3.tasks)


def test_task_correlation_is_set_by_the_preset():
    low, high = Simulator("group1", rows=10_000), Simulator("group2", rows=10_000)

    def cos(sim: Simulator, a: str, b: str) -> float:
        return float((sim.M[a] * sim.M[b]).sum())  # Frobenius inner product, norms are 1

    assert cos(low, "view", "like") == pytest.approx(0.1, abs=1e-5)  # shared only
    assert cos(high, "view", "replay") == pytest.approx(0.8, abs=1e-5)  # shared + family
    # over random (user, item) pairs the scores have the designed correlation
    for sim, a, b, target in ((low, "view", "like", 0.1), (high, "view", "replay", 0.8)):
        rng = np.random.default_rng(0)
        u, i = rng.integers(0, sim.n_users, 50_000), rng.integers(0, sim.n_items, 50_000)
        s = [((sim.p[u] @ sim.M[t]) * sim.q[i]).sum(1) for t in (a, b)]  # [n,K]x[K,K] -> [n]
        assert np.corrcoef(*s)[0, 1] == pytest.approx(target, abs=0.05)


def test_labels_are_learnable_from_the_dense_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    s = load_sim("group1", rows=30_000, seed=0)
    x, y = s.train.dense.numpy(), s.train.labels.numpy()
    for j in range(2):
        model = LogisticRegression(max_iter=300).fit(x, y[:, j])
        auc = roc_auc_score(s.test.labels[:, j].numpy(), model.decision_function(s.test.dense))
        assert 0.6 < auc < 0.95  # signal, not a trivial function of the inputs


def test_load_sim_splits():
    s = load_sim("group2", rows=10_000, seed=0, valid_fraction=0.2, test_fraction=0.1)
    assert s.sizes() == {"train": 7_000, "valid": 2_000, "test": 1_000}
    assert s.info["preset"] == "group2" and s.name == "sim:group2"
    whole = Simulator("group2", rows=10_000, seed=0).arrays()
    assert np.array_equal(s.test.labels.numpy(), whole[2][9_000:])


def test_bad_simulator_arguments():
    with pytest.raises(DataError, match="unknown simulator preset"):
        Simulator("group9")
    with pytest.raises(DataError, match="unknown tasks"):
        SimPreset("mine", ("view", "teleport"), 0.1, 0.1)
    with pytest.raises(DataError, match="shared"):
        SimPreset("mine", ("view",), 0.8, 0.5)
    with pytest.raises(DataError, match="valid_fraction"):
        load_sim("group1", rows=10_000, valid_fraction=0.6, test_fraction=0.5)


def test_custom_preset():
    sim = Simulator(SimPreset("mine", ("like", "comment", "share"), 0.5, 0.3), rows=5_000)
    assert sim.schema.task_names == ["like", "comment", "share"]
    assert sim.arrays()[2].shape == (5_000, 3)


# --------------------------------------------------------------------------- MMoE synthetic


@pytest.mark.parametrize("p", [-0.5, 0.0, 0.3, 0.9, 1.0])
def test_mmoe_weight_cosine_is_exact_and_linear_labels_follow_it(p: float):
    x, y, params = mmoe_synthetic_arrays(50_000, p, dim=100, seed=1, num_sin=0)
    assert params["weight_cosine"] == pytest.approx(p, abs=1e-9)
    assert x.shape == (50_000, 100) and y.shape == (50_000, 2)
    assert np.corrcoef(y[:, 0], y[:, 1])[0, 1] == pytest.approx(p, abs=0.03)


def test_mmoe_label_correlation_with_sines():
    corr = {}
    for p in (0.1, 0.5, 0.9, 1.0):
        s = load_mmoe_synthetic(p, rows=50_000, dim=100, seed=2)
        corr[p] = s.info["label_correlation"]
    # the documented values (a weighted mean of p^n: close to p, a little below)
    assert corr[0.1] == pytest.approx(0.09, abs=0.02)
    assert corr[0.5] == pytest.approx(0.47, abs=0.02)
    assert corr[0.9] == pytest.approx(0.88, abs=0.02)
    assert corr[1.0] > 0.98
    assert corr[0.1] < corr[0.5] < corr[0.9] < corr[1.0]


def test_mmoe_determinism_and_errors():
    a = mmoe_synthetic_arrays(1_000, 0.5, dim=10, seed=4)
    b = mmoe_synthetic_arrays(1_000, 0.5, dim=10, seed=4)
    c = mmoe_synthetic_arrays(1_000, 0.5, dim=10, seed=5)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])
    with pytest.raises(DataError, match="correlation"):
        mmoe_synthetic_arrays(10, 1.5)
    s = load_mmoe_synthetic(0.5, rows=1_000, dim=10)
    assert s.train.cat.shape == (800, 0) and s.schema.task_kinds == ["regression"] * 2


def test_partial_preset_observes_labels_as_designed():
    """finish and watch_time only where view = 1, like on about 30 % of the rows; the
    observed labels are the true ones (the same world as group3), NaN elsewhere."""
    sim = Simulator("partial", rows=40_000, seed=0)
    tasks = {t.name: t for t in sim.schema.tasks}
    assert tasks["finish"].condition == "view" and tasks["watch_time"].condition == "view"
    assert tasks["like"].missing == "mask" and not tasks["view"].partial and sim.schema.partial
    _, _, y = sim.arrays()
    _, _, true = sim.arrays(observed=False)
    assert not np.isnan(true).any()
    seen = ~np.isnan(y)
    np.testing.assert_array_equal(y[seen], true[seen])
    view = true[:, 1] == 1
    np.testing.assert_array_equal(seen[:, 0], view)
    np.testing.assert_array_equal(seen[:, 2], view)
    assert seen[:, 1].all() and abs(seen[:, 3].mean() - 0.3) < 0.01
    g3 = Simulator("group3", rows=40_000, seed=0).arrays(observed=False)[2]
    np.testing.assert_array_equal(true[:, :3], g3[:, :3])  # watch_time, view, finish
    streamed = np.concatenate([b.labels.numpy() for b in iter_chunks("partial", 40_000, 0,
                                                                       chunk_rows=5_000)])
    np.testing.assert_array_equal(np.isnan(streamed), ~seen)
    assert sim.info()["conditions"] == {"watch_time": "view", "finish": "view"}
    assert "conditions" not in Simulator("group1", rows=5_000).info()


def test_full_presets_have_no_unobserved_label():
    for name in ("group1", "group3"):
        sim = Simulator(name, rows=5_000, seed=2)
        assert not sim.schema.partial
        np.testing.assert_array_equal(sim.arrays()[2], sim.arrays(observed=False)[2])


def test_bad_partial_presets():
    with pytest.raises(DataError, match="condition"):
        SimPreset("p", ("view", "watch_time"), 0.1, 0.1, conditions=(("view", "watch_time"),))
    with pytest.raises(DataError, match="observed"):
        SimPreset("p", ("view", "like"), 0.1, 0.1, observed=(("like", 0.0),))
