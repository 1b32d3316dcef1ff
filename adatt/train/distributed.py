"""Data-parallel training with PyTorch's DistributedDataParallel (DDP).

Notation: B global batch, B_r the rows of rank r, T tasks, W world size (number
of processes), N rows of an evaluated split.

Launch ``adatt train`` with torchrun::

    torchrun --standalone --nproc-per-node 2 -m adatt train --config FILE [key=value ...]

The trainer calls this module at a handful of places; in a single process
every helper is a no-op (``shard`` keeps the whole batch, ``wrap`` returns the
model itself), so ``adatt train`` without torchrun runs exactly as before.

What a distributed run computes is single-process training with the same
global batch (``train.batch_size`` is the global batch), up to float rounding:

* every rank draws the same permutation per epoch (the trainer's ``(seed,
  epoch)`` generator) and computes only its contiguous part of each global
  batch (:func:`row_range`; parts differ by at most one row, so any batch size
  works; a rank with no row of a short last batch runs one stand-in row that
  counts for nothing);
* per task, the global-batch loss is ``L_t = sum_b w_b l_bt / sum_b w_b`` over
  all B rows (``w_b = 1`` without weights). Rank r back-propagates its share
  ``L_t^r = sum_{b in B_r} w_b l_bt / sum_b w_b`` and DDP *sums* the gradients
  over ranks (a communication hook replacing DDP's average), so every rank
  holds ``d L_t / d theta``. One all-reduce of ``[T + 1]`` numbers per step
  gives the numerators and the global weight sum; the losses handed to the
  weighting method carry the global value ``L_t`` with the gradient of the
  share (``share + (L_t - share).detach()``), so methods that use the loss
  values (Uncertainty's log-variances, DWA's epoch means, the logged training
  loss) see exactly the single-process numbers on every rank;
* loss weightings linear in the task losses (``equal``, ``uncertainty``,
  ``dwa``) are supported; ``gradnorm`` and ``pcgrad`` need per-task gradients
  of the global batch and are rejected with a :class:`ConfigError`;
* evaluation is sharded: each rank scores a contiguous part of the split, the
  logits are gathered, rank 0 computes the metrics over the whole split in the
  single-process batch order and broadcasts them, so every rank takes the same
  selection decisions;
* only rank 0 writes the run directory and shows the progress bar; checkpoints
  hold the unwrapped model's ``state_dict``, so a run can be resumed with any
  number of processes.

Processes use ``gloo`` on CPU and ``nccl`` with ``train.device=cuda`` (each
process takes the GPU of its local rank). Every rank loads the whole data set;
all ranks read the run directory (``--resume``, the selected ``best.pt``), so
on several machines ``out_dir`` must be a shared file system.

Example (one process: nothing is distributed):
    >>> import torch
    >>> [row_range(10, r, 3) for r in range(3)]      # rank r's rows of a 10-row batch
    [(0, 3), (3, 6), (6, 10)]
    >>> is_active(), is_main(), world_size()
    (False, True, 1)
    >>> s = shard(torch.arange(5))
    >>> s.index.tolist()
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from adatt.config import ConfigError

__all__ = ["init", "shutdown", "is_active", "is_main", "rank", "world_size", "default_threads",
           "local_device", "wrap", "row_range", "Shard", "shard", "barrier", "evaluate",
           "UNSUPPORTED_WEIGHTINGS"]

# Weightings that need per-task gradients of the global batch (not a sum over ranks).
UNSUPPORTED_WEIGHTINGS = ("gradnorm", "pcgrad")

_active = False  # this process trains in a process group set up by init()
_owned = False  # init() created the process group (and destroys it in shutdown())


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_active() -> bool:
    """Whether this process is one of several (or one, with ``train.distributed=true``)."""
    return _active


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if _active else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of training processes (1 when not distributed)."""
    return dist.get_world_size() if _active else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run directory and prints."""
    return rank() == 0


def default_threads() -> int:
    """Torch threads per process: the machine's cores split among the local processes."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def init(tc: Any) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``) or
    asked to by ``train.distributed=true``; check the config for it. Ends with
    a barrier, so no rank writes before every rank has checked its run directory.

    Args:
        tc: the run's :class:`~adatt.config.TrainConfig`.
    """
    global _active, _owned
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    n = _env_world_size()
    if tc.distributed is False and n > 1:
        raise ConfigError(f"train.distributed=false but launched as {n} processes")
    if tc.distributed is None and n <= 1:
        return
    if not launched:
        raise ConfigError("train.distributed=true: launch with torchrun --nproc-per-node N "
                          "-m adatt train ...")
    if tc.weighting in UNSUPPORTED_WEIGHTINGS:
        raise ConfigError(f"train.weighting={tc.weighting} is not supported with distributed "
                          "training (it needs per-task gradients of the global batch); use "
                          "equal, uncertainty or dwa")
    cuda = tc.device.startswith("cuda")
    if cuda and ":" in tc.device and n > 1:
        raise ConfigError(f"train.device={tc.device} with {n} processes: use train.device=cuda "
                          "(each process takes the GPU of its local rank)")
    if cuda and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available here")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        _owned = True
        atexit.register(shutdown)
    _active = True
    barrier()


def shutdown() -> None:
    """Leave distributed mode; destroy the process group if :func:`init` created it."""
    global _active, _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _active = _owned = False


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if not _active:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def local_device(device: str) -> torch.device:
    """``train.device`` for this process: ``cuda`` means the GPU of the local rank."""
    if _active and device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


def _sum_hook(state, bucket):  # no annotations: DDP checks them against the real classes
    """DDP communication hook: sum the gradient bucket over ranks (DDP's default averages).

    ``bucket``: a ``dist.GradBucket``; returns a future of the summed ``bucket.buffer()``."""
    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap(model: nn.Module) -> nn.Module:
    """The model for the training forward pass: DDP summing gradients over
    ranks when distributed, else ``model`` itself. Evaluation and checkpoints
    keep using ``model`` (the unwrapped module)."""
    if not _active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                  forward_sync_buffers=False)  # buffers are constants
    ddp.register_comm_hook(None, _sum_hook)
    return ddp


def row_range(n: int, r: int, w: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``r``'s contiguous part of ``n`` rows split over
    ``w`` ranks; the parts differ in size by at most one row."""
    return r * n // w, (r + 1) * n // w


@dataclass
class Shard:
    """This process's rows of one global batch.

    ``index``: the dataset rows to compute (``[B_r]``); ``live``: False when the
    rank has no row of the batch and ``index`` is one stand-in row whose loss
    counts for nothing (it keeps every parameter in DDP's backward pass).
    """

    index: Tensor
    live: bool = True

    def losses(self, loss_fn: nn.Module, logits: Tensor, batch: Any) -> Tensor:
        """Per-task losses ``[T]`` of the global batch: in one process
        ``loss_fn(logits, batch.labels, batch.weight)``; under DDP valued as on
        the whole global batch, with the gradient of this rank's share (see the
        module docstring).

        Args:
            loss_fn: a :class:`~adatt.train.losses.TaskLoss`.
            logits: ``[B_r, T]`` this rank's outputs.
            batch: this rank's :class:`~adatt.data.batch.Batch` (``labels [B_r, T]``,
                ``weight [B_r]`` or None).
        """
        if not _active:
            return loss_fn(logits, batch.labels, batch.weight)
        w = batch.weight
        if w is None:
            mass = logits.new_tensor(float(len(batch)) if self.live else 0.0, dtype=torch.float64)
            local = loss_fn(logits, batch.labels, None)  # [T] mean over this rank's rows
        else:
            mass = w.detach().double().sum() if self.live else w.new_zeros((), dtype=torch.float64)
            # all-zero local weights (or a stand-in row): any finite mean, times mass 0
            local = loss_fn(logits, batch.labels, torch.where(mass > 0, w, torch.ones_like(w)))
        # [T] local sums of w*l, then [1] local weight sum -> [T+1], summed over ranks
        buf = torch.cat([local.detach().double() * mass, mass.reshape(1)])
        dist.all_reduce(buf)
        total = buf[-1].clamp_min(torch.finfo(buf.dtype).tiny)  # all weights 0: loss 0
        value = (buf[:-1] / total).to(local.dtype)  # [T] global-batch losses
        share = local * (mass / total).to(local.dtype)  # [T] sum_{b in B_r} w_b l_bt / sum_b w_b
        return share + (value - share.detach())


def shard(index: Tensor) -> Shard:
    """This process's part of the global batch ``index [B]`` (all of it in one process)."""
    if not _active:
        return Shard(index)
    start, stop = row_range(index.numel(), rank(), world_size())
    if start == stop:
        return Shard(index[:1], live=False)
    return Shard(index[start:stop])


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, schema: Any, batch_size: int = 8192,
             bf16: bool = False) -> dict[str, dict[str, float]]:
    """Every metric of every task over the whole of ``data``, computed by all
    ranks together (a collective call: every rank must make it).

    Rank r scores rows :func:`row_range` ``(N, r, W)``; the logits ``[N, T]``
    are gathered, rank 0 accumulates the metrics in the single-process batch
    order and every rank returns its result.
    """
    from adatt.train.metrics import MetricAccumulator

    n, t, w, r = len(data), schema.num_tasks, world_size(), rank()
    device = next(model.parameters()).device
    start, stop = row_range(n, r, w)
    was_training = model.training
    model.eval()
    parts = []
    for s in range(start, stop, batch_size):
        b = data.batch(slice(s, min(s + batch_size, stop))).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            parts.append(model(b.dense, b.cat).float())  # [b, T]
    model.train(was_training)
    longest = max(hi - lo for lo, hi in (row_range(n, k, w) for k in range(w)))
    mine = torch.zeros(longest, t, device=device)
    if parts:
        mine[: stop - start] = torch.cat(parts)  # [B_r, T] into [longest, T]
    gathered = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(gathered, mine)
    out: list[Any] = [None]
    if r == 0:
        logits = torch.cat([g[: hi - lo] for g, (lo, hi) in
                            zip(gathered, (row_range(n, k, w) for k in range(w)), strict=True)])
        acc = MetricAccumulator(schema.task_names, schema.task_kinds)  # logits [N, T]
        for s in range(0, n, batch_size):
            b = data.batch(slice(s, s + batch_size)).to(device)
            acc.update(logits[s : s + batch_size], b.labels, b.weight)
        out[0] = acc.compute()
    dist.broadcast_object_list(out, src=0)
    return out[0]
