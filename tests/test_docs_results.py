"""The committed reports in docs/results: every local file a report links exists, and
the ablation report's prefixed names are the ones its report code writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
LINK = re.compile(r"\]\(([^)#:]+)\)")  # markdown links to local files (no scheme, no anchor)


@pytest.mark.parametrize("report", sorted(p.name for p in RESULTS.glob("*.md")))
def test_every_linked_file_of_a_report_exists(report: str) -> None:
    text = (RESULTS / report).read_text()
    missing = [t for t in LINK.findall(text) if not (RESULTS / t).exists()]
    assert not missing, f"{report} links missing files: {missing}"


def test_ablation_report_names_follow_the_prefix(tmp_path: Path) -> None:
    from adatt.experiments.ablation import write_report

    seeds = {"on": [{"seed": 0, "valid": {"a": {"ne": 0.9}}, "test": {"a": {"ne": 0.8}}}],
             "off": [{"seed": 0, "valid": {"a": {"ne": 0.91}}, "test": {"a": {"ne": 0.81}}}]}
    task = {"kind": "binary", "metric": "ne", "on": 0.8, "off": 0.81, "diff": 1.25, "ci": 0.0,
            "off_worse": 1, "auc_on": 0.7, "auc_off": 0.69}
    summary = {"quick": True, "seeds": 1, "rows": 1000, "halves": {"census": True, "sim": False},
               "wall_time_s": 1.0, "cpu_time_s": 1.0, "cpu_cores": 2, "torch_threads": 2,
               "command": "`adatt experiment ablation --quick --no-sim`",
               "settings": {"census m_s=3": {"tasks": {"a": task}, "seeds": seeds,
                                            "model": {"name": "adatt"}, "seconds": 1.0,
                                            "num_parameters": {"on": 10, "off": 9}}}}
    write_report(tmp_path, summary, prefix="ablation-census")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ablation-census-seeds.csv", "ablation-census.csv", "ablation-census.md",
                     "ablation-census.png"]
    text = (tmp_path / "ablation-census.md").read_text()
    assert "[ablation-census-seeds.csv](ablation-census-seeds.csv)" in text
    assert "[ablation-census.png](ablation-census.png)" in text


def _seed(v: float) -> dict:
    return {"seed": 0, "valid": {"a": {"ne": v}}, "test": {"a": {"ne": v}}}


def test_study_report_names_follow_the_prefix(tmp_path: Path) -> None:
    from adatt.experiments.studies import write_report

    configs = [{"label": f"m_t={m}", "x": m, "model": {"name": "adatt_sp"}, "seconds": 1.0,
                "num_parameters": 10 * m, "metric": {"a": 0.8 + m / 100},
                "diff": {"a": {"diff": 0.0 if m == 1 else 1.0, "ci": 0.1}},
                "seeds": [_seed(0.8 + m / 100)]} for m in (1, 2)]
    summary = {"study": "experts", "quick": True, "seeds": 1, "rows": 1000, "preset": "group3",
               "reference": "m_t=1", "tasks": {"a": "binary"}, "configs": configs,
               "selection_note": None, "wall_time_s": 1.0, "cpu_time_s": 1.0, "cpu_cores": 2,
               "torch_threads": 2, "command": "`adatt experiment experts-study --quick`"}
    write_report(tmp_path, summary, prefix="experts-study")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "experts-study-seeds.csv", "experts-study.csv", "experts-study.md", "experts-study.png"]
    text = (tmp_path / "experts-study.md").read_text()
    assert "[experts-study-seeds.csv](experts-study-seeds.csv)" in text
    assert "[experts-study.png](experts-study.png)" in text


def test_expert_weights_report_names_follow_the_prefix(tmp_path: Path) -> None:
    from adatt.experiments.expert_weights import family_sharing, write_report

    tasks, families = ["view", "like"], ["consumption", "engagement"]
    w = [[1.7, 0.3], [0.4, 1.6]]  # [T, E]: one expert per task
    sharing = family_sharing(__import__("numpy").asarray(w), families, [0, 1])
    summary = {"quick": True, "seeds": 1, "rows": 1000, "preset": "all", "tasks": tasks,
               "families": families, "model": {"expert_sizes": [8], "tower_sizes": [4]},
               "weights": [w, w], "sharing": {"mean": [sharing, sharing],
                                              "per_seed": [[sharing, sharing]]},
               "test": {"view": 0.9, "like": 0.8}, "train_s": 1.0, "selection_note": None,
               "seed_list": [0], "seed_metrics": [{"seed": 0, "valid": {"view": {"ne": 0.9}},
                                                   "test": {"view": {"ne": 0.9}}}],
               "weights_per_seed": [[w, w]], "wall_time_s": 1.0, "cpu_time_s": 1.0,
               "cpu_cores": 2, "torch_threads": 2,
               "command": "`adatt experiment expert-weights --quick`"}
    write_report(tmp_path, summary, prefix="expert-weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "expert-weights-seeds.csv", "expert-weights-weights-seeds.csv", "expert-weights.csv",
        "expert-weights.md", "expert-weights.png"]
    text = (tmp_path / "expert-weights.md").read_text()
    for name in ("expert-weights-seeds.csv", "expert-weights-weights-seeds.csv",
                 "expert-weights.png"):
        assert f"[{name}]({name})" in text
