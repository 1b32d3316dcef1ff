"""Hyperparameter search over dotted config keys with Optuna (``adatt tune``).

A search space is a YAML mapping of dotted config keys (the keys of
``adatt train`` overrides) to a range or a list of choices::

    train.optimizer.lr: {low: 1.0e-5, high: 1.0e-2, log: true}
    train.optimizer.weight_decay: {low: 0.0, high: 0.1}
    train.batch_size: {low: 256, high: 2048, step: 256}      # ints: both bounds ints
    model.expert_sizes: {choices: [[128, 64], [64, 32]]}

Each trial is an ordinary run directory ``<study>/trials/trial_NNNN`` trained
by :func:`adatt.train.trainer.train` with the sampled values applied as
overrides. The objective is the run's validation selection score
(``train.selection.metric``, read from its ``results.json``; its direction is
the metric's); test metrics are reported only for the best trial. The study
lives in ``<study>/study.db`` (SQLite): running the same command again resumes
it (``--trials`` is the study's total). Each evaluation's validation score is
reported to Optuna, whose median pruner stops hopeless trials (their run
directories are kept, without ``results.json``). ``report.md`` and
``report.png`` summarise the study. Optuna is imported only here, on use.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "space.yaml"
    >>> _ = path.write_text("train.optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\\n"
    ...                     "train.batch_size: {choices: [256, 512]}\\n")
    >>> space = load_space(path)
    >>> space["train.optimizer.lr"]
    ParamSpec(key='train.optimizer.lr', low=0.0001, high=0.01, log=True, step=None, choices=None)
    >>> _ = path.write_text("train.optimizer.lr: {low: 1.0e-2, high: 1.0e-4}\\n")
    >>> load_space(path)
    Traceback (most recent call last):
    ...
    adatt.config.ConfigError: ...space.yaml: train.optimizer.lr: low (0.01) must be below high ...
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from adatt.config import ConfigError, RunConfig, load_config
from adatt.experiments.common import markdown_table

__all__ = ["ParamSpec", "load_space", "check_space", "execution_overrides", "trial_seed",
           "run_study", "write_report"]

_FIELDS = {"low", "high", "log", "step", "choices"}
_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class ParamSpec:
    """One searched key: a range (``low``..``high``, ``log`` scale, ``step``) or ``choices``."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None

    @property
    def is_int(self) -> bool:
        """Both bounds (and the step, if any) are integers: an integer range."""
        return all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high) + ((self.step,) if self.step else ()))

    def bounds(self) -> list[Any]:
        """The values a check applies: the bounds, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _spec(where: str, key: Any, spec: Any) -> ParamSpec:
    if not isinstance(key, str) or not key or " " in key:
        raise ConfigError(f"{where}: {key!r}: a key is a dotted config key (train.optimizer.lr)")
    name = f"{where}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{name}: give a mapping {{low, high[, log, step]}} or {{choices}}")
    unknown = sorted(set(map(str, spec)) - _FIELDS)
    if unknown:
        raise ConfigError(f"{name}: unknown field {unknown[0]!r} (fields: low, high, log, step, "
                          "choices)")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{name}: choices goes alone (no low, high, log or step)")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{name}: choices must be a non-empty list")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise ConfigError(f"{name}: choices has duplicates")
        return ParamSpec(key, choices=choices)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{name}: give low and high (a range) or choices")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for field, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not math.isfinite(v)):
            raise ConfigError(f"{name}: {field} must be a finite number, got {v!r}")
    if not isinstance(log, bool):
        raise ConfigError(f"{name}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{name}: a log scale needs low > 0, got {low}")
    if step is not None:
        if step <= 0:
            raise ConfigError(f"{name}: step must be > 0, got {step}")
        if log:
            raise ConfigError(f"{name}: step and log together are not supported")
        if step > high - low:
            raise ConfigError(f"{name}: step ({step}) is wider than the range")
    return ParamSpec(key, low=low, high=high, log=log, step=step)


def load_space(path: str | Path) -> dict[str, ParamSpec]:
    """Read and validate the format of a search-space YAML file (key -> :class:`ParamSpec`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: search-space file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: the top level must be a non-empty mapping of dotted config keys")
    keys = list(raw)
    for a in keys:
        for b in keys:
            if a != b and str(b).startswith(f"{a}."):
                raise ConfigError(f"{p}: {b}: inside {a}, which is searched too")
    return {k: _spec(str(p), k, v) for k, v in raw.items()}


def _override(key: str, value: Any) -> str:
    """``key=value`` as ``adatt train`` takes it (JSON is YAML: types survive)."""
    return f"{key}={json.dumps(value)}"


def check_space(space: dict[str, ParamSpec], config: str | Path | None,
                overrides: list[str], where: str = "space") -> None:
    """Apply every bound and choice of each key through the config's override path.

    An unknown key or a value the typed config refuses is a one-line
    :class:`~adatt.config.ConfigError` naming the key.
    """
    for spec in space.values():
        for value in spec.bounds():
            try:
                load_config(config, [*overrides, _override(spec.key, value)])
            except ConfigError as e:
                raise ConfigError(f"{where}: {spec.key}={json.dumps(value)}: {e}") from None


def execution_overrides(threads: int) -> list[str]:
    """The overrides that set a trial's execution: its torch threads, no progress bar."""
    return [f"runtime.threads={threads}", "runtime.progress=false"]


def trial_seed(study_seed: int, number: int) -> int:
    """The training seed of trial ``number``: drawn from the study seed, the same on every rerun.

    >>> trial_seed(0, 3) == trial_seed(0, 3) != trial_seed(1, 3)
    True
    """
    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0] >> 1)


def _suggest(trial: Any, spec: ParamSpec) -> Any:
    """The trial's value of ``spec`` (a non-scalar choice is stored as its JSON text)."""
    if spec.choices is not None:
        if all(isinstance(c, _SCALARS) for c in spec.choices):
            return trial.suggest_categorical(spec.key, spec.choices)
        text = trial.suggest_categorical(spec.key, [json.dumps(c) for c in spec.choices])
        return json.loads(text)
    if spec.is_int:
        return trial.suggest_int(spec.key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(spec.key, float(spec.low), float(spec.high), step=spec.step,
                               log=spec.log)


@dataclass(frozen=True)
class _Job:
    """What a worker needs to run trials (picklable: sent to worker processes)."""

    study_dir: str
    config: str | None
    overrides: tuple[str, ...]
    space: tuple[ParamSpec, ...]
    seed: int
    trials: int
    threads: int
    prune: Any
    worker: int = 0


def _storage(study_dir: str | Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'study.db'}"


def _sampler(job: _Job) -> Any:
    import optuna

    # one worker: the study seed exactly (same seed, same trials); more: one stream each
    return optuna.samplers.TPESampler(seed=job.seed + 7919 * job.worker)


def _pruner(prune: Any) -> Any:
    import optuna

    if not isinstance(prune, bool):  # an Optuna pruner given by a caller
        return prune
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def _counted(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _objective(job: _Job, splits: Any) -> Any:
    import optuna

    def objective(trial: Any) -> float:
        values = {spec.key: _suggest(trial, spec) for spec in job.space}
        name = f"trial_{trial.number:04d}"
        out = Path(job.study_dir) / "trials"
        cfg = load_config(job.config, [
            *job.overrides, *[_override(k, v) for k, v in values.items()],
            *execution_overrides(job.threads), f"train.seed={trial_seed(job.seed, trial.number)}",
            f"name={name}", _override("out_dir", str(out))])
        trial.set_user_attr("run", f"trials/{name}")

        def report(record: dict[str, Any]) -> None:
            trial.report(record["score"], step=record["eval"])
            if not record["last"] and trial.should_prune():  # a finished run is kept
                raise optuna.TrialPruned(f"pruned at evaluation {record['eval']}")

        from adatt.train.trainer import train

        on_eval = report if job.prune is not False else None
        train(cfg, overwrite=True, splits=splits, on_eval=on_eval)
        results = json.loads((out / name / "results.json").read_text())
        return float(results["selection_score"])

    return objective


def _work(job: _Job, splits: Any = None) -> None:
    """Run trials of the stored study until it has ``job.trials`` finished ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="adatt", storage=_storage(job.study_dir),
                              sampler=_sampler(job), pruner=_pruner(job.prune))
    if _counted(study) >= job.trials:
        return
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def show(study: Any, t: Any) -> None:
        secs = (t.datetime_complete - t.datetime_start).total_seconds()
        value = "" if t.value is None else f" valid {t.value:.5f}"
        print(f"trial {t.number}: {t.state.name.lower()}{value} ({secs:.1f} s) "
              f"{json.dumps(t.params)}", flush=True)

    # parallel workers may overshoot the budget by up to workers - 1 trials (Optuna's rule)
    study.optimize(_objective(job, splits), n_trials=None, gc_after_trial=False,
                   callbacks=[optuna.study.MaxTrialsCallback(job.trials, states=states), show])


def run_study(config: str | Path | None, space_path: str | Path, study_dir: str | Path | None,
              overrides: list[str] | None = None, *, trials: int = 20, workers: int = 1,
              seed: int = 0, prune: Any = True) -> dict[str, Any]:
    """Create or resume a study, run its trials, write the report; returns its summary.

    Args:
        config: a YAML file or shipped config name (as ``adatt train --config``).
        space_path: the search-space YAML (:func:`load_space`).
        study_dir: where ``study.db``, ``trials/`` and the report go (default
            ``runs/tune_<config name>``).
        overrides: ``key=value`` applied to every trial before the sampled values.
        trials: the study's total of finished (complete or pruned) trials; a
            resumed study runs only the missing ones.
        workers: trials trained at once, each in its own process with
            ``cores // workers`` torch threads.
        seed: the sampler seed; trial ``i`` trains with :func:`trial_seed` ``(seed, i)``.
        prune: stop hopeless trials (Optuna's median pruner on the validation
            curve, from the 4th trial on); False: never; or an Optuna pruner.

    Returns:
        ``{"study_dir", "best": {number, value, params, run, test}, "trials", "wall_time_s"}``.
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError("adatt tune needs Optuna: pip install 'adatt[tune]'") from None
    overrides = list(overrides or [])
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    space = load_space(space_path)
    check_space(space, config, overrides, where=str(space_path))
    base = load_config(config, overrides)
    study_dir = Path(study_dir or Path(base.out_dir) / f"tune_{base.name}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    job = _Job(str(study_dir), None if config is None else str(config), tuple(overrides),
               tuple(space.values()), seed, trials, threads, prune)
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from adatt.train.runs import load_splits_for

    splits = load_splits_for(base)
    higher = _higher(base, splits)
    study_dir.mkdir(parents=True, exist_ok=True)
    identity = {"config": job.config, "overrides": list(overrides), "seed": seed,
                "space": yaml.safe_load(Path(space_path).read_text()),
                "prune": prune if isinstance(prune, bool) else type(prune).__name__}
    study = optuna.create_study(study_name="adatt", storage=_storage(study_dir),
                                load_if_exists=True, sampler=_sampler(job), pruner=_pruner(prune),
                                direction="maximize" if higher else "minimize")
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", json.loads(json.dumps(identity)))
    elif stored != json.loads(json.dumps(identity)):
        diff = next(k for k in identity if json.dumps(stored.get(k)) != json.dumps(identity[k]))
        raise ConfigError(f"{study_dir}: holds a study with another {diff}; give a new "
                          "--study-dir (or remove it) to start over")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # left running by an interrupted search: it is failed and its budget slot rerun
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    shares_data = not any(k.startswith("data.") for k in space)
    if workers == 1:
        _work(job, splits if shares_data else None)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_work, args=(_with_worker(job, w),)) for w in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise ConfigError(f"{len(failed)} of {workers} tune workers failed (exit status "
                              f"{failed[0]}); rerun the same command to resume the study")
    summary = write_report(study_dir, wall_time_s=time.perf_counter() - t0)
    return summary


def _with_worker(job: _Job, worker: int) -> _Job:
    from dataclasses import replace

    return replace(job, worker=worker)


def _higher(cfg: RunConfig, splits: Any) -> bool:
    """Whether the run's selection score is better higher (its metric's direction)."""
    from adatt.train.selection import selection_score

    schema = splits.schema
    metrics = {t.name: {"auc": 0.5, "ne": 1.0, "logloss": 1.0, "mse": 1.0} for t in schema.tasks}
    return selection_score(metrics, schema, cfg.train.selection.metric)[1]


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float)
                     else f"{k.split('.')[-1]}={v}" for k, v in params.items())


def write_report(study_dir: str | Path, wall_time_s: float | None = None) -> dict[str, Any]:
    """``report.md`` (every trial on validation; the best one's test metrics) and ``report.png``
    (the objective over trials and, from 4 complete trials, parameter importances)."""
    import optuna

    study_dir = Path(study_dir)
    study = optuna.load_study(study_name="adatt", storage=_storage(study_dir))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
              optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
    all_trials = study.get_trials(deepcopy=False, states=states)
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    identity = study.user_attrs.get("identity", {})
    config = identity.get("config") or "(defaults)"
    rows = []
    for t in all_trials:
        secs = ((t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start else float("nan"))
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else (
            max(t.intermediate_values.values()) if maximize else
            min(t.intermediate_values.values())) if t.intermediate_values else None
        rows.append([t.number, _fmt_params(t.params), "" if value is None else float(value),
                     t.state.name.lower(), f"{secs:.1f}"])
    lines = [f"# Hyperparameter search: {config}", "",
             f"Config `{config}` with overrides "
             f"`{' '.join(identity.get('overrides', [])) or '(none)'}`; sampler seed "
             f"{identity.get('seed')}; objective: validation selection score "
             f"({'maximize' if maximize else 'minimize'}); {len(complete)} complete, "
             f"{sum(t.state.name == 'PRUNED' for t in all_trials)} pruned of "
             f"{len(all_trials)} trials" + (f"; wall time {wall_time_s:.0f} s" if wall_time_s
                                            else "") + ".", "",
             "Search space:", "", "```yaml",
             yaml.safe_dump(identity.get("space", {}), sort_keys=False).strip(), "```", "",
             "## Trials", "",
             "Validation objective per trial (a pruned trial: its best validation score "
             "before it was stopped). Test is scored for the best trial only.", "",
             markdown_table(["trial", "params", "valid objective", "state", "time (s)"], rows), ""]
    summary: dict[str, Any] = {"study_dir": str(study_dir), "trials": len(all_trials),
                               "complete": len(complete), "wall_time_s": wall_time_s, "best": None}
    if complete:
        best = study.best_trial
        run = study_dir / best.user_attrs["run"]
        res = json.loads((run / "results.json").read_text())
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "run": str(run), "test": res["test"]}
        names = [k for k in dict.fromkeys(k for m in res["test"].values() for k in m)
                 if k != "count"]
        test_rows = [[task, *(f"{m[k]:.5f}" if k in m else "" for k in names)]
                     for task, m in res["test"].items()]
        lines += ["## Best trial", "",
                  f"Trial {best.number} (run `{best.user_attrs['run']}`): validation objective "
                  f"{best.value:.5f} (selection metric {res['selection_metric']}).", "",
                  "Parameters:", "",
                  *[f"- `{k}`: {json.dumps(v)}" for k, v in best.params.items()], "",
                  "Test metrics of its selected checkpoint:", "",
                  markdown_table(["task", *names], test_rows), ""]
    importances = _importances(study, complete)
    if importances:
        lines += ["## Parameter importances", "",
                  markdown_table(["parameter", "importance"],
                                 [[k, float(v)] for k, v in importances.items()]), ""]
    _plot(study_dir / "report.png", all_trials, maximize, importances)
    lines += ["![objective over trials](report.png)", ""]
    (study_dir / "report.md").write_text("\n".join(lines))
    return summary


def _importances(study: Any, complete: list[Any]) -> dict[str, float]:
    """PED-ANOVA importances (no scikit-learn needed) from 4 complete trials on."""
    import optuna

    if len(complete) < 4:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()))
    except (ValueError, RuntimeError):  # e.g. every complete trial has the same value
        return {}


def _plot(path: Path, trials: list[Any], maximize: bool, importances: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = 2 if importances else 1
    fig, axes = plt.subplots(1, cols, figsize=(6 * cols, 4), squeeze=False)
    ax = axes[0][0]
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE"]
    pruned = [(t.number, v) for t in trials if t.state.name == "PRUNED" and t.intermediate_values
              for v in [list(t.intermediate_values.values())[-1]]]
    if done:
        ax.scatter(*zip(*done, strict=True), label="complete", color="C0")
        best, xs, ys = None, [], []
        for n, v in sorted(done):
            best = v if best is None else (max(best, v) if maximize else min(best, v))
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), marker="x", color="C3",
                   label="pruned (last validation)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation objective")
    ax.set_title("objective over trials")
    ax.legend()
    if importances:
        ax = axes[0][1]
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_title("parameter importances (PED-ANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
