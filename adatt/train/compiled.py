"""The compiled training step (``train.compile``): one step through ``torch.compile``.

A run component shared by the recipes. :class:`TrainStep` holds the two
halves of an optimizer step:

* :meth:`TrainStep.losses` -- the forward pass (under bf16 autocast when
  ``train.bf16``) and the per-task losses ``[T]``. Compiled, this is one
  Inductor graph (C++/OpenMP on CPU, Triton on CUDA); its backward is
  AOTAutograd's compiled backward graph, run by the recipe's usual
  ``weighting.backward(losses, ...)``, which combines the task losses (a few
  scalars) and calls ``backward`` in eager mode, so every weighting method
  (GradNorm's and PCGrad's gradient surgery included) works unchanged.
* :meth:`TrainStep.step` -- ``opt.step()``; compiled, the optimizer update of
  all parameters is one graph (PyTorch's compiled-optimizer recipe; the
  optimizer is then built with a tensor learning rate, see
  :func:`~adatt.train.optim.make_optimizer`, so a schedule changes it without
  recompiling).

Under DDP only the model's forward is compiled (DDP's hooks reduce the
gradients as in eager mode; the cross-process loss of
:func:`~adatt.train.losses.global_batch_losses` stays eager). The project's
CPU kernels (:mod:`adatt.modules.kernels`) are ``torch.library`` custom ops
or plain PyTorch under compilation, so the step has no graph break.

:func:`wanted` decides from ``train.compile``: ``true``, ``false`` or
``auto`` (the default: on where it measured faster, see docs/performance.md;
off under :func:`~adatt.modules.kernels.plain_mode` and where no C++
compiler is found). A step whose compilation fails falls back to eager mode
with a one-line warning. Compiled code is cached on disk across runs
(Inductor's FX graph cache, in :func:`cache_dir`), and :attr:`TrainStep.compile_s`
is the wall time of the calls that compiled (reported in the log and in
``results.json`` as ``compile_s``). One graph per run: the batches of the
first batch's shape run compiled, a batch of another shape (an epoch's last,
shorter one) eagerly, instead of a second compilation.

Example:
    >>> import torch
    >>> from adatt.train.losses import TaskLoss
    >>> net = torch.nn.Linear(4, 2)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> from adatt.data.batch import Batch
    >>> from adatt.train.distributed import shard
    >>> ts = TrainStep(lambda d, c: net(d), TaskLoss(["binary", "binary"]), opt,
    ...                compiled=False)
    >>> batch = Batch(torch.ones(3, 4), torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 2))
    >>> losses = ts.losses(batch, shard(torch.arange(3)))
    >>> losses.shape
    torch.Size([2])
    >>> losses.sum().backward(); ts.step()
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adatt.modules.kernels import is_plain

__all__ = ["AUTO_DEVICES", "CACHE_ENV", "TrainStep", "cache_dir", "wanted"]

#: environment variable naming the compile cache folder (default ``~/.cache/adatt/inductor``)
CACHE_ENV = "ADATT_COMPILE_CACHE"
#: device types on which ``train.compile=auto`` compiles: where it measured faster than
#: eager (docs/performance.md); on the 2-core CPU measurements it did not
AUTO_DEVICES: frozenset[str] = frozenset()


def cache_dir() -> Path:
    """Where compiled code is kept across runs: ``$ADATT_COMPILE_CACHE``, else
    ``~/.cache/adatt/inductor``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "adatt" / "inductor"


def _use_cache() -> None:
    """Point Inductor's caches (FX graph cache, compiled kernels) at :func:`cache_dir`."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())
    torch._inductor.config.fx_graph_cache = True


def compiler_available(device: torch.device) -> bool:
    """Inductor's code generation can run: a C++ compiler on CPU, Triton on CUDA."""
    if device.type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++")
                   if c)
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def wanted(setting: bool | str, device: torch.device) -> bool:
    """Whether a run with ``train.compile=setting`` on ``device`` compiles its step.

    ``false`` and :func:`~adatt.modules.kernels.plain_mode`: no. ``auto``: on
    the device types of :data:`AUTO_DEVICES` where a compiler is available.
    ``true``: yes where a compiler is available, else a one-line warning and eager.

    Example:
        >>> wanted(False, torch.device("cpu")), wanted("auto", torch.device("cpu"))
        (False, False)
    """
    if setting is False or is_plain():
        return False
    if setting == "auto" and device.type not in AUTO_DEVICES:
        return False
    if not compiler_available(device):
        if setting is True:
            warnings.warn(f"train.compile: no compiler for {device.type} code generation "
                          "found (a C++ compiler on CPU, Triton on CUDA); training eagerly",
                          stacklevel=2)
        return False
    return True


class TrainStep:
    """The forward + losses and the optimizer step of a recipe, compiled or eager.

    Args:
        forward: ``forward(dense, cat) -> logits [B, T]`` (the model, or its DDP wrapper).
        loss_fn: the run's :class:`~adatt.train.losses.TaskLoss`.
        opt: the optimizer (built with ``compiled=True`` by
            :func:`~adatt.train.optim.make_optimizer` when compiling).
        compiled: compile (see :func:`wanted`).
        bf16: the forward pass under bf16 autocast (``train.bf16``).
        device: the parameters' device.
        distributed: DDP: compile the forward only; :meth:`losses` then takes the
            shard's cross-process loss in eager mode.
    """

    def __init__(self, forward: Callable[[Tensor, Tensor], Tensor], loss_fn: Any,
                 opt: torch.optim.Optimizer, *, compiled: bool, bf16: bool = False,
                 device: torch.device | str = "cpu", distributed: bool = False) -> None:
        self.forward, self.loss_fn, self.opt = forward, loss_fn, opt
        self.bf16, self.device_type = bf16, torch.device(device).type
        self.distributed = distributed
        self.compiled = compiled
        #: wall time (s) of the calls that compiled (the first forward and optimizer step)
        self.compile_s = 0.0
        self._seen: set[tuple] = set()
        self._opt_seen = False
        if compiled:
            _use_cache()
            self._fwd = torch.compile(self._logits if distributed else self._forward_losses)
            self._opt_step = torch.compile(opt.step)

    # the functions that are compiled (or run as they are)
    def _logits(self, dense: Tensor, cat: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.forward(dense, cat)  # [B, T]

    def _forward_losses(self, batch: Any, shard: Any) -> Tensor:
        return shard.losses(self.loss_fn, self._logits(batch.dense, batch.cat).float(), batch)

    def losses(self, batch: Any, shard: Any) -> Tensor:
        """Per-task losses ``[T]`` of the step's global batch, graph attached.

        ``batch``: this process's :class:`~adatt.data.batch.Batch` (``dense [B, Dd]``,
        ``cat [B, F]``, ``labels [B, T]``, ``weight``); ``shard``: its
        :class:`~adatt.train.distributed.Shard`, whose ``losses(loss_fn, logits,
        batch)`` gives the global-batch loss (under DDP a collective, kept
        out of the compiled graph).
        """
        key = (tuple(batch.dense.shape), tuple(batch.cat.shape), batch.weight is None)
        if not self.compiled or (self._seen and key not in self._seen):
            # eager: not compiling, or a batch of another shape (an epoch's last, shorter
            # batch; a rank's share): one graph per run, no recompilation
            return self._forward_losses(batch, shard)
        first = not self._seen
        t0 = time.perf_counter()
        try:
            if self.distributed:
                out = shard.losses(self.loss_fn, self._fwd(batch.dense, batch.cat).float(), batch)
            else:
                out = self._fwd(batch, shard)
        except Exception as e:  # noqa: BLE001 -- any compiler failure: eager mode instead
            if not first:
                raise
            self._fall_back(e)
            return self._forward_losses(batch, shard)
        if first:
            self._seen.add(key)
            self.compile_s += time.perf_counter() - t0
        return out

    def step(self) -> None:
        """``opt.step()``, compiled or eager.

        A step with a learning rate of 0 (the end of a cosine schedule to
        ``min_lr_ratio=0``) runs eagerly: PyTorch's compiled Adam divides by
        the rate (a parameter whose gradient is 0 would become NaN).
        """
        if not self.compiled or any(float(g["lr"]) == 0 for g in self.opt.param_groups):
            self.opt.step()
            return
        t0 = time.perf_counter()
        try:
            self._opt_step()
        except Exception as e:  # noqa: BLE001 -- any compiler failure: eager mode instead
            if self._opt_seen:
                raise
            self._fall_back(e)
            self.opt.step()
            return
        if not self._opt_seen:
            self._opt_seen = True
            self.compile_s += time.perf_counter() - t0

    def _fall_back(self, e: Exception) -> None:
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"train.compile: compilation failed ({type(e).__name__}: {first_line}); "
                      "training eagerly", stacklevel=3)
        self.compiled = False
