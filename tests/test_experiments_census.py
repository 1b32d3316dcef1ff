"""census-table5: the summary helpers (fast) and the quick mode end to end (slow)."""

from __future__ import annotations

import pytest

from adatt.experiments.census import TASKS, _summarise, run_census_table5, table5_configs
from tests.test_data_census import CENSUS_DIR, needs_census


def _fake(valid: float, test: float) -> dict:
    return {"valid": {t: {"auc": valid} for t in TASKS}, "test": {t: {"auc": test} for t in TASKS}}


def test_m_s_is_chosen_on_validation_not_test():
    rows = {}
    for c in table5_configs("A", context=False):
        # m_s=3 has the better validation AUC, m_s=0 the better test AUC
        good_valid = c.get("m_s") == 3
        res = [_fake(0.9 if good_valid else 0.8, 0.7 if good_valid else 0.95) for _ in range(3)]
        rows[("A", c["label"])] = {**c, "group": "A", "results": res, "seconds": 1.0}
    summary = _summarise(rows, ("A",), [0, 1, 2])
    assert summary["selected_ms"]["AdaTT A"]["m_s"] == 3
    assert summary["selected_ms"]["PLE A"]["m_s"] == 3
    selected = {e["label"] for e in summary["rows"] if e["selected"]}
    assert selected == {"ML-MMoE", "PLE m_s=3", "AdaTT m_s=3"}
    paired = [p for p in summary["paired"] if p["vs"] == "ML-MMoE"]
    assert len(paired) == 3 and all(p["n"] == 3 for p in paired)


@pytest.mark.slow
@needs_census
def test_quick_mode_writes_report(tmp_path):
    summary = run_census_table5(tmp_path, quick=True, data_dir=str(CENSUS_DIR), progress=False)
    for f in ("report.md", "results.csv", "table5.png", "summary.json"):
        assert (tmp_path / f).is_file(), f
    assert summary["seeds"] == 2 and len(summary["rows"]) == 8
    text = (tmp_path / "report.md").read_text()
    assert "Paired comparison" in text and "AdaTT − PLE" in text
    from adatt.experiments import census
    from tests.test_experiments_sim import check_report_from_summary, seed_csv_mean

    check_report_from_summary(tmp_path, census, 5, 8, 2)
    ada = next(e for e in summary["rows"] if e["label"] == "AdaTT m_s=3")
    assert seed_csv_mean(tmp_path, {"group": "A", "model": "AdaTT m_s=3"}, "income", "auc") == \
        pytest.approx(ada["income"]["mean"], rel=1e-12)


def test_context_rows_with_fewer_seeds_are_paired_on_common_seeds():
    rows = {}
    for c in table5_configs("A"):
        n = 2 if c.get("context") else 4
        res = [_fake(0.8, 0.9 + 0.01 * k) for k in range(n)]
        rows[("A", c["label"])] = {**c, "group": "A", "results": res, "seconds": 1.0}
    summary = _summarise(rows, ("A",), [0, 1, 2, 3])
    n_of = {e["label"]: e["n"] for e in summary["rows"]}
    assert n_of["ML-MMoE"] == 4 and n_of["MMoE"] == 2 and n_of["Shared-bottom"] == 2
    by_vs = {p["vs"]: p for p in summary["paired"] if p["task"] == "income"}
    assert by_vs["ML-MMoE"]["n"] == 4 and by_vs["MMoE"]["n"] == 2
    assert by_vs["MMoE"]["diff"] == pytest.approx(0.0)  # seeds 0, 1 of both


def test_cli_rejects_options_an_experiment_does_not_have(capsys):
    from adatt.cli import main

    assert main(["experiment", "ablation", "--context-seeds", "2", "--quick"]) != 0
    assert "no --context-seeds option" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--workers", "2", "--quick"]) != 0
    assert "no --workers option" in capsys.readouterr().err


class _FakeTrainer:
    """Stands in for census._Trainer: validation AUC from a table, test AUC = seed."""

    def __init__(self, valid_of):
        self.valid_of, self.calls = valid_of, []

    def run(self, jobs):
        self.calls.append(jobs)
        return {key: ([{**_fake(self.valid_of(cfg), float(seed)), "wall_time_s": 10.0}
                       for seed in seeds], 1.0)
                for key, cfg, seeds in jobs}


def test_tuned_protocol_chooses_each_learning_rate_on_validation_and_reuses_its_runs():
    from adatt.experiments.census import PROTOCOLS, TUNED_LRS, _tune_learning_rates

    base = ["data.source=census", *PROTOCOLS["tuned"]]
    jobs = [(("A", "ML-MMoE"), [*base, "name=A_ML-MMoE", "model.name=ml_mmoe"], [0, 1, 2, 3]),
            (("A", "MMoE"), [*base, "name=A_MMoE", "model.name=mmoe"], [0])]
    best = {"ml_mmoe": 3e-4, "mmoe": 1e-3}  # each model's best learning rate on validation
    trainer = _FakeTrainer(lambda cfg: 0.9 if cfg.train.optimizer.lr == best[cfg.model["name"]]
                           else 0.8)
    tuning = {}
    final, reused = _tune_learning_rates(jobs, trainer, 2, tuning)
    # one training call: every (configuration, candidate) with the tuning seeds 0, 1
    (candidates,) = trainer.calls
    assert len(candidates) == 2 * len(TUNED_LRS)
    assert {c[1].name for c in candidates} >= {"A_ML-MMoE_lr0.0001", "A_MMoE_lr0.001"}
    assert all(c[2] == [0, 1] for c in candidates)
    assert tuning["A ML-MMoE"]["lr"] == 3e-4 and tuning["A MMoE"]["lr"] == 1e-3
    assert tuning["A ML-MMoE"]["valid_auc_sum"]["lr0.0003"] == pytest.approx(2.7)
    # the runs of the two candidates not chosen, 2 seeds each, are counted in the wall time
    assert tuning["A ML-MMoE"]["unchosen_seconds"] == pytest.approx(40.0)
    # the chosen candidate's tuning runs are its first seeds; the rest are still to train
    assert [r["test"]["income"]["auc"] for r in reused[("A", "ML-MMoE")][0]] == [0.0, 1.0]
    assert [r["test"]["income"]["auc"] for r in reused[("A", "MMoE")][0]] == [0.0]
    by_key = {key: (ov, seeds) for key, ov, seeds in final}
    ov, seeds = by_key[("A", "ML-MMoE")]
    assert seeds == [2, 3] and "train.optimizer.lr=0.0003" in ov
    from adatt.config import load_config

    cfg = load_config(None, ov)
    assert cfg.name == "A_ML-MMoE_lr0.0003" and cfg.data.dense_scaling == "standard"
    assert by_key[("A", "MMoE")][1] == []


def test_cli_tune_seeds_needs_the_tuned_protocol(capsys):
    from adatt.cli import main

    assert main(["experiment", "census-table5", "--tune-seeds", "2", "--quick"]) != 0
    assert "--tune-seeds needs --protocol tuned" in capsys.readouterr().err
    assert main(["experiment", "ablation", "--protocol", "tuned", "--quick"]) != 0
    assert "no --protocol option" in capsys.readouterr().err


@pytest.mark.slow
@needs_census
def test_quick_tuned_protocol_end_to_end(tmp_path):
    summary = run_census_table5(tmp_path, quick=True, data_dir=str(CENSUS_DIR), progress=False,
                                protocol="tuned", tune_seeds=1, context=False)
    assert summary["tuning"]["tune_seeds"] == 1
    assert set(summary["tuning"]["chosen"]) == {f"A {c['label']}"
                                                for c in table5_configs("A", context=False)}
    assert all(e["n"] == 2 for e in summary["rows"])
    text = (tmp_path / "report.md").read_text()
    assert "Learning rate chosen on validation" in text and "z-scored" in text
    # the chosen candidate's seed-0 run is kept; seed 1 was trained with the chosen lr
    for key, v in summary["tuning"]["chosen"].items():
        name = key.replace(" ", "_", 1).replace(" ", "_").replace("=", "")
        assert (tmp_path / "runs" / f"{name}_lr{v['lr']:g}" / "seed_1").is_dir()


def test_cli_groups_are_checked(capsys):
    from adatt.cli import main

    assert main(["experiment", "census-table5", "--groups", "A,C", "--quick"]) == 2
    assert "--groups: unknown group 'C'; known: A, B" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown census group"):
        run_census_table5("unused", groups=("C",))


def test_models_option_reruns_only_those_rows_and_redoes_the_m_s_choice(tmp_path, monkeypatch):
    from adatt.experiments import census

    seen = []

    class Trainer(_FakeTrainer):
        def __init__(self, workers, resume, chunk, quick):
            super().__init__(lambda cfg: 0.9 if cfg.model.get("shared_experts") == 3 else 0.8)
            self.workers = workers

        def run(self, jobs):
            seen.extend(cfg.name for _key, cfg, _seeds in jobs)
            return super().run(jobs)

    monkeypatch.setattr(census, "_Trainer", Trainer)
    summary = run_census_table5(tmp_path, seeds=3, workers=1, progress=False,
                                models=("adatt", "cross_stitch"), context_seeds=2)
    assert seen == ["A_AdaTT_m_s0", "A_AdaTT_m_s3", "A_Cross-stitch",
                    "B_AdaTT_m_s0", "B_AdaTT_m_s3", "B_AdaTT_m_s6", "B_Cross-stitch"]
    assert summary["selected_ms"]["AdaTT A"]["m_s"] == 3
    assert summary["selected_ms"]["AdaTT B"]["m_s"] == 3
    assert {p["vs"] for p in summary["paired"]} == {"Cross-stitch"}
    assert summary["models"] == ["adatt", "cross_stitch"]
    text = (tmp_path / "report.md").read_text()
    assert "Rows rerun here (the others of the table are not part of this call): adatt, " \
        "cross_stitch." in text
    assert "ML-MMoE" not in text.split("## Paired")[0].split("| group |")[1]
    # the docs/results form of the same report: prefixed names, links that follow them
    census.write_report(tmp_path / "docs", summary, prefix="census-table5-x")
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == [
        "census-table5-x-seeds.csv", "census-table5-x.csv", "census-table5-x.md",
        "census-table5-x.png"]
    doc = (tmp_path / "docs" / "census-table5-x.md").read_text()
    assert "[census-table5-x-seeds.csv](census-table5-x-seeds.csv)" in doc
    assert doc.replace("census-table5-x-seeds.csv", "seeds.csv").replace(
        "census-table5-x.png", "table5.png") == text


def test_models_option_is_checked(capsys):
    from adatt.cli import main

    assert main(["experiment", "census-table5", "--models", "adatt,nope", "--quick"]) == 2
    assert "--models: unknown model 'nope'; known: ml_mmoe" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown census-table5 model 'adatt_sp'"):
        run_census_table5("unused", models=("adatt_sp",))
    with pytest.raises(ValueError, match="only context rows"):
        run_census_table5("unused", models=("mmoe",), context=False)


def test_a_call_without_baselines_says_so(tmp_path, monkeypatch):
    from adatt.experiments import census

    class Trainer(_FakeTrainer):
        def __init__(self, workers, resume, chunk, quick):
            super().__init__(lambda cfg: 0.8)
            self.workers = workers

    monkeypatch.setattr(census, "_Trainer", Trainer)
    run_census_table5(tmp_path, seeds=2, workers=1, progress=False, models=("adatt",),
                      groups=("A",))
    text = (tmp_path / "report.md").read_text()
    assert "No baseline rows in this call: nothing to pair AdaTT with." in text
