"""The committed reports in docs/results: every local file a report links exists, and
the ablation report's prefixed names are the ones its report code writes, and each report's
headline numbers are the means of the per-seed CSV committed beside it."""

from __future__ import annotations

import csv
import re
import statistics
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


# ------------------------------------------------------------ numbers from the committed seeds
# Each report's headline numbers recomputed from its per-seed CSV (test split, mean over
# seeds) and looked up in the report: the CSV is the data behind the report, and the report
# was written from it.


def _test_means(csv_name: str, keys: list[str]) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    with open(RESULTS / csv_name, newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] == "test":
                key = (*(r[k] for k in keys), r["task"], r["metric"])
                groups.setdefault(key, []).append(float(r["value"]))
    return {k: statistics.mean(v) for k, v in groups.items()}


def _report(name: str, keys: list[str]) -> tuple[dict[tuple, float], str]:
    """The test means of report ``name``'s per-seed CSV, and the report's text."""
    return _test_means(f"{name}-seeds.csv", keys), (RESULTS / f"{name}.md").read_text()


def _main_metric(means: dict[tuple, float], head: tuple, task: str) -> str:
    return "mse" if (*head, task, "mse") in means else "ne"


def _row(text: str, start: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"{len(rows)} rows start with {start!r}"
    return rows[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _cell(text: str, header_start: str, row_start: str, column: str) -> str:
    """The cell of ``column`` in the one row starting with ``row_start`` of the table
    whose header row starts with ``header_start``."""
    return _cells(_row(text, row_start))[_cells(_row(text, header_start)).index(column)]


def _section(text: str, heading: str | tuple[str, ...]) -> str:
    """The text under the first heading line that starts with ``heading`` (or one of them)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[at:end])


def _reports(suffix: str, prefix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in RESULTS.glob(f"{prefix}*{suffix}"))


@pytest.mark.parametrize("name", _reports("-seeds.csv", "ablation-"))
def test_ablation_report_numbers_are_the_seed_means(name: str) -> None:
    means, text = _report(name, ["setting", "native_fusion"])
    checked = 0
    for setting, fusion, task, _ in {k for k in means if k[1] == "on"}:
        metric = _main_metric(means, (setting, fusion), task)
        for side in ("on", "off"):
            cell = _cell(text, "| setting |", f"| {setting} | {task} | ", side)
            assert cell == f"{means[(setting, side, task, metric)]:.5f}", (setting, task, side)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", _reports("-seeds.csv", "census-table5"))
def test_census_report_aucs_are_the_seed_means(name: str) -> None:
    means, text = _report(name, ["group", "model"])
    checked = 0
    for (group, model, task, metric), value in means.items():
        if metric == "auc":
            cell = _cell(text, "| group | model |", f"| {group} | {model} | ", f"{task} AUC")
            assert cell.startswith(f"{value:.4f} ± "), (group, model, task, cell)
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("name", _reports("-seeds.csv", "task-groups-"))
def test_task_group_report_differences_follow_from_the_seed_means(name: str) -> None:
    from adatt.experiments.task_groups import MODEL_LABELS

    means, text = _report(name, ["group", "model"])
    checked = 0
    for group, model, task, _ in {k for k in means if k[1] == "shared_bottom"}:
        metric = _main_metric(means, (group, model), task)
        sb = means[(group, "shared_bottom", task, metric)]
        section = _section(text, (f"### {group}: {task},", f"### {group}: {task} ("))
        assert f"Shared-bottom: {sb:.5f})" in section.splitlines()[0]
        for (g, m, t, met), value in means.items():
            if (g, t, met) == (group, task, metric) and m != "shared_bottom":
                cell = _cell(section, "| model |", f"| {MODEL_LABELS[m]} | ", "test")
                assert cell.startswith(f"{100 * (value / sb - 1):+.3f}% ± "), (group, task, m)
                checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", _reports("-seeds.csv", "experts-study")
                         + _reports("-seeds.csv", "levels-study"))
def test_study_report_differences_follow_from_the_seed_means(name: str) -> None:
    means, text = _report(name, ["configuration"])
    configs = list(dict.fromkeys(k[0] for k in means))
    reference = next(c for c in configs if "| reference |" in _row(text, f"| {c} | "))
    checked = 0
    for config in configs:
        if config == reference:
            continue
        for ref, task, _ in {k for k in means if k[0] == reference}:
            metric = _main_metric(means, (ref,), task)
            diff = 100 * (means[(config, task, metric)] / means[(ref, task, metric)] - 1)
            column = next(c for c in _cells(_row(text, "| configuration |"))
                          if c.startswith(f"{task} "))
            cell = _cell(text, "| configuration |", f"| {config} | ", column)
            assert cell.startswith(f"{diff:+.3f}% ± "), (config, task, cell)
            checked += 1
    assert checked >= 5


def test_expert_weights_report_is_the_seed_means() -> None:
    means, text = _report("expert-weights", [])
    line = _row(text, "Test NE/MSE of the model")
    for task, metric in means:
        if metric == _main_metric(means, (), task):
            assert f"{task} {means[(task, metric)]:.4f}" in line, task
    cells: dict[tuple, list[float]] = {}
    with open(RESULTS / "expert-weights-weights-seeds.csv", newline="") as f:
        for r in csv.DictReader(f):
            cells.setdefault((r["level"], r["task"], r["expert"]), []).append(float(r["weight"]))
    for (level, task, expert), ws in cells.items():
        section = _section(text, f"### Level {level}")
        cell = _cell(section, "| task (family) |", f"| {task} (", expert)
        assert float(cell) == pytest.approx(statistics.mean(ws), abs=5e-4), (level, task, expert)


def test_partial_labels_report_is_the_seed_means() -> None:
    means, text = _report("partial-labels", ["model", "labels"])
    labels = {"adatt_sp": "AdaTT-sp, 1 expert/task", "mmoe": "MMoE"}
    checked = 0
    for model, _, task, metric in {k for k in means if k[1] == "masked"}:
        if metric not in ("ne", "auc"):
            continue
        for side in ("masked", "imputed"):
            start = f"| {labels[model]} | {task} | {metric.upper()} | "
            cell = _cell(text, "| model | task |", start, side)
            assert cell == f"{means[(model, side, task, metric)]:.4f}", (model, task, metric, side)
        checked += 1
    assert checked >= 6
