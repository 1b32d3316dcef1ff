"""The simulator experiments (Tables 1-4, 6, 7, 8, Figure 3): helpers fast, quick modes slow."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from adatt.config import load_config
from adatt.experiments import ablation, expert_weights, studies, task_groups
from adatt.experiments.ablation import ablation_configs, run_ablation
from adatt.experiments.common import command_line, per_seed
from adatt.experiments.expert_weights import (
    _verdict,
    family_sharing,
    fig3_model,
    mean_expert_weights,
    run_expert_weights,
)
from adatt.experiments.studies import (
    LEVEL_SIZES,
    experts_configs,
    levels_configs,
    run_experts_study,
    run_levels_study,
)
from adatt.experiments.task_groups import (
    MODEL_LABELS,
    _point_index,
    curve_table,
    model_overrides,
    relative_summary,
    run_seeds,
    run_task_groups,
    seed_means,
    selection_override,
    task_group_models,
)
from adatt.models import create_model

REPO = Path(__file__).resolve().parents[1]
CENSUS_DIR = Path(os.environ.get("ADATT_DATA_DIR") or REPO.parent / "shared" / "data" /
                  "census-income")


def res(kind: str, value: float, auc: float | None = None, split: str = "test") -> dict:
    metric = "mse" if kind == "regression" else "ne"
    m = {metric: value} | ({"auc": auc} if auc is not None else {})
    return {"tasks": {"a": kind}, split: {"a": m}}


# ----------------------------------------------------------------------------- aggregation


def test_relative_summary_compares_means_and_pairs_seeds():
    runs = [res("binary", 0.90), res("binary", 0.96)]
    ref = [res("binary", 1.00), res("binary", 1.00)]
    r = relative_summary(runs, ref)["a"]
    assert r["diff"] == pytest.approx(-7.0)  # mean 0.93 vs 1.0
    assert r["per_seed"] == pytest.approx([-10.0, -4.0])
    # t(0.975, 1) * std([-10, -4]) / sqrt(2) = 12.706 * 4.243 / 1.414
    assert r["ci"] == pytest.approx(12.7062 * math.sqrt(18) / math.sqrt(2), rel=1e-4)
    one = relative_summary(runs[:1], ref[:1])["a"]
    assert one["diff"] == pytest.approx(-10.0) and math.isnan(one["ci"])


def test_relative_summary_uses_mse_for_regression_and_mean_of_ratios_is_not_used():
    runs = [res("regression", 1.0), res("regression", 3.0)]
    ref = [res("regression", 2.0), res("regression", 1.0)]
    r = relative_summary(runs, ref)["a"]
    assert r["diff"] == pytest.approx((2.0 - 1.5) / 1.5 * 100)  # of the means
    assert r["per_seed"] == pytest.approx([-50.0, 200.0])


def test_seed_means_leaves_out_tasks_without_the_metric():
    runs = [{"tasks": {"a": "binary", "w": "regression"},
             "test": {"a": {"ne": 0.5, "auc": 0.7}, "w": {"mse": 2.0}}},
            {"tasks": {"a": "binary", "w": "regression"},
             "test": {"a": {"ne": 0.7, "auc": 0.9}, "w": {"mse": 4.0}}}]
    assert seed_means(runs) == pytest.approx({"a": 0.6, "w": 3.0})
    assert seed_means(runs, metric="auc") == pytest.approx({"a": 0.8})


def test_curve_table_relative_to_baseline_at_each_evaluation():
    def ev(n, ne):
        return {"examples": n, "valid": {"a": {"ne": ne}}}

    curves = {"shared_bottom": [[ev(10, 1.0), ev(20, 0.8), ev(30, 0.5)],
                                [ev(10, 1.0), ev(20, 0.8), ev(30, 0.7)]],
              "m": [[ev(10, 0.9), ev(20, 0.88)], [ev(10, 0.9), ev(20, 0.72)]]}
    t = curve_table(curves, {"a": "binary"})
    assert t["examples"] == [10, 20]  # the third evaluation is not reached by every run
    assert t["diff"]["shared_bottom"]["a"] == pytest.approx([0.0, 0.0])
    assert t["diff"]["m"]["a"] == pytest.approx([-10.0, 0.0])


def test_point_index_picks_the_evaluation_nearest_each_fraction():
    examples = [1024 * k for k in range(1, 8)]  # 7 evaluations of 7168 examples
    assert [_point_index(examples, 7168, k) for k in (1, 3, 7)] == [0, 2, 6]
    assert _point_index([], 7168, 1) is None


def test_selection_falls_back_to_logloss_when_a_validation_task_has_no_positive():
    from adatt.data.batch import TensorDataset
    from adatt.data.schema import FeatureSchema, TaskSpec
    from adatt.data.splits import Splits

    schema = FeatureSchema(("x",), (), (), (TaskSpec("w", "regression"), TaskSpec("a"),
                                            TaskSpec("rare")))

    def ds(rare: float) -> TensorDataset:
        y = torch.tensor([[0.5, 1.0, rare], [1.5, 0.0, 0.0]])
        return TensorDataset(torch.zeros(2, 1), torch.zeros(2, 0, dtype=torch.long), y)

    ok = Splits("t", schema, ds(1.0), ds(1.0), ds(1.0))
    assert selection_override(ok) == ("train.selection.metric=loss", None)
    bad = Splits("t", schema, ds(1.0), ds(0.0), ds(1.0))
    sel, note = selection_override(bad)
    assert sel == "train.selection.metric=logloss" and "rare" in note and "a," not in note


# ----------------------------------------------------------------------------- expert weights


def tiny_adatt_sp(native: bool = True, experts: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("adatt_sp", num_tasks=3, dense_dim=4, cat_cardinalities=[5, 3],
                        embedding_dim=2, expert_sizes=[8, 4], experts_per_task=experts,
                        tower_sizes=[4], native_fusion=native)


def tiny_data(n: int = 50):
    from adatt.data.batch import TensorDataset

    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 4, generator=g),
                         torch.randint(0, 5, (n, 2), generator=g) % torch.tensor([5, 3]),
                         torch.zeros(n, 3))


def test_mean_expert_weights_is_the_row_average_whatever_the_batch():
    model, data = tiny_adatt_sp(), tiny_data()
    w = mean_expert_weights(model, data, batch_size=7)  # 50 rows in uneven batches
    _, full = model.forward_with_weights(data.dense, data.cat)  # L x [B,G,E]
    assert len(w) == 2 and all(x.shape == (3, 3) for x in w)
    for got, ref in zip(w, full, strict=True):
        np.testing.assert_allclose(got, ref.double().mean(0).detach().numpy(), rtol=1e-6)
    # one expert per task: v_t = 1 on the own expert plus a softmax gate -> rows sum to 2
    for x in w:
        np.testing.assert_allclose(x.sum(1), 2.0, rtol=1e-6)
        assert (np.diag(x) >= 1.0).all()
    assert model.training  # the train/eval mode is restored


def test_mean_expert_weights_without_native_fusion_is_the_gate_alone():
    w = mean_expert_weights(tiny_adatt_sp(native=False), tiny_data())
    for x in w:
        np.testing.assert_allclose(x.sum(1), 1.0, rtol=1e-6)


def test_family_sharing_hand_computed():
    w = np.array([[1.5, 0.3, 0.2, 0.0],
                  [0.4, 1.4, 0.1, 0.1],
                  [0.1, 0.1, 1.6, 0.2],
                  [0.0, 0.2, 0.4, 1.4]])
    s = family_sharing(w, ["c", "c", "e", "e"], owners=[0, 1, 2, 3])
    assert s["same"] == pytest.approx(np.mean([0.3, 0.4, 0.2, 0.4]))
    assert s["other"] == pytest.approx(np.mean([0.2, 0.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.2]))
    assert s["same_over_other"] == pytest.approx(s["same"] / s["other"])
    assert s["foreign"] == pytest.approx(np.mean([0.5, 0.6, 0.4, 0.6]))
    assert s["native"] == pytest.approx(np.mean([1.5, 1.4, 1.6, 1.4]))
    # two experts per task: an own expert is never "foreign"
    s2 = family_sharing(np.ones((2, 4)), ["c", "e"], owners=[0, 0, 1, 1])
    assert s2["native"] == 2.0 and s2["foreign"] == 2.0 and math.isnan(s2["same"])
    with pytest.raises(ValueError, match="owners"):
        family_sharing(w, ["c"] * 4, owners=[0, 1])


def test_verdict_reports_failures_honestly():
    stats = [{"same_over_other": 1.0, "foreign": 0.5}, {"same_over_other": 1.5, "foreign": 0.4}]
    v = _verdict(stats, [stats, stats])
    assert v.count(": no") == 3 and "0 of the paper's three readings hold" in v
    assert "(in 0/2 seeds)" in v


# ----------------------------------------------------------------------------- configurations


def test_task_group_models_same_sizes_and_valid_configs():
    for T in (2, 5):
        models = task_group_models(T)
        assert list(models) == list(MODEL_LABELS)
        assert models["mmoe"]["expert_sizes"] == [[256, 128]]
        assert models["mmoe"]["num_experts"] == models["ml_mmoe"]["num_experts"] == 2 * T
        for name in ("ple", "adatt"):
            m = models[name]
            assert m["experts_per_task"] * T + m["shared_experts"] == 2 * T
        assert models["adatt_sp"]["experts_per_task"] == 1
        assert "shared_experts" not in models["adatt_sp"]
        assert models["adatt"]["native_rule"] == models["adatt_sp"]["native_rule"] == "authors"
        assert models["cross_stitch"]["stitch_init"] == "authors"  # pinned: see PINNED
        for name, opts in models.items():
            assert opts["tower_sizes"] == [64] and opts["embedding_dim"] == 16
            assert opts["name"] == name
            load_config(None, ["data.source=sim", *model_overrides(opts)])  # validates


def test_pinned_options_tell_new_runs_from_runs_under_the_earlier_defaults():
    """A resumed experiment compares saved configs (trainer.finished_results): a run made
    before the options existed lacks them, so it is not taken for a run of today's model."""
    from adatt.experiments.common import pinned

    for opts in ({"name": "adatt", "experts_per_task": 1, "shared_experts": 3},
                 {"name": "cross_stitch"}):
        old = load_config(None, ["data.source=sim", *model_overrides(opts)])
        new = load_config(None, ["data.source=sim", *model_overrides(pinned(opts))])
        assert old.model_dump(mode="json") != new.model_dump(mode="json")


def test_ablation_configs_are_adatt_with_and_without_native_fusion():
    cs = ablation_configs(census_ms=(0, 3))
    census = [c for c in cs if c["source"] == "census"]
    assert [c["model"]["shared_experts"] for c in census] == [0, 3]
    assert [c["model"]["experts_per_task"] for c in census] == [2, 1]
    assert all(c["model"]["expert_sizes"] == [128, 64] for c in census)
    assert all(c["model"]["native_rule"] == "authors" for c in census)
    sim = [c for c in cs if c["source"] == "sim"]
    assert sim[0]["model"]["name"] == "adatt_sp" and sim[0]["model"]["experts_per_task"] == 3
    for c in cs:
        for native in (True, False):
            cfg = load_config(None, [f"data.source={c['source']}",
                                     *model_overrides({**c["model"], "native_fusion": native})])
            assert cfg.model["native_fusion"] is native


def test_study_configs_follow_the_paper():
    assert [c["model"]["expert_sizes"] for c in levels_configs()] == [list(s) for s in
                                                                      LEVEL_SIZES]
    quick = levels_configs(quick=True)
    assert quick[-1]["model"]["expert_sizes"] == [128, 64, 32, 16, 8]
    assert all(c["model"]["experts_per_task"] == 1 for c in quick)
    assert [c["x"] for c in quick] == [2, 3, 4, 5]
    ex = experts_configs()
    assert [c["model"]["experts_per_task"] for c in ex] == [1, 2, 3, 4]
    assert all(c["model"]["expert_sizes"] == [256, 128] for c in ex)
    assert fig3_model()["experts_per_task"] == 1 and "shared_experts" not in fig3_model()
    for c in levels_configs() + ex:
        load_config(None, ["data.source=sim", *model_overrides(c["model"])])


# ----------------------------------------------------------------------------- run_seeds


def tiny_cfg(tmp_path, name):
    return load_config(None, ["data.source=mmoe_synthetic", "data.rows=1200", "data.dim=6",
                              "model.name=mmoe", "model.expert_sizes=[[8]]",
                              "model.num_experts=2", "model.tower_sizes=[4]", "train.epochs=1",
                              "train.batch_size=128", "runtime.progress=false",
                              "runtime.threads=1", f"out_dir={tmp_path}", f"name={name}"])


def test_run_seeds_one_seed_trains_alone_with_the_numbers_of_the_ensemble(tmp_path):
    from adatt.data.config import load_splits

    cfg = tiny_cfg(tmp_path, "loop")
    splits = load_splits(cfg.data)
    looped = [run_seeds(cfg, [s], splits)[0] for s in (0, 1)]  # one train() per seed
    for s in (0, 1):
        assert (tmp_path / "loop" / f"seed_{s}" / "metrics.jsonl").is_file()
    assert [r["seed"] for r in looped] == [0, 1]
    assert looped[0]["test"] != looped[1]["test"]
    ens = run_seeds(tiny_cfg(tmp_path, "ens"), [0, 1], splits)  # vectorised: same numbers
    for a, b in zip(looped, ens, strict=True):
        for task in a["test"]:
            assert a["test"][task]["mse"] == pytest.approx(b["test"][task]["mse"], rel=1e-4)


def test_run_seeds_in_worker_processes_equals_the_ensemble(tmp_path, monkeypatch):
    """Where the probe picks worker processes, each seed is its own train() run: the
    numbers of the ensemble's copies, up to summation order; the choice is recorded."""
    from adatt.data.config import load_splits
    from adatt.experiments import engine

    cfg = tiny_cfg(tmp_path, "w")
    splits = load_splits(cfg.data)
    picked = engine.EngineChoice("workers", 2, 1.0, 2.0)
    monkeypatch.setattr(engine, "pick_engine", lambda *a, **k: picked)
    engines: dict = {}
    workers = run_seeds(cfg, [0, 1], splits, engines=engines)
    assert engines == {"w": picked.as_dict()}
    assert not (tmp_path / "w" / "ensemble.json").exists()  # not the ensemble
    ens = run_seeds(tiny_cfg(tmp_path, "e"), [0, 1], splits)
    assert (tmp_path / "e" / "ensemble.json").is_file()
    assert [r["seed"] for r in workers] == [0, 1]
    for a, b in zip(workers, ens, strict=True):
        for task in a["test"]:
            assert a["test"][task]["mse"] == pytest.approx(b["test"][task]["mse"], rel=1e-4)


def test_run_seeds_probes_once_per_configuration_and_caches_it(tmp_path, monkeypatch):
    from adatt.data.config import load_splits
    from adatt.experiments import engine

    cfg = tiny_cfg(tmp_path, "p")
    splits = load_splits(cfg.data)
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)  # a choice to make on any host
    calls = []

    def probe(cfg, splits, seeds, workers):
        calls.append((seeds, workers))
        return 5.0, 1.0  # the ensemble measured faster

    real = engine.pick_engine
    monkeypatch.setattr(engine, "pick_engine",
                        lambda *a, **k: real(*a, **{**k, "probe": probe}))
    engines: dict = {}
    run_seeds(cfg, [0, 1], splits, engines=engines)
    assert calls == [(2, 2)] and engines["p"]["engine"] == "ensemble"
    assert engines["p"]["source"] == "measured"
    assert (tmp_path / "engine.json").is_file()  # beside the runs
    run_seeds(cfg, [0, 1], splits, resume=True, engines=engines)
    assert calls == [(2, 2)] and engines["p"]["source"] == "cached"


def test_run_seeds_resume_chooses_the_engine_for_the_seeds_left(tmp_path, monkeypatch):
    """With --resume and seed 0 finished, the probe is for the 2 seeds that will train
    (a choice for 3 would count a third worker round that never comes)."""
    from adatt.data.config import load_splits
    from adatt.experiments import engine

    cfg = tiny_cfg(tmp_path, "left")
    splits = load_splits(cfg.data)
    run_seeds(cfg, [0], splits)
    first = tmp_path / "left" / "seed_0" / "results.json"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(engine.os, "cpu_count", lambda: 2)
    calls = []

    def probe(cfg, splits, seeds, workers):
        calls.append((seeds, workers))
        return 5.0, 1.0

    real = engine.pick_engine
    monkeypatch.setattr(engine, "pick_engine",
                        lambda *a, **k: real(*a, **{**k, "probe": probe}))
    results = run_seeds(cfg, [0, 1, 2], splits, resume=True, engines={})
    assert calls == [(2, 2)]
    assert [r["seed"] for r in results] == [0, 1, 2] and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("seeds", [[0], [0, 1]], ids=["train", "ensemble"])
def test_run_seeds_resume_keeps_finished_runs_and_retrains_changed_ones(tmp_path, seeds):
    from adatt.data.config import load_splits

    cfg = tiny_cfg(tmp_path, "r")
    splits = load_splits(cfg.data)
    first = run_seeds(cfg, seeds, splits)
    files = [tmp_path / "r" / f"seed_{s}" / "results.json" for s in seeds]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_seeds(cfg, seeds, splits, resume=True)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing trained again
    assert [r["test"] for r in again] == [r["test"] for r in first]
    other = cfg.model_copy(deep=True)
    other.train.optimizer.lr = cfg.train.optimizer.lr * 2
    run_seeds(other, seeds, splits, resume=True)  # another configuration: trained again
    assert all(f.stat().st_mtime_ns != t for f, t in zip(files, stamps, strict=True))


# ----------------------------------------------------------------------------- report lines


def seeds_of(per_task: dict[str, list[float]], metric_of: dict[str, str]) -> list[dict]:
    """Per-seed entries (as in a summary) from per-task lists of test values."""
    n = len(next(iter(per_task.values())))
    return [{"seed": k, "test": {t: {metric_of[t]: v[k]} for t, v in per_task.items()}}
            for k in range(n)]


def test_task_groups_seed_lines_count_wins_and_ranks_from_the_seeds():
    metric = {"view": "ne", "watch": "mse"}
    models = {  # lower is better; 3 seeds
        "shared_bottom": {"view": [0.90, 0.80, 0.85], "watch": [2.0, 1.0, 3.0]},
        "adatt": {"view": [0.85, 0.85, 0.80], "watch": [1.5, 1.5, 1.5]},
        "mmoe": {"view": [0.80, 0.90, 0.90], "watch": [1.0, 2.0, 1.0]},
    }
    summary = {"groups": {"group3": {"tasks": {"view": "binary", "watch": "regression"},
                                     "models": {m: {"seeds": seeds_of(v, metric)}
                                                for m, v in models.items()}}}}
    text = task_groups.seed_lines(summary)
    assert ("group3: seeds (of 3) in which AdaTT has a lower test NE (MSE for watch) than each "
            "model: view: Shared-bottom 2, MMoE 2; watch: Shared-bottom 2, MMoE 1.") in text
    assert ("group3: AdaTT's rank by test NE (MSE for watch) among the 3 models (1 = lowest), "
            "seed by seed: view 2, 2, 1; watch 2, 2, 2.") in text
    del summary["groups"]["group3"]["models"]["adatt"]
    assert task_groups.seed_lines(summary) == ""  # no AdaTT row, no line


def test_study_seed_lines_count_the_seeds_that_beat_the_reference():
    metric = {"view": "ne", "watch": "mse"}
    configs = [{"label": "m_t=1", "seeds": seeds_of({"view": [0.9, 0.8], "watch": [2.0, 1.0]},
                                                    metric)},
               {"label": "m_t=2", "seeds": seeds_of({"view": [0.8, 0.7], "watch": [3.0, 0.5]},
                                                    metric)}]
    summary = {"tasks": {"view": "binary", "watch": "regression"}, "seeds": 2,
               "reference": "m_t=1", "configs": configs}
    text = studies.seed_lines(summary)
    assert text.startswith("Seeds (of 2) in which the configuration beats m_t=1 on the task "
                           "(lower test NE / MSE): m_t=2: 2, 1 (view, watch).")
    assert "a 95% interval is ± 12.7 standard errors" in text


def test_per_seed_keeps_every_numeric_metric_of_both_splits():
    r = {"seed": 4, "valid": {"a": {"auc": 0.7, "ne": 0.9}},
         "test": {"a": {"auc": 0.6, "ne": 0.95, "flag": True, "name": "x"}}}
    assert per_seed([r]) == [{"seed": 4, "valid": {"a": {"auc": 0.7, "ne": 0.9}},
                              "test": {"a": {"auc": 0.6, "ne": 0.95}}}]


def test_command_line_is_the_equivalent_cli_call():
    call = {"out_dir": "x", "quick": True, "seeds": 3, "progress": False,
            "groups": ("group1", "group3"), "models": None, "rows": 500_000, "threads": 2,
            "experts_per_level": None, "evaluations": 7, "device": "cpu", "chunk": None}
    assert command_line("task-groups", run_task_groups, call) == (
        "`adatt experiment task-groups --quick --groups group1,group3 --rows 500000 "
        "--threads 2`")
    call = {"out_dir": "x", "census": True, "sim": False, "seeds": 5, "census_ms": (3,)}
    assert command_line("ablation", run_ablation, call) == (
        "`adatt experiment ablation --no-sim` (and the argument census_ms=(3,))")


# ----------------------------------------------------------------------------- quick modes (slow)


def check_report_from_summary(out: Path, module, group_cols: int, configs: int,
                              seeds: int) -> None:
    """The report is a function of summary.json alone; seeds.csv has every seed's numbers."""
    summary = json.loads((out / "summary.json").read_text())
    again = out / "again"
    module.write_report(again, summary)
    assert (again / "report.md").read_text() == (out / "report.md").read_text()
    assert (again / "seeds.csv").read_text() == (out / "seeds.csv").read_text()
    report = (out / "report.md").read_text()
    assert "Command: `adatt experiment " in report and "--quick" in report
    assert "CPU cores visible" in report and "[seeds.csv](seeds.csv)" in report
    rows = finite_csv(out / "seeds.csv")
    assert list(rows[0])[group_cols:] == ["seed", "split", "task", "metric", "value"]
    keys = {tuple(list(r.values())[:group_cols]) for r in rows}
    assert len(keys) == configs
    assert {r["seed"] for r in rows} == {str(k) for k in range(seeds)}
    assert {r["split"] for r in rows} == {"valid", "test"}
    assert_finite(r["value"] for r in rows if r["value"] not in ("nan", ""))


def seed_csv_mean(out: Path, where: dict[str, str], task: str, metric: str) -> float:
    vals = [float(r["value"]) for r in finite_csv(out / "seeds.csv")
            if all(r[k] == v for k, v in where.items())
            and r["split"] == "test" and r["task"] == task and r["metric"] == metric]
    assert vals
    return sum(vals) / len(vals)



def finite_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert rows
    return rows


def assert_finite(values) -> None:
    vals = [float(v) for v in values]
    assert vals and all(math.isfinite(v) for v in vals), vals


@pytest.mark.slow
def test_task_groups_quick(tmp_path):
    s = run_task_groups(tmp_path, quick=True, progress=False)
    for f in ("report.md", "results.csv", "curves.csv", "summary.json",
              "convergence_group1.png", "convergence_group2.png", "convergence_group3.png"):
        assert (tmp_path / f).is_file(), f
    assert set(s["groups"]) == {"group1", "group2", "group3"}
    report = (tmp_path / "report.md").read_text()
    assert "group 1 numbers are printed" in report and "states only the shape" in report
    rows = finite_csv(tmp_path / "results.csv")
    for group, g in s["groups"].items():
        assert set(g["models"]) == set(MODEL_LABELS)
        assert len(g["examples"]) == 7
        for m in g["models"].values():
            assert set(m["test"]) == set(g["tasks"])
            assert_finite(v["diff"] for v in m["test"].values())
            # follow (0.05% positives) may have no positive among 4,000 validation rows
            assert_finite(x for t, c in m["curve"].items() if t != "follow" for x in c)
        got = {(r["model"], r["task"]) for r in rows if r["group"] == group}
        assert got == {(n, t) for n in MODEL_LABELS if n != "shared_bottom" for t in g["tasks"]}
    assert_finite(r["test_diff"] for r in rows)
    report = (tmp_path / "report.md").read_text()
    assert "paper 70B" in report and "-0.863%" in report  # group 1 paper numbers beside ours
    check_report_from_summary(tmp_path, task_groups, 2, 3 * len(MODEL_LABELS), 2)
    for group in ("group1", "group3"):
        assert f"{group}: seeds (of 2) in which AdaTT has a lower test NE" in report
        m = s["groups"][group]["models"]["adatt"]["test_metric"]["view"]
        assert seed_csv_mean(tmp_path, {"group": group, "model": "adatt"}, "view", "ne") == \
            pytest.approx(m, rel=1e-12)


@pytest.mark.slow
def test_ablation_quick(tmp_path):
    have_census = (CENSUS_DIR / "census-income.data.gz").is_file() or \
        (CENSUS_DIR / "census-income.data").is_file()
    s = run_ablation(tmp_path, quick=True, progress=False, census=have_census,
                     data_dir=str(CENSUS_DIR) if have_census else None)
    for f in ("report.md", "results.csv", "ablation.png", "summary.json"):
        assert (tmp_path / f).is_file(), f
    expect = {"sim group3": {"watch_time", "view", "finish", "dislike", "follow"}}
    if have_census:
        expect["census m_s=0"] = {"income", "never_married", "education"}
    assert {k: set(v["tasks"]) for k, v in s["settings"].items()} == expect
    for setting in s["settings"].values():
        assert setting["num_parameters"]["off"] < setting["num_parameters"]["on"]  # no v_t
        assert_finite(t["diff"] for t in setting["tasks"].values())
    assert_finite(r["diff_pct"] for r in finite_csv(tmp_path / "results.csv"))
    check_report_from_summary(tmp_path, ablation, 2, 2 * len(expect), 2)
    t = s["settings"]["sim group3"]["tasks"]["view"]
    assert seed_csv_mean(tmp_path, {"setting": "sim group3", "native_fusion": "off"}, "view",
                         "ne") == pytest.approx(t["off"], rel=1e-12)


@pytest.mark.slow
def test_expert_weights_quick(tmp_path):
    s = run_expert_weights(tmp_path, quick=True, progress=False)
    for f in ("report.md", "weights.csv", "expert_weights.png", "summary.json"):
        assert (tmp_path / f).is_file(), f
    T = len(s["tasks"])
    assert T == 9 and len(s["weights"]) == 2
    for w in s["weights"]:
        w = np.asarray(w)
        assert w.shape == (T, T)
        np.testing.assert_allclose(w.sum(1), 2.0, rtol=1e-5)
    assert_finite(x["foreign"] for x in s["sharing"]["mean"])
    assert len(finite_csv(tmp_path / "weights.csv")) == 2 * T * T
    check_report_from_summary(tmp_path, expert_weights, 0, 1, 2)
    per = finite_csv(tmp_path / "weights-seeds.csv")
    assert len(per) == 2 * 2 * T * T  # seeds x levels x T x E
    w0 = np.mean([float(r["weight"]) for r in per if r["level"] == "0"
                  and r["task"] == s["tasks"][0] and r["expert"] == f"e_{s['tasks'][1]}"])
    assert w0 == pytest.approx(s["weights"][0][0][1], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["experts", "levels"])
def test_studies_quick(tmp_path, which):
    fn = run_experts_study if which == "experts" else run_levels_study
    s = fn(tmp_path, quick=True, progress=False)
    for f in ("report.md", "results.csv", f"{which}_study.png", "summary.json"):
        assert (tmp_path / f).is_file(), f
    assert [c["x"] for c in s["configs"]] == ([1, 2, 3, 4] if which == "experts" else
                                              [2, 3, 4, 5])
    assert s["reference"] == s["configs"][0]["label"]
    for c in s["configs"]:
        assert set(c["diff"]) == set(s["tasks"])
        assert_finite(v["diff"] for v in c["diff"].values())
    assert all(v["diff"] == 0.0 for v in s["configs"][0]["diff"].values())
    assert len(finite_csv(tmp_path / "results.csv")) == 4 * len(s["tasks"])
    check_report_from_summary(tmp_path, studies, 1, 4, 2)
    report = (tmp_path / "report.md").read_text()
    assert f"Seeds (of 2) in which the configuration beats {s['reference']}" in report


def test_cli_passes_the_simulator_options_through(monkeypatch, tmp_path):
    import adatt.experiments as experiments
    from adatt.cli import main

    seen = {}

    def fake(out_dir, quick=False, seeds=3, progress=True, *, groups=("group1",), rows=None,
             models=None, device="cpu", threads=None):
        seen.update(groups=groups, rows=rows, models=models, device=device, threads=threads)
        return {}

    monkeypatch.setattr(experiments, "get_experiment", lambda name: fake)
    argv = ["experiment", "task-groups", "--out-dir", str(tmp_path), "--rows", "500000",
            "--groups", "group1,group3", "--models", "mmoe,adatt", "--threads", "2",
            "--device", "cpu"]
    assert main(argv) == 0
    assert seen == {"groups": ("group1", "group3"), "rows": 500_000,
                    "models": ("mmoe", "adatt"), "device": "cpu", "threads": 2}


@pytest.mark.parametrize("argv, message", [
    (["task-groups", "--groups", "group4"], "--groups: unknown group 'group4'"),
    (["task-groups", "--models", "mmoe,foo"], "--models: unknown model 'foo'"),
    (["levels-study", "--models", "mmoe"], "experiment levels-study has no --models option"),
    (["census-table5", "--rows", "50000"], "experiment census-table5 has no --rows option"),
    (["ablation", "--rows", "500"], "--rows must be >= 10,000, got 500"),
    (["expert-weights", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["ablation", "--no-census", "--no-sim"], "--no-census and --no-sim together"),
    (["experts-study", "--no-sim"], "experiment experts-study has no --no-sim option"),
    pytest.param(["levels-study", "--device", "cuda"], "CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")),
])
def test_cli_rejects_bad_simulator_options(capsys, tmp_path, argv, message):
    from adatt.cli import main

    out = tmp_path / "out"
    assert main(["experiment", *argv, "--quick", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_task_groups_report_claims_only_the_paper_numbers_it_prints(tmp_path):
    run_task_groups(tmp_path, quick=True, progress=False, groups=("group2",), models=("mmoe",))
    report = (tmp_path / "report.md").read_text()
    assert "group 1 numbers" not in report and "paper 10B" not in report
    assert "group 2 all models closer together" in report


def test_task_groups_rejects_unknown_groups_and_models():
    with pytest.raises(ValueError, match="unknown task group or model 'group9'"):
        run_task_groups("unused", groups=("group9",))
    with pytest.raises(ValueError, match="unknown task group or model 'lstm'"):
        run_task_groups("unused", models=("lstm",))


@pytest.mark.parametrize("name", ["task-groups", "ablation", "experts-study", "levels-study",
                                  "expert-weights", "partial-labels"])
def test_every_simulator_experiment_passes_resume_to_its_seed_runs(name, tmp_path,
                                                                   monkeypatch):
    """`adatt experiment NAME --resume` reaches run_seeds, which keeps finished runs."""
    import importlib

    from adatt.cli import main
    from adatt.experiments import EXPERIMENTS

    seen = []

    class Stop(Exception):
        pass

    def fake_run_seeds(cfg, seeds, splits=None, chunk=None, resume=False, engines=None):
        seen.append(resume)
        raise Stop

    module = importlib.import_module(EXPERIMENTS[name][0])
    monkeypatch.setattr(module, "run_seeds", fake_run_seeds)
    with pytest.raises(Stop):
        main(["experiment", name, "--quick", "--resume", "--out-dir", str(tmp_path),
              "--no-progress", *(["--no-census"] if name == "ablation" else [])])
    assert seen == [True]
