"""Partial labels: masking unlabelled entries against training on imputed zeros.

Notation: T tasks, S seeds.

Real multi-task logs label most tasks on part of the rows only. The simulator's
``partial`` preset has that shape: ``finish`` and ``watch_time`` are observed
only where ``view = 1`` (their ``condition``), ``like`` on a random 30 % of the
rows (``missing: mask``); unobserved labels are NaN. This study trains the same
models with the same seeds two ways:

* **masked**: the library's rule, every unlabelled entry counts for nothing
  (each task's loss is the mean over its labelled rows);
* **imputed**: what a user without masks does, every missing label set to 0 in
  the training and validation splits (and checkpoints selected on those).

Both are scored on the same test split, on each task's *labelled* rows (the
rows where the label exists): test NE and AUC for the binary tasks, MSE for
watch_time, and for finish (conditional on view) the chained ``P(view) *
P(finish | view)`` metrics against ``view and finish`` on every row
(``ctcvr_ne``, ``ctcvr_auc``). Reported: per model, task and metric the mean
over seeds of each way, and the relative difference masked vs imputed (NE and
MSE, percent; AUC as an absolute difference) with the 95% half-width of the
per-seed paired differences. For finish an imputed zero where view = 0 is the
true label (finish needs a view), so imputation trains ``P(view and finish)``
and scores it as ``P(finish | view)``; for like the imputed zeros are wrong on
the 70 % unobserved rows that would have liked at the task's rate.

Full mode: 200,000 rows (80/10/10), AdaTT-sp and MMoE with the Tables 1-4
sizes (experts [256, 128], towers 64, embeddings 16), Adam lr 1e-3, batch 1024,
one pass, 5 seeds (trained together as one vectorised ensemble); the report
records its wall time (docs/results/partial-labels.md). ``quick=True``: 30,000
rows, 2 seeds, the quick sizes (batch 128), one torch thread: under a minute
on 2 cores.

Example:
    >>> impute_zeros(torch.tensor([[1.0, float("nan")]])).tolist()
    [[1.0, 0.0]]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from adatt.experiments.common import (
    RunClock,
    command_line,
    markdown_table,
    mean_ci,
    per_seed,
    pinned,
    run_line,
    seed_rows,
    write_csv,
    write_seeds_csv,
)
from adatt.experiments.task_groups import (
    MODEL_LABELS,
    QUICK_SIZES,
    SIM_SIZES,
    model_overrides,
    run_seeds,
    sim_overrides,
)

__all__ = ["run_partial_labels", "write_report", "impute_zeros", "study_models", "ARMS"]

PRESET = "partial"
ARMS = ("masked", "imputed")
FULL_ROWS, QUICK_ROWS = 200_000, 30_000
MODELS = ("adatt_sp", "mmoe")


def impute_zeros(labels: torch.Tensor) -> torch.Tensor:
    """``labels [N, T]`` with every NaN (unlabelled) entry set to 0."""
    return torch.nan_to_num(labels, nan=0.0)  # [N,T]


def study_models(quick: bool, num_tasks: int,
                 models: tuple[str, ...] = MODELS) -> dict[str, dict[str, Any]]:
    """Model options: AdaTT-sp with one expert per task, MMoE with T experts (the same
    expert count per level), the Tables 1-4 sizes (quick: the quick sizes)."""
    sizes = dict(QUICK_SIZES if quick else SIM_SIZES)
    lvl = sizes.pop("expert_sizes")
    every = {
        "adatt_sp": pinned({"name": "adatt_sp", "expert_sizes": lvl, "experts_per_task": 1,
                            **sizes}),
        "mmoe": {"name": "mmoe", "expert_sizes": [lvl], "num_experts": num_tasks, **sizes},
        "shared_bottom": {"name": "shared_bottom", "expert_sizes": lvl, **sizes},
    }
    unknown = [m for m in models if m not in every]
    if unknown:
        raise ValueError(f"partial-labels: unknown model {unknown[0]!r}; known: "
                         f"{', '.join(every)}")
    return {m: every[m] for m in models}


def _imputed(splits):
    """The splits with training and validation labels imputed (NaN -> 0); test unchanged."""
    from adatt.data.batch import TensorDataset
    from adatt.data.splits import Splits

    def fill(d: TensorDataset) -> TensorDataset:
        return TensorDataset(d.dense, d.cat, impute_zeros(d.labels), d.weight)

    return Splits(splits.name, splits.schema, fill(splits.train), fill(splits.valid),
                  splits.test, splits.info)


#: (task, metric) pairs reported, in table order; metric keys of results.json
def _reported(kinds: dict[str, str], conditions: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for task, kind in kinds.items():
        out += [(task, "mse")] if kind == "regression" else [(task, "ne"), (task, "auc")]
        if task in conditions and kind == "binary":
            out += [(task, "ctcvr_ne"), (task, "ctcvr_auc")]
    return out


def run_partial_labels(out_dir: str | Path = "results/partial-labels", quick: bool = False,
                       seeds: int = 5, progress: bool = True, *, rows: int | None = None,
                       models: tuple[str, ...] = MODELS, device: str = "cpu",
                       threads: int | None = None, chunk: int | None = None,
                       resume: bool = False) -> dict[str, Any]:
    """Masking against imputed zeros on the simulator's ``partial`` preset; writes
    report.md, results.csv and seeds.csv.

    Args:
        out_dir: where the report, tables and runs (``runs/``) go.
        quick: 2 seeds, 30,000 rows, narrow models, one torch thread.
        seeds: S seeds per model and way (0..S-1), the same for both ways.
        progress: progress bars.
        rows: simulator rows (default 200,000; quick 30,000).
        models: model names (``adatt_sp``, ``mmoe``, ``shared_bottom``).
        device: ``cpu`` or ``cuda``.
        threads: torch threads (default: all cores; quick mode 1).
        chunk: seeds trained together at most (memory).
        resume: keep the seed runs already finished in ``out_dir/runs`` with the same
            configuration and train only the missing ones.

    Returns:
        The summary (also saved as summary.json) from which the report is written.
    """
    from adatt.config import load_config
    from adatt.data.config import load_splits

    command = command_line("partial-labels", run_partial_labels, dict(locals()))
    clock = RunClock()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        seeds = min(seeds, 2)
    rows = rows or (QUICK_ROWS if quick else FULL_ROWS)
    seed_list = list(range(seeds))
    base = sim_overrides(PRESET, rows, out / "runs", progress, quick, device=device,
                         threads=threads)
    base_cfg = load_config(None, base)
    masked = load_splits(base_cfg.data)
    schema = masked.schema
    data = {"masked": masked, "imputed": _imputed(masked)}
    kinds = {t.name: t.kind for t in schema.tasks}
    conditions = {t.name: t.condition for t in schema.tasks if t.condition}
    missing = {t.name: t.missing for t in schema.tasks}
    reported = _reported(kinds, conditions)
    specs = study_models(quick, schema.num_tasks, tuple(models))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    labelled: dict[str, dict[str, int]] = {}
    for name, spec in specs.items():
        runs[name], seconds[name] = {}, {}
        for arm in ARMS:
            cfg = load_config(None, [*base, f"name={name}_{arm}", *model_overrides(spec)])
            t0 = clock.facts()["wall_time_s"]
            results = run_seeds(cfg, seed_list, data[arm], chunk, resume)
            seconds[name][arm] = clock.facts()["wall_time_s"] - t0
            runs[name][arm] = results
            if arm == "masked":
                labelled = results[0].get("labelled", {})
    table = []
    for name in specs:
        for task, metric in reported:
            per = {arm: [r["test"][task][metric] for r in runs[name][arm]] for arm in ARMS}
            row: dict[str, Any] = {"model": name, "task": task, "metric": metric}
            for arm in ARMS:
                row[arm], row[f"{arm}_ci"] = mean_ci(per[arm])
            if metric.endswith("auc"):  # higher is better: absolute difference
                d = [a - b for a, b in zip(per["masked"], per["imputed"], strict=True)]
                row["better"] = sum(x > 0 for x in d)
            else:  # NE, MSE: lower is better, relative difference in percent
                d = [100.0 * (a - b) / b for a, b in zip(per["masked"], per["imputed"],
                                                        strict=True)]
                row["better"] = sum(x < 0 for x in d)
            row["diff"], row["diff_ci"] = mean_ci(d)
            table.append(row)
    summary = {
        "study": "partial-labels", "quick": quick, "seeds": seeds, "rows": rows,
        "batch_size": base_cfg.train.batch_size,
        "preset": PRESET, "models": {m: MODEL_LABELS.get(m, m) for m in specs},
        "model_options": specs, "tasks": kinds, "conditions": conditions, "missing": missing,
        "labelled": labelled, "split_rows": {s: len(getattr(masked, s)) for s in
                                             ("train", "valid", "test")},
        "table": table, "seconds": seconds,
        "runs": {m: {arm: per_seed(runs[m][arm], seed_list) for arm in ARMS} for m in specs},
        **clock.facts(), "command": command,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(out, summary)
    return summary


def _fmt(v: float, metric: str) -> str:
    if v != v:
        return "n/a"
    return f"{v:.4f}" if metric.endswith(("ne", "auc")) else f"{v:.3f}"


def _diff(row: dict[str, Any]) -> str:
    d, ci = row["diff"], row["diff_ci"]
    if d != d:
        return "n/a"
    unit = "" if row["metric"].endswith("auc") else "%"
    ci_text = "" if ci != ci else f" ± {ci:.3f}"
    return f"{d:+.3f}{unit}{ci_text}"


def _verdict(row: dict[str, Any]) -> str:
    """Whether masking is better, worse, or not told apart (the interval holds 0)."""
    d, ci = row["diff"], row["diff_ci"]
    if d != d or ci != ci or abs(d) <= ci:
        return "not told apart"
    better = d > 0 if row["metric"].endswith("auc") else d < 0
    return "masked better" if better else "imputed better"


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write report.md, results.csv and seeds.csv into ``out`` from ``summary`` alone
    (what :func:`run_partial_labels` returns and stores as summary.json); with
    ``prefix`` (e.g. ``partial-labels`` for docs/results) the files are
    ``<prefix>.md``, ``<prefix>.csv`` and ``<prefix>-seeds.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_name, csv_name, seeds_name = (("report.md", "results.csv", "seeds.csv") if prefix is None
                                     else (f"{prefix}.md", f"{prefix}.csv",
                                           f"{prefix}-seeds.csv"))
    S, models, tasks = summary["seeds"], summary["models"], summary["tasks"]
    names = {"ne": "NE", "auc": "AUC", "mse": "MSE", "ctcvr_ne": "CTCVR NE",
             "ctcvr_auc": "CTCVR AUC"}
    header = ["model", "task", "metric", "masked", "imputed",
              "masked vs imputed", f"seeds masked better (of {S})", "verdict"]
    md, csv_rows = [], []
    for r in summary["table"]:
        m = r["metric"]
        md.append([models[r["model"]], r["task"], names.get(m, m), _fmt(r["masked"], m),
                   _fmt(r["imputed"], m), _diff(r), r["better"], _verdict(r)])
        csv_rows.append([r["model"], r["task"], m, r["masked"], r["masked_ci"], r["imputed"],
                         r["imputed_ci"], r["diff"], r["diff_ci"], r["better"], S])
    write_csv(out / csv_name, ["model", "task", "metric", "masked", "masked_ci95",
                                    "imputed", "imputed_ci95", "diff", "diff_ci95",
                                    "seeds_masked_better", "seeds"], csv_rows)
    write_seeds_csv(out / seeds_name, ["model", "labels"], [
        row for m, arms in summary["runs"].items() for arm, seeds in arms.items()
        for row in seed_rows([m, arm], seeds)])
    conds = summary["conditions"]
    lab = summary["labelled"]
    rows_of = summary["split_rows"]

    def shape(task: str) -> str:
        if task in conds:
            return f"observed where {conds[task]} = 1"
        if summary["missing"].get(task) == "mask":
            return "observed on a random part of the rows"
        return "every row"

    label_rows = [[t, tasks[t], shape(t)] + [
        f"{lab[s][t]:,} of {rows_of[s]:,}" if s in lab else "n/a"
        for s in ("train", "valid", "test")] for t in tasks]
    label_table = markdown_table(["task", "kind", "labels", "train", "valid", "test"],
                                 label_rows)
    verdicts = [r for r in summary["table"] if r["metric"] in ("ne", "mse")]
    better = [r for r in verdicts if _verdict(r) == "masked better"]
    worse = [r for r in verdicts if _verdict(r) == "imputed better"]
    tie = [r for r in verdicts if _verdict(r) == "not told apart"]

    def listing(rs: list[dict[str, Any]]) -> str:
        return ", ".join(f"{models[r['model']]} {r['task']} ({_diff(r)})" for r in rs) or "none"

    shared = []
    for full in tasks:
        on_it = [t for t, c in conds.items() if c == full]
        if full not in conds and summary["missing"].get(full) != "mask" and on_it:
            shared.append(
                f"{full} is labelled on every row, with the same labels both ways: its "
                f"difference comes through the shared layers from the tasks conditioned on it "
                f"({', '.join(on_it)}), whose imputed zeros fall on every row where "
                f"{full} = 0.")
    shared_text = ("\n\n" + " ".join(shared)) if shared else ""
    mode = ("QUICK MODE (small data, narrow models, 2 seeds): these numbers show the "
            "pipeline, not the effect.\n\n" if summary["quick"] else "")
    ctcvr = [r for r in summary["table"] if r["metric"] == "ctcvr_ne"]
    ctcvr_text = ""
    if ctcvr:
        ctcvr_text = (
            "\n\nThe chained metrics (CTCVR) score "
            + ", ".join(f"P({conds[r['task']]}) * P({r['task']} | {conds[r['task']]})"
                        for r in ctcvr[:1])
            + " against the joint label on every row where the condition is labelled, "
            "so both ways are judged on the same rows and the same target: "
            + "; ".join(f"{models[r['model']]} CTCVR NE {_diff(r)} ({_verdict(r)})"
                        for r in ctcvr) + ".")
    text = f"""# Partial labels: masking against imputed zeros

{mode}Simulator preset `{summary['preset']}` ({summary['rows']:,} rows, 80/10/10), Adam lr 1e-3,
batch {summary['batch_size']:,}, one pass, {S} seeds per model and way (the same seeds and
the same data for both ways); wall time {summary['wall_time_s']:.0f} s.

Labelled rows per task and split (the masked way trains and every metric is scored on
these):

{label_table}

**masked**: unlabelled entries count for nothing in the loss (each task's loss is the
mean over its labelled rows of the batch). **imputed**: every missing training and
validation label set to 0, trained and selected as if fully labelled. Both are scored
on the test split's labelled rows of each task. Each row: the mean test metric over
seeds of both ways, and masked vs imputed: the relative difference in percent (NE,
MSE; negative: masking is better) or the absolute difference (AUC; positive: masking is
better), ± the 95% half-width of the per-seed paired differences; "not told apart"
when that interval holds 0.

{markdown_table(header, md)}

Test NE / MSE on the labelled rows, masking better (interval excludes 0): {listing(better)}.
Imputed zeros better: {listing(worse)}. Not told apart: {listing(tie)}.{shared_text}{ctcvr_text}

The training runs took {', '.join(f"{models[m]} {v['masked']:.0f} s masked, "
                                  f"{v['imputed']:.0f} s imputed"
                                  for m, v in summary['seconds'].items())}. Every seed's
validation and test metrics: [{seeds_name}]({seeds_name}); the table as CSV:
[{csv_name}]({csv_name}).

{run_line(summary)}
"""
    (out / md_name).write_text(text)
