"""Figure 3 of the paper: what AdaTT's fusion units learned, as T x E expert-weight heatmaps.

Notation: B batch, T tasks, E experts of a level (here E = T: one per task),
G fusion units of a level (here G = T), L levels, S seeds.

The paper (section 4.5) trains AdaTT-sp with two fusion levels, one expert per
task, no shared expert, experts of 256 and 128, then averages over the test
set the combined expert weights of every task unit, ``pad(v_t) + G_t`` (Eq.
11; with one expert per task ``v_t`` is fixed to 1, so the weight of task t on
its own expert is ``1 + G_t[t]`` and the gate's weights sum to 1), and draws
one T x E heatmap per level. It finds that level 0 separates the task groups
(consumption vs engagement) and that level 1 shares more broadly.

We train the same model on the recommender simulator and read the weights
with ``model.forward_with_weights`` (``[B, G, E]`` per level). Default preset:
``all`` (nine tasks: four consumption, five engagement), not ``group3``:
"separates task groups" needs groups, and group3's engagement side is only
``dislike`` (which loads the shared preference factor negatively) and
``follow`` (0.05% positives), so a family structure is barely defined there;
``all`` holds the paper's three Figure-3 tasks (watch_time, view, like) plus
enough tasks on each side to see a block structure. The heatmaps order tasks
and experts by family (consumption first).

Two summary numbers per level quantify what the paper reads off its figure,
from the gate part only (the weights on experts the task does not own, which
are pure AllExpertGF weights): ``same/other``, the mean weight a task gives
to one expert of another task of its own family divided by the mean weight
it gives to one expert of the other family (> 1: the level separates the
families), and ``foreign``, the total weight a task gives to experts it does
not own (higher: broader sharing).

Full mode: 2,000,000 rows, 3 seeds (weights averaged over seeds: expert t
belongs to task t in every seed, so the average is meaningful), industrial
sizes, 4.8M training examples over all copies. Expected runtime: roughly
10-20 minutes on 2 CPU cores (an estimate from measured throughput).
``quick=True``: 150,000 rows, 2 seeds, experts (32, 16), towers 16,
embeddings 8, one torch thread: under a minute on 2 cores.

Example:
    >>> import numpy as np
    >>> w = np.array([[1.5, 0.3, 0.2], [0.4, 1.4, 0.2], [0.1, 0.1, 1.8]])
    >>> s = family_sharing(w, ["c", "c", "e"], owners=[0, 1, 2])
    >>> round(s["same_over_other"], 3), round(s["foreign"], 3)
    (2.333, 0.433)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adatt.experiments.common import (
    RunClock,
    command_line,
    markdown_table,
    run_line,
    seed_rows,
    write_csv,
    write_seeds_csv,
)
from adatt.experiments.common import per_seed as seed_numbers
from adatt.experiments.task_groups import (
    QUICK_SIZES,
    SIM_SIZES,
    model_overrides,
    run_seeds,
    seed_means,
    selection_override,
    sim_overrides,
)

__all__ = ["write_report", "run_expert_weights", "mean_expert_weights", "family_sharing",
           "fig3_model"]

QUICK_ROWS_FIG3 = 150_000  # more than the other quick modes: one cheap model, weights need data


def fig3_model(sizes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model options of Figure 3: AdaTT-sp, 2 levels, 1 expert per task, no shared expert.

    >>> fig3_model()["expert_sizes"], fig3_model()["experts_per_task"]
    ([256, 128], 1)
    """
    return {"name": "adatt_sp", "experts_per_task": 1, **(SIM_SIZES if sizes is None else sizes)}


@torch.no_grad()
def mean_expert_weights(model: nn.Module, data, batch_size: int = 8192) -> list[np.ndarray]:
    """Per level, the combined expert weights averaged over every row of ``data``: ``[G, E]``.

    Args:
        model: a model with ``forward_with_weights(dense, cat) -> (logits, L x [B, G, E])``.
        data: a :class:`~adatt.data.batch.TensorDataset` (row weights are ignored).
        batch_size: rows per forward pass.

    Returns:
        L float64 arrays ``[G, E]`` (AdaTT: ``pad(v_t) + G_t`` averaged over rows).
    """
    was_training = model.training
    model.eval()
    sums: list[torch.Tensor] | None = None
    n = 0
    for b in data.batches(batch_size):
        _, weights = model.forward_with_weights(b.dense, b.cat)  # L x [B,G,E]
        part = [w.double().sum(0) for w in weights]  # [B,G,E] -> [G,E]
        sums = part if sums is None else [a + p for a, p in zip(sums, part, strict=True)]
        n += b.dense.shape[0]
    model.train(was_training)
    if sums is None or n == 0:
        raise ValueError("mean_expert_weights: no rows")
    return [(s / n).numpy() for s in sums]


def family_sharing(weights: np.ndarray, families: Sequence[str],
                   owners: Sequence[int]) -> dict[str, float]:
    """How a level's fusion units share experts across task families (gate part only).

    Args:
        weights: ``[T, E]`` mean combined weights of the T task units.
        families: the family of each task.
        owners: the task owning each expert.

    Returns:
        ``same``: mean weight on one expert of another task of the same family;
        ``other``: mean weight on one expert of a task of another family;
        ``same_over_other``: their ratio (nan when a term is undefined);
        ``foreign``: mean over tasks of the total weight on experts not owned by the task;
        ``native``: mean over tasks of the total weight on its own experts.
    """
    w = np.asarray(weights, dtype=np.float64)
    T, E = w.shape
    if len(families) != T or len(owners) != E:
        raise ValueError(f"weights {w.shape}: need {T} families and {E} owners")
    same, other, foreign, native = [], [], [], []
    for t in range(T):
        own = [e for e in range(E) if owners[e] == t]
        native.append(w[t, own].sum())
        foreign.append(w[t].sum() - w[t, own].sum())
        for e in range(E):
            if owners[e] == t:
                continue
            (same if families[owners[e]] == families[t] else other).append(w[t, e])
    s = float(np.mean(same)) if same else float("nan")
    o = float(np.mean(other)) if other else float("nan")
    ratio = s / o if same and other and o > 0 else float("nan")
    return {"same": s, "other": o, "same_over_other": ratio,
            "foreign": float(np.mean(foreign)), "native": float(np.mean(native))}


def run_expert_weights(out_dir: str | Path = "results/expert-weights", quick: bool = False,
                       seeds: int = 3, progress: bool = True, *, preset: str = "all",
                       rows: int | None = None, device: str = "cpu",
                       threads: int | None = None, chunk: int | None = None,
                       resume: bool = False) -> dict[str, Any]:
    """Train the Figure 3 model; write report.md, weights.csv, seeds.csv,
    weights-seeds.csv, expert_weights.png.

    Args:
        out_dir: where the report, table, heatmaps and runs (``runs/``) go.
        quick: 2 seeds, 150,000 rows, narrow model.
        seeds: S seeds (0..S-1); the heatmaps average the S models' weights.
        progress: progress bars.
        preset: simulator preset (default ``all``; see the module docstring).
        rows: simulator rows (default 2,000,000; quick 150,000).
        device: ``cpu`` or ``cuda``.
        threads: torch threads (default: all cores; quick mode 1).
        chunk: seeds trained together at most (memory).
        resume: keep the seed runs already finished in ``out_dir/runs`` with the same
            configuration and train only the missing ones.

    Returns:
        The summary: tasks, families, per level the mean weights ``[T, E]`` (seed
        average, data order) and the sharing statistics per seed and of the average.
    """
    from adatt.config import load_config
    from adatt.data.config import load_splits
    from adatt.data.simulator import TASKS
    from adatt.train.runs import build_model

    call = dict(locals())
    clock = RunClock()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        seeds = min(seeds, 2)
    rows = rows or (QUICK_ROWS_FIG3 if quick else 2_000_000)
    seed_list = list(range(seeds))
    model_opts = fig3_model(QUICK_SIZES if quick else SIM_SIZES)
    base = sim_overrides(preset, rows, out / "runs", progress, quick, device=device,
                         threads=threads)
    name = f"fig3_{preset}"
    splits = load_splits(load_config(None, base).data)
    sel, note = selection_override(splits)
    cfg = load_config(None, [*base, sel, f"name={name}", *model_overrides(model_opts)])
    ts = time.perf_counter()
    engines: dict[str, Any] | None = None if quick else {}  # quick: the ensemble, no probe
    results = run_seeds(cfg, seed_list, splits, chunk, resume, engines)
    train_s = time.perf_counter() - ts
    tasks = list(splits.schema.task_names)
    families = [TASKS[t].family for t in tasks]
    per_seed: list[list[np.ndarray]] = []
    owners: list[list[int]] = []
    for s in seed_list:
        model = build_model(cfg.model, splits.schema)
        state = torch.load(out / "runs" / name / f"seed_{s}" / "best.pt", map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state)
        per_seed.append(mean_expert_weights(model, splits.test))
        m = model.experts_per_task
        owners = [[t for t in range(len(tasks)) for _ in range(m[t])]] * len(per_seed[-1])
    levels = len(per_seed[0])
    mean_w = [np.mean([p[lv] for p in per_seed], axis=0) for lv in range(levels)]  # S x [T,E]
    stats = {
        "mean": [family_sharing(mean_w[lv], families, owners[lv]) for lv in range(levels)],
        "per_seed": [[family_sharing(p[lv], families, owners[lv]) for lv in range(levels)]
                     for p in per_seed],
    }
    summary = {"quick": quick, "seeds": seeds, "rows": rows, "preset": preset, "tasks": tasks,
               "families": families, "model": model_opts,
               "weights": [w.tolist() for w in mean_w], "sharing": stats,
               "test": seed_means(results), "train_s": train_s, "selection_note": note,
               "seed_list": seed_list, "seed_metrics": seed_numbers(results, seed_list),
               "weights_per_seed": [[w.tolist() for w in p] for p in per_seed],
               "engines": engines or {}, **clock.facts(),
               "command": command_line("expert-weights", run_expert_weights, call)}
    write_report(out, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _family_order(families: Sequence[str]) -> list[int]:
    return sorted(range(len(families)), key=lambda t: (families[t] != "consumption", t))


def write_report(out: str | Path, summary: dict[str, Any], prefix: str | None = None) -> None:
    """Write the report and its CSVs and plots into ``out`` from ``summary`` alone (what
    the run function returns and stores as summary.json); with ``prefix`` (e.g.
    ``expert-weights`` for docs/results) the files are ``<prefix>.md``, ``<prefix>.csv``
    (the weights), ``<prefix>-seeds.csv``, ``<prefix>-weights-seeds.csv`` and
    ``<prefix>.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_name, csv_name, seeds_name, wseeds_name, png = (
        ("report.md", "weights.csv", "seeds.csv", "weights-seeds.csv", "expert_weights.png")
        if prefix is None else (f"{prefix}.md", f"{prefix}.csv", f"{prefix}-seeds.csv",
                                f"{prefix}-weights-seeds.csv", f"{prefix}.png"))
    tasks, families = summary["tasks"], summary["families"]
    order = _family_order(families)
    csv_rows, tables = [], []
    for lv, w in enumerate(summary["weights"]):
        w = np.asarray(w)
        header = ["task (family)"] + [f"e_{tasks[e]}" for e in order]
        md = [[f"{tasks[t]} ({families[t][:3]}.)"] + [f"{w[t, e]:.3f}" for e in order]
              for t in order]
        tables.append(f"### Level {lv}\n\n" + markdown_table(header, md))
        for t in range(len(tasks)):
            for e in range(w.shape[1]):
                csv_rows.append([lv, tasks[t], families[t], f"e_{tasks[e]}", w[t, e]])
    write_csv(out / csv_name, ["level", "task", "family", "expert", "mean_weight"],
              csv_rows)
    write_seeds_csv(out / seeds_name, [], seed_rows([], summary["seed_metrics"]))
    write_csv(out / wseeds_name, ["seed", "level", "task", "family", "expert", "weight"],
              [[seed, lv, tasks[t], families[t], f"e_{tasks[e]}", row[e]]
               for seed, levels in zip(summary["seed_list"], summary["weights_per_seed"],
                                       strict=True)
               for lv, w in enumerate(levels) for t, row in enumerate(w)
               for e in range(len(row))])
    _plot(out / png, summary, order)
    st = summary["sharing"]
    sh_header = ["level", "same/other (mean weights)", "foreign mass", "native mass",
                 "same/other per seed", "foreign per seed"]
    sh_rows = []
    for lv, s in enumerate(st["mean"]):
        ps = [x[lv] for x in st["per_seed"]]
        sh_rows.append([lv, f"{s['same_over_other']:.3f}", f"{s['foreign']:.3f}",
                        f"{s['native']:.3f}",
                        ", ".join(f"{x['same_over_other']:.2f}" for x in ps),
                        ", ".join(f"{x['foreign']:.3f}" for x in ps)])
    verdict = _verdict(st["mean"], st["per_seed"])
    mode = ("QUICK MODE (150,000 rows, narrow model, 2 seeds): a short training run, "
            "not the full protocol.\n\n" if summary["quick"] else "")
    test = ", ".join(f"{t} {v:.4f}" for t, v in summary["test"].items())
    note = (f" Note, {summary['selection_note']}." if summary.get("selection_note") else "")
    E = len(summary["weights"][0][0])
    uniform = (E - 1) / E
    text = f"""# Figure 3: combined expert weights of AdaTT-sp's fusion units

{mode}Simulator preset `{summary['preset']}` ({summary['rows']:,} rows), AdaTT-sp with 2 fusion
levels, one expert per task, no shared expert, experts {summary['model']['expert_sizes']},
towers {summary['model']['tower_sizes']}; Adam lr 1e-3, one pass; {summary['seeds']} seeds.
Training {summary['train_s']:.0f} s of the wall time below.

Each cell: the combined weight `pad(v_t) + G_t` (Eq. 11) of the task unit (row)
on the expert (column), averaged over the test rows and over the seeds. With one
expert per task `v_t = 1`, so a row sums to 2 and its own expert carries 1 plus
its gate weight. Rows and columns are ordered by family (consumption first).
Test NE/MSE of the model (mean over seeds): {test}.{note}

{(chr(10) * 2).join(tables)}

## Sharing between families (gate weights on experts the task does not own)

{markdown_table(sh_header, sh_rows)}

`same/other` > 1: a task puts more weight on the experts of its own family's
other tasks than on the other family's experts (the level separates the task
groups). `foreign`: the total weight on experts a task does not own (1 minus
the gate's weight on its own expert); higher means broader sharing. An
untrained gate is near uniform, with foreign mass (E - 1) / E = {uniform:.3f}.

Paper (Figure 3): level 0 separates the task groups; level 1 shares more broadly.
Here: {verdict}

Heatmaps: [{png}]({png}); every seed's weights:
[{wseeds_name}]({wseeds_name}); every seed's validation and test metrics:
[{seeds_name}]({seeds_name}).

{run_line(summary)}
"""
    (out / md_name).write_text(text)


def _verdict(stats: list[dict[str, float]],
             per_seed: list[list[dict[str, float]]] | None = None) -> str:
    """The paper's three readings of Figure 3, each checked (and counted over seeds).

    >>> print(_verdict([{"same_over_other": 2.0, "foreign": 0.3},
    ...                 {"same_over_other": 1.0, "foreign": 0.5}]))
    level 0 separates the families (same/other 2.00 > 1.1): yes; level 1 separates them
    less than level 0 (1.00 < 2.00): yes; level 1 shares more broadly (foreign mass 0.500 >
    0.300): yes. All three readings of the paper hold.
    """
    if len(stats) < 2:
        return "only one level: nothing to compare."
    checks = [
        ("level 0 separates the families (same/other {r0:.2f} > 1.1)",
         lambda s: s[0]["same_over_other"] > 1.1),
        ("level 1 separates them less than level 0 ({r1:.2f} < {r0:.2f})",
         lambda s: s[1]["same_over_other"] < s[0]["same_over_other"]),
        ("level 1 shares more broadly (foreign mass {f1:.3f} > {f0:.3f})",
         lambda s: s[1]["foreign"] > s[0]["foreign"]),
    ]
    vals = {"r0": stats[0]["same_over_other"], "r1": stats[1]["same_over_other"],
            "f0": stats[0]["foreign"], "f1": stats[1]["foreign"]}
    if vals["r0"] != vals["r0"]:
        return "the task set has no two families with two tasks each: nothing to compare."
    parts, held = [], 0
    for text, test in checks:
        ok = bool(test(stats))
        held += ok
        seeds = ""
        if per_seed and len(per_seed) > 1:
            seeds = f" (in {sum(bool(test(p)) for p in per_seed)}/{len(per_seed)} seeds)"
        parts.append(f"{text.format(**vals)}: {'yes' if ok else 'no'}{seeds}")
    tail = ("All three readings of the paper hold." if held == 3 else
            f"{held} of the paper's three readings hold.")
    return "; ".join(parts) + ". " + tail


def _plot(path: Path, summary: dict[str, Any], order: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, families = summary["tasks"], summary["families"]
    T = len(tasks)
    n_cons = sum(f == "consumption" for f in families)
    ws = [np.asarray(w)[np.ix_(order, order)] for w in summary["weights"]]  # [T,E] reordered
    vmax = max(float(w.max()) for w in ws)
    fig, axes = plt.subplots(1, len(ws), figsize=(0.75 * T * len(ws) + 2.5, 0.6 * T + 1.8),
                             squeeze=False)
    labels = [tasks[t] for t in order]
    for lv, (ax, w) in enumerate(zip(axes[0], ws, strict=True)):
        im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=vmax)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if w[i, j] < 0.6 * vmax else "k")
        if 0 < n_cons < T:
            ax.axhline(n_cons - 0.5, color="r", lw=1.2)
            ax.axvline(n_cons - 0.5, color="r", lw=1.2)
        ax.set_xticks(range(T), [f"e_{x}" for x in labels], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(T), labels, fontsize=8)
        ax.set_title(f"level {lv}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"AdaTT-sp mean expert weights, {summary['preset']} "
                 "(red lines: consumption | engagement)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
