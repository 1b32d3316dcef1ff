"""Helpers shared by the experiments: model presets, runs, relative tables.

Notation: T tasks.

Example:
    >>> sorted(preset_models(num_experts=6, num_tasks=3))[:3]
    ['adatt', 'adatt_sp', 'cross_stitch']
    >>> preset_models(6, 3)["adatt_sp"]["experts_per_task"]
    2
"""

from __future__ import annotations

from typing import Any

__all__ = ["preset_models", "relative_table", "markdown_table", "mean_ci", "paired_comparison",
           "write_csv"]


def preset_models(num_experts: int, num_tasks: int, shared: int | None = None
                  ) -> dict[str, dict[str, Any]]:
    """Model options giving every model ``num_experts`` experts per level.

    AdaTT-sp gets ``num_experts // T`` experts per task; AdaTT and PLE get
    ``shared`` shared experts and ``(num_experts - shared) // T`` per task. The
    default ``shared`` gives each task one native expert fewer than AdaTT-sp
    (at least one) and the rest to the shared unit: 6 experts, 3 tasks -> 1 per
    task + 3 shared, as in the paper's census group A with ``m_s = 3``.
    """
    per_task = max(num_experts // num_tasks, 1)
    if shared is None:
        shared = max(num_experts - num_tasks * max((num_experts // num_tasks) - 1, 1), 0)
    ms_task = max((num_experts - shared) // num_tasks, 1)
    return {
        "shared_bottom": {},
        "mmoe": {"num_experts": num_experts},
        "ml_mmoe": {"num_experts": num_experts},
        "ple": {"experts_per_task": ms_task, "shared_experts": shared},
        "adatt_sp": {"experts_per_task": per_task},
        "adatt": {"experts_per_task": ms_task, "shared_experts": shared},
        "cross_stitch": {},
    }


def relative_table(results: dict[str, dict], baseline: str = "shared_bottom",
                   split: str = "test") -> dict[str, dict[str, float]]:
    """Per model per task: relative NE (binary) or MSE (regression) difference, percent."""
    from adatt.train.metrics import relative_to_baseline

    base = results[baseline][split]
    return {name: relative_to_baseline(r[split], base) for name, r in results.items()}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t confidence interval.

    >>> m, h = mean_ci([1.0, 2.0, 3.0])
    >>> round(m, 3), round(h, 3)
    (2.0, 2.484)
    """
    import numpy as np
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def paired_comparison(a, b, level: float = 0.95) -> dict[str, float]:
    """Paired difference ``a - b`` (same seeds): mean, CI half-width, t-test p-value, wins.

    >>> r = paired_comparison([0.9, 0.8, 0.85], [0.8, 0.7, 0.8])
    >>> round(r["diff"], 3), r["wins"]
    (0.083, 3)
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    d = a - b
    mean, half = mean_ci(d, level)
    p = float(stats.ttest_rel(a, b).pvalue) if d.size > 1 and d.std() > 0 else float("nan")
    return {"diff": mean, "ci": half, "p": p, "wins": int((d > 0).sum()), "n": int(d.size)}


def write_csv(path, header: list[str], rows: list[list[Any]]) -> None:
    """Write rows as CSV (atomically)."""
    import csv
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)
