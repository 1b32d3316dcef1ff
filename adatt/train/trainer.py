"""The single-model recipe (one process or DDP): setup, train, evaluate, save -- read top to bottom.

Notation: B batch, T tasks.

``train(cfg)`` writes ``<out_dir>/<name>/`` (:class:`~adatt.train.rundir.RunDir`):

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
    ...     "train.epochs=1", "runtime.progress=false", "out_dir=" + tempfile.mkdtemp()])
    >>> res = train(cfg)
    >>> sorted(res["test"])
    ['task1', 'task2']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adatt.config import ConfigError, RunConfig
from adatt.train import distributed as ddp
from adatt.train.compiled import TrainStep, cache_dir, wanted
from adatt.train.denormal import flush_denormals
from adatt.train.evaluation import evaluate
from adatt.train.guard import NonFiniteGuard
from adatt.train.losses import TaskLoss
from adatt.train.memory import keep_freed_memory
from adatt.train.optim import make_optimizer, make_schedule, training_plan
from adatt.train.progress import Progress, ProgressLog
from adatt.train.results import build_results
from adatt.train.rundir import RunDir, RunError
from adatt.train.runs import (
    build_model,
    finished_results,
    load_run,
    load_run_model,
    load_splits_for,
)
from adatt.train.seeding import rng_state, seed_everything, set_rng_state
from adatt.train.selection import (
    Selection,
    check_labelled,
    one_class_tasks,
    selection_score,
    warn_one_class,
)
from adatt.train.tracking import finish, flatten, log_evaluation, open_tracker

__all__ = ["train", "setup_runtime", "make_weighting",
           # components re-exported for existing callers (they live in their own modules)
           "evaluate", "build_model", "selection_score", "load_run", "load_run_model",
           "finished_results", "RunError", "training_plan"]


def setup_runtime(cfg: RunConfig, splits: Any = None) -> tuple[torch.device, Any]:
    """Threads, device and data of a run, checked: ``(device, splits)``.

    Partial tasks are checked here for every recipe that sets up through it
    (:func:`~adatt.train.selection.check_labelled`: a task with no labelled row
    in the training or validation split is a one-line error); the counts are
    reported in ``results.json`` (``labelled``)."""
    tc, rt = cfg.train, cfg.runtime
    torch.set_num_threads(rt.threads or ddp.default_threads())
    flush_denormals(tc.flush_denormal)
    if rt.keep_freed_memory:
        keep_freed_memory()
    device = ddp.local_device(rt.device)  # cuda: this process's GPU under torchrun
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but CUDA is not available here")
    if splits is None:
        splits = load_splits_for(cfg)
    n = splits.schema.num_tasks
    if tc.task_weights is not None and len(tc.task_weights) != n:
        raise ConfigError(f"train.task_weights has {len(tc.task_weights)} entries for {n} tasks")
    check_labelled(splits, splits.schema)
    return device, splits


def make_weighting(cfg: RunConfig, schema: Any, copies: int | None = None) -> Any:
    """``train.weighting`` for the schema's tasks (``copies``: one state per ensemble copy)."""
    from adatt.train.weighting import create_weighting

    tc = cfg.train
    try:
        w = create_weighting(tc.weighting, schema.num_tasks, task_weights=tc.task_weights,
                             task_kinds=schema.task_kinds, **tc.weighting_options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"train.weighting: {e}") from None
    if copies is not None:
        w.expand_copies(copies)
    return w


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False,
          splits: Any = None,
          on_eval: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, select on validation, score on test; returns the results dict.

    ``on_eval``, when given, is called once per evaluation (by rank 0 only),
    after the checkpoint is saved, with that evaluation's ``metrics.jsonl``
    record plus ``higher`` (whether a higher ``score`` is better) and ``last``
    (no evaluation follows: the budget is spent or early stopping ends the run). An exception
    it raises stops the run there (e.g. a hyperparameter search pruning a
    trial); the run directory keeps its last checkpoint.
    """
    # ---------------------------------------------------------------- setup
    t_start = time.perf_counter()
    tc = cfg.train
    run = RunDir(Path(cfg.out_dir) / cfg.name)
    resume = run.check_new(resume, overwrite, "pass --resume to continue it, --overwrite to "
                           "replace it, or name=... for a new run")
    if resume:  # the stored config, with the requested values of the keys that may change
        cfg = run.check_resume(cfg)
    # before any directory is made: a missing package or a bad URI is a one-line error
    tracker = open_tracker(cfg, run.path, main=ddp.is_main())
    ddp.init(cfg)  # join torchrun's process group when launched by it (docs/distributed.md)
    device, splits = setup_runtime(cfg, splits)
    schema = splits.schema
    seed_everything(tc.seed)
    model = build_model(cfg.model, schema).to(device)
    loss_fn = TaskLoss.for_schema(schema).to(device)  # partial tasks: masked
    weighting = make_weighting(cfg, schema).to(device)
    groups = [{"params": list(model.parameters())}]
    if list(weighting.parameters()):  # e.g. uncertainty log-variances: no weight decay
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    compiling = wanted(tc.compile, device)  # train.compile (adatt.train.compiled)
    opt = make_optimizer(groups, tc, compiled=compiling)
    # in memory, streamed, or (data.rank_shards under torchrun) this process's own shard files
    source = ddp.batch_source(splits.train, tc.batch_size, tc.seed, device,
                              getattr(cfg.data, "rank_shards", False))
    n_train, steps_per_epoch, budget, total_steps = training_plan(source.rows, tc)
    sched = make_schedule(opt, tc, total_steps)
    shared = model.shared_parameters()
    label_var = source.label_variance(schema)
    eval_every = tc.eval_every or n_train
    one_class = one_class_tasks(splits.valid, schema)
    if ddp.is_main():
        warn_one_class(one_class, "validation", tc.selection.metric)
    guard = NonFiniteGuard(tc.nonfinite, schema.task_names)

    progress = Progress(next_eval=eval_every, epoch_loss=[0.0] * schema.num_tasks)
    selection = Selection()
    epoch_loss = None
    if resume:
        run.path.mkdir(parents=True, exist_ok=True)
        ck = run.load_checkpoint(device)
        with run.restoring():
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["schedule"])
            weighting.load_state_dict(ck["weighting"])
        progress = Progress.from_state_dict(ck["state"])
        selection = Selection.from_state_dict(ck["state"])
        guard.skipped = ck["state"].get("nonfinite_skipped", 0)
        source.load_state_dict(progress.source)  # a stream's exact position
        epoch_loss = torch.as_tensor(progress.epoch_loss, device=device)
        set_rng_state(ck["rng"])
        run.restart_metrics(progress.evals)
    else:
        run.start(cfg, splits)
    tracker.start(flatten(cfg.model_dump(mode="json")))  # runtime.tensorboard: TensorBoard
    bar = ProgressLog(cfg.name, budget, progress.examples, cfg.runtime.progress and ddp.is_main())

    def evaluate_and_checkpoint(losses: torch.Tensor) -> None:
        """Score validation, update the selection, log, save ``best.pt`` and ``checkpoint.pt``."""
        metrics = evaluate(model, splits.valid, schema, tc.eval_batch_size)
        score, higher = selection_score(metrics, schema, tc.selection.metric, label_var,
                                        one_class)
        progress.evals += 1
        if selection.update(score, higher, progress.at(), tc.selection.patience):
            run.save_best(model.state_dict())
        line = log_evaluation(run, tracker, progress, schema.task_names,
                              train_loss=[float(x) for x in losses.detach()], score=score,
                              improved=selection.improved, valid=metrics,
                              lr=float(sched.get_last_lr()[0]))
        bar.evaluation(progress, sum(line["train_loss"]), score)
        state = progress.state_dict()
        state["wall_time"] = progress.wall_time + time.perf_counter() - t_start
        state.update(selection.state_dict())
        state["nonfinite_skipped"] = guard.skipped
        run.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "schedule": sched.state_dict(), "weighting": weighting.state_dict(),
                             "state": state, "rng": rng_state()})
        if on_eval is not None and ddp.is_main():
            last = selection.done or progress.examples >= budget
            on_eval({**line, "higher": higher, "last": last})

    # ---------------------------------------------------------------- train
    net = ddp.wrap(model)  # DistributedDataParallel summing gradients, or model itself
    # forward + losses and opt.step, through torch.compile when train.compile says so
    step = TrainStep(net, loss_fn, opt, compiled=compiling, bf16=tc.bf16, device=device,
                     distributed=ddp.is_active())
    noted = False  # the compile time's log line, after the first step
    model.train()
    while not selection.done and progress.examples < budget:
        epoch = progress.epoch
        b_idx = progress.batch_in_epoch
        # in memory: slices of the (seed, epoch) permutation; streamed: the stream's batches
        batches = source.indexed_batches(epoch, b_idx, budget - progress.examples)
        while b_idx < steps_per_epoch and progress.examples < budget:
            t0 = time.perf_counter()
            idx, rows = next(batches)  # global batch (rank_shards: local) is rows.batch(idx)
            shard = ddp.shard(idx, source)  # this process's rows of the step (all in one)
            batch = rows.batch(shard.index)
            losses = step.losses(batch, shard)  # [T] of the global batch (logits [B, T])
            skip = guard.check(losses, progress.step + 1)  # stop: raises, weights untouched
            if not skip:
                opt.zero_grad(set_to_none=True)
                weighting.backward(losses, shared)
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip,
                                                   foreach=True)
                step.step()  # opt.step()
            sched.step()
            n = shard.rows  # the step's rows over all processes
            progress.step += 1
            progress.examples += n
            b_idx += 1
            progress.batch_in_epoch = b_idx
            progress.train_time += time.perf_counter() - t0
            detached = losses.detach()
            if not skip:  # a skipped batch counts in no epoch mean
                progress.epoch_steps += 1
                epoch_loss = detached if progress.epoch_steps == 1 else epoch_loss + detached
            bar.update(n, None if skip else detached)  # a host sync at most once a second
            if step.compiled and not noted:
                noted = True
                bar.note(f"training step compiled in {step.compile_s:.1f} s "
                         f"(cached in {cache_dir()})")
            epoch_end = b_idx >= steps_per_epoch
            if epoch_end:
                progress.epoch += 1
                progress.batch_in_epoch = 0
                if progress.epoch_steps:
                    weighting.epoch_end(epoch_loss / progress.epoch_steps)
                progress.epoch_steps = 0
            if progress.epoch_steps:
                progress.epoch_loss = epoch_loss  # carried in checkpoints for resumption
            if progress.examples >= progress.next_eval or progress.examples >= budget:
                progress.next_eval += eval_every
                # a stream's exact position (None in memory; rank_shards: every rank's, gathered)
                progress.source = source.state_dict()
                evaluate_and_checkpoint(losses)
                if selection.done:
                    break
            if epoch_end:
                break
    bar.close()

    # ---------------------------------------------------------------- evaluate selected
    ddp.barrier()  # rank 0 has written best.pt
    model.load_state_dict(run.load_best(device))
    results = build_results(
        cfg, schema, selection,
        valid=evaluate(model, splits.valid, schema, tc.eval_batch_size),
        test=evaluate(model, splits.test, schema, tc.eval_batch_size),
        num_parameters=sum(p.numel() for p in model.parameters()),
        examples=progress.examples,
        examples_per_s=progress.examples / max(progress.train_time, 1e-9),
        wall_time_s=progress.wall_time + time.perf_counter() - t_start,
        nonfinite_skipped=guard.skipped,
        labelled=check_labelled(splits, schema),
        compiled=step.compiled, compile_s=step.compile_s,
    )
    # ---------------------------------------------------------------- save
    run.write_results(results)
    finish(tracker, results, [run.file(f) for f in ("best.pt", "results.json", "config.yaml")])
    ddp.shutdown()
    return results
