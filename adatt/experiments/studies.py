"""Tables 7 and 8 of the paper: more native experts per task, more fusion levels.

Notation: T tasks, S seeds, m_t native experts per task, L fusion levels.

The paper (section 4.6) studies AdaTT-sp on its five-task group:

* **Table 7** (:func:`run_experts_study`): ``m_t`` from 1 to 4 (the same for
  every task), two levels of 1-layer experts (256, 128); every task improves as
  ``m_t`` grows (engagement tasks gain little at 2, more at 3 and 4).
* **Table 8** (:func:`run_levels_study`): one expert per task, 2 to 5 levels
  with expert sizes [256, 128], [512, 256, 128], [1024, 512, 256, 128],
  [2048, 1024, 512, 256, 128], towers of 64; every added level helps, still
  at five.

PAPER.md gives no per-task numbers for these tables, only the direction, so
the reports state the paper's finding in words. Here both run on the
simulator's ``group3`` (watch_time, view, finish, dislike, follow; follow is
the auxiliary task), Adam lr 1e-3, batch 1024, one pass, embeddings 16,
towers 64. Reported: the relative difference of the mean test NE (MSE for
watch_time) over S seeds from the **reference configuration**, the smallest
one (``m_t = 1`` for Table 7, 2 levels [256, 128] for Table 8; AdaTT-sp with one
expert per task and [256, 128] is the same model in both), ± the 95%
half-width of the per-seed paired differences. Negative is better.

Full mode: 2,000,000 rows, 3 seeds, 19M training examples per study over all
copies. Expected runtime on 2 CPU cores (estimates from throughput measured on
2 shared cores, not end to end): about 1 hour for the experts study, 3 hours or
more for the levels study (the 5-level model, 16M parameters, trains at about
800 examples/s there and dominates); a GPU (``device="cuda"``) is the
practical choice for the latter. ``quick=True``:
150,000 rows, 2 seeds, experts (32, 16) for Table 7 and the paper's level
sizes divided by 16 for Table 8 ([16, 8] ... [128, 64, 32, 16, 8]), towers
16, embeddings 8, one torch thread: about 1 minute each on 2 cores.

Example:
    >>> [c["label"] for c in levels_configs(quick=True)][:2]
    ['2 levels [16, 8]', '3 levels [32, 16, 8]']
    >>> [c["model"]["experts_per_task"] for c in experts_configs()]
    [1, 2, 3, 4]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from adatt.experiments.common import (
    RunClock,
    command_line,
    markdown_table,
    per_seed,
    run_line,
    seed_rows,
    wins_text,
    write_csv,
    write_seeds_csv,
)
from adatt.experiments.task_groups import (
    QUICK_SIZES,
    SIM_SIZES,
    fmt_pct,
    model_overrides,
    relative_summary,
    run_seeds,
    seed_means,
    selection_override,
    sim_overrides,
)

__all__ = ["write_report", "seed_lines", "run_experts_study", "run_levels_study", "experts_configs",
           "levels_configs", "LEVEL_SIZES", "EXPERT_COUNTS"]

EXPERT_COUNTS = (1, 2, 3, 4)
LEVEL_SIZES = ([256, 128], [512, 256, 128], [1024, 512, 256, 128],
               [2048, 1024, 512, 256, 128])
QUICK_DIVISOR = 16  # quick mode: the paper's level sizes divided by this
QUICK_ROWS_STUDY = 150_000
PRESET = "group3"

PAPER_FINDING = {
    "experts": "every task improves as m_t grows from 1 to 4; at m_t = 2 the engagement "
               "task gains little next to the consumption tasks, at 3 and 4 it gains more.",
    "levels": "every added fusion level improves every task, still at 5 levels.",
}


def experts_configs(quick: bool = False,
                    counts: tuple[int, ...] = EXPERT_COUNTS) -> list[dict[str, Any]]:
    """Table 7's configurations: AdaTT-sp with m_t experts per task, reference first."""
    sizes = QUICK_SIZES if quick else SIM_SIZES
    return [{"label": f"m_t={m}", "x": m,
             "model": {"name": "adatt_sp", "experts_per_task": m, **sizes}} for m in counts]


def levels_configs(quick: bool = False, levels: tuple[int, ...] = (2, 3, 4, 5)
                   ) -> list[dict[str, Any]]:
    """Table 8's configurations: AdaTT-sp, 1 expert per task, L levels, reference first."""
    base = QUICK_SIZES if quick else SIM_SIZES
    out = []
    for sizes in LEVEL_SIZES:
        if len(sizes) not in levels:
            continue
        s = [max(v // QUICK_DIVISOR, 1) for v in sizes] if quick else list(sizes)
        out.append({"label": f"{len(s)} levels {s}", "x": len(s),
                    "model": {"name": "adatt_sp", "experts_per_task": 1, **base,
                              "expert_sizes": s}})
    return out


def run_experts_study(out_dir: str | Path = "results/experts-study", quick: bool = False,
                      seeds: int = 3, progress: bool = True, *, rows: int | None = None,
                      counts: tuple[int, ...] = EXPERT_COUNTS, device: str = "cpu",
                      threads: int | None = None, chunk: int | None = None,
                      resume: bool = False) -> dict[str, Any]:
    """Table 7: AdaTT-sp with 1..4 native experts per task; writes report.md, results.csv,
    seeds.csv, PNG.

    Args:
        out_dir: where the report, table, plot and runs (``runs/``) go.
        quick: 2 seeds, 150,000 rows, narrow experts.
        seeds: S seeds per configuration (0..S-1).
        progress: progress bars.
        rows: simulator rows (default 2,000,000; quick 150,000).
        counts: the m_t values; the first is the reference.
        device: ``cpu`` or ``cuda``.
        threads: torch threads (default: all cores; quick mode 1).
        chunk: seeds trained together at most (memory).
        resume: keep the seed runs already finished in ``out_dir/runs`` with the same
            configuration and train only the missing ones.

    Returns:
        The summary: per configuration, per task the difference from the reference.
    """
    command = command_line("experts-study", run_experts_study, dict(locals()))
    return _run_study("experts", Path(out_dir), experts_configs(quick, counts), quick, seeds,
                      progress, rows, device, threads, chunk, resume, command)


def run_levels_study(out_dir: str | Path = "results/levels-study", quick: bool = False,
                     seeds: int = 3, progress: bool = True, *, rows: int | None = None,
                     levels: tuple[int, ...] = (2, 3, 4, 5), device: str = "cpu",
                     threads: int | None = None, chunk: int | None = None,
                      resume: bool = False) -> dict[str, Any]:
    """Table 8: AdaTT-sp with 2..5 fusion levels; writes report.md, results.csv, seeds.csv, PNG.

    Args: as :func:`run_experts_study`, with ``levels`` (level counts; the first is
    the reference) instead of ``counts``.
    """
    command = command_line("levels-study", run_levels_study, dict(locals()))
    return _run_study("levels", Path(out_dir), levels_configs(quick, levels), quick, seeds,
                      progress, rows, device, threads, chunk, resume, command)


def _run_study(kind: str, out: Path, configs: list[dict[str, Any]], quick: bool, seeds: int,
               progress: bool, rows: int | None, device: str, threads: int | None,
               chunk: int | None, resume: bool, command: str) -> dict[str, Any]:
    from adatt.config import load_config
    from adatt.data.config import load_splits

    clock = RunClock()
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        seeds = min(seeds, 2)
    rows = rows or (QUICK_ROWS_STUDY if quick else 2_000_000)
    seed_list = list(range(seeds))
    base = sim_overrides(PRESET, rows, out / "runs", progress, quick, device=device,
                         threads=threads)
    splits = load_splits(load_config(None, base).data)
    sel, note = selection_override(splits)
    base.append(sel)
    results, seconds, params = {}, {}, {}
    engines: dict[str, Any] | None = None if quick else {}  # quick: the ensemble, no probe
    for c in configs:
        name = f"{kind}_{c['label'].split(' [')[0].replace(' ', '_').replace('=', '')}"
        cfg = load_config(None, [*base, f"name={name}", *model_overrides(c["model"])])
        ts = time.perf_counter()
        results[c["label"]] = run_seeds(cfg, seed_list, splits, chunk, resume, engines)
        seconds[c["label"]] = time.perf_counter() - ts
        params[c["label"]] = results[c["label"]][0]["num_parameters"]
    ref = configs[0]["label"]
    rows_out = []
    for c in configs:
        rel = relative_summary(results[c["label"]], results[ref])
        rows_out.append({"label": c["label"], "x": c["x"], "model": c["model"],
                         "seconds": seconds[c["label"]], "num_parameters": params[c["label"]],
                         "metric": seed_means(results[c["label"]]),
                         "diff": {t: {"diff": v["diff"], "ci": v["ci"]} for t, v in rel.items()},
                         "seeds": per_seed(results[c["label"]], seed_list)})
    summary = {"study": kind, "quick": quick, "seeds": seeds, "rows": rows, "preset": PRESET,
               "reference": ref, "tasks": results[ref][0]["tasks"], "configs": rows_out,
               "selection_note": note, "engines": engines or {}, **clock.facts(),
               "command": command}
    write_report(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write the report and its CSVs and plots into ``out`` from ``summary`` alone (what
    the run function returns and stores as summary.json); with ``prefix`` (e.g.
    ``experts-study`` for docs/results) the files are ``<prefix>.md``, ``<prefix>.csv``,
    ``<prefix>-seeds.csv`` and ``<prefix>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind, tasks = summary["study"], summary["tasks"]
    md_name, csv_name, seeds_name, png = (
        ("report.md", "results.csv", "seeds.csv", f"{kind}_study.png") if prefix is None
        else (f"{prefix}.md", f"{prefix}.csv", f"{prefix}-seeds.csv", f"{prefix}.png"))
    header = ["configuration", "params"] + [
        f"{t} {'MSE' if k == 'regression' else 'NE'}" + (" (aux.)" if t == "follow" else "")
        for t, k in tasks.items()] + ["seconds"]
    md, csv_rows = [], []
    for c in summary["configs"]:
        cells = ["reference" if c["label"] == summary["reference"]
                 else fmt_pct(c["diff"][t]["diff"], c["diff"][t]["ci"]) for t in tasks]
        md.append([c["label"], f"{c['num_parameters']:,}", *cells, f"{c['seconds']:.0f}"])
        for t in tasks:
            csv_rows.append([c["label"], c["x"], t, c["metric"][t], c["diff"][t]["diff"],
                             c["diff"][t]["ci"], c["num_parameters"]])
    write_csv(out / csv_name, ["configuration", "x", "task", "test_metric", "diff_pct",
                                    "ci95", "num_parameters"], csv_rows)
    write_seeds_csv(out / seeds_name, ["configuration"], [
        row for c in summary["configs"] for row in seed_rows([c["label"]], c["seeds"])])
    _plot(out / png, summary)
    ref_metric = next(c["metric"] for c in summary["configs"]
                      if c["label"] == summary["reference"])
    ref_line = ", ".join(f"{t} {v:.5f}" for t, v in ref_metric.items())
    note = f"\n\nNote, {summary['selection_note']}." if summary.get("selection_note") else ""
    title = ("Table 7: native experts per task (AdaTT-sp)" if kind == "experts"
             else "Table 8: fusion levels (AdaTT-sp, one expert per task)")
    mode = ("QUICK MODE (small data, narrow models, 2 seeds): these numbers show the "
            "pipeline, not the paper's effect.\n\n" if summary["quick"] else "")
    text = f"""# {title}

{mode}Simulator preset `{summary['preset']}` ({summary['rows']:,} rows, 80/10/10), Adam lr 1e-3,
one pass, {summary['seeds']} seeds per configuration; wall time {summary['wall_time_s']:.0f} s.

Each cell: relative difference of the mean test NE (MSE for watch_time) over
seeds from the reference configuration **{summary['reference']}** (test metrics
of the reference: {ref_line}), ± the 95% half-width of the per-seed paired
differences. Negative is better. follow is the auxiliary task with extremely
sparse positives (the paper leaves it out of its tables). The checkpoint with
the best mean validation NE (and MSE / variance) is scored (after one pass,
nearly always the last).{note}

{markdown_table(header, md)}

Paper: {PAPER_FINDING[kind]} (PAPER.md gives the direction, not the numbers.)

{seed_lines(summary)}

Plot: [{png}]({png}); every seed's validation and test metrics:
[{seeds_name}]({seeds_name}).

{run_line(summary)}
"""
    (out / md_name).write_text(text)


def seed_lines(summary: dict[str, Any]) -> str:
    """Seeds in which each configuration beats the reference, per task; the interval width."""
    from scipy import stats

    tasks, S = summary["tasks"], summary["seeds"]
    ref = next(c for c in summary["configs"] if c["label"] == summary["reference"])

    def values(c: dict[str, Any], task: str) -> list[float]:
        metric = "mse" if tasks[task] == "regression" else "ne"
        return [e["test"][task].get(metric, float("nan")) for e in c["seeds"]]

    counts = "; ".join(
        f"{c['label']}: " + ", ".join(
            wins_text(values(c, t), {"": values(ref, t)}).strip() for t in tasks)
        for c in summary["configs"] if c is not ref)
    text = (f"Seeds (of {S}) in which the configuration beats {summary['reference']} on the "
            f"task (lower test NE / MSE): {counts} ({', '.join(tasks)}).")
    if S >= 2:
        t = stats.t.ppf(0.975, S - 1)
        text += (f" With {S} seeds a 95% interval is ± {t:.1f} standard errors of the mean "
                 "paired difference.")
    return text


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [c["x"] for c in summary["configs"]]
    for t in summary["tasks"]:
        ys = [c["diff"][t]["diff"] for c in summary["configs"]]
        ax.plot(xs, ys, marker="o", ls="--" if t == "follow" else "-", label=t)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xlabel("native experts per task" if summary["study"] == "experts"
                  else "fusion levels")
    ax.set_ylabel(f"NE / MSE diff vs {summary['reference']} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
