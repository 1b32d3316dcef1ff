"""The partial-labels study: both ways trained on the same data and seeds, the report from
its summary alone, and the command-line wiring."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from adatt.cli import main
from adatt.experiments import EXPERIMENTS
from adatt.experiments.partial_labels import (
    ARMS,
    impute_zeros,
    run_partial_labels,
    study_models,
    write_report,
)


def test_impute_and_models():
    y = torch.tensor([[float("nan"), 1.0], [0.0, float("nan")]])
    assert impute_zeros(y).tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert set(study_models(True, 4)) == {"adatt_sp", "mmoe"}
    assert study_models(False, 4)["mmoe"]["num_experts"] == 4
    with pytest.raises(ValueError, match="unknown model 'ple'"):
        study_models(True, 4, ("ple",))
    assert "partial-labels" in EXPERIMENTS


def test_quick_study_and_report_from_summary(tmp_path):
    s = run_partial_labels(tmp_path, quick=True, seeds=2, progress=False, rows=10_000,
                           models=("mmoe",))
    assert s["conditions"] == {"watch_time": "view", "finish": "view"}
    assert s["labelled"]["test"]["view"] == s["split_rows"]["test"]
    assert 0 < s["labelled"]["test"]["finish"] < s["split_rows"]["test"]
    metrics = {(r["task"], r["metric"]) for r in s["table"]}
    assert {("finish", "ctcvr_ne"), ("watch_time", "mse"), ("like", "auc")} <= metrics
    for r in s["table"]:
        assert all(math.isfinite(r[k]) for k in ("masked", "imputed", "diff")), r
    # the same seeds, and the masked way scored on the labelled rows of the same test split
    runs = s["runs"]["mmoe"]
    assert [e["seed"] for e in runs["masked"]] == [e["seed"] for e in runs["imputed"]] == [0, 1]
    for arm in ARMS:
        for e in runs[arm]:
            assert e["test"]["finish"]["count"] == s["labelled"]["test"]["finish"]
    # the imputed way's validation counts every row (its labels were filled in)
    assert runs["imputed"][0]["valid"]["finish"]["count"] == s["split_rows"]["valid"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    write_report(tmp_path / "again", summary)
    for f in ("report.md", "results.csv", "seeds.csv"):
        assert (tmp_path / "again" / f).read_text() == (tmp_path / f).read_text()
    write_report(tmp_path / "docs", summary, prefix="partial-labels")
    text = (tmp_path / "docs" / "partial-labels.md").read_text()
    assert "[partial-labels-seeds.csv](partial-labels-seeds.csv)" in text
    assert "QUICK MODE" in text and "Command: `adatt experiment partial-labels --quick" in text
    with open(tmp_path / "seeds.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["labels"] for r in rows} == set(ARMS) and {r["model"] for r in rows} == {"mmoe"}


def test_cli_rejects_options_it_does_not_take(tmp_path, capsys):
    assert main(["experiment", "partial-labels", "--groups", "group1", "--out-dir",
                 str(tmp_path)]) == 2
    assert "has no --groups option" in capsys.readouterr().err
