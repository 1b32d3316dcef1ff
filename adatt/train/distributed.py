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
* evaluation is sharded (:func:`adatt.train.evaluation.evaluate`): each rank
  scores a contiguous part of the split, the logits are gathered, rank 0
  computes the metrics over the whole split in the single-process batch order
  and broadcasts them, so every rank takes the same selection decisions;
* only rank 0 writes the run directory and shows the progress bar; checkpoints
  hold the unwrapped model's ``state_dict``, so a run can be resumed with any
  number of processes.

Processes use ``gloo`` on CPU and ``nccl`` with ``runtime.device=cuda`` (each
process takes the GPU of its local rank). Every rank loads the whole data set
(a stream: reads every shard); all ranks read the run directory (``--resume``,
the selected ``best.pt``), so on several machines ``out_dir`` must be a shared
file system.

Per-rank shards (``data.rank_shards=true`` with ``data.source=stream``,
:class:`RankShards`): rank r streams only the shard files ``i`` with
``i % W == r``, in local batches of ``b = B / W`` rows, and trains on its whole
local batch (no slicing of a global batch; the loss is still the weighted mean
over the W local batches of the step, computed by :meth:`Shard.losses`). Every
rank runs ``S = min_r ceil(rows_r / b)`` steps per epoch (from the shard
footers' row counts, agreed by one all-reduce), so a rank with more rows leaves
the rest of its epoch's stream unread. Checkpoints carry every rank's stream
position; such a run resumes only with the same number of processes.

Example (one process: nothing is distributed):
    >>> import torch
    >>> [row_range(10, r, 3) for r in range(3)]      # rank r's rows of a 10-row batch
    [(0, 3), (3, 6), (6, 10)]
    >>> is_active(), is_main(), world_size()
    (False, True, 1)
    >>> s = shard(torch.arange(5))
    >>> s.index.tolist(), s.rows
    ([0, 1, 2, 3, 4], 5)
    >>> rank_plan([380, 330], local_batch=50)    # per-rank shards: (steps, rows) per epoch
    (7, 680)
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from adatt.config import ConfigError
from adatt.train.losses import global_batch_losses

if TYPE_CHECKING:
    from adatt.data.sources import BatchSource

__all__ = ["init", "shutdown", "is_active", "is_main", "rank", "world_size", "default_threads",
           "local_device", "wrap", "row_range", "Shard", "shard", "barrier", "keep",
           "all_gather", "broadcast_object",
           "batch_source", "RankShards", "rank_plan", "UNSUPPORTED_WEIGHTINGS"]

# Weightings that need per-task gradients of the global batch (not a sum over ranks).
UNSUPPORTED_WEIGHTINGS = ("gradnorm", "pcgrad")

_active = False  # this process trains in a process group set up by init()
_owned = False  # init() created the process group (and destroys it in shutdown())


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_active() -> bool:
    """Whether this process is one of several (or one, with ``runtime.distributed=true``)."""
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


def init(cfg: Any) -> None:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``) or
    asked to by ``runtime.distributed=true``; check the config for it. Ends with
    a barrier, so no rank writes before every rank has checked its run directory.

    Args:
        cfg: the run's :class:`~adatt.config.RunConfig`.
    """
    tc, rt = cfg.train, cfg.runtime
    global _active, _owned
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    n = _env_world_size()
    if rt.distributed is False and n > 1:
        raise ConfigError(f"runtime.distributed=false but launched as {n} processes")
    if rt.distributed is None and n <= 1:
        return
    if not launched:
        raise ConfigError("runtime.distributed=true: launch with torchrun --nproc-per-node N "
                          "-m adatt train ...")
    if tc.weighting in UNSUPPORTED_WEIGHTINGS:
        raise ConfigError(f"train.weighting={tc.weighting} is not supported with distributed "
                          "training (it needs per-task gradients of the global batch); use "
                          "equal, uncertainty or dwa")
    cuda = rt.device.startswith("cuda")
    if cuda and ":" in rt.device and n > 1:
        raise ConfigError(f"runtime.device={rt.device} with {n} processes: use runtime.device=cuda "
                          "(each process takes the GPU of its local rank)")
    if cuda and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but CUDA is not available here")
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


# The works of the latest collectives, with the tensors they hold (see keep()).
_recent: deque[Any] = deque(maxlen=4)


def keep(work: Any) -> None:
    """Wait for a collective's ``work`` (``async_op=True``) and hold it until a few later
    collectives have completed.

    A process-group worker thread drops its reference to a work once the work
    completes. When that is the last reference, the work's tensors (Python
    tensors) are freed in that thread, which takes the GIL; if that happens while
    the interpreter shuts down, the thread cannot take it and the process aborts
    ("terminate called without an active exception", SIGABRT), after the run has
    written its results. The collectives at the end of a run (the test
    evaluation's) are the ones at risk: held here, the last reference to each is
    dropped by this thread, with the GIL.
    """
    work.wait()
    _recent.append(work)


def all_gather(t: Tensor) -> list[Tensor]:
    """``t`` of every rank, in rank order (every rank's ``t`` has the same shape)."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    keep(dist.all_gather(out, t, async_op=True))
    return out


def broadcast_object(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank; ``device``: where the backend's
    tensors live (a GPU under NCCL)."""
    if dist.get_rank() == 0:
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    keep(dist.broadcast(size, src=0, async_op=True))
    if dist.get_rank() != 0:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    keep(dist.broadcast(data, src=0, async_op=True))
    return obj if dist.get_rank() == 0 else pickle.loads(data.cpu().numpy().tobytes())


def local_device(device: str) -> torch.device:
    """``runtime.device`` for this process: ``cuda`` means the GPU of the local rank."""
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
    counts for nothing (it keeps every parameter in DDP's backward pass);
    ``rows``: the rows of the whole step over all ranks (default ``len(index)``),
    what the trainer counts as examples seen.
    """

    index: Tensor
    live: bool = True
    rows: int = -1

    def __post_init__(self) -> None:
        if self.rows < 0:
            self.rows = self.index.numel()

    def losses(self, loss_fn: nn.Module, logits: Tensor, batch: Any) -> Tensor:
        """Per-task losses ``[T]`` of the global batch
        (:func:`~adatt.train.losses.global_batch_losses`): in one process
        ``loss_fn(logits, batch.labels, batch.weight)``; under DDP valued as on
        the whole global batch, with the gradient of this rank's share.

        Args:
            loss_fn: a :class:`~adatt.train.losses.TaskLoss`.
            logits: ``[B_r, T]`` this rank's outputs.
            batch: this rank's :class:`~adatt.data.batch.Batch` (``labels [B_r, T]``,
                ``weight [B_r]`` or None).
        """
        return global_batch_losses(loss_fn, logits, batch.labels, batch.weight,
                                   distributed=_active, live=self.live)


def shard(index: Tensor, source: Any = None) -> Shard:
    """This process's part of the global batch ``index [B]`` (all of it in one process);
    with a :class:`RankShards` ``source``, its whole local batch (``index`` as yielded)."""
    if isinstance(source, RankShards):
        return source.shard(index)
    if not _active:
        return Shard(index)
    start, stop = row_range(index.numel(), rank(), world_size())
    if start == stop:
        return Shard(index[:1], live=False, rows=index.numel())
    return Shard(index[start:stop], rows=index.numel())


# --------------------------------------------------------------------------- per-rank shards


def rank_plan(rank_rows: list[int], local_batch: int) -> tuple[int, int]:
    """``(steps, rows)`` of an epoch when rank r streams ``rank_rows[r]`` rows in
    batches of ``local_batch``: every rank takes ``steps = min_r ceil(rows_r / b)``
    steps, and ``rows = sum_r min(rows_r, steps * b)`` rows are trained on."""
    steps = min(math.ceil(n / local_batch) for n in rank_rows)
    return steps, sum(min(n, steps * local_batch) for n in rank_rows)


def batch_source(train: Any, batch_size: int, seed: int, device: torch.device | str = "cpu",
                 rank_shards: bool = False) -> BatchSource:
    """The trainer's training batches (see :func:`adatt.data.stream.batch_source`).

    With ``rank_shards`` (``data.rank_shards``), Parquet shards and several
    processes: this rank's :class:`RankShards`. Otherwise every rank gets the
    same source of global batches (the whole stream, read by every rank) and
    :func:`shard` keeps its part of each batch; ``rank_shards`` then changes
    nothing (in one process, or for in-memory data).
    """
    from adatt.data.stream import ParquetShards
    from adatt.data.stream import batch_source as global_source

    if rank_shards and _active and world_size() > 1 and isinstance(train, ParquetShards):
        return RankShards(train, batch_size, seed, rank(), world_size(), device)
    return global_source(train, batch_size, seed, device)


class RankShards:
    """Rank ``rank``'s training batches when every process streams only its own
    shard files (``data.rank_shards``): a :class:`~adatt.data.stream.ShardStream`
    over the files ``i % world == rank`` in batches of ``b = batch_size / world``.

    Its interface is the batch sources' (``rows``, ``indexed_batches``,
    ``label_variance``, ``state_dict``, ``load_state_dict``) plus :meth:`shard`.
    ``rows`` is the global rows trained per epoch (:func:`rank_plan`). At step
    ``k`` of an epoch rank r has ``n_r = min(b, rows_r - k * b)`` rows; the
    step's global batch is the ranks' batches together. A row limit (the
    trainer's budget) keeps the first rows of that global batch in rank order
    (all of rank 0's, then rank 1's, ...); a rank left with no row runs one
    stand-in row that counts for nothing.

    Errors (:class:`ConfigError`, one line, the same on every rank): a batch
    size not divisible by ``world``, fewer shard files than ranks, a rank whose
    files have no rows, ranks that see different shard row counts.
    """

    def __init__(self, data: Any, batch_size: int, seed: int, rank: int, world: int,
                 device: torch.device | str = "cpu"):
        n = len(data.shards)
        if batch_size % world:
            raise ConfigError(f"data.rank_shards=true: train.batch_size={batch_size} is not "
                              f"divisible by the {world} processes (each trains on its own "
                              f"batch of batch_size / {world} rows)")
        if n < world:
            raise ConfigError(f"data.rank_shards=true: {n} training shard files cannot feed "
                              f"{world} processes (each reads whole files); write at least "
                              f"{world} shards or set data.rank_shards=false")
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.local_batch = batch_size // world
        view = [data.rows_for(r, world) for r in range(world)]  # from every shard's footer
        self.rank_rows = _agree(view, self.device)
        empty = [r for r, k in enumerate(self.rank_rows) if k == 0]
        if empty:
            raise ConfigError(f"data.rank_shards=true: the shard files of process {empty[0]} "
                              "have no rows (file i goes to process i % processes)")
        self.steps, self.rows = rank_plan(self.rank_rows, self.local_batch)
        self.stream = data.stream(self.local_batch, seed, rank, world, device=device)
        self._step = Shard(torch.zeros(0, dtype=torch.long))

    def _sizes(self, k: int) -> list[int]:
        """``[W]`` rows of every rank at step ``k`` of an epoch."""
        b = self.local_batch
        return [min(b, n - k * b) for n in self.rank_rows]

    def indexed_batches(self, epoch: int, start_batch: int = 0, limit: int | None = None
                        ) -> Iterator[tuple[Tensor, Any]]:
        """``(index [n], rows)`` per step of ``epoch`` from ``start_batch`` on: this
        rank's local batch is ``rows.batch(index)``; ``limit`` counts global rows."""
        batches = self.stream.indexed_batches(epoch, start_batch)
        left = limit
        for k in range(start_batch, self.steps):
            if left is not None and left <= 0:
                return
            got = next(batches, None)
            sizes = self._sizes(k)
            if got is None or got[0].numel() != sizes[self.rank]:
                from adatt.data.errors import DataError

                raise DataError(f"stream: process {self.rank} expected {sizes[self.rank]} rows "
                                f"at step {k} of epoch {epoch} (shard files changed?)")
            index, rows = got
            if left is not None:  # keep the first `left` rows of the step, in rank order
                sizes = [min(n, max(0, left - sum(sizes[:r]))) for r, n in enumerate(sizes)]
                left -= sum(sizes)
            total = sum(sizes)
            mine = sizes[self.rank]
            self._step = Shard(index[: max(mine, 1)], live=mine > 0, rows=total)
            yield self._step.index, rows

    def shard(self, index: Tensor) -> Shard:
        """The step just yielded by :meth:`indexed_batches` (``index`` is its index)."""
        assert index is self._step.index, "shard() belongs to the last yielded batch"
        return self._step

    def label_variance(self, schema: Any = None) -> dict[str, float]:
        return self.stream.label_variance(schema)

    def state_dict(self) -> dict[str, Any]:
        """``{"world": W, "ranks": [W stream positions]}`` on rank 0 (``ranks`` None
        elsewhere): a collective call, every rank's position gathered to rank 0."""
        mine = self.stream.state_dict()
        if _active:
            ranks: list[Any] | None = [None] * self.world if self.rank == 0 else None
            dist.gather_object(mine, ranks, dst=0)
        else:
            ranks = [mine if r == self.rank else None for r in range(self.world)]
        return {"rank_shards": True, "world": self.world, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from this rank's entry of a :meth:`state_dict` (None: nothing to load)."""
        if state is None:
            return
        if "ranks" not in state:
            raise ConfigError("data.rank_shards=true: the checkpoint was saved without it "
                              "(one stream of every shard, read by every process); resume "
                              "with data.rank_shards=false")
        if state["world"] != self.world:
            raise ConfigError(
                f"data.rank_shards=true: the checkpoint was saved by {state['world']} "
                f"processes, this run has {self.world}; each process saved the position of "
                "its own shard files (file i goes to process i % processes), which another "
                f"process count splits differently: resume with {state['world']} processes")
        self.stream.load_state_dict(state["ranks"][self.rank])


def _agree(view: list[int], device: torch.device) -> list[int]:
    """``view`` (``[W]`` row counts per rank), checked to be the same on every rank."""
    if not _active:
        return view
    t = torch.tensor([*view, *(-k for k in view)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # [2W]: max and -min of every entry
    hi, lo = t[: len(view)].tolist(), [-k for k in t[len(view) :].tolist()]
    if hi != lo:
        raise ConfigError(f"data.rank_shards=true: the processes see different shard row "
                          f"counts ({lo} to {hi} rows per process); every process needs the "
                          "same training files")
    return hi
