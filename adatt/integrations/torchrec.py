"""TorchRec integration: categorical features in sharded embedding tables, any model on top.

Notation: B batch (of one process), Dd dense width, F categorical features,
k_f feature f's embedding size, P = sum_f k_f pooled width, T tasks, W processes.

When the embedding tables of the categorical features outgrow one machine's
memory, they can live in a TorchRec ``EmbeddingBagCollection`` (EBC) that
``DistributedModelParallel`` (DMP) shards over processes, while the model on
top (any registered model: AdaTT, MMoE, PLE, ...) is replicated and trained
data-parallel.

:class:`TorchRecMultiTask` pools every feature of a ``KeyedJaggedTensor``
(KJT: per feature, a variable number of indices per example) in its table,
puts the pooled embeddings after the dense features,
``x = [dense, e_1, ..., e_F]`` ``[B, Dd + P]``, and hands ``x`` to the
registered model built with ``dense_dim = Dd + P`` and no categorical field:
the model's input layer is one dense layer over ``x``. With one single-valued,
sum-pooled feature per table this is what the model computes in its own
``embedding_dim`` mode (:meth:`TorchRecMultiTask.copy_from` copies such a
model's weights over).

Training (:func:`apply_sparse_optimizer`, :func:`shard`, :func:`train_step`,
or all of it from a run config: :func:`train_torchrec`): TorchRec's planner
shards the tables table-wise (or column-wise) over the processes; a fused
optimizer updates them inside the backward pass (FBGEMM kernels; on CPU
``sgd``, ``adagrad`` or ``rowwise_adagrad``); the dense parameters are wrapped
in DistributedDataParallel and updated by the run's ``torch.optim`` optimizer.
Each process computes its part of every global batch, and a step equals a
single-process step on the whole global batch.

Launch with torchrun (``gloo`` on CPU)::

    torchrun --standalone --nproc-per-node 2 -m adatt.integrations.torchrec \\
        --config configs/sim/adatt.yaml model.embedding_dim=16

TorchRec is an optional extra: importing this module does not import it, and
using it without it raises :class:`TorchRecError` saying how to install it.

Example:
    >>> import pytest; _ = pytest.importorskip("torchrec")  # the example needs the extra
    >>> import torch
    >>> from adatt.data.schema import FeatureSchema, TaskSpec
    >>> schema = FeatureSchema(("age",), ("city", "genre"), (10, 5),
    ...                        (TaskSpec("click"), TaskSpec("like")))
    >>> tables = schema_to_tables(schema, embedding_dim=4)
    >>> [(t.name, t.num_embeddings, t.embedding_dim, t.feature_names) for t in tables]
    [('city', 10, 4, ['city']), ('genre', 5, 4, ['genre'])]
    >>> m = TorchRecMultiTask("adatt_sp", 2, dense_dim=1, tables=tables, expert_sizes=[8])
    >>> kjt = cat_to_kjt(torch.tensor([[3, 1], [0, 4], [9, 2]]), schema.categorical)
    >>> m(torch.randn(3, 1), kjt).shape                  # [B, T]
    torch.Size([3, 2])
    >>> multi = jagged_to_kjt({"city": [[3], [0], [9, 1]], "genre": [[1, 2], [], [2]]})
    >>> multi.lengths().tolist()                         # per feature, per example
    [1, 1, 2, 2, 0, 1]
    >>> m.pooled(multi).shape                            # [B, P]
    torch.Size([3, 8])
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from adatt.config import ConfigError, RunConfig
from adatt.data.errors import DataError
from adatt.train.denormal import flush_denormals
from adatt.train.losses import TaskLoss
from adatt.train.rundir import RunError

if TYPE_CHECKING:
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.distributed.types import ShardingPlan

    from adatt.data.batch import TensorDataset
    from adatt.data.schema import FeatureSchema
    from adatt.data.splits import Splits

__all__ = ["INSTALL_HINT", "TorchRecError", "require_torchrec", "schema_to_tables", "cat_to_kjt",
           "jagged_to_kjt", "TorchRecMultiTask", "apply_sparse_optimizer", "shard",
           "plan_placement", "load_full_state", "full_state_dict", "full_sparse_optimizer_state",
           "load_sparse_optimizer_state", "train_step",
           "evaluate_sharded", "train_torchrec", "main", "SHARDINGS", "SPARSE_OPTIMIZERS"]

# torchrec's package metadata asks for `fbgemm-gpu`, a CUDA build that cannot load next to a
# CPU-only torch; the extra brings FBGEMM's CPU build and torchrec's other needs, and torchrec
# itself is installed after it without its dependencies.
INSTALL_HINT = ("torchrec support needs `pip install adatt[torchrec]`, then "
                "`pip install --no-deps torchrec==1.8.0`")

# What the planner offers for tables on CPU (row-wise sharding is not offered there).
SHARDINGS = ("table_wise", "column_wise")
# Fused embedding optimizers of FBGEMM's CPU kernels (+ adam on CUDA).
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")


class TorchRecError(RunError):
    """TorchRec is not installed or cannot be used (one line)."""


def require_torchrec() -> Any:
    """The ``torchrec`` module; missing or broken, a :class:`TorchRecError` saying what to do."""
    try:
        import torchrec
    except ImportError:
        raise TorchRecError(INSTALL_HINT) from None
    except OSError as e:  # fbgemm_gpu's libraries do not load
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TorchRecError(
            f"torchrec is installed but fbgemm_gpu does not load ({first}); with a CPU-only "
            "torch it must be the CPU build: pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && "
            "pip install fbgemm-gpu-cpu==1.8.0") from None
    return torchrec


def _table_names(fields: Sequence[str]) -> list[str]:
    """Module-safe, unique table names for fields (a table's name is part of parameter names)."""
    out: list[str] = []
    for f in fields:
        name = re.sub(r"\W", "_", f) or "table"
        base, i = name, 1
        while name in out:
            name, i = f"{base}_{i}", i + 1
        out.append(name)
    return out


def schema_to_tables(schema: FeatureSchema, embedding_dim: int) -> list[EmbeddingBagConfig]:
    """One sum-pooled table per categorical field of ``schema``.

    Table ``f`` has ``cardinality_f`` rows of size ``embedding_dim`` and reads
    feature ``f`` (the field's name); it is named after the field (characters
    that cannot be in a parameter name become ``_``). Weights start uniform in
    ``[-sqrt(3), sqrt(3)]``: unit variance, as the ``N(0, 1)`` embeddings of a
    model's own ``embedding_dim`` mode.
    """
    tr = require_torchrec()
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ConfigError(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
    if not schema.categorical:
        raise DataError("the schema has no categorical field to put in an embedding table")
    bound = math.sqrt(3.0)
    return [
        tr.EmbeddingBagConfig(name=name, embedding_dim=embedding_dim, num_embeddings=int(card),
                              feature_names=[field], weight_init_min=-bound,
                              weight_init_max=bound)
        for name, field, card in zip(_table_names(schema.categorical), schema.categorical,
                                     schema.cardinalities, strict=True)
    ]


def cat_to_kjt(cat: Tensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """Per-field indices ``cat [B, F]`` as a KJT: feature ``keys[f]`` holds ``cat[:, f]``.

    Every example has one index per feature (all lengths 1).
    """
    tr = require_torchrec()
    if cat.dim() != 2 or cat.shape[1] != len(keys):
        raise DataError(f"cat must be [B, {len(keys)}] for features {list(keys)}, "
                        f"got {list(cat.shape)}")
    B, F = cat.shape
    values = cat.long().t().reshape(-1)  # [B,F] -> [F,B] -> [F*B], feature-major as in a KJT
    lengths = torch.ones(F * B, dtype=torch.int32, device=cat.device)  # [F*B]
    return tr.KeyedJaggedTensor.from_lengths_sync(list(keys), values, lengths)


def jagged_to_kjt(features: Mapping[str, Sequence[Sequence[int]]],
                  device: torch.device | str | None = None) -> KeyedJaggedTensor:
    """Multi-valued features as a KJT: per feature, one list of indices per example.

    A list may be empty (the example's pooled embedding is then zero); every
    feature must list the same number of examples B.
    """
    tr = require_torchrec()
    sizes = {k: len(v) for k, v in features.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"every feature needs the same number of examples, got {sizes}")
    lengths = [len(ex) for v in features.values() for ex in v]  # [F*B], feature-major
    values = [int(i) for v in features.values() for ex in v for i in ex]
    return tr.KeyedJaggedTensor.from_lengths_sync(
        list(features), torch.tensor(values, dtype=torch.long, device=device),
        torch.tensor(lengths, dtype=torch.int32, device=device))


class TorchRecMultiTask(nn.Module):
    """A registered model over ``[dense, pooled embeddings of a TorchRec EBC]``.

    Args:
        model_name: a registered model (``adatt models`` lists them).
        num_tasks: T.
        dense_dim: Dd, width of the dense features (may be 0).
        tables: the EBC's ``EmbeddingBagConfig`` list (e.g. :func:`schema_to_tables`);
            features are pooled in table order, each table's features in order.
        device: where the tables are allocated; ``"meta"`` allocates nothing
            (what :func:`shard` wants for tables too large for one process).
        **model_options: the model's options (``expert_sizes``, ...), except the
            input ones (``dense_dim``, ``cat_cardinalities``, ``embedding_dim``),
            which the tables set.

    Shapes: ``dense [B, Dd]``, ``features`` a KJT of the tables' features ->
    logits ``[B, T]``.
    """

    def __init__(self, model_name: str, num_tasks: int, dense_dim: int,
                 tables: Sequence[EmbeddingBagConfig],
                 device: torch.device | str | None = None, **model_options: Any) -> None:
        super().__init__()
        tr = require_torchrec()
        from adatt.models import create_model

        taken = sorted({"dense_dim", "cat_cardinalities", "embedding_dim"} & set(model_options))
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by the embedding tables, not a model option")
        if not tables:
            raise ValueError("at least one embedding table is required")
        self.ebc = tr.EmbeddingBagCollection(
            tables=list(tables), device=None if device is None else torch.device(device))
        self.feature_names = [f for t in tables for f in t.feature_names]
        self.feature_dims = [t.embedding_dim for t in tables for _ in t.feature_names]
        self.dense_dim, self.pooled_dim = int(dense_dim), sum(self.feature_dims)
        self.num_tasks = num_tasks
        self.model = create_model(model_name, num_tasks=num_tasks,
                                  dense_dim=self.dense_dim + self.pooled_dim, **model_options)

    def pooled(self, features: KeyedJaggedTensor) -> Tensor:
        """Pooled embeddings ``[B, P]``, features in :attr:`feature_names` order."""
        kt = self.ebc(features)
        if list(kt.keys()) == self.feature_names:
            return kt.values()  # [B, P]
        per_key = kt.to_dict()  # a sharded EBC returns its features in shard order
        return torch.cat([per_key[k] for k in self.feature_names], dim=1)  # F x [B,k_f] -> [B,P]

    def _inputs(self, dense: Tensor, features: KeyedJaggedTensor) -> tuple[Tensor, Tensor]:
        pooled = self.pooled(features)
        x = torch.cat([dense, pooled], dim=1) if self.dense_dim else pooled  # [B, Dd+P]
        return x, x.new_zeros((x.shape[0], 0), dtype=torch.long)  # no categorical field left

    def forward(self, dense: Tensor, features: KeyedJaggedTensor) -> Tensor:
        return self.model(*self._inputs(dense, features))

    def forward_with_weights(self, dense: Tensor,
                             features: KeyedJaggedTensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, T]`` and the model's per-level expert weights."""
        return self.model.forward_with_weights(*self._inputs(dense, features))

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Take the weights of ``model``: the same registered model and options, built with
        ``embedding_dim=k`` over this module's features (one single-valued feature per
        table, in order, ``k`` wide, cardinality rows). Both then give the same logits."""
        from adatt.modules.layers import InputLinear

        inp = getattr(model, "input", None)
        if type(model) is not type(self.model) or not isinstance(inp, InputLinear) \
                or inp.embedding is None:
            raise ValueError(f"copy_from needs a {type(self.model).__name__} built with "
                             "embedding_dim (learned embeddings)")
        configs = self.ebc.embedding_bag_configs()
        shapes = [(c.num_embeddings, c.embedding_dim, len(c.feature_names)) for c in configs]
        want = [(card, inp.embedding_dim, 1) for card in inp.cardinalities]
        if shapes != want or inp.dense_dim != self.dense_dim:
            raise ValueError(f"tables (rows, dim, features) {shapes} and dense width "
                             f"{self.dense_dim} do not match the model's {want}, {inp.dense_dim}")
        off = 0
        for cfg, card in zip(configs, inp.cardinalities, strict=True):
            self.ebc.embedding_bags[cfg.name].weight.copy_(inp.embedding.weight[off:off + card])
            off += card
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("input.")}
        parts = [inp.cat_weight] if inp.dense_weight is None else [inp.dense_weight, inp.cat_weight]
        state["input.dense_weight"] = torch.cat(parts, dim=0)  # [Dd,N] + [F*k,N] -> [Dd+F*k,N]
        state["input.bias"] = inp.bias
        self.model.load_state_dict(state)


def _sparse_optimizer_class(name: str, device_type: str) -> type[torch.optim.Optimizer]:
    require_torchrec()
    from torchrec.optim import RowWiseAdagrad

    classes = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad,
               "sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    if name not in classes:
        raise ConfigError(f"sparse optimizer {name!r}: known: {', '.join(classes)}")
    if name == "adam" and device_type == "cpu":
        raise ConfigError("sparse optimizer adam has no CPU kernel in FBGEMM; on CPU use "
                          "rowwise_adagrad, adagrad or sgd")
    return classes[name]


def apply_sparse_optimizer(module: TorchRecMultiTask, name: str = "rowwise_adagrad",
                           lr: float = 0.05, device_type: str = "cpu") -> None:
    """Give the embedding tables a fused optimizer that updates them inside ``backward``.

    Call before :func:`shard`: the sharded tables then use FBGEMM's fused
    kernels. Unsharded, each table takes a plain optimizer step as soon as its
    gradient is ready (the same update). Dense parameters are left to a
    ``torch.optim`` optimizer.
    """
    from torch.distributed.optim import _apply_optimizer_in_backward

    if not lr > 0:
        raise ConfigError(f"sparse learning rate must be > 0, got {lr}")
    cls = _sparse_optimizer_class(name, device_type)
    _apply_optimizer_in_backward(cls, module.ebc.parameters(), {"lr": lr})


def shard(module: TorchRecMultiTask, sharding: str = "table_wise",
          device: torch.device | str = "cpu",
          process_group: dist.ProcessGroup | None = None) -> tuple[nn.Module, ShardingPlan]:
    """Shard ``module``'s tables over the processes of ``process_group`` (default: all).

    Returns ``(DistributedModelParallel(module), plan)``. Every process must
    call it (the plan is made collectively). Tables built on ``"meta"`` are
    initialised in their shards; tables with weights keep them. The dense
    parameters are replicated (DDP broadcasts rank 0's).
    """
    require_torchrec()
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import (
        KernelConfig,
        ParameterConstraints,
        TopologyFactory,
        TrainerConfig,
    )
    from torchrec.distributed.types import ShardingEnv

    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding {sharding!r}: known: {', '.join(SHARDINGS)}")
    if not dist.is_initialized():
        raise RunError("sharding needs a process group (torch.distributed.init_process_group; "
                       "torchrun sets up its environment)")
    pg = process_group or dist.GroupMember.WORLD
    device = torch.device(device)
    world = dist.get_world_size(pg)
    carried = None
    if not any(p.is_meta for p in module.ebc.parameters()):
        carried = {k: v.detach().clone() for k, v in module.state_dict().items()
                   if k.startswith("ebc.")}
    local_world = min(world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world, local_world_size=local_world),
        kernel_config=KernelConfig(compute_device=device.type))
    constraints = {c.name: ParameterConstraints(sharding_types=[sharding])
                   for c in module.ebc.embedding_bag_configs()}
    sharder = EmbeddingBagCollectionSharder()
    planner_log = logging.getLogger("torchrec.distributed.planner")
    level = planner_log.level
    planner_log.setLevel(logging.ERROR)  # notes on planning meta-device tables
    try:
        with warnings.catch_warnings():  # the planner's deprecation notes
            warnings.simplefilter("ignore")
            planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
            plan = planner.collective_plan(module, [sharder], pg)
            dmp = DistributedModelParallel(module, env=ShardingEnv.from_process_group(pg),
                                           device=device, plan=plan, sharders=[sharder])
    finally:
        planner_log.setLevel(level)
    if carried is not None:
        load_full_state(dmp, carried)
    return dmp, plan


def plan_placement(plan: ShardingPlan) -> dict[str, dict[str, Any]]:
    """Per table: its sharding type and the ranks that hold its shards."""
    return {table: {"sharding": ps.sharding_type, "ranks": list(ps.ranks or [])}
            for params in plan.plan.values() for table, ps in params.items()}


def _sharded(value: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(value, ShardedTensor)


@torch.no_grad()
def load_full_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy an unsharded state dict (a :class:`TorchRecMultiTask`'s) into a sharded model:
    each process copies its own shards of every table, and the dense parameters."""
    for key, value in model.state_dict().items():
        if key not in state:
            continue
        src = state[key]
        _copy_into(value, src)


def _copy_into(value: Any, src: Tensor) -> None:
    """Copy the full tensor ``src`` into ``value``: a ShardedTensor's local shards, or a tensor."""
    if _sharded(value):
        for sh in value.local_shards():
            offsets, sizes = sh.metadata.shard_offsets, sh.metadata.shard_sizes
            part = tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))
            sh.tensor.copy_(src[part])
    else:
        value.copy_(src)


def _gather(value: Any, rank: int) -> Tensor | None:
    """The full tensor of a ShardedTensor (collective) or tensor, on rank 0 (None elsewhere)."""
    if _sharded(value):
        full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
        value.gather(0, full)
        return full
    return value.detach().cpu().clone() if rank == 0 else None


@torch.no_grad()
def full_sparse_optimizer_state(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """The unsharded state of the tables' fused optimizer (e.g. row-wise Adagrad's
    ``momentum1 [rows]`` per table), on rank 0 (``{}`` elsewhere); every process
    must call it. Each process holds the state of its own tables only: their
    shards are gathered to rank 0 (one ``gather_object``)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    fused = getattr(model, "fused_optimizer", None)
    mine = []  # (table parameter, state name, full size, dtype, [(offsets, local shard)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ShardedTensor's deprecation notes
        states = {} if fused is None else fused.state_dict()["state"]
        for param, named in states.items():
            for name, value in named.items():
                if _sharded(value):
                    parts = [(tuple(sh.metadata.shard_offsets), sh.tensor.detach().cpu().clone())
                             for sh in value.local_shards()]
                    mine.append((param, name, tuple(value.size()), value.dtype, parts))
                elif isinstance(value, Tensor):
                    v = value.detach().cpu().clone()
                    mine.append((param, name, tuple(v.shape), v.dtype, [((0,) * v.dim(), v)]))
    every: list[Any] | None = [None] * world if rank == 0 else None
    if world > 1:
        dist.gather_object(mine, every, dst=0)
    else:
        every = [mine]
    out: dict[str, dict[str, Tensor]] = {}
    for entries in every or []:
        for param, name, size, dtype, parts in entries:
            full = out.setdefault(param, {}).setdefault(name, torch.zeros(size, dtype=dtype))
            for offsets, t in parts:
                full[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape, strict=True))] = t
    return out


@torch.no_grad()
def load_sparse_optimizer_state(model: nn.Module, state: Mapping[str, Mapping[str, Tensor]]
                                ) -> None:
    """Copy :func:`full_sparse_optimizer_state`'s dict into the sharded fused optimizer
    (each process its own shards; the fused optimizer's state dict is a view of it)."""
    fused = getattr(model, "fused_optimizer", None)
    if fused is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for param, states in fused.state_dict()["state"].items():
            for name, value in states.items():
                if name in state.get(param, {}):
                    _copy_into(value, state[param][name])


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The unsharded state dict of a sharded model, on rank 0 (``{}`` elsewhere).

    Every process must call it (the tables' shards are gathered to rank 0).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ShardedTensor's deprecation notes
        for key, value in model.state_dict().items():
            full = _gather(value, rank)
            if rank == 0:
                out[key] = full
    return out


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, dense: Tensor,
               features: KeyedJaggedTensor, labels: Tensor, weight: Tensor | None,
               task_kinds: Sequence[str] | TaskLoss,
               task_weights: Tensor | None = None) -> Tensor:
    """One step on this process's part of a global batch; the global batch's losses ``[T]``.

    The losses are :func:`~adatt.train.losses.global_batch_losses` (per task the
    weighted mean over all processes' rows, one all-reduce of ``T + 1`` numbers):
    valued on the global batch, with the gradient of this process's share. DDP
    and TorchRec average gradients over the W processes, so the process
    back-propagates W times the static-weighted sum, and every update is the one
    of ``sum_t task_weights_t L_t`` on the global batch. The tables are updated
    during ``backward`` (:func:`apply_sparse_optimizer`), the dense parameters by
    ``optimizer``. ``labels [B, T]``, ``weight [B]`` or None; ``task_kinds``: the
    T task kinds, or the run's :class:`~adatt.train.losses.TaskLoss` (which then
    carries the task weights).
    """
    from adatt.train.losses import global_batch_losses

    loss_fn = (task_kinds if isinstance(task_kinds, TaskLoss) else
               TaskLoss(task_kinds, None if task_weights is None else task_weights.tolist()))
    world = dist.get_world_size() if dist.is_initialized() else 1
    optimizer.zero_grad(set_to_none=True)
    logits = model(dense, features)  # [B, T]
    losses = global_batch_losses(loss_fn, logits, labels, weight, distributed=world > 1)
    (loss_fn.total(losses) * world).backward()  # DDP and TorchRec average gradients over W
    optimizer.step()
    return losses.detach()


class _CatInput(nn.Module):
    """``forward(dense, cat)`` of a :class:`TorchRecMultiTask` (sharded or not): ``cat [B, F]``
    as a KJT of ``keys``, so the run's evaluation scores it as any model."""

    def __init__(self, model: nn.Module, keys: Sequence[str], device: torch.device) -> None:
        super().__init__()
        self.model, self.keys, self.device = model, list(keys), device

    def forward(self, dense: Tensor, cat: Tensor) -> Tensor:
        return self.model(dense, cat_to_kjt(cat, self.keys))  # [B, T]


def evaluate_sharded(model: nn.Module, data: TensorDataset, schema: FeatureSchema,
                     batch_size: int = 8192) -> dict[str, dict[str, float]]:
    """Every metric of every task over ``data``, on every process: the run's evaluation
    (:func:`adatt.train.evaluation.evaluate`) of a sharded model.

    Each process scores a contiguous part of ``data`` in batches of ``batch_size``
    rows; every process looks up the same number of rows per call (stand-in rows
    that count for nothing fill the short ones), the logits are gathered and the
    metrics computed in the single-process row order.
    """
    from adatt.train.evaluation import evaluate

    dense = [p for n, p in model.named_parameters() if "ebc." not in n]
    device = dense[0].device if dense else torch.device("cpu")
    world = dist.get_world_size() if dist.is_initialized() else 1
    return evaluate(_CatInput(model, schema.categorical, device), data, schema, batch_size,
                    distributed=world > 1)


def _init_process_group(device: torch.device) -> bool:
    """Join torchrun's process group, or make a one-process group; True when made here."""
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        store_file = os.path.join(tempfile.mkdtemp(prefix="adatt-torchrec-"), "store")
        dist.init_process_group(backend, store=dist.FileStore(store_file, 1), rank=0,
                                world_size=1)
    return True


def _check_config(cfg: RunConfig) -> tuple[str, int, dict[str, Any]]:
    tc = cfg.train
    if tc.weighting != "equal":
        raise ConfigError(f"train.weighting={tc.weighting}: the torchrec trainer supports equal "
                          "weighting (with train.task_weights)")
    if tc.bf16:
        raise ConfigError("train.bf16: not supported by the torchrec trainer")
    if tc.grad_clip is not None:
        raise ConfigError("train.grad_clip: not supported by the torchrec trainer (the tables "
                          "are updated inside backward)")
    opts = dict(cfg.model)
    name = opts.pop("name")
    dim = opts.pop("embedding_dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"model.embedding_dim={dim}: the torchrec tables need an int embedding "
                          "size, e.g. model.embedding_dim=16")
    opts.pop("cat_cardinalities", None)
    return name, dim, opts


def train_torchrec(cfg: RunConfig, *, sharding: str = "table_wise",
                   sparse_optimizer: str = "rowwise_adagrad", sparse_lr: float = 0.05,
                   splits: Splits | None = None, overwrite: bool = False, resume: bool = False,
                   log: bool | None = None) -> dict[str, Any]:
    """Train ``cfg``'s model with TorchRec tables sharded over the processes; the results.

    Run by every process of a torchrun launch (or alone: a one-process group is
    made). ``model.embedding_dim`` is the tables' embedding size (one table per
    categorical field, :func:`schema_to_tables`); the other model options go to
    the model. The run's optimizer, learning-rate schedule, ``batch_size``
    (the global batch; a multiple of the process count), ``epochs``,
    ``max_examples``, ``eval_every``, ``selection``, ``seed`` and
    ``task_weights`` apply to the dense parameters and the loop; the tables use
    ``sparse_optimizer`` at ``sparse_lr``. Each epoch takes the trainer's
    ``(seed, epoch)`` permutation and drops its last partial global batch.

    As :func:`~adatt.train.trainer.train`: the validation split is scored every
    ``eval_every`` examples (default once per epoch) and selects the checkpoint
    (``train.selection``, with early stopping); the selected weights are scored
    on validation and test. Rank 0 writes ``<out_dir>/<name>/``
    (:class:`~adatt.train.rundir.RunDir`): ``config.yaml``, ``data.json``,
    ``metrics.jsonl``, ``best.pt`` (the unsharded state dict of
    :class:`TorchRecMultiTask`), ``checkpoint.pt`` (model, dense and table
    optimizer states, schedule, position: ``resume=True`` continues exactly, with
    any process count) and ``results.json`` (the trainer's keys plus the sharding
    plan, ``epoch_train_loss`` and the table optimizer).
    """
    from adatt.data.batch import TensorDataset, regression_label_variance
    from adatt.train.evaluation import evaluate
    from adatt.train.guard import NonFiniteGuard
    from adatt.train.optim import make_optimizer, make_schedule
    from adatt.train.progress import Progress, ProgressLog
    from adatt.train.results import build_results
    from adatt.train.rundir import RunDir
    from adatt.train.runs import load_splits_for
    from adatt.train.seeding import rng_state, set_rng_state
    from adatt.train.selection import (
        Selection,
        check_labelled,
        one_class_tasks,
        selection_score,
        warn_one_class,
    )
    from adatt.train.tracking import NoTracker, finish, flatten, log_evaluation, open_tracker

    # ---------------------------------------------------------------- setup
    t_start = time.perf_counter()
    require_torchrec()
    tc = cfg.train
    model_name, dim, model_opts = _check_config(cfg)
    if tc.nonfinite == "skip":
        raise ConfigError("train.nonfinite=skip: not supported by the torchrec trainer (its "
                          "fused sparse optimizer updates the tables inside the backward pass); "
                          "use train.nonfinite=stop")
    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding {sharding!r}: known: {', '.join(SHARDINGS)}")
    device = torch.device(cfg.runtime.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device=cuda but CUDA is not available here")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    _sparse_optimizer_class(sparse_optimizer, device.type)
    owned = _init_process_group(device)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        log = (cfg.runtime.progress if log is None else log) and rank == 0
        local_world = min(world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.set_num_threads(cfg.runtime.threads or max(1, (os.cpu_count() or 1) // local_world))
        flush_denormals(cfg.train.flush_denormal)
        run = RunDir(Path(cfg.out_dir) / cfg.name, writes=rank == 0)
        refusal: list[Any] = [None, resume]
        tracker = NoTracker()  # rank 0 tracks, opened before any directory is made
        if rank == 0:  # one rank checks the directory, every rank raises the same error
            try:
                refusal[1] = run.check_new(resume, overwrite, "pass --resume to continue it, "
                                           "--overwrite to replace it, or name=... for a new run")
                if refusal[1]:  # the stored config must match (RESUMABLE_KEYS may change)
                    run.check_resume(cfg)
                tracker = open_tracker(cfg, run.path)
            except (RunError, ConfigError) as e:
                refusal[0] = f"{type(e).__name__}:{e}"
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            kind, _, msg = refusal[0].partition(":")
            raise (RunError if kind == "RunError" else ConfigError)(msg)
        resume = refusal[1]
        if tc.batch_size % world:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be a multiple of the "
                              f"{world} processes")
        splits = splits if splits is not None else load_splits_for(cfg)
        schema = splits.schema
        if not isinstance(splits.train, TensorDataset):
            raise ConfigError(f"data.source={cfg.data.source}: the torchrec trainer needs "
                              "in-memory training data")
        if schema.multi_valued:
            raise ConfigError(f"data: multi-valued features ({schema.multi_valued[0].name}, ...) "
                              "are not read by the torchrec trainer; use the single, DDP or "
                              "ensemble recipe")
        torch.manual_seed(tc.seed)
        tables = schema_to_tables(schema, dim)
        try:
            module = TorchRecMultiTask(model_name, schema.num_tasks, schema.dense_dim, tables,
                                       device="meta", **model_opts)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None
        apply_sparse_optimizer(module, sparse_optimizer, sparse_lr, device.type)
        model, plan = shard(module, sharding, device)
        scored = _CatInput(model, schema.categorical, device)  # (dense, cat) -> logits
        dense_params = [p for n, p in model.named_parameters() if not n.startswith("ebc.")]
        opt = make_optimizer(dense_params, tc)
        train, B = splits.train.to(device), tc.batch_size
        n_train, local = len(train), tc.batch_size // world
        steps_per_epoch = n_train // B
        if steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={B} is larger than the {n_train} training rows")
        budget = min(tc.max_examples or n_train * tc.epochs, n_train * tc.epochs)
        total_steps = min(steps_per_epoch * tc.epochs, math.ceil(budget / B))
        sched = make_schedule(opt, tc, total_steps)
        check_labelled(splits, schema)  # a partial task with no label: one line, every rank
        loss_fn = TaskLoss.for_schema(schema, tc.task_weights).to(device)
        keys = schema.categorical
        label_var = regression_label_variance(train, schema)
        eval_every = tc.eval_every or steps_per_epoch * B  # default: once per epoch
        one_class = one_class_tasks(splits.valid, schema)
        if rank == 0:
            warn_one_class(one_class, "validation", tc.selection.metric)
        guard = NonFiniteGuard(tc.nonfinite, schema.task_names)

        progress, selection = Progress(next_eval=eval_every), Selection()
        epoch_losses: list[list[float]] = []  # mean training loss of every epoch
        if resume:
            ck = run.load_checkpoint("cpu")
            with run.restoring():
                load_full_state(model, ck["model"])
                load_sparse_optimizer_state(model, ck["sparse_optimizer"])
                opt.load_state_dict(ck["optimizer"])
                sched.load_state_dict(ck["schedule"])
            progress = Progress.from_state_dict(ck["state"])
            selection = Selection.from_state_dict(ck["state"])
            epoch_losses = ck["epoch_train_loss"]
            set_rng_state(ck["rng"])
            run.restart_metrics(progress.evals)
        else:
            run.start(cfg, splits)
        tracker.start(flatten(cfg.model_dump(mode="json")))
        bar = ProgressLog(cfg.name, budget, progress.examples, log)
        epoch_loss = (torch.as_tensor(progress.epoch_loss, device=device)
                      if progress.epoch_steps else None)

        def evaluate_and_checkpoint(losses: Tensor) -> None:
            """Score validation, update the selection, log, save best.pt and checkpoint.pt
            (every process: the full state is gathered to rank 0, which writes)."""
            metrics = evaluate(scored, splits.valid, schema, tc.eval_batch_size, distributed=True)
            score, higher = selection_score(metrics, schema, tc.selection.metric, label_var,
                                            one_class)
            progress.evals += 1
            full = full_state_dict(model)
            if selection.update(score, higher, progress.at(), tc.selection.patience):
                run.save_best(full)
            line = log_evaluation(run, tracker, progress, schema.task_names,
                                  train_loss=losses.tolist(), score=score,
                                  improved=selection.improved, valid=metrics,
                                  lr=sched.get_last_lr()[0])
            bar.evaluation(progress, sum(line["train_loss"]), score)
            state = progress.state_dict()
            state["wall_time"] = progress.wall_time + time.perf_counter() - t_start
            state.update(selection.state_dict())
            run.save_checkpoint({"model": full, "sparse_optimizer": full_sparse_optimizer_state(
                model), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                "state": state, "epoch_train_loss": epoch_losses, "rng": rng_state()})

        # ---------------------------------------------------------------- train
        model.train()
        while not selection.done and progress.step < total_steps:
            gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + progress.epoch)
            perm = torch.randperm(n_train, generator=gen).to(device)
            for s in range(progress.batch_in_epoch, steps_per_epoch):
                t0 = time.perf_counter()
                idx = perm[s * B + rank * local: s * B + (rank + 1) * local]
                b = train.batch(idx)  # this process's part of global batch s
                losses = train_step(model, opt, b.dense, cat_to_kjt(b.cat, keys), b.labels,
                                    b.weight, loss_fn)  # [T] of the global batch
                # stop: an error; the step is applied but never checkpointed
                guard.check(losses, progress.step + 1)
                sched.step()
                progress.step += 1
                progress.examples += B
                progress.batch_in_epoch = s + 1
                progress.train_time += time.perf_counter() - t0
                progress.epoch_steps += 1
                epoch_loss = losses if progress.epoch_steps == 1 else epoch_loss + losses
                progress.epoch_loss = epoch_loss
                bar.update(B, losses)
                epoch_end = s + 1 >= steps_per_epoch
                last = progress.step >= total_steps
                if epoch_end or last:  # an epoch's mean loss (the last one may be partial)
                    epoch_losses.append((epoch_loss / progress.epoch_steps).tolist())
                if epoch_end:
                    progress.epoch += 1
                    progress.batch_in_epoch = progress.epoch_steps = 0
                if progress.examples >= progress.next_eval or last:
                    progress.next_eval += eval_every
                    evaluate_and_checkpoint(losses)
                if epoch_end or last or selection.done:
                    break

        bar.close()
        # ---------------------------------------------------------------- evaluate selected
        dist.barrier()  # rank 0 has written best.pt
        load_full_state(model, run.load_best("cpu"))
        num_params = sum(p.numel() for p in dense_params) + sum(
            t.num_embeddings * t.embedding_dim for t in tables)
        results = build_results(
            cfg, schema, selection, model=model_name,
            valid=evaluate(scored, splits.valid, schema, tc.eval_batch_size, distributed=True),
            test=evaluate(scored, splits.test, schema, tc.eval_batch_size, distributed=True),
            num_parameters=num_params, examples=progress.examples,
            examples_per_s=progress.examples / max(progress.train_time, 1e-9),
            wall_time_s=progress.wall_time + time.perf_counter() - t_start,
            labelled=check_labelled(splits, schema),
            world_size=world, sharding=sharding, plan=plan_placement(plan),
            sparse_optimizer=sparse_optimizer, sparse_lr=sparse_lr, embedding_dim=dim,
            epoch_train_loss=epoch_losses)
        # ---------------------------------------------------------------- save
        run.write_results(results)
        finish(tracker, results, [run.file(f) for f in ("best.pt", "results.json",
                                                       "config.yaml")])
        results["rank"] = rank
        return results
    finally:
        if owned:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m adatt.integrations.torchrec --config FILE [key=value ...]`` (under torchrun)."""
    from adatt.config import load_config

    p = argparse.ArgumentParser(
        prog="python -m adatt.integrations.torchrec",
        description="Train a model with its embedding tables sharded by TorchRec "
                    "(launch with torchrun for several processes).")
    p.add_argument("--config", help="run config YAML (as for `adatt train`)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--sharding", default="table_wise", choices=SHARDINGS)
    p.add_argument("--sparse-optimizer", default="rowwise_adagrad", choices=SPARSE_OPTIMIZERS)
    p.add_argument("--sparse-lr", type=float, default=0.05)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its "
                   "checkpoint.pt")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        res = train_torchrec(cfg, sharding=args.sharding, sparse_optimizer=args.sparse_optimizer,
                             sparse_lr=args.sparse_lr, overwrite=args.overwrite,
                             resume=args.resume)
    except (ConfigError, DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if res["rank"] == 0:
        plan = ", ".join(f"{t} {p['ranks']}" for t, p in res["plan"].items())
        print(f"{res['sharding']} over {res['world_size']} processes (table ranks): {plan}")
        for task, ms in res["test"].items():
            print(f"  test {task:<16} " + "  ".join(f"{k}={v:.4f}" for k, v in ms.items()))
        print(f"train: {res['train_examples_per_s']:,.0f} ex/s  wall: {res['wall_time_s']:.1f} s"
              f"  written: {Path(cfg.out_dir) / cfg.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
