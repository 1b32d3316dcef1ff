"""Table 5 of the paper on UCI Census-Income, reproduced with many seeds.

Notation: E experts per level, m_s shared experts, N seeds.

Protocol (the paper's, from Aoki et al.'s framework): categorical columns as
one-hot inputs (gathered), continuous columns min-max scaled on training
rows, Adam lr 1e-4 with weight decay 0.01, batch 512, 10 epochs, the epoch
with the best mean validation AUC kept and scored on test. Models: 2 fusion
levels of 1-layer experts, towers of 32; group A: E = 6, sizes (128, 64);
group B: E = 9, sizes (96, 48). PLE and AdaTT: ``m_s`` in {0, 3} (A) or
{0, 3, 6} (B) with ``(E - m_s) / 3`` native experts per task, ``m_s`` chosen
on the validation split (mean over seeds of the summed validation AUCs).
AdaTT with ``m_s = 0`` is AdaTT-sp. Shared-bottom, MMoE (one level of
2-layer experts) and Cross-stitch rows are added for context.

The ``tuned`` protocol (``protocol="tuned"``) is the paper's with two changes,
the same for every model: continuous columns z-scored instead of min-max
scaled (the heavy-tailed capital columns otherwise sit near 0), and the
learning rate chosen per configuration on validation from
:data:`TUNED_LRS`, with the first ``tune_seeds`` seeds of each candidate
(every configuration gets the same tuning budget). The chosen learning rate's
tuning runs are kept as its first seeds; ``m_s`` is then chosen as above.

Each configuration trains N independently initialised copies together
(:func:`adatt.train.ensemble.train_ensemble`) or as separate runs in worker
processes, whichever measured faster on this host
(:func:`adatt.experiments.engine.pick_engine`; ``--workers`` forces one);
copy k equals a separate run with ``train.seed=k`` up to floating-point
summation order. ``--quick`` trains
2 seeds on 20,000 training rows for 2 epochs, group A only. ``--models``
(``models=``) trains only the rows of some models (:data:`TABLE5_MODELS`;
every ``m_s`` of a family, so ``m_s`` is chosen again), to rerun part of a
published table after a change to those models; the report names them.

Example:
    >>> [c["label"] for c in table5_configs("A")][:4]
    ['ML-MMoE', 'PLE m_s=0', 'PLE m_s=3', 'AdaTT m_s=0']
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
    mean_ci,
    paired_comparison,
    per_seed,
    pinned,
    run_line,
    seed_rows,
    write_csv,
    write_seeds_csv,
)
from adatt.experiments.engine import pick_engine, train_in_workers

__all__ = ["write_report", "table5_configs", "run_census_table5", "PAPER_TABLE5", "PROTOCOLS",
           "TUNED_LRS", "TABLE5_MODELS", "CONTEXT_MODELS"]

TASKS = ("income", "never_married", "education")
GROUPS = {"A": dict(E=6, sizes=[128, 64], ms=[0, 3]), "B": dict(E=9, sizes=[96, 48], ms=[0, 3, 6])}
# the model names of the rows (census-table5 --models picks among them)
TABLE5_MODELS = ("ml_mmoe", "ple", "adatt", "shared_bottom", "mmoe", "cross_stitch")
# the context rows' models (not in the paper's Table 5)
CONTEXT_MODELS = ("shared_bottom", "mmoe", "cross_stitch")
# The paper's Table 5 (mean test AUC over 100 runs), columns as printed. Their order
# reads as task 1, 2, 3 in the translation, but the values fit education, income,
# marital (alphabetical): we print both readings' source columns by position.
PAPER_TABLE5 = {
    ("ML-MMoE", "A"): (0.8729, 0.9178, 0.9731), ("PLE", "A"): (0.8683, 0.9164, 0.9697),
    ("AdaTT", "A"): (0.8766, 0.9202, 0.9783), ("ML-MMoE", "B"): (0.8688, 0.9139, 0.9730),
    ("PLE", "B"): (0.8645, 0.9134, 0.9680), ("AdaTT", "B"): (0.8744, 0.9174, 0.9786),
}
# alphabetical reading of the paper's columns: education, income, never_married
PAPER_COLUMN_OF = {"education": 0, "income": 1, "never_married": 2}


def table5_configs(group: str, context: bool = True) -> list[dict[str, Any]]:
    """The configurations of one group: label, family, model options."""
    g = GROUPS[group]
    E, sizes = g["E"], g["sizes"]
    common = {"embedding_dim": None, "tower_sizes": [32]}
    out = [{"label": "ML-MMoE", "family": "ML-MMoE",
            "model": {"name": "ml_mmoe", "expert_sizes": sizes, "num_experts": E, **common}}]
    for fam, name in (("PLE", "ple"), ("AdaTT", "adatt")):
        for ms in g["ms"]:
            out.append({"label": f"{fam} m_s={ms}", "family": fam, "m_s": ms,
                        "model": pinned({"name": name, "expert_sizes": sizes,
                                         "shared_experts": ms,
                                         "experts_per_task": (E - ms) // 3, **common})})
    if context:
        out += [
            {"label": "Shared-bottom", "family": "Shared-bottom", "context": True,
             "model": {"name": "shared_bottom", "expert_sizes": sizes, **common}},
            {"label": "MMoE", "family": "MMoE", "context": True,
             "model": {"name": "mmoe", "expert_sizes": [sizes], "num_experts": E, **common}},
            {"label": "Cross-stitch", "family": "Cross-stitch", "context": True,
             "model": pinned({"name": "cross_stitch", "expert_sizes": sizes, **common})},
        ]
    return out


_PAPER = ["train.optimizer.name=adam", "train.optimizer.lr=1e-4",
          "train.optimizer.weight_decay=0.01", "train.batch_size=512", "train.epochs=10",
          "train.selection.metric=auc"]
# config overrides of each protocol; "tuned" also searches TUNED_LRS per configuration
PROTOCOLS = {
    "paper": _PAPER,
    "tuned": [*_PAPER, "data.dense_scaling=standard"],
}
# the tuned protocol's learning-rate candidates
TUNED_LRS = (1e-4, 3e-4, 1e-3)


def _overrides(model: dict[str, Any]) -> list[str]:
    return [f"model.{k}={json.dumps(v)}" for k, v in model.items()]


def run_census_table5(out_dir: str | Path = "results/census-table5", seeds: int = 100,
                      quick: bool = False, groups: tuple[str, ...] = ("A", "B"),
                      context: bool = True, protocol: str = "paper",
                      data_dir: str | None = None, chunk: int | None = None,
                      progress: bool = True, workers: int | None = None,
                      resume: bool = False,
                      context_seeds: int | None = None,
                      tune_seeds: int = 3,
                      models: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run the Table 5 protocol; writes report.md, results.csv, seeds.csv, table5.png;
    returns the summary (the report is written from it alone).

    ``workers > 1`` trains the (configuration, seed) runs as separate processes,
    each with ``cores // workers`` torch threads; ``workers = 1`` trains each
    configuration's seeds together with
    :func:`~adatt.train.ensemble.train_ensemble`; ``workers=None`` (the
    default) picks one of the two from their measured rates on this host
    (:func:`~adatt.experiments.engine.pick_engine`: a short probe on the first
    configuration, cached in ``out_dir/engine.json``). ``resume`` keeps every
    (configuration, seed) run already finished under ``out_dir/runs`` with the
    same settings and trains only the missing ones, so an interrupted run goes
    on, and ``seeds`` can be raised later (20 after 5 trains 15 more per row).
    ``context_seeds`` trains the context rows (Shared-bottom, MMoE,
    Cross-stitch) with only the first that many seeds (default: ``seeds``).
    ``protocol`` is ``"paper"`` or ``"tuned"`` (see the module docstring);
    ``tune_seeds`` is the number of seeds per learning-rate candidate when tuned.
    ``models`` keeps only the rows of those model names (:data:`TABLE5_MODELS`; every
    ``m_s`` candidate of a family stays, so the selection on validation is redone), for
    rerunning some rows of a published table.
    """
    from adatt.config import load_config

    call = dict(locals())
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise ValueError(f"unknown census group {bad[0] if bad else ''!r}; known: "
                         f"{', '.join(GROUPS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if tune_seeds < 1:
        raise ValueError(f"tune_seeds must be >= 1, got {tune_seeds}")
    unknown = [m for m in models or () if m not in TABLE5_MODELS]
    if unknown:
        raise ValueError(f"unknown census-table5 model {unknown[0]!r}; "
                         f"known: {', '.join(TABLE5_MODELS)}")
    if models is not None and not models:
        raise ValueError("models: empty list; leave it out to run every row")
    if models is not None and not context and not set(models) - set(CONTEXT_MODELS):
        raise ValueError("models: only context rows were chosen and context is off")
    clock = RunClock()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        seeds, groups = min(seeds, 2), ("A",)
    seed_list = list(range(seeds))
    context_list = seed_list[: context_seeds] if context_seeds is not None else seed_list
    if context_seeds is not None and context_seeds < 1:
        raise ValueError(f"context_seeds must be >= 1, got {context_seeds}")
    base = ["data.source=census", *PROTOCOLS[protocol], f"runtime.progress={progress}",
            f"out_dir={out / 'runs'}"]
    if data_dir:
        base.append(f"data.data_dir={data_dir}")
    if quick:
        base += ["train.epochs=2"]
    if quick:
        workers = 1  # quick mode subsamples the training rows in this process
    engine: dict[str, Any] = {"engine": "ensemble" if workers == 1 else "workers",
                              "workers": workers, "source": "given"}
    trainer = _Trainer(workers or 1, resume, chunk, quick)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    jobs = []
    for group in groups:
        for c in table5_configs(group, context):
            if models is not None and c["model"]["name"] not in models:
                continue
            name = f"{group}_{c['label'].replace(' ', '_').replace('=', '')}"
            overrides = [*base, f"name={name}", *_overrides(c["model"])]
            rows[(group, c["label"])] = {**c, "group": group, "results": [], "seconds": 0.0}
            jobs.append(((group, c["label"]), overrides,
                         context_list if c.get("context") else seed_list))
    tuning: dict[str, Any] = {}
    if protocol == "tuned":
        jobs, reused = _tune_learning_rates(jobs, trainer, min(tune_seeds, seeds), tuning)
        for key, (results, seconds) in reused.items():
            rows[key]["results"], rows[key]["seconds"] = list(results), seconds
    todo = [(key, load_config(None, ov), s) for key, ov, s in jobs if s]
    if workers is None:  # the engine with the higher measured rate on this host
        cfg0 = todo[0][1] if todo else None
        choice = (pick_engine(cfg0, trainer.load(cfg0), len(todo[0][2]), out / "engine.json")
                  if cfg0 is not None else None)
        trainer.workers = workers = choice.workers if choice is not None else 1
        engine = choice.as_dict() if choice is not None else {**engine, "workers": 1}
    done = trainer.run(todo)
    for key, (results, seconds) in done.items():
        rows[key]["results"] += results
        rows[key]["seconds"] += seconds
    summary = _summarise(rows, groups, seed_list)
    summary["context_seeds"] = len(context_list)
    # every run's own wall time (a resumed experiment reuses runs made earlier)
    summary["run_seconds_total"] = sum(float(r.get("wall_time_s", 0.0))
                                       for row in rows.values() for r in row["results"])
    # plus the tuning runs of the learning rates not chosen (the chosen ones are in rows)
    summary["run_seconds_total"] += sum(v["unchosen_seconds"] for v in tuning.values())
    summary.update(clock.facts())
    summary["command"] = command_line("census-table5", run_census_table5, call)
    summary["workers"] = workers
    summary["engine"] = engine
    summary["protocol"] = protocol
    summary["quick"] = quick
    summary["models"] = list(models) if models is not None else None
    if tuning:
        summary["tuning"] = {"lrs": list(TUNED_LRS), "tune_seeds": min(tune_seeds, seeds),
                             "chosen": tuning}
    write_report(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class _Trainer:
    """Trains (key, config, seeds) jobs: one vectorised ensemble per job, or worker processes."""

    def __init__(self, workers: int, resume: bool, chunk: int | None, quick: bool) -> None:
        self.workers, self.resume, self.chunk, self.quick = workers, resume, chunk, quick
        self.splits = None

    def load(self, cfg):
        """The census splits (loaded once; quick mode: 20,000 training rows)."""
        if self.splits is None:
            from adatt.data.config import load_splits

            self.splits = load_splits(cfg.data)
            if self.quick:
                import torch

                g = torch.Generator().manual_seed(0)
                idx = torch.randperm(len(self.splits.train), generator=g)[:20_000]
                self.splits.train = self.splits.train.subset(idx)
        return self.splits

    def run(self, jobs) -> dict[Any, tuple[list[dict], float]]:
        """``{key: (results in seed order, seconds)}`` for ``[(key, cfg, seeds)]``."""
        if self.workers > 1:
            return train_in_workers(jobs, self.workers, self.resume) if jobs else {}
        done: dict[Any, tuple[list[dict], float]] = {}
        from adatt.train.ensemble import train_ensemble

        for key, cfg, row_seeds in jobs:
            self.load(cfg)
            ts = time.perf_counter()
            results = train_ensemble(cfg, row_seeds, splits=self.splits, overwrite=True,
                                     chunk=self.chunk, resume=self.resume)
            done[key] = (results, time.perf_counter() - ts)
        return done


def _lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def _with_lr(overrides: list[str], lr: float) -> list[str]:
    """The overrides of a configuration at learning rate ``lr``, its run name tagged."""
    name = next(o for o in overrides if o.startswith("name="))
    return [*overrides, f"{name}_{_lr_tag(lr)}", f"train.optimizer.lr={lr!r}"]


def _tune_learning_rates(jobs, trainer: _Trainer, n_tune: int, tuning: dict[str, Any]):
    """Choose each configuration's learning rate on validation from ``TUNED_LRS``.

    Trains seeds ``0..n_tune-1`` of every (configuration, candidate) and keeps the
    candidate with the best mean summed validation AUC. Returns the final jobs
    (overrides with the chosen learning rate, the seeds still to train) and the
    tuning runs reused as the chosen candidate's first seeds; fills ``tuning``
    with ``{"group label": {"lr": chosen, "valid_auc_sum": {lr: mean}}}``.
    """
    import numpy as np

    from adatt.config import load_config

    tune_list = list(range(n_tune))
    candidates = []
    for key, overrides, _ in jobs:
        for lr in TUNED_LRS:
            candidates.append(((key, lr), load_config(None, _with_lr(overrides, lr)), tune_list))
    tuned = trainer.run(candidates)
    final, reused = [], {}
    for key, overrides, row_seeds in jobs:
        score = {lr: float(np.mean([_valid_score(r) for r in tuned[(key, lr)][0]]))
                 for lr in TUNED_LRS}
        best = max(TUNED_LRS, key=lambda lr: score[lr])
        unchosen = sum(float(r.get("wall_time_s", 0.0)) for lr in TUNED_LRS if lr != best
                       for r in tuned[(key, lr)][0])
        tuning[f"{key[0]} {key[1]}"] = {"lr": best, "unchosen_seconds": unchosen,
                                        "valid_auc_sum": {_lr_tag(k): v for k, v in score.items()}}
        results, seconds = tuned[(key, best)]
        reused[key] = ([r for seed, r in zip(tune_list, results, strict=True)
                        if seed in row_seeds], seconds)
        final.append((key, _with_lr(overrides, best), [s for s in row_seeds if s not in tune_list]))
    return final, reused


def _valid_score(r: dict) -> float:
    return sum(r["valid"][t]["auc"] for t in TASKS)


def _summarise(rows, groups, seeds) -> dict[str, Any]:
    import numpy as np

    summary: dict[str, Any] = {"seeds": len(seeds), "rows": [], "selected_ms": {},
                               "paired": []}
    chosen: dict[tuple[str, str], dict] = {}
    for group in groups:
        by_family: dict[str, list] = {}
        for (g, _label), row in rows.items():
            if g == group:
                by_family.setdefault(row["family"], []).append(row)
        for fam, cands in by_family.items():
            best = max(cands, key=lambda r: np.mean([_valid_score(x) for x in r["results"]]))
            chosen[(group, fam)] = best
            if len(cands) > 1:
                summary["selected_ms"][f"{fam} {group}"] = {
                    "m_s": best["m_s"],
                    "valid_auc_sum": {str(r["m_s"]): float(np.mean(
                        [_valid_score(x) for x in r["results"]])) for r in cands}}
        for (g, label), row in rows.items():
            if g != group:
                continue
            entry = {"group": group, "label": label, "family": row["family"],
                     "m_s": row.get("m_s"),
                     "selected": chosen.get((group, row["family"])) is row,
                     "seconds": row["seconds"], "n": len(row["results"]),
                     "seeds": per_seed(row["results"])}
            for t in TASKS:
                m, h = mean_ci(r["test"][t]["auc"] for r in row["results"])
                entry[t] = {"mean": m, "ci": h}
            summary["rows"].append(entry)
        ada = chosen.get((group, "AdaTT"))
        for base in ("ML-MMoE", "PLE", "MMoE", "Shared-bottom", "Cross-stitch"):
            other = chosen.get((group, base))
            if ada is None or other is None:
                continue
            n = min(len(ada["results"]), len(other["results"]))  # seeds 0..n-1 of both
            for t in TASKS:
                cmp = paired_comparison([r["test"][t]["auc"] for r in ada["results"][:n]],
                                        [r["test"][t]["auc"] for r in other["results"][:n]])
                summary["paired"].append({"group": group, "vs": base, "task": t, **cmp})
    return summary


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write report.md, results.csv, seeds.csv and table5.png into ``out`` from ``summary``
    alone (what :func:`run_census_table5` returns and stores as summary.json); with
    ``prefix`` (e.g. ``census-table5`` for docs/results) the files are ``<prefix>.md``,
    ``<prefix>.csv``, ``<prefix>-seeds.csv`` and ``<prefix>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_name, csv_name, seeds_name, png_name = (
        ("report.md", "results.csv", "seeds.csv", "table5.png") if prefix is None
        else (f"{prefix}.md", f"{prefix}.csv", f"{prefix}-seeds.csv", f"{prefix}.png"))
    protocol, quick = summary["protocol"], summary["quick"]
    header = ["group", "model", "selected", "seeds"] + [f"{t} AUC" for t in TASKS] + \
             [f"paper col {i + 1}" for i in range(3)]
    md_rows, csv_rows = [], []
    for e in summary["rows"]:
        paper = PAPER_TABLE5.get((e["family"], e["group"]), ("", "", ""))
        cells = [f"{e[t]['mean']:.4f} ± {e[t]['ci']:.4f}" for t in TASKS]
        md_rows.append([e["group"], e["label"], "yes" if e["selected"] else "", e["n"]] + cells +
                       [p if e["selected"] else "" for p in paper])
        csv_rows.append([e["group"], e["label"], e["selected"], e["n"]] +
                        [e[t]["mean"] for t in TASKS] + [e[t]["ci"] for t in TASKS])
    write_csv(out / csv_name, ["group", "model", "selected", "seeds"] +
              [f"{t}_auc" for t in TASKS] + [f"{t}_ci95" for t in TASKS], csv_rows)
    write_seeds_csv(out / seeds_name, ["group", "model", "family", "m_s", "selected"], [
        row for e in summary["rows"] for row in seed_rows(
            [e["group"], e["label"], e["family"], "" if e["m_s"] is None else e["m_s"],
             e["selected"]], e["seeds"])])
    paired_rows = [[p["group"], f"AdaTT − {p['vs']}", p["task"], f"{p['diff']:+.4f}",
                    f"± {p['ci']:.4f}", f"{p['p']:.3g}", f"{p['wins']}/{p['n']}"]
                   for p in summary["paired"]]
    ms = "\n".join(f"- {k}: m_s = {v['m_s']} (mean validation AUC sum by m_s: "
                   + ", ".join(f"{a}: {b:.4f}" for a, b in v["valid_auc_sum"].items()) + ")"
                   for k, v in summary["selected_ms"].items())
    quick_note = " (quick mode: 20,000 training rows, 2 epochs)" if quick else ""
    context_note = (f" ({summary['context_seeds']} for the context rows Shared-bottom, MMoE "
                    "and Cross-stitch)" if summary.get("context_seeds", summary["seeds"])
                    != summary["seeds"] else "")
    w = summary["workers"]
    workers_note = "es, training side by side" if w > 1 else ", seeds trained together"
    eng = summary.get("engine") or {}
    if eng.get("source") in ("measured", "cached"):
        workers_note += (f"; chosen from the {eng['source']} rates on this host: ensemble "
                         f"{eng['ensemble_rate']:,.0f}, {eng['workers']} workers "
                         f"{eng['workers_rate']:,.0f} examples/s")
    paired_header = ["group", "comparison", "task", "mean diff", "95% CI", "p (paired t)",
                     "AdaTT wins"]
    tuning = summary.get("tuning")
    if tuning:
        lrs = ", ".join(f"{lr:g}" for lr in tuning["lrs"])
        protocol_text = (
            "one-hot categorical inputs (gathered), z-scored continuous columns fitted on\n"
            f"training rows, Adam with the learning rate chosen per configuration from\n"
            f"{{{lrs}}} on validation ({tuning['tune_seeds']} seeds per candidate), weight "
            "decay 0.01")
        tuning_rows = [[k, f"{v['lr']:g}"] + [f"{v['valid_auc_sum'][_lr_tag(lr)]:.4f}"
                                              for lr in tuning["lrs"]]
                       for k, v in tuning["chosen"].items()]
        tuning_md = ("\n## Learning rate chosen on validation (mean summed validation AUC "
                     "of the tuning seeds)\n\n" + markdown_table(
                         ["configuration", "chosen lr"] + [f"lr {lr:g}" for lr in tuning["lrs"]],
                         tuning_rows) + "\n")
    else:
        protocol_text = ("one-hot categorical inputs (gathered), min-max scaled\n"
                         "continuous columns fitted on training rows, Adam lr 1e-4, "
                         "weight decay 0.01")
        tuning_md = ""
    title = "the paper's Table 5 protocol" if protocol == "paper" else \
        f"Table 5, {protocol} protocol"
    chosen = summary.get("models")
    subset_note = ("" if not chosen else "\nRows rerun here (the others of the table are "
                   "not part of this call): " + ", ".join(chosen) + ".\n")
    text = f"""# Census-Income, {title}
{subset_note}
{summary['seeds']} seeds per configuration{context_note}{quick_note};
wall time of this call {summary['wall_time_s']:.0f} s; the runs' own wall times add up to
{summary['run_seconds_total']:.0f} s ({summary['workers']} worker process{workers_note};
a resumed call reuses finished runs).

Protocol ({protocol}): {protocol_text},
batch 512, {'2' if quick else '10'} epochs, the epoch with the best mean validation AUC
kept and scored on test; 2 fusion levels of 1-layer experts, towers 32.
Group A: 6 experts per level, sizes (128, 64); group B: 9, sizes (96, 48).
`m_s` chosen on validation:

{ms}
{tuning_md}
Mean test AUC ± 95% confidence interval over seeds. The paper's columns are
printed as in its Table 5 (their task order is ambiguous: the values fit
education, income, marital status in that order).

{markdown_table(header, md_rows)}

## Paired comparison (same seeds): AdaTT (selected m_s) minus baseline, test AUC

{markdown_table(paired_header, paired_rows) if paired_rows else
 "No baseline rows in this call: nothing to pair AdaTT with."}

Plot: [{png_name}]({png_name}); every seed's validation and test metrics:
[{seeds_name}]({seeds_name}).

{run_line(summary)}
"""
    (out / md_name).write_text(text)
    _plot(out / png_name, summary)


def _plot(path: Path, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [e for e in summary["rows"] if e["selected"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, t in zip(axes, TASKS, strict=True):
        labels = [f"{e['family']} {e['group']}" for e in sel]
        means = [e[t]["mean"] for e in sel]
        cis = [0 if e[t]["ci"] != e[t]["ci"] else e[t]["ci"] for e in sel]
        ax.barh(labels, means, xerr=cis, color="tab:blue", alpha=0.7)
        lo = min(means) - 3 * max(max(cis), 1e-3)
        ax.set_xlim(lo, max(means) + 3 * max(max(cis), 1e-3))
        ax.set_title(f"{t}: test AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
