"""The training recipe: setup, train, evaluate, save -- read top to bottom.

Notation: B batch, T tasks.

``train(cfg)`` writes ``<out_dir>/<name>/``:

* ``config.yaml``   the resolved config;
* ``data.json``     the data set's name, feature schema and loader facts (for
  user files the fitted vocabularies and scaling: serving needs no data);
* ``metrics.jsonl`` one JSON line per evaluation (validation metrics, loss,
  examples seen, the selection score);
* ``best.pt``       the selected model weights (best validation score);
* ``checkpoint.pt`` the full training state for ``--resume``;
* ``results.json``  per split (valid, test) per task every metric, the
  selected evaluation, parameter count, training examples/s and wall time.

Model selection uses the validation split only; the selected checkpoint is
then scored on test. Checkpoints are written to a temporary file and renamed,
so a kill at any moment leaves the last good one. The shuffling order of each
epoch is drawn from a generator seeded by ``(seed, epoch)``, so a resumed run
reaches the same final numbers as an uninterrupted one. Batches come from a
batch source (:func:`adatt.train.distributed.batch_source`): slices of that
permutation in memory, or Parquet shards streamed from disk
(``data.source=stream``), whose exact read position (buffer included) the
checkpoint carries.

Example:
    >>> from adatt.config import load_config
    >>> import tempfile
    >>> cfg = load_config(None, ["data.source=mmoe_synthetic", "data.rows=2000",
    ...     "model.name=mmoe", "model.expert_sizes=[[8]]", "model.num_experts=2",
    ...     "train.epochs=1", "train.progress=false", "out_dir=" + tempfile.mkdtemp()])
    >>> res = train(cfg)
    >>> sorted(res["test"])
    ['task1', 'task2']
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adatt.config import ConfigError, RunConfig, dump_config
from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema
from adatt.train import distributed as ddp
from adatt.train.losses import TaskLoss
from adatt.train.memory import keep_freed_memory
from adatt.train.metrics import MetricAccumulator

__all__ = ["train", "evaluate", "build_model", "selection_score", "load_run", "RunError",
           "setup_runtime", "training_plan"]


class RunError(RuntimeError):
    """A run that cannot start or continue (one line)."""


def build_model(model_cfg: dict[str, Any], schema: FeatureSchema) -> nn.Module:
    """The configured model for a data schema."""
    from adatt.models import create_model

    opts = {k: v for k, v in model_cfg.items() if k != "name"}
    try:
        return create_model(
            model_cfg["name"],
            num_tasks=schema.num_tasks,
            dense_dim=schema.dense_dim,
            cat_cardinalities=list(schema.cardinalities),
            **opts,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None


def make_optimizer(params: list, cfg) -> torch.optim.Optimizer:
    o = cfg.optimizer
    common = dict(lr=o.lr, weight_decay=o.weight_decay)
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(params, betas=o.betas, fused=True, **common)  # one kernel for all params
    if o.name == "sgd":
        return torch.optim.SGD(params, momentum=o.momentum, foreach=True, **common)
    return torch.optim.Adagrad(params, foreach=True, **common)


def make_schedule(opt: torch.optim.Optimizer, cfg, total_steps: int):
    s = cfg.schedule

    def factor(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        k = step - s.warmup_steps
        if s.name == "step":
            return s.gamma ** (k // s.step_size)
        if s.name == "cosine":
            span = max(total_steps - s.warmup_steps, 1)
            cos = 0.5 * (1 + math.cos(math.pi * min(k / span, 1.0)))
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * cos
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorDataset, schema: FeatureSchema, batch_size: int = 8192,
    bf16: bool = False,
) -> dict[str, dict[str, float]]:
    """Every metric of every task over the whole of ``data``; under distributed
    training a collective call, sharded over the ranks (``distributed.evaluate``)."""
    if ddp.is_active():
        return ddp.evaluate(model, data, schema, batch_size, bf16)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(schema.task_names, schema.task_kinds)
    device = next(model.parameters()).device
    for b in data.batches(batch_size):
        b = b.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(b.dense, b.cat)
        acc.update(logits.float(), b.labels, b.weight)
    model.train(was_training)
    return acc.compute()


def selection_score(metrics: dict[str, dict[str, float]], schema: FeatureSchema,
                    metric: str, label_var: dict[str, float] | None = None) -> tuple[float, bool]:
    """(score, higher_is_better) of validation ``metrics`` for checkpoint selection.

    Tasks whose metric is undefined on the validation split (NaN: e.g. a rare task
    with no positive there) are left out of the mean; when every task is undefined
    the score is the worst possible, so it never wins.

    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> s = FeatureSchema((), (), (), (TaskSpec("a"), TaskSpec("b")))
    >>> selection_score({"a": {"auc": 0.8}, "b": {"auc": float("nan")}}, s, "auc")
    (0.8, True)
    """
    binary = [t.name for t in schema.tasks if t.kind == "binary"]
    regression = [t.name for t in schema.tasks if t.kind == "regression"]
    if metric == "auc" and not binary:
        metric = "mse"
    if metric in ("auc", "ne", "logloss"):
        if not binary:
            raise ConfigError(f"train.selection.metric={metric} needs a binary task")
        values, higher = [metrics[t][metric] for t in binary], metric == "auc"
    elif metric == "mse":
        if not regression:
            raise ConfigError("train.selection.metric=mse needs a regression task")
        values, higher = [metrics[t]["mse"] for t in regression], False
    else:
        var = label_var or {}
        values = [metrics[t]["ne"] for t in binary]
        values += [metrics[t]["mse"] / max(var.get(t, 1.0), 1e-12) for t in regression]
        higher = False
    finite = [v for v in values if v == v]
    if not finite:
        return (float("-inf") if higher else float("inf")), higher
    return float(np.mean(finite)), higher


def _atomic_save(obj: Any, path: Path) -> None:
    if not ddp.is_main():  # under distributed training only rank 0 writes the run directory
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(text: str, path: Path) -> None:
    if not ddp.is_main():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def load_splits_for(cfg: RunConfig):
    from adatt.data.config import load_splits

    return load_splits(cfg.data)


def training_plan(n_train: int, tc) -> tuple[int, int, int, int]:
    """``(n_train, steps_per_epoch, budget, total_steps)``: the budget is
    ``epochs`` passes over the training rows, capped by ``max_examples``.

    >>> from adatt.config import TrainConfig
    >>> training_plan(1000, TrainConfig(batch_size=300, epochs=2, max_examples=1500))
    (1000, 4, 1500, 5)
    """
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    budget = min(tc.max_examples or n_train * tc.epochs, n_train * tc.epochs)
    return n_train, steps_per_epoch, budget, math.ceil(budget / tc.batch_size)


def setup_runtime(cfg: RunConfig, splits=None):
    """Threads, device and data of a run, checked: ``(device, splits)``."""
    tc = cfg.train
    torch.set_num_threads(tc.threads or ddp.default_threads())
    if tc.keep_freed_memory:
        keep_freed_memory()
    device = ddp.local_device(tc.device)  # cuda: this process's GPU under torchrun
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available here")
    if splits is None:
        splits = load_splits_for(cfg)
    n = splits.schema.num_tasks
    if tc.task_weights is not None and len(tc.task_weights) != n:
        raise ConfigError(f"train.task_weights has {len(tc.task_weights)} entries for {n} tasks")
    return device, splits


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
          splits=None) -> dict[str, Any]:
    """Train, select on validation, score on test; returns the results dict."""
    # ---------------------------------------------------------------- setup
    t_start = time.perf_counter()
    epoch_loss = None
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path = run_dir / "checkpoint.pt"
    if run_dir.exists() and not resume and not overwrite and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists: pass --resume to continue it, "
                       "--overwrite to replace it, or name=... for a new run")
    if resume and not ckpt_path.is_file():
        raise RunError(f"{ckpt_path} not found: nothing to resume")
    tc = cfg.train
    ddp.init(tc)  # join torchrun's process group when launched by it (docs/distributed.md)
    device, splits = setup_runtime(cfg, splits)
    schema = splits.schema
    _seed_everything(tc.seed)
    model = build_model(cfg.model, schema).to(device)
    loss_fn = TaskLoss(schema.task_kinds).to(device)
    from adatt.train.weighting import create_weighting

    try:
        weighting = create_weighting(tc.weighting, schema.num_tasks, task_weights=tc.task_weights,
                                     task_kinds=schema.task_kinds, **tc.weighting_options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"train.weighting: {e}") from None
    weighting = weighting.to(device)
    groups = [{"params": list(model.parameters())}]
    if list(weighting.parameters()):  # e.g. uncertainty log-variances: no weight decay
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    opt = make_optimizer(groups, tc)
    # in memory, streamed, or (data.rank_shards under torchrun) this process's own shard files
    source = ddp.batch_source(splits.train, tc.batch_size, tc.seed, device, cfg.data.rank_shards)
    n_train, steps_per_epoch, budget, total_steps = training_plan(source.rows, tc)
    sched = make_schedule(opt, tc, total_steps)
    shared = model.shared_parameters()
    label_var = source.label_variance(schema)
    eval_every = tc.eval_every or n_train

    state = {"step": 0, "examples": 0, "epoch": 0, "batch_in_epoch": 0, "evals": 0,
             "best_score": None, "best_eval": None, "bad_evals": 0, "train_time": 0.0,
             "next_eval": eval_every, "done": False, "wall_time": 0.0,
             "epoch_loss": [0.0] * schema.num_tasks, "epoch_steps": 0}
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["schedule"])
        weighting.load_state_dict(ck["weighting"])
        state = ck["state"]
        source.load_state_dict(state.get("source"))  # a stream's exact position
        epoch_loss = torch.as_tensor(state["epoch_loss"], device=device)
        _set_rng_state(ck["rng"])
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()[: state["evals"]]
        _atomic_write("".join(line + "\n" for line in lines), run_dir / "metrics.jsonl")
    else:
        _atomic_write(dump_config(cfg), run_dir / "config.yaml")
        write_data_json(splits, run_dir)
        _atomic_write("", run_dir / "metrics.jsonl")
        for stale in ("best.pt", "checkpoint.pt", "results.json"):
            (run_dir / stale).unlink(missing_ok=True)
    writer = None
    if tc.tensorboard and ddp.is_main():
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard needs `pip install tensorboard`") from None
        writer = SummaryWriter(str(run_dir / "tb"))

    from tqdm import tqdm

    bar = tqdm(total=budget, initial=state["examples"], unit="ex", unit_scale=True,
               disable=not tc.progress or not ddp.is_main(), desc=cfg.name, dynamic_ncols=True)
    running = None

    # ---------------------------------------------------------------- train
    net = ddp.wrap(model)  # DistributedDataParallel summing gradients, or model itself
    model.train()
    while not state["done"] and state["examples"] < budget:
        epoch = state["epoch"]
        b_idx = state["batch_in_epoch"]
        # in memory: slices of the (seed, epoch) permutation; streamed: the stream's batches
        batches = source.indexed_batches(epoch, b_idx, budget - state["examples"])
        while b_idx < steps_per_epoch and state["examples"] < budget:
            t0 = time.perf_counter()
            idx, rows = next(batches)  # global batch (rank_shards: local) is rows.batch(idx)
            shard = ddp.shard(idx, source)  # this process's rows of the step (all in one)
            batch = rows.batch(shard.index)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                logits = net(batch.dense, batch.cat)  # [B, T]
            losses = shard.losses(loss_fn, logits.float(), batch)  # [T] of the global batch
            opt.zero_grad(set_to_none=True)
            weighting.backward(losses, shared)
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
            opt.step()
            sched.step()
            n = shard.rows  # the step's rows over all processes
            state["step"] += 1
            state["examples"] += n
            b_idx += 1
            state["batch_in_epoch"] = b_idx
            state["train_time"] += time.perf_counter() - t0
            state["epoch_steps"] += 1
            detached = losses.detach()
            epoch_loss = detached if state["epoch_steps"] == 1 else epoch_loss + detached
            if tc.progress:
                bar.update(n)
                if state["step"] % 20 == 1:  # one host sync every 20 steps
                    cur = float(detached.sum())
                    running = cur if running is None else 0.9 * running + 0.1 * cur
                    rate = state["examples"] / max(state["train_time"], 1e-9)
                    bar.set_postfix(loss=f"{running:.4f}", ex_s=f"{rate:,.0f}")
            epoch_end = b_idx >= steps_per_epoch
            if epoch_end:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                weighting.epoch_end(epoch_loss / state["epoch_steps"])
                state["epoch_steps"] = 0
            if state["epoch_steps"]:
                state["epoch_loss"] = epoch_loss  # carried in checkpoints for resumption
            if state["examples"] >= state["next_eval"] or state["examples"] >= budget:
                state["next_eval"] += eval_every
                # a stream's exact position (None in memory; rank_shards: every rank's, gathered)
                state["source"] = source.state_dict()
                _evaluate_and_checkpoint(cfg, schema, model, splits.valid, opt, sched, weighting,
                                         state, run_dir, label_var, writer, losses,
                                         time.perf_counter() - t_start)
                if state["done"]:
                    break
            if epoch_end:
                break
    bar.close()

    # ---------------------------------------------------------------- evaluate selected
    ddp.barrier()  # rank 0 has written best.pt
    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(best)
    results = {
        "name": cfg.name,
        "model": cfg.model["name"],
        "data": cfg.data.source,
        "tasks": {t.name: t.kind for t in schema.tasks},
        "selected": state["best_eval"],
        "selection_metric": tc.selection.metric,
        "selection_score": state["best_score"],
        "valid": evaluate(model, splits.valid, schema, tc.eval_batch_size),
        "test": evaluate(model, splits.test, schema, tc.eval_batch_size),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_examples": state["examples"],
        "train_examples_per_s": state["examples"] / max(state["train_time"], 1e-9),
        "wall_time_s": state["wall_time"] + time.perf_counter() - t_start,
        "seed": tc.seed,
    }
    # ---------------------------------------------------------------- save
    _atomic_write(json.dumps(results, indent=2), run_dir / "results.json")
    if writer is not None:
        writer.close()
    ddp.shutdown()
    return results


def _evaluate_and_checkpoint(cfg, schema, model, valid, opt, sched, weighting, state, run_dir,
                             label_var, writer, losses: Tensor, elapsed: float) -> None:
    tc = cfg.train
    metrics = evaluate(model, valid, schema, tc.eval_batch_size)
    score, higher = selection_score(metrics, schema, tc.selection.metric, label_var)
    state["evals"] += 1
    improved = state["best_score"] is None or (score > state["best_score"] if higher
                                               else score < state["best_score"])
    info = {"eval": state["evals"], "epoch": state["epoch"], "step": state["step"],
            "examples": state["examples"], "train_loss": [float(x) for x in losses.detach()],
            "score": score, "improved": improved, "valid": metrics,
            "lr": sched.get_last_lr()[0]}
    if improved:
        state["best_score"], state["best_eval"], state["bad_evals"] = score, dict(
            eval=state["evals"], epoch=state["epoch"], step=state["step"],
            examples=state["examples"]), 0
        _atomic_save(model.state_dict(), run_dir / "best.pt")
    else:
        state["bad_evals"] += 1
        if tc.selection.patience is not None and state["bad_evals"] >= tc.selection.patience:
            state["done"] = True
    if ddp.is_main():
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(info) + "\n")
    if writer is not None:
        writer.add_scalar("valid/score", score, state["examples"])
        for task, ms in metrics.items():
            for k, v in ms.items():
                writer.add_scalar(f"valid/{task}/{k}", v, state["examples"])
    saved = dict(state, wall_time=state["wall_time"] + elapsed)
    if torch.is_tensor(saved["epoch_loss"]):
        saved["epoch_loss"] = saved["epoch_loss"].tolist()
    _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "schedule": sched.state_dict(), "weighting": weighting.state_dict(),
                  "state": saved, "rng": _rng_state()}, run_dir / "checkpoint.pt")


def write_data_json(splits, run_dir: Path) -> None:
    """``data.json``: the data set's name, feature schema and loader facts (for a
    run on the user's files the fitted encoding: vocabularies, dense scaling), so
    that the run can be served and exported without its training data."""
    meta = {"name": splits.name, "schema": splits.schema.to_dict(), "info": splits.info}
    _atomic_write(json.dumps(meta), run_dir / "data.json")


def load_run_model(run_dir: str | Path):
    """``(config, model with the selected weights, schema, data meta)`` of a
    finished run, without loading its data when the run has ``data.json``
    (runs made before it existed load their data for the schema; meta None)."""
    from adatt.config import load_config
    from adatt.data.schema import FeatureSchema

    run_dir = Path(run_dir)
    meta_path = run_dir / "data.json"
    if not meta_path.is_file():
        cfg, model, splits = load_run(run_dir)
        return cfg, model, splits.schema, None
    for f in ("config.yaml", "best.pt"):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir / f} not found: not a finished run directory")
    cfg = load_config(run_dir / "config.yaml")
    try:
        meta = json.loads(meta_path.read_text())
        schema = FeatureSchema.from_dict(meta["schema"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{meta_path}: unreadable ({e})") from None
    model = build_model(cfg.model, schema)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True))
    return cfg, model, schema, meta


def load_run(run_dir: str | Path):
    """(config, model with the selected weights, splits) of a finished run."""
    from adatt.config import load_config

    run_dir = Path(run_dir)
    for f in ("config.yaml", "best.pt"):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir / f} not found: not a finished run directory")
    cfg = load_config(run_dir / "config.yaml")
    splits = load_splits_for(cfg)
    model = build_model(cfg.model, splits.schema)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True))
    return cfg, model, splits


# Settings that change how a run is executed, not what it computes.
_EXECUTION_KEYS = {"train": ("threads", "progress", "tensorboard", "distributed",
                             "keep_freed_memory")}


def finished_results(run_dir: str | Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The results of a finished run at ``run_dir`` made with ``cfg``, else None.

    A run counts as finished when it has ``results.json``; it is the same run
    when its saved ``config.yaml`` equals ``cfg`` apart from the output location
    and execution settings (threads, progress bar, TensorBoard, distributed, memory).
    Used to skip seeds that are already done when an experiment is resumed or extended.
    """
    from adatt.config import load_config

    run_dir = Path(run_dir)
    res_path, cfg_path = run_dir / "results.json", run_dir / "config.yaml"
    if not (res_path.is_file() and cfg_path.is_file()):
        return None
    try:
        saved = load_config(cfg_path).model_dump(mode="json")
        results = json.loads(res_path.read_text())
    except Exception:  # an unreadable leftover is simply trained again
        return None
    want = cfg.model_dump(mode="json")
    for d in (saved, want):
        d.pop("out_dir", None)
        for section, keys in _EXECUTION_KEYS.items():
            for k in keys:
                d.get(section, {}).pop(k, None)
    return results if saved == want else None
