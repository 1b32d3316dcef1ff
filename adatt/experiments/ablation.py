"""Table 6 of the paper: NativeExpertLF on versus off (``model.native_fusion=false``).

Notation: T tasks, S seeds, m_t native experts per task, m_s shared experts.

The paper (section 4.4) removes NativeExpertLF from every fusion unit, keeping
only AllExpertGF (``f^l_t = G_t^T E^l`` instead of Eq. 7), with 3 native
experts per task and no shared expert on its five-task group, and finds that
every task gets worse: +0.107% to +0.222% NE on the binary tasks, +0.158% MSE
on the regression task. We run the same switch on two data sets:

* **census** (UCI Census-Income, the protocol of :mod:`adatt.experiments.census`:
  its ``PROTOCOLS["paper"]`` and group A configurations, sizes (128, 64), 6
  experts per level): AdaTT with ``m_s = 0`` (AdaTT-sp, 2 native experts per
  task, so ``v_t`` is learned) and with ``m_s = 3`` (1 native expert per task
  and 3 shared experts; with the default ``native_rule="authors"`` every unit
  learns its ``v``, with ``"per_unit"`` the task units' ``v_t`` is fixed to 1).
  Reported: test NE and AUC per task.
* **simulator group3** (watch_time, view, finish, dislike, follow), the paper's
  setting: AdaTT-sp with 3 experts per task, no shared expert, industrial sizes
  (experts (256, 128), towers 64, embeddings 16), Adam lr 1e-3, batch 1024,
  one pass. Reported: test NE (MSE for watch_time).

The number per task is the relative difference "off" versus "on" of the mean
over S seeds (positive: removing NativeExpertLF hurts), with the 95%
half-width of the per-seed paired differences (seed k off against seed k on:
same data order).

Full mode: census 10 epochs on 199,523 rows, simulator 2,000,000 rows, 5
seeds each: 16M simulator and 40M census training examples over all copies.
Expected runtime: roughly 1-2 hours on 2 CPU cores (an estimate from the
throughput of similar models measured on 2 shared cores, not measured end
to end); more cores or a GPU proportionally less.

``quick=True``: 2 seeds, census m_s = 0 only on 20,000 training rows for 2
epochs (as census.py's quick mode), simulator 100,000 rows with experts
(32, 16), towers 16, embeddings 8, one torch thread: under a minute on 2 cores.

Example:
    >>> [(c["setting"], c["model"]["name"], c["model"].get("shared_experts"))
    ...  for c in ablation_configs(census_ms=(0, 3))]
    [('census m_s=0', 'adatt', 0), ('census m_s=3', 'adatt', 3), ('sim group3', 'adatt_sp', None)]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adatt.experiments.common import (
    RunClock,
    command_line,
    markdown_table,
    per_seed,
    run_line,
    seed_rows,
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

__all__ = ["write_report", "run_ablation", "ablation_configs", "PAPER_TABLE6"]

#: what the paper reports (section 4.4, Table 6), five-task group: "off" versus "on"
PAPER_TABLE6 = {"binary": "+0.107% to +0.222% NE", "regression": "+0.158% MSE"}
SIM_PRESET = "group3"
SIM_EXPERTS_PER_TASK = 3
QUICK_SIM_ROWS = 100_000


def ablation_configs(census_ms: Sequence[int] = (0, 3), sim: bool = True,
                     sim_sizes: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ablated configurations: setting label, data source, model options (NativeExpertLF on).

    Census models come from :func:`adatt.experiments.census.table5_configs` (group A).
    """
    from adatt.experiments.census import table5_configs

    out = []
    for c in table5_configs("A", context=False):
        if c["family"] == "AdaTT" and c["m_s"] in census_ms:
            out.append({"setting": f"census m_s={c['m_s']}", "source": "census",
                        "model": dict(c["model"])})
    if sim:
        sizes = dict(SIM_SIZES if sim_sizes is None else sim_sizes)
        out.append({"setting": f"sim {SIM_PRESET}", "source": "sim",
                    "model": {"name": "adatt_sp", "experts_per_task": SIM_EXPERTS_PER_TASK,
                              **sizes}})
    return out


def run_ablation(out_dir: str | Path = "results/ablation", quick: bool = False, seeds: int = 5,
                 progress: bool = True, *, census: bool = True, sim: bool = True,
                 census_ms: Sequence[int] | None = None, rows: int | None = None,
                 data_dir: str | None = None, device: str = "cpu", threads: int | None = None,
                 chunk: int | None = None, resume: bool = False) -> dict[str, Any]:
    """NativeExpertLF on vs off; writes report.md, results.csv, seeds.csv, ablation.png;
    returns the summary (the report is written from it alone).

    Args:
        out_dir: where the report, table, plot and runs (``runs/``) go.
        quick: 2 seeds, small data and models (see the module docstring).
        seeds: S seeds per configuration (0..S-1).
        progress: progress bars.
        census: run the census half (needs the census files, see docs/data.md).
        sim: run the simulator half.
        census_ms: shared-expert counts of the census AdaTT (default (0, 3); quick (0,)).
        rows: simulator rows (default 2,000,000; quick 100,000).
        data_dir: census directory (default: the loader's search, ``$ADATT_DATA_DIR``).
        device: ``cpu`` or ``cuda``.
        threads: torch threads (default: all cores; quick mode 1).
        chunk: seeds trained together at most (memory).
        resume: keep the seed runs already finished in ``out_dir/runs`` with the same
            configuration and train only the missing ones.

    Returns:
        ``{"settings": {setting: {"tasks": {task: {...}}}}, "wall_time_s": ..., ...}``.
    """
    from adatt.config import load_config
    from adatt.data.config import load_splits
    from adatt.experiments.census import PROTOCOLS

    call = dict(locals())
    clock = RunClock()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        seeds = min(seeds, 2)
    census_ms = tuple(census_ms if census_ms is not None else ((0,) if quick else (0, 3)))
    rows = rows or (QUICK_SIM_ROWS if quick else 2_000_000)
    seed_list = list(range(seeds))
    configs = ablation_configs(census_ms if census else (), sim,
                               QUICK_SIZES if quick else SIM_SIZES)
    thr = json.dumps(threads or (1 if quick else None))
    census_base = ["data.source=census", *PROTOCOLS["paper"], f"runtime.progress={progress}",
                   f"runtime.device={device}", f"runtime.threads={thr}", f"out_dir={out / 'runs'}"]
    if data_dir:
        census_base.append(f"data.data_dir={data_dir}")
    if quick:
        census_base.append("train.epochs=2")
    sim_base = sim_overrides(SIM_PRESET, rows, out / "runs", progress, quick, device=device,
                             threads=threads)
    splits: dict[str, Any] = {}
    summary: dict[str, Any] = {"quick": quick, "seeds": seeds, "rows": rows, "settings": {}}
    # quick: the ensemble, no probe (and quick census keeps a subset a worker would not)
    engines: dict[str, Any] | None = None if quick else {}
    for c in configs:
        base = census_base if c["source"] == "census" else sim_base
        if c["source"] not in splits:
            splits[c["source"]] = _load(load_config(None, base), quick, load_splits)
            if c["source"] == "sim":
                sel, note = selection_override(splits["sim"])
                sim_base.append(sel)
                if note:
                    summary["notes"] = [f"simulator: {note}"]
        runs = {}
        for state, native in (("on", True), ("off", False)):
            name = f"{c['setting'].replace(' ', '_').replace('=', '')}_{state}"
            model = {**c["model"], "native_fusion": native}
            cfg = load_config(None, [*base, f"name={name}", *model_overrides(model)])
            ts = time.perf_counter()
            runs[state] = (run_seeds(cfg, seed_list, splits[c["source"]], chunk, resume, engines),
                           time.perf_counter() - ts)
        (on, t_on), (off, t_off) = runs["on"], runs["off"]
        rel = relative_summary(off, on)
        auc_on, auc_off = seed_means(on, metric="auc"), seed_means(off, metric="auc")
        m_on, m_off = seed_means(on), seed_means(off)
        tasks = {}
        for task, kind in on[0]["tasks"].items():
            r = rel[task]
            tasks[task] = {"kind": kind, "metric": "mse" if kind == "regression" else "ne",
                           "on": m_on[task], "off": m_off[task], "diff": r["diff"],
                           "ci": r["ci"], "off_worse": sum(d > 0 for d in r["per_seed"]),
                           "auc_on": auc_on.get(task), "auc_off": auc_off.get(task)}
        summary["settings"][c["setting"]] = {
            "model": c["model"], "seconds": t_on + t_off, "tasks": tasks,
            "num_parameters": {"on": on[0]["num_parameters"], "off": off[0]["num_parameters"]},
            "seeds": {"on": per_seed(on, seed_list), "off": per_seed(off, seed_list)}}
    summary["halves"] = {"census": census, "sim": sim}
    summary["engines"] = engines or {}
    summary.update(clock.facts())
    summary["command"] = command_line("ablation", run_ablation, call)
    write_report(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _load(cfg, quick: bool, load_splits):
    """The splits of ``cfg.data``; quick census keeps 20,000 random training rows."""
    splits = load_splits(cfg.data)
    if quick and cfg.data.source == "census":
        import torch

        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(splits.train), generator=g)[:20_000]
        splits.train = splits.train.subset(idx)
    return splits


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write the report and its CSVs and plots into ``out`` from ``summary`` alone (what
    the run function returns and stores as summary.json); with ``prefix`` (e.g.
    ``ablation-census`` for docs/results) the files are ``<prefix>.md``, ``<prefix>.csv``,
    ``<prefix>-seeds.csv`` and ``<prefix>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_name, csv_name, seeds_name, png_name = (
        ("report.md", "results.csv", "seeds.csv", "ablation.png") if prefix is None
        else (f"{prefix}.md", f"{prefix}.csv", f"{prefix}-seeds.csv", f"{prefix}.png"))
    header = ["setting", "task", "metric", "on", "off", "off vs on", "seeds off worse",
              "AUC on", "AUC off", "paper (off vs on)"]
    md, csv_rows = [], []
    for setting, s in summary["settings"].items():
        for task, t in s["tasks"].items():
            paper = ""
            if setting.startswith("sim"):
                paper = PAPER_TABLE6["regression" if t["kind"] == "regression" else "binary"]
            auc = [f"{t['auc_on']:.4f}" if t["auc_on"] is not None else "",
                   f"{t['auc_off']:.4f}" if t["auc_off"] is not None else ""]
            md.append([setting, task, t["metric"].upper(), f"{t['on']:.5f}", f"{t['off']:.5f}",
                       fmt_pct(t["diff"], t["ci"]), f"{t['off_worse']}/{summary['seeds']}",
                       *auc, paper])
            csv_rows.append([setting, task, t["metric"], t["on"], t["off"], t["diff"], t["ci"],
                             t["off_worse"], t["auc_on"], t["auc_off"]])
    write_csv(out / csv_name, ["setting", "task", "metric", "on", "off", "diff_pct",
                                    "ci95", "seeds_off_worse", "auc_on", "auc_off"], csv_rows)
    write_seeds_csv(out / seeds_name, ["setting", "native_fusion"], [
        row for setting, v in summary["settings"].items() for state in ("on", "off")
        for row in seed_rows([setting, state], v["seeds"][state])])
    _plot(out / png_name, summary)
    models = "\n".join(f"- {k}: {json.dumps(v['model'])}; parameters on/off "
                       f"{v['num_parameters']['on']:,}/{v['num_parameters']['off']:,}; "
                       f"{v['seconds']:.0f} s" for k, v in summary["settings"].items())
    mode = ("QUICK MODE (2 seeds, small data and models): these numbers show the pipeline, "
            "not the paper's effect.\n\n" if summary["quick"] else "")
    notes = "".join(f"\n\nNote, {n}." for n in summary.get("notes", []))
    census_note = ("20,000 training rows, 2 epochs" if summary["quick"]
                   else "all 199,523 training rows, 10 epochs")
    ran = [h for h in ("census", "sim") if summary["halves"][h]]
    halves = ("both halves (census and simulator)" if len(ran) == 2 else
              f"the {'census' if ran == ['census'] else 'simulator'} half only (the "
              f"{'simulator' if ran == ['census'] else 'census'} half was not run)")
    text = f"""# Table 6: NativeExpertLF on versus off

{mode}{summary['seeds']} seeds per configuration; this call ran {halves}.

"off" removes NativeExpertLF from every fusion unit (`model.native_fusion=false`:
`f = G^T E` instead of `(pad(v) + G)^T E`). "off vs on" is the relative
difference of the mean test NE (MSE for regression) over seeds, ± the 95%
half-width of the per-seed paired differences; positive means removing
NativeExpertLF hurts, as the paper finds on every task. "seeds off worse"
counts the seeds where it does.

Census: the protocol of `adatt.experiments.census` (Adam lr 1e-4, weight
decay 0.01, batch 512, the epoch with the best mean validation AUC kept;
{census_note}), group A sizes (128, 64), 6 experts per level.
Simulator: preset {SIM_PRESET}, {summary['rows']:,} rows (80/10/10), AdaTT-sp with
{SIM_EXPERTS_PER_TASK} experts per task and no shared expert (the paper's ablation model),
Adam lr 1e-3, one pass, the checkpoint with the best mean validation NE (and
MSE / variance) kept (after one pass, nearly always the last).{notes}

{markdown_table(header, md)}

The paper gives only the range over its five tasks (its tasks are private), so
the paper column is that range, not a per-task number.

Models:

{models}

Plot: [{png_name}]({png_name}); every seed's validation and test metrics, with and
without NativeExpertLF: [{seeds_name}]({seeds_name}).

{run_line(summary)}
"""
    (out / md_name).write_text(text)


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 3.6),
                             squeeze=False)
    for ax, (setting, s) in zip(axes[0], settings.items(), strict=True):
        tasks = list(s["tasks"])
        diffs = [s["tasks"][t]["diff"] for t in tasks]
        cis = [c if c == c else 0.0 for c in (s["tasks"][t]["ci"] for t in tasks)]
        ax.bar(tasks, diffs, yerr=cis, color=["tab:red" if d > 0 else "tab:green"
                                               for d in diffs], alpha=0.75, capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        if setting.startswith("sim"):
            ax.axhspan(0.107, 0.222, color="tab:gray", alpha=0.25, label="paper NE range")
            ax.legend(fontsize=7)
        ax.set_title(setting)
        ax.set_ylabel("NE / MSE off vs on (%)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
