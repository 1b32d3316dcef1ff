"""The paper's Tables 1-4 in shape: every model on the simulator's three task groups.

Notation: T tasks, S seeds, E experts per fusion level, N training examples.

The paper (section 4.2) trains Shared-bottom, MMoE, ML-MMoE, PLE, AdaTT,
Cross-stitch and AdaTT-sp with one expert per task on ~70B examples of three
task groups, with the same optimizer, learning rate and batch, and reports the
NE (MSE for the regression task) difference from Shared-bottom after 10B, 30B
and 70B examples (1/7, 3/7 and all of the data) and on test. Here the data are
the recommender simulator's presets ``group1`` (view + like), ``group2``
(view + replay) and ``group3`` (watch_time, view, finish, dislike, follow;
follow is the auxiliary task the paper leaves out of Table 4).

Protocol (the same for every model): industrial sizes (2 fusion levels of
1-layer experts (256, 128), MMoE one level of 2-layer experts [256, 128],
Shared-bottom a [256, 128] bottom, Cross-stitch [256, 128] stacks with 2
stitch units, towers of 64, gates 1-layer softmax, categorical IDs as
16-wide embeddings), ``E = 2T`` experts per level (MMoE / ML-MMoE: E shared
experts; PLE and AdaTT: 1 expert per task and T shared, not tuned as in the
paper), Adam lr 1e-3, batch 1024, one pass over the training rows (streaming,
as the paper trains). The model is evaluated on the held-out validation split
7 times during the pass; the evaluations after about 1/7, 3/7 and 7/7 of the
examples give the convergence columns. The paper measured those columns on the
training window (progressive NE); we measure held-out NE at those points,
which is the same quantity up to the generalisation gap, without the noise of
a moving window. The test column scores the checkpoint with the best
validation loss (mean over tasks of NE, and of MSE / label variance for the
regression task), which after one pass is almost always the last (when a
small validation split holds no positive of a rare task, its NE is undefined
and the mean validation log loss selects instead, see
:func:`selection_override`). Numbers are
the relative difference of the mean over S seeds from Shared-bottom's mean,
with a 95% confidence half-width from the per-seed (paired) differences.

Full mode: 2,000,000 rows per group (1.6M training rows), 3 seeds, 21
configurations, about 100M training examples over all copies. Expected
runtime: roughly 3 hours on 2 CPU cores (an estimate from throughput measured
on 2 shared cores, summed over 3 seeds: about 10,000 examples/s for AdaTT on
group3, 65,000 for Shared-bottom on group1; not measured end to end); more
cores or a GPU (``device="cuda"``) proportionally less.

``quick=True``: 40,000 rows per group, 2 seeds, sizes shrunk to experts
(32, 16), towers 16, embeddings 8, batch 128, one torch thread (faster than
two for models this small): 40-90 s on 2 shared cores.

This module also holds the helpers shared by the other simulator experiments
(:mod:`adatt.experiments.ablation`, :mod:`~adatt.experiments.expert_weights`,
:mod:`~adatt.experiments.studies`): the protocol overrides, :func:`run_seeds`
and the relative-difference aggregation.

Example:
    >>> models = task_group_models(num_tasks=2)
    >>> list(models)[:3], models["mmoe"]["expert_sizes"], models["adatt_sp"]["experts_per_task"]
    (['shared_bottom', 'mmoe', 'ml_mmoe'], [[256, 128]], 1)
    >>> models["adatt"]["experts_per_task"], models["adatt"]["shared_experts"]
    (1, 2)
    >>> r = relative_summary([{"tasks": {"a": "binary"}, "test": {"a": {"ne": 0.99}}}],
    ...                      [{"tasks": {"a": "binary"}, "test": {"a": {"ne": 1.0}}}])
    >>> round(r["a"]["diff"], 6)
    -1.0
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adatt.experiments.common import (
    RunClock,
    command_line,
    markdown_table,
    mean_ci,
    per_seed,
    pinned,
    preset_models,
    run_line,
    seed_rows,
    wins_text,
    write_csv,
    write_seeds_csv,
)

__all__ = ["write_report", "png_names", "seed_lines", "run_task_groups", "task_group_models",
           "run_seeds", "sim_overrides",
           "model_overrides", "selection_override", "relative_summary", "seed_means",
           "primary_metric", "read_curves", "curve_table", "SIM_SIZES", "QUICK_SIZES",
           "MODEL_LABELS", "PAPER_GROUP1"]

# ----------------------------------------------------------------------------- shared helpers

#: the paper's industrial sizes (section 4.2.3)
SIM_SIZES: dict[str, Any] = {"embedding_dim": 16, "expert_sizes": [256, 128], "tower_sizes": [64]}
#: quick-mode sizes: the same shape, 8x narrower
QUICK_SIZES: dict[str, Any] = {"embedding_dim": 8, "expert_sizes": [32, 16], "tower_sizes": [16]}
QUICK_ROWS = 40_000
QUICK_BATCH = 128

MODEL_LABELS = {
    "shared_bottom": "Shared-bottom", "mmoe": "MMoE", "ml_mmoe": "ML-MMoE", "ple": "PLE",
    "adatt": "AdaTT", "cross_stitch": "Cross-stitch", "adatt_sp": "AdaTT-sp, 1 expert/task",
}


def primary_metric(kind: str) -> str:
    """The paper's reporting metric of a task kind: NE (binary) or MSE (regression)."""
    return "mse" if kind == "regression" else "ne"


def sim_overrides(preset: str, rows: int, out_dir: str | Path, progress: bool,
                  quick: bool, batch_size: int | None = None, data_seed: int = 0,
                  device: str = "cpu", threads: int | None = None) -> list[str]:
    """Config overrides of the simulator protocol (data, optimizer, batch, one pass).

    Quick mode: batch 128 and one torch thread (unless ``threads`` is given).
    ``watch_time`` is trained on its raw labels (``data.standardize_labels=false``,
    pinned: the published studies were made before labels were standardised by
    default, and reproduce their numbers).

    >>> sim_overrides("group3", 1000, "runs", False, quick=True)[:3]
    ['data.source=sim', 'data.preset=group3', 'data.rows=1000']
    """
    batch = batch_size or (QUICK_BATCH if quick else 1024)
    return ["data.source=sim", f"data.preset={preset}", f"data.rows={rows}",
            f"data.seed={data_seed}", "data.standardize_labels=false",
            "train.optimizer.name=adam", "train.optimizer.lr=1e-3",
            f"train.batch_size={batch}", "train.epochs=1", "train.selection.metric=loss",
            f"runtime.progress={progress}", f"runtime.device={device}", f"out_dir={out_dir}",
            f"runtime.threads={json.dumps(threads or (1 if quick else None))}"]


def selection_override(splits) -> tuple[str, str | None]:
    """The checkpoint-selection override for ``splits``, and a note when it is not the default.

    Default ``train.selection.metric=loss`` (mean validation NE, and MSE / label
    variance for regression). When a binary task has no positive (or no negative)
    in the validation split, its NE is undefined (NaN) and a NaN score would stop
    the trainer's selection at the first evaluation, so ``logloss`` (mean log loss
    over the binary tasks, always defined) is used instead.
    """
    labels = splits.valid.labels  # [N,T]
    empty = [t.name for i, t in enumerate(splits.schema.tasks) if t.kind == "binary" and
             float(labels[:, i].sum()) in (0.0, float(labels.shape[0]))]
    if not empty:
        return "train.selection.metric=loss", None
    return "train.selection.metric=logloss", (
        f"the validation split has no positive of {', '.join(empty)} (NE undefined), so "
        "checkpoints were selected on the mean validation log loss of the binary tasks")


def model_overrides(model: dict[str, Any]) -> list[str]:
    """``model.<key>=<json value>`` overrides of a model options dict.

    >>> model_overrides({"name": "adatt_sp", "expert_sizes": [8, 4]})
    ['model.name="adatt_sp"', 'model.expert_sizes=[8, 4]']
    """
    return [f"model.{k}={json.dumps(v)}" for k, v in model.items()]


def run_seeds(cfg, seeds: Sequence[int], splits=None, chunk: int | None = None,
              resume: bool = False, engines: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Train ``cfg`` once per seed; one results dict per seed, run dirs ``<name>/seed_<k>/``.

    Several seeds train together as one vectorised model
    (:func:`adatt.train.ensemble.train_ensemble`); one seed runs ``train()`` with
    ``train.seed=k`` and ``name=<name>/seed_<k>``, the same run directory and numbers.
    ``resume`` keeps the seeds whose run already finished with this configuration
    (:func:`adatt.train.runs.finished_results`) and trains only the others.

    ``engines`` (a dict to record the choice in, under ``cfg.name``): the seeds
    train as one ensemble or as separate runs in worker processes, whichever a
    short probe measures faster on this host for the seeds still to train
    (:func:`~adatt.experiments.engine.pick_engine`, cached in
    ``<cfg.out_dir>/engine.json``; with ``resume`` and 2 of 3 seeds kept, the
    choice for one seed). Workers load their data again from
    ``cfg.data``, so pass it only where ``splits`` are exactly ``cfg.data``'s.
    Either engine gives each seed the numbers of its separate run, up to
    floating-point summation order.
    """
    from adatt.train.ensemble import seed_config, train_ensemble
    from adatt.train.runs import finished_results
    from adatt.train.trainer import train

    def kept(seed: int) -> dict[str, Any] | None:
        """With ``resume``: this seed's finished run with this configuration."""
        c = seed_config(cfg, seed)
        return finished_results(Path(c.out_dir) / c.name, c) if resume else None

    seeds = [int(s) for s in seeds]
    if len(seeds) > 1:
        if engines is not None:
            from adatt.data.config import load_splits
            from adatt.experiments.engine import pick_engine, train_in_workers

            todo = [s for s in seeds if kept(s) is None]  # the engine is for these
            choice = pick_engine(cfg, splits if splits is not None else load_splits(cfg.data),
                                 len(todo) or len(seeds), Path(cfg.out_dir) / "engine.json",
                                 alone=True)
            engines[cfg.name] = choice.as_dict()
            if choice.engine == "workers":
                return train_in_workers([(cfg.name, cfg, seeds)], choice.workers,
                                        resume)[cfg.name][0]
        return train_ensemble(cfg, seeds, splits=splits, overwrite=True, chunk=chunk,
                              resume=resume)
    out = []
    for s in seeds:
        done = kept(s)
        out.append(done if done is not None else
                   train(seed_config(cfg, s), overwrite=True, splits=splits))
    return out


def seed_means(results: Sequence[dict[str, Any]], split: str = "test",
               metric: str | None = None) -> dict[str, float]:
    """Per task, the mean over seeds of ``metric`` (default: NE, or MSE for regression).

    Tasks without ``metric`` (e.g. AUC of a regression task) are left out.

    >>> seed_means([{"tasks": {"a": "regression"}, "test": {"a": {"mse": 2.0}}},
    ...             {"tasks": {"a": "regression"}, "test": {"a": {"mse": 4.0}}}])
    {'a': 3.0}
    """
    kinds = results[0]["tasks"]
    out = {}
    for task, kind in kinds.items():
        m = metric or primary_metric(kind)
        if m in results[0][split][task]:
            out[task] = math.fsum(r[split][task][m] for r in results) / len(results)
    return out


def relative_summary(results: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]],
                     split: str = "test", metric: str | None = None
                     ) -> dict[str, dict[str, float]]:
    """Per task: relative difference (percent) of ``results`` from ``reference``.

    ``diff`` compares the means over seeds (the paper's unit: NE, or MSE for
    regression); ``ci`` is the 95% half-width of the per-seed differences, paired
    by position (seed k against seed k; nan with one seed); ``per_seed`` lists them.
    """
    from adatt.train.metrics import relative_difference

    a, b = seed_means(results, split, metric), seed_means(reference, split, metric)
    kinds = results[0]["tasks"]
    out = {}
    for task in a:
        m = metric or primary_metric(kinds[task])
        per = [relative_difference(r[split][task][m], q[split][task][m])
               for r, q in zip(results, reference, strict=False)]
        _, half = mean_ci(per)
        out[task] = {"diff": relative_difference(a[task], b[task]), "ci": half,
                     "per_seed": per}
    return out


def read_curves(run_dirs: Sequence[str | Path]) -> list[list[dict[str, Any]]]:
    """Per run directory, the evaluations of its ``metrics.jsonl`` (``[]`` when missing)."""
    out = []
    for d in run_dirs:
        p = Path(d) / "metrics.jsonl"
        lines = p.read_text().splitlines() if p.is_file() else []
        out.append([json.loads(x) for x in lines if x.strip()])
    return out


def curve_table(curves: dict[str, list[list[dict[str, Any]]]], kinds: dict[str, str],
                baseline: str = "shared_bottom") -> dict[str, Any]:
    """Relative validation NE/MSE difference from ``baseline`` at every evaluation.

    Args:
        curves: per model, per seed, the evaluations (``read_curves``); every model
            evaluated at the same points (same budget, batch and ``eval_every``).
        kinds: ``{task: kind}``.

    Returns:
        ``{"examples": [n_1, ...], "diff": {model: {task: [percent per evaluation]}}}``
        comparing means over seeds; evaluations not reached by every seed of both
        models are dropped.

    >>> ev = lambda n, ne: {"examples": n, "valid": {"a": {"ne": ne}}}
    >>> curve_table({"shared_bottom": [[ev(10, 1.0), ev(20, 0.8)]],
    ...              "m": [[ev(10, 0.9), ev(20, 0.8)]]}, {"a": "binary"})["diff"]["m"]["a"]
    [-9.999999999999998, 0.0]
    """
    from adatt.train.metrics import relative_difference

    n = min(len(c) for runs in curves.values() for c in runs) if curves else 0
    base = curves[baseline]
    examples = [base[0][i]["examples"] for i in range(n)]
    diff: dict[str, dict[str, list[float]]] = {}
    for model, runs in curves.items():
        diff[model] = {}
        for task, kind in kinds.items():
            m = primary_metric(kind)
            row = []
            for i in range(n):
                mine = math.fsum(r[i]["valid"][task][m] for r in runs) / len(runs)
                ref = math.fsum(r[i]["valid"][task][m] for r in base) / len(base)
                row.append(relative_difference(mine, ref))
            diff[model][task] = row
    return {"examples": examples, "diff": diff}


def fmt_pct(d: float, ci: float | None = None) -> str:
    """``+0.123%``, ``+0.123% ± 0.045``, or ``n/a`` when undefined (NaN)."""
    if d != d:
        return "n/a"
    if ci is None or ci != ci:
        return f"{d:+.3f}%"
    return f"{d:+.3f}% ± {ci:.3f}"


# ----------------------------------------------------------------------------- the experiment

GROUPS = ("group1", "group2", "group3")
#: the paper's group 1 (Tables 1 and 2): NE difference from Shared-bottom after 10B / 30B /
#: 70B examples and on test; consumption task = view, engagement task = like.
PAPER_GROUP1: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "view": {"mmoe": (-0.334, -0.421, -0.498, -0.481),
             "ml_mmoe": (-0.307, -0.400, -0.480, -0.463),
             "ple": (-0.162, -0.385, -0.482, -0.448),
             "adatt": (-0.391, -0.464, -0.526, -0.508),
             "cross_stitch": (-0.024, -0.133, -0.166, -0.140),
             "adatt_sp": (-0.259, -0.261, -0.277, -0.231)},
    "like": {"mmoe": (-0.370, -0.436, -0.542, -0.532),
             "ml_mmoe": (-0.260, -0.386, -0.496, -0.494),
             "ple": (-0.360, -0.627, -0.698, -0.691),
             "adatt": (-0.677, -0.795, -0.845, -0.863),
             "cross_stitch": (-0.046, -0.197, -0.232, -0.225),
             "adatt_sp": (-0.393, -0.367, -0.397, -0.362)},
}
POINTS = (1, 3, 7)  # evaluations (of 7) reported: after 1/7, 3/7, 7/7 of the examples


def task_group_models(num_tasks: int, experts_per_level: int | None = None,
                      sizes: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Model options of the Tables 1-4 comparison, Shared-bottom first.

    Every fused model gets ``experts_per_level`` (default ``2T``) experts per level
    (:func:`~adatt.experiments.common.preset_models`: PLE and AdaTT one per task and
    the rest shared); AdaTT-sp has one expert per task and no shared expert (the
    paper's comparison with Cross-stitch).
    """
    sizes = dict(SIM_SIZES if sizes is None else sizes)
    lvl = sizes.pop("expert_sizes")
    E = experts_per_level or 2 * num_tasks
    p = preset_models(E, num_tasks)
    return {
        "shared_bottom": {"name": "shared_bottom", "expert_sizes": lvl, **sizes},
        "mmoe": {"name": "mmoe", "expert_sizes": [lvl], "num_experts": E, **sizes},
        "ml_mmoe": {"name": "ml_mmoe", "expert_sizes": lvl, "num_experts": E, **sizes},
        "ple": {"name": "ple", "expert_sizes": lvl, **p["ple"], **sizes},
        "adatt": pinned({"name": "adatt", "expert_sizes": lvl, **p["adatt"], **sizes}),
        "cross_stitch": pinned({"name": "cross_stitch", "expert_sizes": lvl, **sizes}),
        "adatt_sp": pinned({"name": "adatt_sp", "expert_sizes": lvl, "experts_per_task": 1,
                            **sizes}),
    }


def run_task_groups(out_dir: str | Path = "results/task-groups", quick: bool = False,
                    seeds: int = 3, progress: bool = True, *,
                    groups: Sequence[str] = GROUPS, rows: int | None = None,
                    models: Sequence[str] | None = None, experts_per_level: int | None = None,
                    evaluations: int = 7, device: str = "cpu", threads: int | None = None,
                    chunk: int | None = None, resume: bool = False) -> dict[str, Any]:
    """Train every model on each task group; write report.md, results.csv, seeds.csv,
    curves.csv, PNGs.

    Args:
        out_dir: where the report, tables, plots and runs (``runs/``) go.
        quick: 40,000 rows, at most 2 seeds, narrow models (see the module docstring).
        seeds: S seeds per configuration (0..S-1).
        progress: progress bars.
        groups: simulator presets to run.
        rows: simulator rows per group (default 2,000,000; quick 40,000).
        models: subset of the models (Shared-bottom is always trained: the reference).
        experts_per_level: E (default 2T).
        evaluations: held-out evaluations during the pass (the paper's points need 7).
        device: ``cpu`` or ``cuda``.
        threads: torch threads (default: all cores; quick mode 1).
        chunk: seeds trained together at most (memory).
        resume: keep the seed runs already finished in ``out_dir/runs`` with the same
            configuration and train only the missing ones.

    Returns:
        The summary: per group, per model, per task the test and convergence differences,
        and every seed's metrics (``seeds``); the report is written from it alone.
    """
    from adatt.config import load_config
    from adatt.data.config import load_splits

    call = dict(locals())
    clock = RunClock()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unknown = [g for g in groups if g not in GROUPS] + [
        m for m in (models or ()) if m not in MODEL_LABELS]
    if unknown:
        raise ValueError(f"unknown task group or model {unknown[0]!r}; groups: "
                         f"{', '.join(GROUPS)}; models: {', '.join(MODEL_LABELS)}")
    if quick:
        seeds = min(seeds, 2)
    rows = rows or (QUICK_ROWS if quick else 2_000_000)
    sizes = QUICK_SIZES if quick else SIM_SIZES
    names = ["shared_bottom"] + [m for m in (models or MODEL_LABELS) if m != "shared_bottom"]
    seed_list = list(range(seeds))
    summary: dict[str, Any] = {"quick": quick, "seeds": seeds, "rows": rows, "groups": {},
                               "sizes": sizes}
    engines: dict[str, Any] | None = None if quick else {}  # quick: the ensemble, no probe
    for group in groups:
        base = sim_overrides(group, rows, out / "runs", progress, quick, device=device,
                             threads=threads)
        splits = load_splits(load_config(None, base).data)
        sel, note = selection_override(splits)
        base.append(sel)
        if note:
            summary.setdefault("notes", []).append(f"{group}: {note}")
        n_train = len(splits.train)
        eval_every = math.ceil(n_train / evaluations)
        kinds = {t.name: t.kind for t in splits.schema.tasks}
        options = task_group_models(len(kinds), experts_per_level, sizes)
        results, curves, seconds = {}, {}, {}
        for name in names:
            run_name = f"{group}_{name}"
            cfg = load_config(None, [*base, f"name={run_name}", f"train.eval_every={eval_every}",
                                     *model_overrides(options[name])])
            ts = time.perf_counter()
            results[name] = run_seeds(cfg, seed_list, splits, chunk, resume, engines)
            seconds[name] = time.perf_counter() - ts
            curves[name] = read_curves([out / "runs" / run_name / f"seed_{s}" for s in seed_list])
        conv = curve_table(curves, kinds)
        ref = results["shared_bottom"]
        g: dict[str, Any] = {"tasks": kinds, "examples": conv["examples"],
                             "n_train": n_train, "models": {}}
        for name in names:
            rel = relative_summary(results[name], ref)
            g["models"][name] = {
                "options": options[name], "seconds": seconds[name],
                "num_parameters": results[name][0]["num_parameters"],
                "test": {t: {"diff": v["diff"], "ci": v["ci"]} for t, v in rel.items()},
                "curve": conv["diff"][name],
                "test_metric": seed_means(results[name]),
                "auc": seed_means(results[name], metric="auc"),
                "seeds": per_seed(results[name], seed_list),
            }
        summary["groups"][group] = g
    summary["engines"] = engines or {}
    summary.update(clock.facts())
    summary["command"] = command_line("task-groups", run_task_groups, call)
    write_report(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _point_index(examples: list[int], n_train: int, k: int, of: int = 7) -> int | None:
    """Index of the evaluation closest to ``k/of`` of the pass."""
    if not examples:
        return None
    target = n_train * k / of
    return min(range(len(examples)), key=lambda i: abs(examples[i] - target))


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write the report and its CSVs and plots into ``out`` from ``summary`` alone (what
    the run function returns and stores as summary.json); with ``prefix`` (e.g.
    ``task-groups-group1`` for docs/results) the files are ``<prefix>.md``,
    ``<prefix>.csv``, ``<prefix>-curves.csv``, ``<prefix>-seeds.csv`` and one
    ``task-groups-<group>.png`` per group."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_name, csv_name, curves_name, seeds_name = (
        ("report.md", "results.csv", "curves.csv", "seeds.csv") if prefix is None
        else (f"{prefix}.md", f"{prefix}.csv", f"{prefix}-curves.csv", f"{prefix}-seeds.csv"))
    csv_rows, curve_rows, sections = [], [], []
    for group, g in summary["groups"].items():
        ex, n_train = g["examples"], g["n_train"]
        idx = [_point_index(ex, n_train, k) for k in POINTS]
        for task, kind in g["tasks"].items():
            metric = "MSE" if kind == "regression" else "NE"
            paper = PAPER_GROUP1.get(task) if group == "group1" else None
            header = ["model"] + [f"{k}/7 ({ex[i]:,} ex)" if i is not None else f"{k}/7"
                                  for k, i in zip(POINTS, idx, strict=True)] + ["test"]
            if paper:
                header += ["paper 10B", "paper 30B", "paper 70B", "paper test"]
            md = []
            for name, m in g["models"].items():
                if name == "shared_bottom":
                    continue
                cells = [fmt_pct(m["curve"][task][i]) if i is not None else "n/a" for i in idx]
                t = m["test"][task]
                row = [MODEL_LABELS[name], *cells, fmt_pct(t["diff"], t["ci"])]
                if paper:
                    row += [f"{v:+.3f}%" for v in paper[name]] if name in paper else [""] * 4
                md.append(row)
                csv_rows.append([group, task, metric, name, *[
                    m["curve"][task][i] if i is not None else "" for i in idx],
                    t["diff"], t["ci"]])
                for e, d in zip(ex, m["curve"][task], strict=True):
                    curve_rows.append([group, task, name, e, d])
            sb = g["models"]["shared_bottom"]["test_metric"][task]
            aux = " (auxiliary: left out of the paper's Table 4)" if task == "follow" else ""
            sections.append(f"### {group}: {task}{aux}, {metric} difference from Shared-bottom "
                            f"(test {metric} of Shared-bottom: {sb:.5f})\n\n"
                            + markdown_table(header, md))
    write_csv(out / csv_name, ["group", "task", "metric", "model", "diff_1_7", "diff_3_7",
                                    "diff_7_7", "test_diff", "test_ci95"], csv_rows)
    write_csv(out / curves_name, ["group", "task", "model", "examples", "valid_diff"],
              curve_rows)
    write_seeds_csv(out / seeds_name, ["group", "model"], [
        row for group, g in summary["groups"].items() for name, m in g["models"].items()
        for row in seed_rows([group, name], m["seeds"])])
    pngs = _plot_curves(out, summary, png_names(summary, prefix))
    params = []
    for group, g in summary["groups"].items():
        params.append(f"- {group} ({', '.join(g['tasks'])}): " + ", ".join(
            f"{MODEL_LABELS[n]} {m['num_parameters']:,} params / {m['seconds']:.0f} s"
            for n, m in g["models"].items()))
    mode = ("QUICK MODE (40,000 rows, narrow models): these numbers show the pipeline, "
            "not the paper's effects.\n\n" if summary["quick"] else "")
    sz = summary["sizes"]
    notes = "".join(f"\n\nNote, {n}." for n in summary.get("notes", []))
    paper_note = ("The paper's group 1 numbers are printed beside ours (its consumption task "
                  "= view, engagement task = like)." if "group1" in summary["groups"] else "")
    if any(g in summary["groups"] for g in ("group2", "group3")):
        paper_note += (" For groups 2 and 3 the paper states only the shape: group 2 all models "
                       "closer together, AdaTT still best; group 3 AdaTT best on all four main "
                       "tasks.")
    paper_note = paper_note.strip()
    text = f"""# Tables 1-4 in shape: every model on the simulator's task groups

{mode}{summary['seeds']} seeds per configuration, {summary['rows']:,} simulator rows per group
(80% train, 10% validation, 10% test); wall time {summary['wall_time_s']:.0f} s.

Protocol: same optimizer (Adam, lr 1e-3), batch and budget (one pass over the
training rows) for every model; experts {sz['expert_sizes']} (MMoE: one level
of 2-layer experts {[sz['expert_sizes']]}), towers {sz['tower_sizes']},
embeddings {sz['embedding_dim']}; E = 2T experts per level (PLE, AdaTT: 1 per
task + T shared; not tuned); AdaTT-sp with 1 expert per task and no shared
expert. Columns k/7: relative difference of the held-out validation NE (MSE for
watch_time) of the mean over seeds from Shared-bottom's, after about k/7 of the
training examples (the paper measured the training window after 10B, 30B,
70B examples). Test: the checkpoint with the best validation loss, mean over
seeds, ± the 95% half-width of the paired per-seed differences. Negative is
better. {paper_note} n/a: undefined (no positive in the validation split).{notes}

{(chr(10) * 2).join(sections)}

## Models

{chr(10).join(params)}

Plots: {', '.join(f'[{p}]({p})' for p in pngs)}; every evaluation: [{curves_name}]({curves_name});
every seed's validation and test metrics: [{seeds_name}]({seeds_name}).

{seed_lines(summary)}
{run_line(summary)}
"""
    (out / md_name).write_text(text)


def seed_lines(summary: dict[str, Any]) -> str:
    """Per group: seeds in which AdaTT beats each model, and AdaTT's rank in each seed."""
    lines = []
    for group, g in summary["groups"].items():
        models = g["models"]
        if "adatt" not in models:
            continue
        n = len(models["adatt"]["seeds"])
        kinds = g["tasks"]
        unit = "NE" if all(k != "regression" for k in kinds.values()) else \
            "NE (MSE for " + ", ".join(t for t, k in kinds.items() if k == "regression") + ")"
        wins, ranks = [], []
        for task, kind in kinds.items():
            metric = primary_metric(kind)
            per = {m: [e["test"][task].get(metric, float("nan")) for e in models[m]["seeds"]]
                   for m in models}
            ours = per["adatt"]
            others = {MODEL_LABELS[m].split(",")[0]: v for m, v in per.items() if m != "adatt"}
            wins.append(f"{task}: {wins_text(ours, others)}")
            rank = [1 + sum(v[k] < ours[k] for v in others.values()) for k in range(n)]
            ranks.append(f"{task} {', '.join(map(str, rank))}")
        lines.append(f"{group}: seeds (of {n}) in which AdaTT has a lower test {unit} than "
                     f"each model: {'; '.join(wins)}.")
        lines.append(f"{group}: AdaTT's rank by test {unit} among the {len(models)} models "
                     f"(1 = lowest), seed by seed: {'; '.join(ranks)}.")
    return "\n\n".join(lines) + ("\n" if lines else "")


def png_names(summary: dict[str, Any], prefix: str | None = None) -> dict[str, str]:
    """Each group's plot file: ``convergence_<group>.png``; with ``prefix``,
    ``<prefix>.png`` for a single group, else ``<prefix>-<group>.png``.

    >>> png_names({"groups": {"group1": {}}}, "task-groups-group1")
    {'group1': 'task-groups-group1.png'}
    >>> png_names({"groups": {"group2": {}, "group3": {}}}, "tg")
    {'group2': 'tg-group2.png', 'group3': 'tg-group3.png'}
    """
    groups = list(summary["groups"])
    if prefix is None:
        return {g: f"convergence_{g}.png" for g in groups}
    if len(groups) == 1:
        return {groups[0]: f"{prefix}.png"}
    return {g: f"{prefix}-{g}.png" for g in groups}


def _plot_curves(out: Path, summary: dict[str, Any], names: dict[str, str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for group, g in summary["groups"].items():
        tasks = list(g["tasks"])
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for name, m in g["models"].items():
                style = "--" if name == "shared_bottom" else "-"
                ax.plot(g["examples"], m["curve"][task], style, marker="o", ms=3,
                        label=MODEL_LABELS[name])
            metric = "MSE" if g["tasks"][task] == "regression" else "NE"
            ax.set_title(f"{group}: {task}")
            ax.set_xlabel("training examples")
            ax.set_ylabel(f"valid {metric} diff vs Shared-bottom (%)")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        name = names[group]
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files
