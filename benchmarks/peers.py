"""Our models next to the libraries users would pick instead: torch-rechub and deepctr-torch.

The same Shared-bottom, MMoE, CGC (PLE with one level) and PLE (two levels)
are built in each library and trained side by side in one run, on the same
in-memory tensors, with Adam and a per-task binary cross-entropy summed over
tasks. With ``--reference PATH`` the authors' ``mtl_lib.py`` (facebookresearch/
AdaTT, fetched by you, never committed) adds AdaTT-sp, AdaTT, PLE, MMoE,
Cross-stitch and Shared-bottom rows, built by ``benchmarks/models.py``.

    pip install -e '.[bench]'
    python benchmarks/peers.py [--sizes census,census-emb,industrial] [--models mmoe,ple]
                               [--libs ours,torch-rechub,deepctr-torch] [--threads 2]
                               [--reference mtl_lib.py] [--rounds 3] [--markdown] [--quick]
                               [--windows 5] [--steps 20] [--fused-all]

Sizes (3 tasks, 6 experts per level):
  census      28 categorical fields (~480 one-hot columns) + 9 dense, experts (128, 64),
              towers 32, batch 512; ours gathers weight rows (one-hot semantics), the
              peers and the reference have no one-hot mode and get the one-hot columns
              as one dense input vector (a product with ~480 columns: the same function)
  census-emb  the same fields through learned embeddings of size 8 in every library
  industrial  512-wide dense input, experts (256, 128), towers 64, batch 1024

Models: ``shared_bottom`` (bottom MLP = the expert widths), ``mmoe`` (one level
of 6 two-layer experts), ``cgc`` (one level: 1 expert per task + 3 shared, two-layer
experts), ``ple`` (two levels of one-layer experts, 1 per task + 3 shared); with
``--reference`` also ``adatt_sp``, ``adatt``, ``cross_stitch``.

Each (library, model, size) row runs in its own worker process: peak memory is
the growth of its peak RSS (reset after imports, so it counts data, model,
optimizer state and activations). Timing: after warm-up, the rows of one
(model, size) take turns (``benchmarks/paired.py``), each timing one window of
at least 20 steps (10 industrial) and 0.4 s per turn, 5 turns per round
(``--windows``, ``--rounds``), the first row rotating. Examples/s is the median
window; ``x ours`` for speed is the median over turns of the row's rate over
ours in the same turn, so the drift of a shared machine cancels. Training
examples/s is one optimizer step per batch, inference examples/s a forward pass
in eval mode under ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402
from paired import Worker, paired_ratio, run_group, say, serve, take_turns  # noqa: E402,I001


def _load_models_benchmark():
    """``benchmarks/models.py``: sizes, our model options and the reference builder."""
    spec = importlib.util.spec_from_file_location(
        "adatt_benchmark_models", Path(__file__).with_name("models.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_models_benchmark()

T, EXPERTS = bench.T, bench.EXPERTS  # 3 tasks, 6 experts per level
SHARED = EXPERTS - T  # PLE / CGC: 1 expert per task + 3 shared
EMBED_DIM = 8
SIZES: dict[str, dict[str, Any]] = {
    "census": {**bench.SIZES["census"], "embed": None},
    "census-emb": {**bench.SIZES["census"], "embed": EMBED_DIM},
    "industrial": {**bench.SIZES["industrial"], "embed": None},
}
MODELS = ["shared_bottom", "mmoe", "cgc", "ple"]
REFERENCE_MODELS = ["adatt_sp", "adatt", "cross_stitch"]
LIBS = ["ours", "torch-rechub", "deepctr-torch", "reference"]
LIB_MODULE = {"torch-rechub": "torch_rechub", "deepctr-torch": "deepctr_torch"}

NOTES = {
    "1hot": "no one-hot mode: the categorical fields arrive as one-hot columns in one dense "
            "input vector (a product with ~480 columns; the same function as our gather)",
    "bn": "BatchNorm1d after every linear layer of experts, gates and towers (cannot be "
          "turned off): more work and parameters than the others",
    "prob": "the model outputs probabilities: trained with BCE on probabilities",
    "width": "one expert width for every level: levels (w1, w1) instead of (w1, w2) "
             "(level 2 and the towers are wider; see MFLOP/ex)",
    "fix": "deepctr-torch 0.3.0 PLE builds `specific_expert_num` shared experts instead of "
           "`shared_expert_num` (IndexError with 1 per task + 3 shared): the list is rebuilt "
           "with 3 of its own DNN experts per level",
    "lastgate": "computes the shared gate and its mixture at the last level too (unused)",
    "adam": "torch.optim.Adam with default settings (what the library's trainer builds); "
            "ours: fused Adam (what `adatt train` uses)",
    "noemb": "cannot express: the reference takes one dense vector, it has no embedding layer",
}


@dataclass
class Built:
    """A model ready to benchmark.

    ``prepare(dense [B, Dd], cat [B, F])`` turns raw tensors into the library's input
    (done before timing, as a data loader would), ``run(inputs)`` returns ``[B, T]``
    logits, or probabilities when ``probabilities``; ``notes`` are keys of :data:`NOTES`.
    """

    model: nn.Module
    prepare: Callable[[Tensor, Tensor], Any]
    run: Callable[[Any], Tensor]
    probabilities: bool = False
    notes: tuple[str, ...] = ()


class CannotExpress(Exception):
    """The library has no equivalent of this configuration; the message says why."""


# ----------------------------------------------------------------------------- inputs


def one_hot_input(dense: Tensor, cat: Tensor, cards: list[int]) -> Tensor:
    """``[dense, onehot(cat_1), ..., onehot(cat_F)]``: ``[B, Dd + sum(cards)]`` float."""
    parts = [dense] + [F.one_hot(cat[:, f], c).float() for f, c in enumerate(cards)]
    return torch.cat(parts, 1)  # [B,Dd] + F x [B,c_f] -> [B, Dd+sum(c)]


def task_loss(out: Tensor, labels: Tensor, probabilities: bool) -> Tensor:
    """Per-task mean binary cross-entropy, summed over tasks; ``out``, ``labels`` ``[B, T]``."""
    if probabilities:
        per = F.binary_cross_entropy(out, labels, reduction="none")
    else:
        per = F.binary_cross_entropy_with_logits(out, labels, reduction="none")
    return per.mean(0).sum()  # [B,T] -> [T] -> []


# ----------------------------------------------------------------------------- ours


def our_kwargs(name: str, size: dict[str, Any]) -> dict[str, Any]:
    """``create_model`` options of model ``name`` at ``size`` (``cgc``: PLE, one level)."""
    kw = bench.our_kwargs("ple" if name == "cgc" else name, size)
    if name == "cgc":
        kw["expert_sizes"] = [list(size["experts"])]
    kw["embedding_dim"] = size.get("embed")
    return kw


def build_ours(name: str, size: dict[str, Any]) -> Built:
    """Our model ``name`` (any of :data:`MODELS` + :data:`REFERENCE_MODELS`)."""
    from adatt.models import create_model

    model = create_model(name if name != "cgc" else "ple", **our_kwargs(name, size))
    return Built(model, lambda d, c: (d, c), lambda x: model(*x))


# ----------------------------------------------------------------------------- torch-rechub


def _rechub_input(size: dict[str, Any]) -> tuple[list, Callable, tuple[str, ...]]:
    """torch-rechub feature objects (fresh: they cache their embedding), prepare, notes."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature

    Dd, cards, k = size["dense"], list(size["cards"]), size.get("embed")
    if cards and k is None:
        feats = [DenseFeature("x", embed_dim=Dd + sum(cards))]
        return feats, lambda d, c: {"x": one_hot_input(d, c, cards)}, ("1hot",)
    feats = [SparseFeature(f"c{f}", vocab_size=n, embed_dim=k) for f, n in enumerate(cards)]
    if Dd:
        feats.append(DenseFeature("dense", embed_dim=Dd))

    def prepare(d: Tensor, c: Tensor) -> dict[str, Tensor]:
        x = {f"c{f}": c[:, f] for f in range(len(cards))}
        if Dd:
            x["dense"] = d
        return x

    return feats, prepare, ()


def _rechub(model: nn.Module, prepare: Callable, notes: tuple[str, ...]) -> Built:
    return Built(model, prepare, model, True, notes + ("bn", "prob", "adam"))


def _towers(size: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"dims": [size["tower"]]} for _ in range(T)]


def rechub_shared_bottom(size: dict[str, Any]) -> Built:
    """torch-rechub ``SharedBottom``: bottom MLP = the expert widths of every level."""
    from torch_rechub.models.multi_task import SharedBottom

    feats, prepare, notes = _rechub_input(size)
    model = SharedBottom(feats, ["classification"] * T, {"dims": list(size["experts"])},
                         _towers(size))
    return _rechub(model, prepare, notes)


def rechub_mmoe(size: dict[str, Any]) -> Built:
    """torch-rechub ``MMOE``: 6 experts, each an MLP of the expert widths."""
    from torch_rechub.models.multi_task import MMOE

    feats, prepare, notes = _rechub_input(size)
    model = MMOE(feats, ["classification"] * T, EXPERTS, {"dims": list(size["experts"])},
                 _towers(size))
    return _rechub(model, prepare, notes)


def rechub_cgc(size: dict[str, Any]) -> Built:
    """torch-rechub ``PLE`` with ``n_level=1`` (CGC): 1 expert per task + 3 shared."""
    from torch_rechub.models.multi_task import PLE

    feats, prepare, notes = _rechub_input(size)
    model = PLE(feats, ["classification"] * T, 1, 1, SHARED, {"dims": list(size["experts"])},
                _towers(size))
    return _rechub(model, prepare, notes)


def rechub_ple(size: dict[str, Any]) -> Built:
    """torch-rechub ``PLE``, one level per expert width; every level uses the first width."""
    from torch_rechub.models.multi_task import PLE

    feats, prepare, notes = _rechub_input(size)
    e = list(size["experts"])
    model = PLE(feats, ["classification"] * T, len(e), 1, SHARED, {"dims": [e[0]]},
                _towers(size))
    return _rechub(model, prepare, notes + (("width",) if len(set(e)) > 1 else ()))


# ----------------------------------------------------------------------------- deepctr-torch


def _deepctr_input(size: dict[str, Any]) -> tuple[list, Callable, tuple[str, ...]]:
    """deepctr-torch feature columns, prepare (its one ``X`` tensor, indices as floats), notes."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    Dd, cards, k = size["dense"], list(size["cards"]), size.get("embed")
    if cards and k is None:
        return [DenseFeat("x", Dd + sum(cards))], lambda d, c: one_hot_input(d, c, cards), ("1hot",)
    cols = [SparseFeat(f"c{f}", n, embedding_dim=k) for f, n in enumerate(cards)]
    if Dd:
        cols.append(DenseFeat("dense", Dd))
    return cols, lambda d, c: torch.cat([c.float(), d], 1), ()  # [B,F]+[B,Dd] -> [B,F+Dd]


def _deepctr_common(size: dict[str, Any]) -> dict[str, Any]:
    return dict(
        tower_dnn_hidden_units=(size["tower"],), l2_reg_linear=0.0, l2_reg_embedding=0.0,
        dnn_dropout=0.0, dnn_use_bn=False, task_types=("binary",) * T,
        task_names=tuple(f"task{t}" for t in range(T)), seed=0,
    )


def _deepctr(model: nn.Module, prepare: Callable, notes: tuple[str, ...]) -> Built:
    return Built(model, prepare, model, True, notes + ("prob", "adam"))


def deepctr_shared_bottom(size: dict[str, Any]) -> Built:
    """deepctr-torch ``SharedBottom``: bottom DNN = the expert widths of every level."""
    from deepctr_torch.models import SharedBottom

    cols, prepare, notes = _deepctr_input(size)
    model = SharedBottom(cols, bottom_dnn_hidden_units=tuple(size["experts"]),
                         **_deepctr_common(size))
    return _deepctr(model, prepare, notes)


def deepctr_mmoe(size: dict[str, Any]) -> Built:
    """deepctr-torch ``MMOE``: 6 experts, linear softmax gates (no gate hidden layer)."""
    from deepctr_torch.models import MMOE

    cols, prepare, notes = _deepctr_input(size)
    model = MMOE(cols, num_experts=EXPERTS, expert_dnn_hidden_units=tuple(size["experts"]),
                 gate_dnn_hidden_units=(), **_deepctr_common(size))
    return _deepctr(model, prepare, notes)


def _deepctr_fix_shared_experts(model: nn.Module, units: tuple[int, ...]) -> bool:
    """Give deepctr-torch's PLE ``shared_expert_num`` shared experts per level (see NOTES)."""
    from deepctr_torch.layers import DNN

    if len(model.shared_experts[0][0]) == model.shared_expert_num:
        return False
    model.shared_experts = nn.ModuleList(
        nn.ModuleList([nn.ModuleList(
            DNN(model.input_dim if lvl == 0 else units[-1], units, activation="relu",
                use_bn=False) for _ in range(model.shared_expert_num)
        )]) for lvl in range(model.num_levels)
    )
    return True


def _deepctr_ple(size: dict[str, Any], levels: int, units: tuple[int, ...],
                 notes: tuple[str, ...]) -> Built:
    from deepctr_torch.models import PLE

    cols, prepare, in_notes = _deepctr_input(size)
    model = PLE(cols, shared_expert_num=SHARED, specific_expert_num=1, num_levels=levels,
                expert_dnn_hidden_units=units, gate_dnn_hidden_units=(), **_deepctr_common(size))
    fixed = _deepctr_fix_shared_experts(model, units)
    return _deepctr(model, prepare, in_notes + notes + ("lastgate",) + (("fix",) if fixed else ()))


def deepctr_cgc(size: dict[str, Any]) -> Built:
    """deepctr-torch ``PLE`` with ``num_levels=1`` (CGC): 1 expert per task + 3 shared."""
    return _deepctr_ple(size, 1, tuple(size["experts"]), ())


def deepctr_ple(size: dict[str, Any]) -> Built:
    """deepctr-torch ``PLE``, one level per expert width; every level uses the first width."""
    e = list(size["experts"])
    return _deepctr_ple(size, len(e), (e[0],), ("width",) if len(set(e)) > 1 else ())


# ----------------------------------------------------------------------------- reference


def build_reference(name: str, size: dict[str, Any], path: str) -> Built:
    """The authors' ``mtl_lib.py`` model (``benchmarks/models.py``'s builder), one-hot input."""
    if size.get("embed") is not None:
        raise CannotExpress("noemb")
    model = bench.make_reference(path, name, size)
    cards = list(size["cards"])
    notes = ("1hot",) if cards else ()
    return Built(model, lambda d, c: one_hot_input(d, c, cards),
                 lambda x: torch.cat(model(x), 1), False, notes + ("adam",))  # T x [B,1] -> [B,T]


PEER_BUILDERS: dict[str, dict[str, Callable[[dict[str, Any]], Built]]] = {
    "torch-rechub": {"shared_bottom": rechub_shared_bottom, "mmoe": rechub_mmoe,
                     "cgc": rechub_cgc, "ple": rechub_ple},
    "deepctr-torch": {"shared_bottom": deepctr_shared_bottom, "mmoe": deepctr_mmoe,
                      "cgc": deepctr_cgc, "ple": deepctr_ple},
}


def offers(lib: str, name: str) -> bool:
    """Whether library ``lib`` has a model for ``name`` at all."""
    if lib == "ours":
        return True
    if lib == "reference":
        return name in bench.REF_NAME and name not in ("ml_mmoe",)
    return name in PEER_BUILDERS[lib]


def build(lib: str, name: str, size: dict[str, Any], reference: str | None = None) -> Built:
    """Model ``name`` of library ``lib`` at ``size``; :class:`CannotExpress` when it has none."""
    if lib == "ours":
        return build_ours(name, size)
    if lib == "reference":
        if not reference:
            raise ValueError("the reference rows need --reference PATH/mtl_lib.py")
        return build_reference(name, size, reference)
    return PEER_BUILDERS[lib][name](size)


# ----------------------------------------------------------------------------- one row


def make_optimizer(lib: str, model: nn.Module, fused_all: bool) -> torch.optim.Optimizer:
    """Adam, lr 1e-4: fused for ours (as ``adatt train``), the library default otherwise."""
    fused = lib == "ours" or fused_all
    return torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)


def train_step(built: Built, opt: torch.optim.Optimizer, inputs: Any, labels: Tensor) -> Tensor:
    """One optimizer step on one prepared batch; returns the loss."""
    loss = task_loss(built.run(inputs), labels, built.probabilities)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def measure(lib: str, name: str, size_name: str, threads: int, quick: bool,
            reference: str | None, fused_all: bool, keep_memory_all: bool = False) -> None:
    """Worker for one row: build it, warm up, then time windows on request.

    ``train`` windows are optimizer steps in train mode, ``infer`` windows forward
    passes in eval mode under ``torch.inference_mode``; all train windows come first
    (the model stays in eval mode after the first inference window). The
    ready line gives the parameter count, MFLOP per example and the step time of the
    warm-up; the final line the peak memory (:func:`paired.serve`).
    """
    torch.set_num_threads(threads)
    if lib == "ours" or keep_memory_all:  # what `adatt train` does (adatt.train.memory)
        from adatt.train.memory import keep_freed_memory

        keep_freed_memory()
    if lib in LIB_MODULE:
        importlib.import_module(LIB_MODULE[lib])  # imports are not part of the peak memory
    from torch.utils.flop_counter import FlopCounterMode

    size = SIZES[size_name]
    B, Dd, cards = size["batch"], size["dense"], list(size["cards"])
    bench._reset_peak_rss()
    rss0 = bench._current_rss_kb()
    g = torch.Generator().manual_seed(0)
    n_batches = 8
    dense = torch.randn(n_batches, B, Dd, generator=g)
    cat = torch.stack([torch.randint(0, c, (n_batches, B), generator=g) for c in cards], -1) \
        if cards else torch.zeros(n_batches, B, 0, dtype=torch.long)  # [n,B,F]
    labels = (torch.rand(n_batches, B, T, generator=g) < 0.3).float()
    torch.manual_seed(0)
    try:
        built = build(lib, name, size, reference)
    except CannotExpress as e:
        say(dict(status="cannot express", notes=[str(e)]))
        return
    inputs = [built.prepare(dense[i], cat[i]) for i in range(n_batches)]
    opt = make_optimizer(lib, built.model, fused_all)
    built.model.train()

    def step(i: int) -> None:
        train_step(built, opt, inputs[i % n_batches], labels[i % n_batches])

    with FlopCounterMode(display=False) as fc:
        step(0)
    flops = fc.get_total_flops()
    warm = 1 if quick else 5
    times = []
    for i in range(warm + 1):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    built.model.eval()  # inference warm-up here, outside the timed windows
    with torch.inference_mode():
        for i in range(warm):
            built.run(inputs[i % n_batches])
    built.model.train()

    def infer(i: int) -> None:
        if built.model.training:  # the first inference window (train windows come first)
            built.model.eval()
        with torch.inference_mode():
            built.run(inputs[i % n_batches])

    params = sum(p.numel() for p in built.model.parameters())
    serve({"train": step, "infer": infer},
          dict(params=params, mflop=flops / B / 1e6, notes=list(built.notes), batch=B,
               step_s=statistics.median(times[1:])),
          lambda: dict(peak_mb=(bench._peak_rss_kb() - rss0) / 1024))


# ----------------------------------------------------------------------------- the table


def _ratio(row: dict, ours: dict | None, key: str) -> str:
    if row["lib"] == "ours" or ours is None or key not in row or not ours.get(key):
        return "-"
    if f"{key}_x" in row:  # timed in turns with ours: the median of the turns' ratios
        return f"{row[key + '_x']:.2f}x"
    return f"{row[key] / ours[key]:.2f}x"


def format_table(rows: list[dict], markdown: bool) -> str:
    """One line per row; ``x ours`` columns are the row's value divided by ours."""
    head = ["size", "model", "library", "train ex/s", "x ours", "infer ex/s", "x ours",
            "peak MB", "x ours", "params", "x ours", "MFLOP/ex", "note"]
    lines = []
    for r in rows:
        ours = next((o for o in rows if o["lib"] == "ours" and o["model"] == r["model"]
                     and o["size"] == r["size"] and "train" in o), None)
        if "train" not in r:
            lines.append([r["size"], r["model"], r["lib"], r.get("status", "failed")]
                         + [""] * 8 + [", ".join(r.get("notes", []))])
            continue
        lines.append([
            r["size"], r["model"], r["lib"], f"{r['train']:,.0f}", _ratio(r, ours, "train"),
            f"{r['infer']:,.0f}", _ratio(r, ours, "infer"), f"{r['peak_mb']:.0f}",
            _ratio(r, ours, "peak_mb"), f"{r['params']:,}", _ratio(r, ours, "params"),
            f"{r['mflop']:.2f}", ", ".join(r["notes"]),
        ])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
    else:
        w = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
        out = ["  ".join(str(x).ljust(n) for x, n in zip(line, w, strict=True)).rstrip()
               for line in [head, *lines]]
        out.insert(1, "-" * len(out[0]))
    used = sorted({n for r in rows for n in r.get("notes", [])})
    out += ["", "notes:"] + [f"  {n}: {NOTES[n]}" for n in used]
    return "\n".join(out)


#: shortest timed window (seconds): a window starts on caches the other rows have used
WINDOW_S = 0.4


def measure_group(name: str, size: str, libs: list[str], args: argparse.Namespace) -> list[dict]:
    """The rows of one (model, size), every library in its own worker, taking turns.

    ``train`` and ``infer`` are the median windows; ``train_x`` and ``infer_x`` the
    median over turns of the row's rate over ours in the same turn.
    """
    cmds = {}
    for lib in libs:
        cmd = [sys.executable, __file__, "--one", f"{lib}:{name}:{size}", "--threads",
               str(args.threads)]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--fused-all"] if args.fused_all else []
        cmd += ["--keep-memory-all"] if args.keep_memory_all else []
        cmd += ["--reference", args.reference] if args.reference else []
        cmds[lib] = cmd

    def measure(workers: dict[str, Worker]) -> dict[str, dict]:
        steps = args.steps or (2 if args.quick else (10 if size == "industrial" else 20))
        turns = (args.windows or (2 if args.quick else 5)) * args.rounds
        window = 0.0 if args.quick else WINDOW_S
        timed = {kind: dict(zip(workers, take_turns(list(workers.values()), kind, n, turns,
                                                    window=window), strict=True))
                 for kind, n in (("train", steps), ("infer", 2 * steps))}
        ours = workers.get("ours")
        rows = {}
        for lib, w in workers.items():
            row = dict(w.meta)
            if w.alive:
                for kind, t in timed.items():
                    row[kind] = w.meta["batch"] / statistics.median(t[lib])
                    if lib != "ours" and ours is not None and ours.alive:
                        row[f"{kind}_x"] = paired_ratio(t["ours"], t[lib])
            rows[lib] = row
        return rows

    return [dict(lib=lib, model=name, size=size, **row)
            for lib, row in run_group(cmds, measure).items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", help="comma list of " + ", ".join(SIZES)
                   + " (default: all; --quick: census)")
    p.add_argument("--models", help="comma list (default: " + ",".join(MODELS)
                   + "; with --reference also " + ",".join(REFERENCE_MODELS) + ")")
    p.add_argument("--libs", default=",".join(LIBS[:3]),
                   help="comma list of " + ", ".join(LIBS) + " (reference: with --reference)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per row (default 2)")
    p.add_argument("--reference", help="path of the authors' mtl_lib.py (adds reference rows)")
    p.add_argument("--rounds", type=int, default=1,
                   help="N x --windows timed turns per row (default 1)")
    p.add_argument("--windows", type=int, help="timed turns per round (default 5)")
    p.add_argument("--steps", type=int, help="least training steps per window (default 20 "
                   "census, 10 industrial; more where they take under 0.4 s)")
    p.add_argument("--fused-all", action="store_true", help="fused Adam for the peers too")
    p.add_argument("--keep-memory-all", action="store_true", help="glibc malloc keeps freed "
                   "memory for the peers too (ours always does, as `adatt train` does)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: few steps, census only")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        lib, name, size = args.one.split(":")
        measure(lib, name, size, args.threads, args.quick, args.reference, args.fused_all,
                args.keep_memory_all)
        return
    print(describe())

    sizes = (args.sizes or ("census" if args.quick else ",".join(SIZES))).split(",")
    models = args.models.split(",") if args.models else \
        MODELS + (REFERENCE_MODELS if args.reference else [])
    libs = args.libs.split(",")
    if args.reference and "reference" not in libs:
        libs.append("reference")
    for name, options in (("size", (sizes, SIZES)), ("model", (models, MODELS + REFERENCE_MODELS)),
                          ("library", (libs, LIBS))):
        bad = [x for x in options[0] if x not in options[1]]
        if bad:
            sys.exit(f"error: unknown {name} {bad[0]!r}; known: {', '.join(options[1])}")
    if "reference" in libs and not args.reference:
        sys.exit("error: the reference library needs --reference PATH/mtl_lib.py")
    if args.reference and not Path(args.reference).is_file():
        sys.exit(f"error: --reference {args.reference}: no such file")
    missing = [lib for lib in libs if lib in LIB_MODULE
               and importlib.util.find_spec(LIB_MODULE[lib]) is None]
    for lib in missing:
        print(f"{lib} is not installed (pip install -e '.[bench]'): its rows are skipped")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} round(s)"
          + (", quick" if args.quick else "") + "\n", flush=True)
    rows = []
    for size in sizes:
        for name in models:
            group = [lib for lib in libs if lib not in missing and offers(lib, name)]
            for r in measure_group(name, size, group, args):
                rows.append(r)
                print(f"  {r['size']:<11}{r['model']:<14}{r['lib']:<14}"
                      + (f"{r['train']:>9,.0f} ex/s" if "train" in r else r.get("status", "")),
                      flush=True)
    print()
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
