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
