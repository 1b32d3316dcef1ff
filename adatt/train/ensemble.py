"""Many seeds made cheap: S independently initialised copies of one run, trained as one model.

Notation: S copies (one per seed), B batch, T tasks, N width of the input layer
(the first layer of everything reading the raw input), Dd dense width, F
categorical fields, C one-hot columns (sum of the cardinalities), k embedding size.

The paper reports means over 100 trainings from different initialisations.
:func:`train_ensemble` trains S copies of one configuration together, as one
vectorised model, and gives each copy exactly what a separate
:func:`~adatt.train.trainer.train` run with ``train.seed=seeds[k]`` would do:

* **initialisation**: copy k is built by ``seed_everything(seeds[k])`` then
  ``build_model`` (the same two calls as ``train()``); its parameters become
  slice k of stacked parameters ``[S, ...]``;
* **data order**: copy k draws its own permutation per epoch from
  ``Generator().manual_seed(seeds[k] * 1_000_003 + epoch)``; a step gathers
  ``[S, B, ...]`` batches with an ``[S, B]`` index, one gather for all copies;
* **forward**: the input layer of all copies is one ``embedding_bag`` over
  ``S*B`` bags (the S tables flattened to ``[S*C, N]``, indices shifted by
  ``s*C``) plus one ``baddbmm`` for the dense part; the rest of the model runs
  under ``torch.func.vmap`` over ``functional_call`` of ``forward_from_input``;
* **loss**: the sum over copies of each copy's weighted task-loss sum, so copy
  k's gradient is its own run's gradient. The loss weightings that only scale
  the task losses hold one state per copy (``equal``; ``uncertainty``:
  log-variances ``[S,T]``; ``dwa``: loss histories and weights ``[S,T]``,
  see :meth:`~adatt.train.weighting.Weighting.expand_copies`);
* **gradient clipping** (``train.grad_clip``): each copy's gradient norm is
  clipped on its own (:func:`clip_grad_norm_per_copy`);
* **optimizer and schedule**: one fused Adam/AdamW (or SGD/Adagrad) over the
  stacked parameters -- every update is elementwise, so it is S separate updates;
  the learning-rate schedule depends on the step only, shared by all copies;
* **selection**: the validation set is scored for all copies in one vectorised
  pass (:func:`~adatt.train.evaluation.evaluate`); each copy keeps its own
  :class:`~adatt.train.selection.Selection` (best score, best evaluation,
  patience counter), and a stacked best-parameter buffer takes the improved
  copies' slices through a mask.

Results match separate runs up to floating-point summation order (batched
products add in a different order than single ones). Not supported, with a
:class:`~adatt.config.ConfigError` saying so: ``gradnorm`` and ``pcgrad``
(they need each copy's per-task gradients of the shared layers, which one
stacked backward pass does not separate),
``runtime.distributed`` and ``data.source=stream``. There is
no ``--resume`` inside a group of copies: an ensemble that is killed keeps its
finished seeds (``resume=True``) and trains the others again.

``train_ensemble(cfg, seeds)`` writes, under ``<out_dir>/<name>/``:

* ``seed_<s>/`` for every seed s: ``config.yaml`` (the resolved config with
  ``train.seed=s`` and ``name=<name>/seed_<s>``), ``metrics.jsonl``,
  ``results.json`` and ``best.pt`` (a state dict of the ordinary model), so
  ``adatt eval --run <out_dir>/<name>/seed_<s>`` and
  :func:`~adatt.train.trainer.load_run` work as for a single run; with
  tracking on (``tracking``, ``runtime.tensorboard``), each copy is its own
  tracked run (MLflow: run ``<name>/seed_<s>`` tagged ``ensemble=<name>``;
  TensorBoard: ``seed_<s>/tb``), as if trained alone;
* ``ensemble.json``: the seeds, wall time, throughput, and per split, task and
  metric the mean and sample standard deviation over the copies.

Memory: parameters, gradients, Adam moments and the best-parameter buffer cost
about ``5 * S * P * 4`` bytes (P parameters per copy), activations about S
times those of one run (census AdaTT-sp, P = 441k, batch 512: about 2 GB of
peak memory for S = 100). ``chunk`` trains the seeds in groups of at most
``chunk`` copies, one group after the other; by default (:func:`auto_chunk`)
all copies go together on CUDA, and on CPU groups are sized so that a step's
largest tensors stay under 16 MiB (larger ones make glibc fault in fresh pages
on every step, which costs more than the vectorisation saves). Speed
(``benchmarks/ensemble.py``, census AdaTT-sp, paired with a separate run):
on one CPU thread S = 10 and S = 20 copies train 1.2x faster than as many
separate runs (CPU time, Intel Xeon, 2026-12-06): a copy's one-hot gather
and its small products cost what they cost in a separate run, and only the
per-operation overhead is shared. The gain is expected where a single run's
step is dominated by that overhead, as on a GPU, where one kernel launch
serves S copies (not yet measured). Experiments choose between this and
worker processes from measured rates (:mod:`adatt.experiments.engine`).

Example:
    >>> import tempfile
    >>> from adatt.config import load_config
    >>> cfg = load_config(None, ["data.source=mmoe_synthetic", "data.rows=1000",
    ...     "model.name=mmoe", "model.expert_sizes=[[8]]", "model.num_experts=2",
    ...     "train.epochs=1", "runtime.progress=false", "out_dir=" + tempfile.mkdtemp()])
    >>> res = train_ensemble(cfg, seeds=[0, 1])
    >>> [r["seed"] for r in res], sorted(res[0]["test"])
    ([0, 1], ['task1', 'task2'])
    >>> res[0]["test"] != res[1]["test"]
    True
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from adatt.config import ConfigError, RunConfig
from adatt.data.batch import TensorDataset, regression_label_variance
from adatt.data.schema import FeatureSchema
from adatt.models.base import MultiTaskModel
from adatt.train.atomic import atomic_write
from adatt.train.evaluation import evaluate
from adatt.train.guard import NonFiniteGuard
from adatt.train.losses import labelled_weights, masked_elementwise
from adatt.train.optim import make_optimizer, make_schedule, training_plan
from adatt.train.progress import Progress, ProgressLog
from adatt.train.results import build_results
from adatt.train.rundir import RunDir
from adatt.train.runs import build_model, finished_results
from adatt.train.seeding import seed_everything
from adatt.train.selection import (
    Selection,
    check_labelled,
    one_class_tasks,
    selection_score,
    warn_one_class,
)
from adatt.train.tracking import Tracker, finish, flatten, log_evaluation, open_tracker
from adatt.train.trainer import make_weighting, setup_runtime
from adatt.train.weighting import WEIGHTINGS, Weighting

__all__ = ["EnsembleModel", "EnsembleLoss", "train_ensemble", "evaluate_ensemble",
           "train_step", "clip_grad_norm_per_copy", "check_ensemble_config", "auto_chunk",
           "seed_config"]

_CPU_ACTIVATION_BYTES = 16 * 2**20  # auto_chunk's budget for one [S,B,N] activation on CPU


# ----------------------------------------------------------------------------- the model


class _FromInput(nn.Module):
    """``forward(z) = model.forward_from_input(z)[0]``: what ``functional_call`` runs."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model.forward_from_input(z)[0]


class EnsembleModel:
    """S copies of one model architecture as stacked parameters ``[S, ...]``.

    Args:
        models: S models of the same class and shapes (their parameters are
            copied; the first one is kept as the skeleton that
            ``functional_call`` runs, its own parameters unused).

    ``params`` maps every parameter name of the ordinary model to a leaf
    ``nn.Parameter [S, *shape]``. ``forward(dense, cat)`` takes per-copy inputs
    ``dense [S,B,Dd]``, ``cat [S,B,F]`` or one batch shared by all copies
    ``dense [B,Dd]``, ``cat [B,F]``, and returns logits ``[S,B,T]``.
    """

    def __init__(self, models: Sequence[MultiTaskModel]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        base = models[0]
        names = [n for n, _ in base.named_parameters()]
        for m in models[1:]:
            if type(m) is not type(base) or [
                (n, p.shape) for n, p in m.named_parameters()
            ] != [(n, p.shape) for n, p in base.named_parameters()]:
                raise ValueError("every copy must have the same architecture")
            for (n, b), (_, b0) in zip(m.named_buffers(), base.named_buffers(), strict=True):
                if not torch.equal(b, b0):  # buffers are shared by the copies, never stacked
                    raise ValueError(f"buffer {n} differs between copies")
        self.base = base
        self.num_copies = len(models)
        per_model = [dict(m.named_parameters()) for m in models]
        self.params: dict[str, nn.Parameter] = {}
        with torch.no_grad():
            for n in names:  # construction only, never in a step
                stacked = torch.stack([pm[n] for pm in per_model])  # S x [*p] -> [S,*p]
                self.params[n] = nn.Parameter(stacked)
        self._rest = _FromInput(base)
        self._rest_names = [n for n in names if not n.startswith("input.")]
        self._input_names = [n for n in names if n.startswith("input.")]

        def rest(params: dict[str, Tensor], z: Tensor) -> Tensor:
            return functional_call(self._rest, params, (z,))  # [B,N] -> [B,T]

        self._vrest = vmap(rest, in_dims=(0, 0))  # [S,B,N] -> [S,B,T]

    @classmethod
    def build(cls, model_cfg: dict[str, Any], schema: FeatureSchema, seeds: Sequence[int],
              device: torch.device | str = "cpu") -> EnsembleModel:
        """Copy k built exactly as ``train()`` builds the model of ``train.seed=seeds[k]``."""
        models = []
        for s in seeds:
            seed_everything(int(s))
            models.append(build_model(model_cfg, schema))
        ens = cls(models)
        del models
        return ens.to(device)

    def to(self, device: torch.device | str) -> EnsembleModel:
        self.base.to(device)
        with torch.no_grad():
            self.params = {n: nn.Parameter(p.to(device)) for n, p in self.params.items()}
        return self

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def num_parameters(self) -> int:
        """Parameters of one copy."""
        return sum(p[0].numel() for p in self.params.values())

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def __call__(self, dense: Tensor, cat: Tensor,
                 params: dict[str, Tensor] | None = None) -> Tensor:
        return self.forward(dense, cat, params)

    def forward(self, dense: Tensor, cat: Tensor,
                params: dict[str, Tensor] | None = None) -> Tensor:
        """Logits ``[S,B,T]``; ``params`` (default ``self.params``) are stacked ``[S, ...]``."""
        p = self.params if params is None else params
        z = self.input_forward(dense, cat, p)  # [S,B,N]
        rest = {"model." + n: p[n] for n in self._rest_names}  # names inside _FromInput
        return self._vrest(rest, z)  # [S,B,N] -> [S,B,T]

    def input_forward(self, dense: Tensor, cat: Tensor, p: dict[str, Tensor]) -> Tensor:
        """Input layer of all copies: ``[S,B,Dd]|[B,Dd]``, ``[S,B,F]|[B,F]`` -> ``[S,B,N]``.

        The layer builds its S copies itself
        (:meth:`~adatt.modules.layers.InputLinear.forward_copies`) from the
        stacked ``input.*`` parameters.
        """
        own = {n[len("input."):]: p[n] for n in self._input_names}  # its own parameter names
        return self.base.input.forward_copies(dense, cat, own)  # -> [S,B,N]

    def state_dict_of(self, k: int, params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Copy k as a state dict of the ordinary model (contiguous CPU clones)."""
        p = self.params if params is None else params
        sd = {n: t.detach().cpu() for n, t in self.base.state_dict().items()}
        for n in self.params:
            sd[n] = p[n][k].detach().to("cpu", copy=True)  # a clone, never a view of [S,...]
        return sd


# ----------------------------------------------------------------------------- loss, evaluation


class EnsembleLoss(nn.Module):
    """Per-copy task losses with per-copy labels: ``[S,B,T]`` -> ``[S,T]``.

    The same losses as :class:`~adatt.train.losses.TaskLoss` (BCE with logits for
    binary tasks, squared error for regression, a (weighted) mean over the batch),
    with labels ``[S,B,T]`` and weights ``[S,B]`` (or per-task ``[S,B,T]``) gathered
    per copy. With ``partial`` tasks (NaN labels: unlabelled) or per-task weights,
    each copy's task loss is the mean over that copy's labelled rows of the task
    (:func:`~adatt.train.losses.labelled_weights`), as in a single run.
    :meth:`total` is the sum over copies and tasks of ``c_t L_st``.
    """

    is_binary: Tensor
    task_weights: Tensor

    def __init__(self, kinds: Sequence[str], task_weights: Sequence[float] | None = None,
                 partial: Sequence[bool] | None = None):
        super().__init__()
        kinds = list(kinds)
        t = len(kinds)
        self.partial = bool(partial is not None and any(partial))
        w = torch.ones(t) if task_weights is None else torch.as_tensor(task_weights).float()
        self.register_buffer("is_binary", torch.tensor([k == "binary" for k in kinds]))
        self.register_buffer("task_weights", w)
        self._all_binary = all(k == "binary" for k in kinds)
        self._all_regression = all(k == "regression" for k in kinds)

    def forward(self, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.partial or (weight is not None and weight.dim() == 3):
            mass = labelled_weights(labels, weight, logits.dtype)  # [S,B,T], 0 where unlabelled
            clean = torch.where(mass > 0, labels, torch.zeros_like(labels))  # [S,B,T], no NaN
            per = masked_elementwise(logits, clean, self.is_binary, self._all_binary,
                                     self._all_regression)  # [S,B,T]
            total = mass.sum(dim=-2).clamp_min(torch.finfo(mass.dtype).tiny)  # [S,T]
            return (per * mass).sum(dim=-2) / total  # [S,B,T] -> [S,T]
        per = masked_elementwise(logits, labels, self.is_binary, self._all_binary,
                                 self._all_regression)  # [S,B,T]
        if weight is None:
            return per.mean(dim=-2)  # [S,B,T] -> [S,T]
        w = weight.to(per.dtype)  # [S,B]
        return (per * w[..., None]).sum(dim=-2) / w.sum(-1, keepdim=True)  # [S,B,T] -> [S,T]

    def total(self, losses: Tensor) -> Tensor:
        """``sum_s sum_t c_t L_st``: ``[S,T]`` -> scalar (copies stay independent)."""
        return (losses * self.task_weights.to(losses)).sum()  # [S,T] * [T] -> []


def evaluate_ensemble(model: EnsembleModel, data: TensorDataset, schema: FeatureSchema,
                      batch_size: int = 8192,
                      params: dict[str, Tensor] | None = None) -> list[dict[str, dict[str, float]]]:
    """Every metric of every task for every copy over the whole of ``data`` (one pass of
    :func:`~adatt.train.evaluation.evaluate`).

    A batch holds ``max(1, batch_size // S)`` rows, so ``S`` times that many rows
    go through the model at once (the memory of one ordinary evaluation batch).
    """
    return evaluate(model, data, schema, batch_size, params=params, distributed=False)


# ----------------------------------------------------------------------------- training


def train_step(model: EnsembleModel, loss_fn: EnsembleLoss, opt: torch.optim.Optimizer,
               sched, data: TensorDataset, idx: Tensor, bf16: bool = False,
               weighting: Any = None, grad_clip: float | None = None) -> Tensor:
    """One optimizer step of every copy on its own rows ``idx [S,B]``; losses ``[S,T]``.

    ``weighting``: a per-copy :class:`~adatt.train.weighting.Weighting`
    (``expand_copies(S)``; default the static-weighted sum ``loss_fn.total``);
    ``grad_clip``: every copy's gradient norm clipped on its own
    (:func:`clip_grad_norm_per_copy`).
    """
    batch = data.batch(idx)  # dense [S,B,Dd], cat [S,B,F], labels [S,B,T], weight [S,B]
    device_type = idx.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch.dense, batch.cat)  # [S,B,T]
    losses = loss_fn(logits.float(), batch.labels, batch.weight)  # [S,T]
    opt.zero_grad(set_to_none=True)
    if weighting is None:
        loss_fn.total(losses).backward()
    else:
        weighting.backward(losses, [])  # per-copy methods scale losses: no shared gradients
    if grad_clip is not None:
        clip_grad_norm_per_copy(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return losses


@torch.no_grad()
def clip_grad_norm_per_copy(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each copy of stacked parameters ``[S, ...]``:
    copy k's gradients (slices ``[k]``) are scaled by ``min(1, max_norm / (norm_k + 1e-6))``
    with ``norm_k`` the L2 norm of all of them. Returns the norms ``[S]`` (no host sync).

    >>> p = torch.nn.Parameter(torch.zeros(2, 3))
    >>> p.grad = torch.tensor([[3.0, 4.0, 0.0], [0.3, 0.4, 0.0]])
    >>> clip_grad_norm_per_copy([p], 1.0).tolist()
    [5.0, 0.5]
    >>> [round(float(x), 4) for x in p.grad.norm(dim=1)]
    [1.0, 0.5]
    """
    grads = [p.grad for p in params if p.grad is not None]
    per_param = [torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]  # n x [S]
    norms = torch.linalg.vector_norm(torch.stack(per_param), dim=0)  # [n,S] -> [S]
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # [S]
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))  # [S] -> [S,1,...] per copy
    return norms


def check_ensemble_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` for the options ``train_ensemble`` cannot honour."""
    tc = cfg.train
    cls = WEIGHTINGS.get(tc.weighting)
    if cls is not None and not cls.per_copy:
        per_copy = ", ".join(n for n, c in WEIGHTINGS.items() if c.per_copy)
        raise ConfigError(f"train.weighting={tc.weighting}: not supported by train_ensemble (it "
                          "needs each copy's per-task gradients of the shared layers, which one "
                          f"stacked backward pass does not separate); use {per_copy}, or train "
                          "those runs separately with `adatt train`")
    if cfg.runtime.distributed:
        raise ConfigError("runtime.distributed=true: not supported by train_ensemble (its copies "
                          "are vectorised in one process)")
    if tc.nonfinite == "skip":
        raise ConfigError("train.nonfinite=skip: not supported by train_ensemble (its copies "
                          "take every step together); use train.nonfinite=stop, or train the "
                          "runs separately with `adatt train`")
    if cfg.data.source == "stream":
        raise ConfigError("data.source=stream: train_ensemble needs in-memory training data "
                          "(each copy gathers its own rows of every step)")


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` for seed ``seed``: ``train.seed=seed``, run ``<name>/seed_<seed>``."""
    c = cfg.model_copy(deep=True)
    c.name = f"{cfg.name}/seed_{seed}"
    c.train.seed = int(seed)
    return c


def train_ensemble(cfg: RunConfig, seeds: Sequence[int], splits=None, overwrite: bool = False,
                   chunk: int | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """Train one copy of ``cfg`` per seed, vectorised; one results dict per seed.

    Args:
        cfg: the run configuration (``train.seed`` is ignored: the seeds are given).
        seeds: S distinct seeds; copy k equals ``train()`` with ``train.seed=seeds[k]``.
        splits: the loaded data (default: loaded from ``cfg.data``).
        overwrite: replace an existing ``<out_dir>/<name>``.
        chunk: train at most this many copies together, the groups one after the
            other (default :func:`auto_chunk`: all S on CUDA; on CPU a group size
            that keeps allocations small, 10 for the census configuration).
        resume: keep the seeds whose ``seed_<s>`` run already finished with this
            configuration (:func:`~adatt.train.trainer.finished_results`) and
            train only the others; an interrupted or extended ensemble goes on
            where it stopped, at seed granularity.

    Returns:
        S dicts with the keys of ``train()``'s results, plus ``ensemble_size`` and
        ``ensemble_examples_per_s`` (training examples/s summed over the copies
        trained together); ``train_examples_per_s`` is the per-copy share of it and
        ``wall_time_s`` runs from the call to the end of the copy's group.
    """
    t_start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("train_ensemble: seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"train_ensemble: seeds must be distinct, got {seeds}")
    if chunk is not None and chunk < 1:
        raise ConfigError(f"train_ensemble: chunk must be >= 1, got {chunk}")
    check_ensemble_config(cfg)
    ens_dir = Path(cfg.out_dir) / cfg.name
    RunDir(ens_dir).check_new(resume=False, overwrite=overwrite or resume,
                              advice="pass resume=True to keep its finished seeds, "
                              "overwrite=True to replace it, or name=... for a new run")
    done: dict[int, dict[str, Any]] = {}
    if resume:
        for s in seeds:
            r = finished_results(ens_dir / f"seed_{s}", seed_config(cfg, s))
            if r is not None:
                done[s] = r
    todo = [s for s in seeds if s not in done]
    # one tracked run per copy, each opened before any directory is made (one-line errors)
    trackers = {s: open_tracker(seed_config(cfg, s), ens_dir / f"seed_{s}",
                                tags={"ensemble": cfg.name}) for s in todo}
    ens_dir.mkdir(parents=True, exist_ok=True)
    (ens_dir / "ensemble.json").unlink(missing_ok=True)
    trained: dict[int, dict[str, Any]] = {}
    examples = train_time = 0.0
    size = chunk or 1
    if todo:
        device, splits = setup_runtime(cfg, splits)
        size = chunk or auto_chunk(cfg, splits.schema, len(todo), device)
        for lo in range(0, len(todo), size):
            part, ex, tt = _train_group(cfg, todo[lo : lo + size], splits, device, t_start,
                                        [trackers[s] for s in todo[lo : lo + size]])
            trained.update(zip(todo[lo : lo + size], part, strict=True))
            examples, train_time = examples + ex, train_time + tt
    results = [done[s] if s in done else trained[s] for s in seeds]
    summary = {
        "name": cfg.name,
        "model": cfg.model["name"],
        "data": cfg.data.source,
        "seeds": seeds,
        "chunk": size,
        "runs": [f"seed_{s}" for s in seeds],
        "reused": sorted(done),
        "wall_time_s": time.perf_counter() - t_start,
        "train_time_s": train_time,
        "ensemble_examples_per_s": examples / max(train_time, 1e-9),
        "selection_score": _mean_std([r["selection_score"] for r in results]),
        "valid": _summarise([r["valid"] for r in results]),
        "test": _summarise([r["test"] for r in results]),
    }
    atomic_write(json.dumps(summary, indent=2), ens_dir / "ensemble.json")
    return results


def auto_chunk(cfg: RunConfig, schema: FeatureSchema, num_copies: int,
               device: torch.device | str) -> int:
    """How many copies ``train_ensemble`` trains together when ``chunk`` is None.

    CUDA: all of them. CPU: as many as keep the input layer's output ``[S,B,N]``
    (about the widest activation of a step) under 16 MiB: glibc serves larger
    blocks with fresh pages on every allocation, and the page faults then cost
    more than the vectorisation saves (census AdaTT-sp, batch 512: 10 copies).
    """
    if torch.device(device).type != "cpu":
        return num_copies
    width = build_model(cfg.model, schema).input.out_features  # N (RNG reseeded per copy)
    per_copy = cfg.train.batch_size * width * 4  # bytes of one copy's [B,N] float32
    return max(1, min(num_copies, _CPU_ACTIVATION_BYTES // per_copy))


def _mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
            "n": int(a.size)}


def _summarise(per_copy: Sequence[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """``{task: {metric: {mean, std, n}}}`` over the copies (std: sample, ddof=1)."""
    first = per_copy[0]
    return {task: {m: _mean_std([r[task][m] for r in per_copy]) for m in ms}
            for task, ms in first.items()}


def _train_group(cfg: RunConfig, seeds: list[int], splits, device: torch.device,
                 t_start: float, trackers: list[Tracker]
                 ) -> tuple[list[dict[str, Any]], float, float]:
    """Train S = len(seeds) copies together; (results, examples summed over copies, train s)."""
    # ---------------------------------------------------------------- setup
    tc = cfg.train
    schema = splits.schema
    S = len(seeds)
    model = EnsembleModel.build(cfg.model, schema, seeds, device)
    loss_fn = EnsembleLoss(schema.task_kinds, tc.task_weights,
                           [t.partial for t in schema.tasks]).to(device)
    weighting = make_weighting(cfg, schema, copies=S).to(device)
    groups = [{"params": model.parameters()}]
    if list(weighting.parameters()):  # e.g. uncertainty log-variances [S,T]: no weight decay
        groups.append({"params": list(weighting.parameters()), "weight_decay": 0.0})
    opt = make_optimizer(groups, tc)
    train_data = splits.train.to(device)
    n_train, steps_per_epoch, budget, total_steps = training_plan(len(train_data), tc)
    sched = make_schedule(opt, tc, total_steps)
    label_var = regression_label_variance(train_data, schema)
    with torch.no_grad():
        best = {n: p.detach().clone() for n, p in model.params.items()}  # [S,...] selected

    runs = [RunDir(Path(cfg.out_dir) / cfg.name / f"seed_{s}") for s in seeds]
    for s, run, tracker in zip(seeds, runs, trackers, strict=True):
        run.start(seed_config(cfg, s), splits)
        tracker.start(flatten(seed_config(cfg, s).model_dump(mode="json")))
    progress = Progress(next_eval=tc.eval_every or n_train)
    selections = [Selection() for _ in seeds]  # one per copy
    stop_examples = [0] * S  # examples seen when a copy's selection stopped
    one_class = one_class_tasks(splits.valid, schema)
    warn_one_class(one_class, "validation", tc.selection.metric)
    guard = NonFiniteGuard(tc.nonfinite, schema.task_names, [f"seed {s}" for s in seeds])

    def evaluate_and_select(losses: Tensor) -> None:
        """Score all copies on validation; update each live copy's selection and log."""
        metrics = evaluate_ensemble(model, splits.valid, schema, tc.eval_batch_size)
        progress.evals += 1
        train_loss = losses.detach().tolist()  # [S,T]
        live_scores: list[float] = []
        lr = sched.get_last_lr()[0]
        for k, (sel, run) in enumerate(zip(selections, runs, strict=True)):
            if sel.done:
                sel.improved = False
                continue
            score, higher = selection_score(metrics[k], schema, tc.selection.metric, label_var,
                                            one_class)
            if not sel.update(score, higher, progress.at(), tc.selection.patience) and sel.done:
                stop_examples[k] = progress.examples
            log_evaluation(run, trackers[k], progress, schema.task_names,
                           train_loss=train_loss[k], score=score, improved=sel.improved,
                           valid=metrics[k], lr=lr)
            live_scores.append(score)
        improved = [sel.improved for sel in selections]
        if any(improved):
            mask = torch.tensor(improved, device=best["input.bias"].device)  # [S]
            with torch.no_grad():
                for n, p in model.params.items():
                    m = mask.view(S, *([1] * (p.dim() - 1)))  # [S] -> [S,1,...]
                    best[n].copy_(torch.where(m, p.detach(), best[n]))  # improved slices only
        bar.evaluation(progress, float(np.mean([sum(x) for x in train_loss])),  # copies' mean
                       float(np.mean(live_scores)) if live_scores else None)

    bar = ProgressLog(f"{cfg.name} x{S}", budget, enabled=cfg.runtime.progress)

    # ---------------------------------------------------------------- train
    model.train()
    scaling = None if tc.weighting == "equal" else weighting  # equal: loss_fn.total
    epoch_means = type(weighting).epoch_end is not Weighting.epoch_end  # e.g. DWA's history
    epoch_loss = None
    while not all(sel.done for sel in selections) and progress.examples < budget:
        epoch = progress.epoch
        perms = torch.stack([  # once per epoch: each copy's own order, as train() draws it
            torch.randperm(n_train, generator=torch.Generator().manual_seed(s * 1_000_003 + epoch))
            for s in seeds
        ]).to(device)  # S x [n] -> [S,n]
        for b_idx in range(steps_per_epoch):
            if progress.examples >= budget:
                break
            t0 = time.perf_counter()
            idx = perms[:, b_idx * tc.batch_size : (b_idx + 1) * tc.batch_size]  # [S,B]
            idx = idx[:, : budget - progress.examples]  # [S,B] -> [S,B'] (budget cut)
            losses = train_step(model, loss_fn, opt, sched, train_data, idx, tc.bf16,
                                scaling, tc.grad_clip)  # [S,T]
            guard.check(losses, progress.step + 1)  # stop: an error naming the copy's seed
            n = idx.shape[1]
            progress.step += 1
            progress.examples += n
            progress.train_time += time.perf_counter() - t0
            progress.epoch_steps += 1
            if epoch_means:
                detached = losses.detach()
                epoch_loss = detached if progress.epoch_steps == 1 else epoch_loss + detached
            bar.update(n, losses)  # [S,T]; read at most once a second (in a terminal)
            epoch_end = b_idx + 1 >= steps_per_epoch
            if epoch_end:
                progress.epoch += 1
                if epoch_means:
                    weighting.epoch_end(epoch_loss / progress.epoch_steps)  # [S,T] means
                progress.epoch_steps = 0
            if progress.examples >= progress.next_eval or progress.examples >= budget:
                progress.next_eval += tc.eval_every or n_train
                evaluate_and_select(losses)
                if all(sel.done for sel in selections):
                    break
    bar.close()
    for k, sel in enumerate(selections):
        if not sel.done:
            stop_examples[k] = progress.examples

    # ---------------------------------------------------------------- evaluate selected
    valid = evaluate_ensemble(model, splits.valid, schema, tc.eval_batch_size, best)
    test = evaluate_ensemble(model, splits.test, schema, tc.eval_batch_size, best)
    rate = progress.examples * S / max(progress.train_time, 1e-9)
    wall = time.perf_counter() - t_start

    # ---------------------------------------------------------------- save
    results = []
    for k, (s, run) in enumerate(zip(seeds, runs, strict=True)):
        run.save_best(model.state_dict_of(k, best))
        res = build_results(seed_config(cfg, s), schema, selections[k], valid=valid[k],
                            test=test[k], num_parameters=model.num_parameters(),
                            examples=stop_examples[k], examples_per_s=rate / S,
                            wall_time_s=wall, labelled=check_labelled(splits, schema),
                            ensemble_size=S, ensemble_examples_per_s=rate)
        run.write_results(res)
        finish(trackers[k], res, [run.file(f) for f in ("best.pt", "results.json",
                                                       "config.yaml")])
        results.append(res)
    return results, float(progress.examples * S), float(progress.train_time)
