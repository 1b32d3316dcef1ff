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
           "write_csv", "per_seed", "SEED_HEADER", "seed_rows", "write_seeds_csv",
           "RunClock", "command_line", "run_line", "wins_text", "PINNED", "pinned"]

#: model options whose defaults follow the authors' code (``mtl_lib.py``) since they were
#: added; the experiments write them into every run's config, so that a resumed experiment
#: never takes a run made under the earlier defaults (whose saved config lacks them) as done
PINNED: dict[str, dict[str, str]] = {
    "adatt": {"native_rule": "authors"}, "adatt_sp": {"native_rule": "authors"},
    "cross_stitch": {"stitch_init": "authors"}}


def pinned(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` (options with ``name``) with its :data:`PINNED` options written out.

    >>> pinned({"name": "cross_stitch", "expert_sizes": [8]})
    {'name': 'cross_stitch', 'expert_sizes': [8], 'stitch_init': 'authors'}
    >>> pinned({"name": "mmoe"})
    {'name': 'mmoe'}
    """
    return {**model, **PINNED.get(model["name"], {})}


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


def per_seed(results, seeds=None) -> list[dict[str, Any]]:
    """The numbers of each seed's run, for a summary (and its per-seed CSV).

    ``results`` are the training results (one dict per seed); each entry keeps
    the seed and, per split (``valid``, ``test``), per task, every numeric metric.

    >>> per_seed([{"test": {"a": {"ne": 0.9, "n": 3, "note": "x"}}}], seeds=[7])
    [{'seed': 7, 'test': {'a': {'ne': 0.9, 'n': 3.0}}}]
    """
    out = []
    for k, r in enumerate(results):
        seed = int(seeds[k]) if seeds is not None else int(r.get("seed", k))
        entry: dict[str, Any] = {"seed": seed}
        for split in ("valid", "test"):
            if isinstance(r.get(split), dict):
                entry[split] = {
                    task: {m: float(v) for m, v in ms.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
                    for task, ms in r[split].items() if isinstance(ms, dict)}
        out.append(entry)
    return out


#: columns of every experiment's per-seed CSV after its own leading columns
SEED_HEADER = ["seed", "split", "task", "metric", "value"]


def seed_rows(prefix: list[Any], seeds: list[dict[str, Any]]) -> list[list[Any]]:
    """Long-format rows ``prefix + [seed, split, task, metric, value]`` of :func:`per_seed`.

    >>> seed_rows(["A"], [{"seed": 0, "test": {"a": {"auc": 0.5}}}])
    [['A', 0, 'test', 'a', 'auc', 0.5]]
    """
    rows = []
    for e in seeds:
        for split in ("valid", "test"):
            for task, ms in e.get(split, {}).items():
                for metric, v in ms.items():
                    rows.append([*prefix, e["seed"], split, task, metric, v])
    return rows


def write_seeds_csv(path, columns: list[str], rows: list[list[Any]]) -> None:
    """The per-seed CSV of a report: ``columns`` + :data:`SEED_HEADER`."""
    write_csv(path, [*columns, *SEED_HEADER], rows)


class RunClock:
    """Wall and CPU time of an experiment call, and the machine it ran on.

    CPU time is user + system time of this process and of its finished child
    processes (worker processes included): well below ``cores x wall`` means the
    run waited (other work on the machine, a pause).
    """

    def __init__(self) -> None:
        import time

        self.t0, self.cpu0 = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        import resource

        a = resource.getrusage(resource.RUSAGE_SELF)
        b = resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def facts(self) -> dict[str, Any]:
        """``wall_time_s``, ``cpu_time_s``, ``cpu_cores`` (visible), ``torch_threads``."""
        import os
        import time

        import torch

        return {"wall_time_s": time.perf_counter() - self.t0,
                "cpu_time_s": self._cpu() - self.cpu0, "cpu_cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads()}


# run_* parameter -> command-line flag of ``adatt experiment`` (see adatt.cli)
_FLAGS = (("quick", "--quick"), ("seeds", "--seeds"), ("context_seeds", "--context-seeds"),
          ("protocol", "--protocol"), ("tune_seeds", "--tune-seeds"), ("groups", "--groups"),
          ("context", "--no-context"), ("models", "--models"), ("rows", "--rows"),
          ("census", "--no-census"), ("sim", "--no-sim"), ("workers", "--workers"),
          ("resume", "--resume"), ("device", "--device"), ("threads", "--threads"))
_NOT_ARGUMENTS = ("out_dir", "progress", "data_dir")


def command_line(experiment: str, fn, values: dict[str, Any]) -> str:
    """The ``adatt experiment`` command equivalent to calling ``fn(**values)``, in backticks.

    Arguments equal to ``fn``'s defaults are left out; the output and data
    directories and progress bars are not part of it; arguments with no
    command-line flag are listed after it.

    >>> def run(out_dir, quick=False, seeds=3, *, groups=("a", "b"), chunk=None): ...
    >>> command_line("x", run, {"quick": False, "seeds": 5, "groups": ("a",), "chunk": 2})
    '`adatt experiment x --seeds 5 --groups a` (and the argument chunk=2)'
    """
    import inspect

    params = inspect.signature(fn).parameters

    def same(a: Any, b: Any) -> bool:
        return _listed(a) == _listed(b)

    parts, extra = ["adatt", "experiment", experiment], []
    flags = dict(_FLAGS)
    for name, flag in _FLAGS:
        if name not in values or same(values[name], params[name].default):
            continue
        v = values[name]
        if isinstance(v, bool):
            if v is (not flag.startswith("--no-")):
                parts.append(flag)
        elif isinstance(v, (list, tuple)):
            parts += [flag, ",".join(str(x) for x in v)]
        elif v is not None:
            parts += [flag, str(v)]
    for name, v in values.items():
        if name in flags or name in _NOT_ARGUMENTS or name not in params:
            continue
        if not same(v, params[name].default):
            extra.append(f"{name}={v!r}")
    text = f"`{' '.join(parts)}`"
    if extra:
        text += f" (and the argument{'s' if len(extra) > 1 else ''} {', '.join(extra)})"
    return text


def _listed(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


def run_line(summary: dict[str, Any]) -> str:
    """The report's last line: the command, wall and CPU time, the machine, and how the
    seeds were trained where a probe chose it (``summary["engines"]``, see
    :func:`~adatt.experiments.task_groups.run_seeds`).

    >>> print(run_line({"command": "`adatt experiment x`", "wall_time_s": 12.3,
    ...                 "cpu_time_s": 20.0, "cpu_cores": 2, "torch_threads": 2}))
    Command: `adatt experiment x`.
    Wall time 12 s, CPU time 20 s (this process and its workers); 2 CPU cores visible, ...
    >>> print(run_line({"command": "`adatt experiment x --resume`", "wall_time_s": 1,
    ...                 "cpu_time_s": 1, "cpu_cores": 2, "torch_threads": 2}).splitlines()[-1])
    With `--resume`, seed runs finished by an earlier invocation were kept: these times, ...
    >>> print(run_line({"command": "`c`", "wall_time_s": 1, "cpu_time_s": 1, "cpu_cores": 2,
    ...                 "torch_threads": 2, "engines": {
    ...     "a": {"engine": "workers", "workers": 2, "ensemble_rate": 2e4,
    ...           "workers_rate": 3e4, "source": "measured"},
    ...     "b": {"engine": "ensemble", "workers": 2, "ensemble_rate": 9e4,
    ...           "workers_rate": 6e4, "source": "cached"}}}).splitlines()[-1])
    Seeds trained, per configuration, as one vectorised ensemble or as separate runs in \
worker processes, whichever a short probe measured faster on this host (training \
examples/s): a: 2 workers (ensemble 20,000, workers 30,000); b: ensemble (ensemble 90,000, \
workers 60,000).
    """
    text = (f"Command: {summary['command']}.\nWall time {summary['wall_time_s']:.0f} s, "
            f"CPU time {summary['cpu_time_s']:.0f} s (this process and its workers); "
            f"{summary['cpu_cores']} CPU cores visible, torch threads: "
            f"{summary['torch_threads']}.")
    if "--resume" in summary["command"]:
        text += ("\nWith `--resume`, seed runs finished by an earlier invocation were kept: "
                 "these times, and any per-configuration seconds above, count this "
                 "invocation only (each kept run's own wall time is in its `results.json`).")
    engines = summary.get("engines") or {}
    if engines:
        parts = [f"{name}: ensemble (nothing to choose: one seed to train, one core or "
                 "another device)"
                 if e["source"] == "no choice" else
                 f"{name}: " + (f"{e['workers']} workers" if e["engine"] == "workers"
                                else "ensemble")
                 + f" (ensemble {e['ensemble_rate']:,.0f}, workers {e['workers_rate']:,.0f})"
                 for name, e in engines.items()]
        text += ("\nSeeds trained, per configuration, as one vectorised ensemble or as "
                 "separate runs in worker processes, whichever a short probe measured faster "
                 "on this host (training examples/s): " + "; ".join(parts) + ".")
    return text


def wins_text(ours: list[float], others: dict[str, list[float]]) -> str:
    """``"label n"`` per other configuration: seeds in which ``ours`` is lower (paired by seed).

    >>> wins_text([1.0, 2.0, 3.0], {"B": [2.0, 1.0, 4.0], "C": [0.0, 0.0, 0.0]})
    'B 2, C 0'
    """
    return ", ".join(f"{label} {sum(a < b for a, b in zip(ours, v, strict=False))}"
                     for label, v in others.items())
