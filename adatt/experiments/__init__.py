"""The paper's studies as functions returning results (and writing reports).

``adatt experiment NAME`` runs one; each writes ``report.md``, a CSV and plots
into its output directory and has a ``--quick`` mode (few seeds, small data).

>>> sorted(EXPERIMENTS)
['ablation', 'census-table5', 'expert-weights', 'experts-study', 'levels-study',
 'partial-labels', 'task-groups']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["EXPERIMENTS", "get_experiment"]

EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "census-table5": ("adatt.experiments.census", "run_census_table5",
                      "Table 5: ML-MMoE, PLE, AdaTT on Census-Income, many seeds"),
    "ablation": ("adatt.experiments.ablation", "run_ablation",
                 "Table 6: NativeExpertLF on vs off (census and simulator group 3)"),
    "expert-weights": ("adatt.experiments.expert_weights", "run_expert_weights",
                       "Figure 3: heatmaps of the learned combined expert weights"),
    "experts-study": ("adatt.experiments.studies", "run_experts_study",
                      "Table 7: native experts per task, 1 to 4"),
    "levels-study": ("adatt.experiments.studies", "run_levels_study",
                     "Table 8: fusion levels, 2 to 5"),
    "partial-labels": ("adatt.experiments.partial_labels", "run_partial_labels",
                       "partial labels: masking vs imputed zeros (simulator preset partial)"),
    "task-groups": ("adatt.experiments.task_groups", "run_task_groups",
                    "Tables 1-4: every model on the simulator's three task groups"),
}


def get_experiment(name: str) -> Callable[..., dict[str, Any]]:
    """The function that runs experiment ``name``."""
    try:
        module, fn, _ = EXPERIMENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}"
        ) from None
    return getattr(importlib.import_module(module), fn)
