"""Many seeds on one machine: one vectorised ensemble, or worker processes, by measured rate.

Notation: S seeds trained together (one ensemble group), w worker processes,
c CPU cores, B batch.

The experiments that train many seeds of a configuration (``census-table5``,
the simulator studies) can run them two ways, with the same numbers per seed:

* ``ensemble``: :func:`~adatt.train.ensemble.train_ensemble`, S copies as one
  vectorised model in this process, on all c cores;
* ``workers``: w separate ``train()`` processes side by side, each with
  ``c // w`` torch threads (:func:`train_in_workers`).

Which is faster depends on the host (cores, vector units, memory bandwidth),
the model and the batch, so it is not a fixed rule: :func:`pick_engine` times
a short probe of both (:func:`probe_rates`: a few training steps of an
ensemble of ``min(S, auto_chunk)`` copies on c threads, and a few steps of one
run on ``c // w`` threads, counted w times since the w processes share
nothing but the cores and memory bandwidth, which makes this the workers'
upper bound) and picks the higher rate in training examples per second summed
over seeds (:func:`choose_engine`; a tie goes to the ensemble: one process,
one copy of the data). The measurement is cached in a JSON file (by default
``engine.json`` in the experiment's directory) under a key of the host's CPU
model, core count, torch version, model configuration, batch size and S, so a
resumed or repeated experiment reuses it; a different host or model probes
again. An explicit ``--workers`` skips the probe.

Example (injected rates, no probe):
    >>> choose_engine(ensemble_rate=90_000.0, workers_rate=60_000.0, workers=2).engine
    'ensemble'
    >>> choose_engine(ensemble_rate=50_000.0, workers_rate=60_000.0, workers=2).engine
    'workers'
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENGINES", "EngineChoice", "choose_engine", "probe_rates", "pick_engine",
           "probe_key", "train_in_workers"]

ENGINES = ("ensemble", "workers")


@dataclass(frozen=True)
class EngineChoice:
    """The engine picked, and the measured rates it was picked from.

    ``ensemble_rate`` and ``workers_rate`` are training examples per second
    summed over the seeds trained at once; ``source`` is ``measured`` (probed
    now) or ``cached`` (read from the cache file).
    """

    engine: str
    workers: int
    ensemble_rate: float
    workers_rate: float
    source: str = "measured"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_engine(ensemble_rate: float, workers_rate: float, workers: int,
                  source: str = "measured", seeds: int | None = None) -> EngineChoice:
    """The engine with the higher measured rate (a tie: the ensemble).

    Args:
        ensemble_rate: examples/s summed over the copies of one ensemble group.
        workers_rate: examples/s summed over ``workers`` processes side by side.
        workers: how many worker processes that rate is for.
        seeds: when the workers train only these S seeds (one configuration
            alone), a last round of ``S mod w`` seeds leaves the other workers
            idle: the workers' rate is then counted over ``ceil(S / w)`` whole
            rounds, ``workers_rate * S / (w * ceil(S / w))``, and that is the rate
            compared and recorded.

    >>> c = choose_engine(1000.0, 1000.0, 2)
    >>> c.engine, c.workers
    ('ensemble', 1)
    >>> choose_engine(900.0, 1000.0, 2).engine  # 2 workers, many jobs
    'workers'
    >>> c = choose_engine(900.0, 1000.0, 2, seeds=3)  # seed 3 runs alone: 3/4 of 1000
    >>> c.engine, c.workers_rate
    ('ensemble', 750.0)
    """
    if workers < 1 or ensemble_rate <= 0 or workers_rate <= 0:
        raise ValueError("choose_engine needs positive rates and at least one worker")
    if seeds is not None:
        workers_rate = workers_rate * seeds / (workers * math.ceil(seeds / workers))
    if workers > 1 and workers_rate > ensemble_rate:
        return EngineChoice("workers", workers, ensemble_rate, workers_rate, source)
    return EngineChoice("ensemble", 1, ensemble_rate, workers_rate, source)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def probe_key(cfg, seeds: int, cores: int) -> str:
    """The cache key of a probe: host CPU model, cores, torch, data, model, batch, seeds.

    The data config is part of it: the same model config on another preset (more
    tasks, other features) is another step, so another rate.
    """
    import torch

    what = {"cpu": _cpu_model(), "cores": cores, "torch": torch.__version__,
            "data": cfg.data.model_dump(mode="json"),
            "model": cfg.model, "batch": cfg.train.batch_size, "seeds": seeds,
            "device": cfg.runtime.device}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def probe_rates(cfg, splits, seeds: int, workers: int, steps: int = 6,
                warmup: int = 2) -> tuple[float, float]:
    """(ensemble rate, workers rate) in training examples/s, from a few timed steps each.

    The ensemble: ``min(seeds, auto_chunk)`` copies (what ``train_ensemble``
    trains at once) on all cores. The workers: one run's trainer step on
    ``cores // workers`` threads, times ``workers``. The thread setting is
    restored afterwards; nothing is written.
    """
    import torch

    from adatt.data.batch import TensorDataset
    from adatt.train.ensemble import auto_chunk
    from adatt.train.losses import TaskLoss
    from adatt.train.optim import make_optimizer
    from adatt.train.runs import build_model
    from adatt.train.weighting import create_weighting

    tc, schema = cfg.train, splits.schema
    device = torch.device(cfg.runtime.device)
    data: TensorDataset = splits.train.to(device)
    n, B = len(data), min(tc.batch_size, len(data))
    before, cores = torch.get_num_threads(), os.cpu_count() or 1
    S = max(1, min(seeds, auto_chunk(cfg, schema, seeds, device)))
    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(n, generator=g)[:B] for _ in range(S)]).to(device)

    def timed(step: Callable[[], None]) -> float:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    torch.set_num_threads(cores)
    try:
        ens_rate = S * B / timed(_ensemble_step(cfg, schema, S, device, data, rows))

        model = build_model(cfg.model, schema).to(device)
        task_loss = TaskLoss(schema.task_kinds).to(device)
        weighting = create_weighting("equal", schema.num_tasks).to(device)
        opt = make_optimizer([{"params": list(model.parameters())}], tc)
        shared = model.shared_parameters()

        def single() -> None:  # the trainer's step
            batch = data.batch(rows[0])
            losses = task_loss(model(batch.dense, batch.cat), batch.labels, batch.weight)  # [T]
            opt.zero_grad(set_to_none=True)
            weighting.backward(losses, shared)
            opt.step()

        torch.set_num_threads(max(cores // workers, 1))
        one = timed(single)
    finally:
        torch.set_num_threads(before)
    return ens_rate, workers * B / one


def _ensemble_step(cfg, schema, S: int, device, data, rows) -> Callable[[], None]:
    """One ``train_ensemble`` step of S fresh copies on ``rows [S, B]``, as a closure."""
    from adatt.train.ensemble import EnsembleLoss, EnsembleModel, train_step
    from adatt.train.optim import make_optimizer, make_schedule

    ens = EnsembleModel.build(cfg.model, schema, list(range(S)), device)
    loss_fn = EnsembleLoss(schema.task_kinds).to(device)
    opt = make_optimizer([{"params": ens.parameters()}], cfg.train)
    sched = make_schedule(opt, cfg.train, 10**6)
    return lambda: train_step(ens, loss_fn, opt, sched, data, rows, cfg.train.bf16)


def pick_engine(cfg, splits, seeds: int, cache: str | Path | None = None,
                probe: Callable[..., tuple[float, float]] = probe_rates,
                alone: bool = False) -> EngineChoice:
    """:func:`choose_engine` from :func:`probe_rates`, or from ``cache`` when it holds this key.

    ``workers`` is ``min(cores, seeds)`` (one thread each on a small CPU); one
    seed or one core is always the ensemble (nothing to choose, no probe). The
    probe's rates are written to ``cache`` (a JSON file, other keys kept).
    ``probe`` is the measuring function (injectable for tests). ``alone``: the
    workers would train only these seeds, so a partial last round counts
    (``choose_engine(..., seeds=seeds)``); otherwise other configurations' jobs
    fill it.
    """
    import torch

    cores = os.cpu_count() or 1
    workers = max(1, min(cores, seeds))
    if workers == 1 or torch.device(cfg.runtime.device).type != "cpu":
        return EngineChoice("ensemble", 1, 0.0, 0.0, "no choice")
    key = probe_key(cfg, seeds, cores)
    stored: dict[str, Any] = {}
    path = Path(cache) if cache is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        if key in stored:
            r = stored[key]
            return choose_engine(r["ensemble_rate"], r["workers_rate"], r["workers"], "cached",
                                 seeds if alone else None)
    ens_rate, work_rate = probe(cfg, splits, seeds, workers)
    choice = choose_engine(ens_rate, work_rate, workers, seeds=seeds if alone else None)
    if path is not None:
        stored[key] = {"ensemble_rate": ens_rate, "workers_rate": work_rate,
                       "workers": workers, "cores": cores, "seeds": seeds,
                       "model": cfg.model.get("name"), "cpu": _cpu_model()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
    return choice


def _train_one(cfg_dict: dict[str, Any], seed: int, threads: int) -> tuple[dict, float]:
    """One seed of one configuration, in a worker process."""
    from adatt.config import RunConfig
    from adatt.train.ensemble import seed_config
    from adatt.train.trainer import train

    cfg = seed_config(RunConfig.model_validate(cfg_dict), seed)
    cfg.runtime.threads, cfg.runtime.progress = threads, False
    ts = time.perf_counter()
    return train(cfg, overwrite=True), time.perf_counter() - ts


def train_in_workers(jobs: Sequence[tuple[Any, Any, Sequence[int]]], workers: int,
                     resume: bool = False) -> dict[Any, tuple[list, float]]:
    """Train ``[(key, cfg, seeds)]`` as separate ``train()`` runs in ``workers`` processes.

    Each process has ``cores // workers`` torch threads; run directories are
    ``<out_dir>/<name>/seed_<s>`` as with ``train_ensemble``. ``resume`` keeps
    finished runs. Returns ``{key: (results in seed order, seconds summed)}``.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from adatt.train.ensemble import seed_config
    from adatt.train.runs import finished_results

    threads = max((os.cpu_count() or 1) // workers, 1)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = []
        for key, cfg, seeds in jobs:
            for seed in seeds:
                done = None
                if resume:
                    sc = seed_config(cfg, seed)
                    done = finished_results(Path(sc.out_dir) / sc.name, sc)
                futures.append((key, done if done is not None else
                                pool.submit(_train_one, cfg.model_dump(mode="json"), seed,
                                            threads)))
        out: dict[Any, tuple[list, float]] = {}
        for key, fut in futures:  # submitted in (configuration, seed) order
            res, seconds = (fut, 0.0) if isinstance(fut, dict) else fut.result()
            results, total = out.get(key, ([], 0.0))
            out[key] = (results + [res], total + seconds)
    return out
