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
    assert main(["experiment", "ablation", "--resume", "--quick"]) != 0
    assert "no --resume option" in capsys.readouterr().err
