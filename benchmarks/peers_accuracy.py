"""Census accuracy of our MMoE and PLE next to torch-rechub's, same features and budget.

Both libraries get the same census features (31 categorical fields through
learned embeddings of one size, 7 dense columns), the same architecture, and
one training loop: Adam (lr 1e-4, weight decay 0.01, ``torch.optim.Adam``
defaults otherwise), batch 512, the same shuffling order per (seed, epoch),
per-task binary cross-entropy summed over tasks (torch-rechub's models output
probabilities: BCE on probabilities), the epoch with the best mean validation
AUC, scored once on test. Each library keeps its own layers and initialisation
(torch-rechub: BatchNorm after every linear layer, embeddings drawn from
N(0, 1e-4); ours: no normalisation, embeddings from N(0, 1)).

    pip install -e '.[bench]'
    python benchmarks/peers_accuracy.py [--data-dir DIR] [--seeds 5] [--epochs 10]
                                        [--models mmoe,ple] [--embedding-dim 16]
                                        [--libs ours,torch-rechub] [--standardize-dense]
                                        [--json FILE] [--merge EARLIER.json]

``--libs torch-rechub-no-bn`` adds torch-rechub's models with every BatchNorm1d
replaced by the identity (the ablation that tells the normalisation apart from
everything else); ``--merge`` shows the runs of an earlier ``--json`` beside.

Models (3 tasks, 6 experts, towers 32):
  mmoe  one level of 6 two-layer experts (128, 64)
  ple   two levels, 1 expert per task + 3 shared, one-layer experts of 128 units at
        both levels (torch-rechub's PLE has one expert width for all levels, so
        the paper's (128, 64) cannot be expressed there; this is the same in both)

Prints, per model and library, the mean test AUC per task with a 95% t
interval over seeds, and the paired difference ours - torch-rechub (same seeds).
The census files come from ``--data-dir``, ``ADATT_DATA_DIR`` or the cache.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import describe  # noqa: E402


def _load_peers():
    """``benchmarks/peers.py`` (its builders), registered so its dataclasses work."""
    spec = importlib.util.spec_from_file_location(
        "adatt_benchmark_peers", Path(__file__).with_name("peers.py")
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


peers = _load_peers()

LIBS = ["ours", "torch-rechub", "torch-rechub-no-bn"]  # the last: its BatchNorm layers removed
EXPERTS = {"mmoe": lambda w: [w, 64], "ple": lambda w: [w, w]}


def build(lib: str, name: str, size: dict[str, Any]) -> Any:
    """A model of ``benchmarks/peers.py``; ``torch-rechub-no-bn``: every BatchNorm1d -> Identity."""
    if lib != "torch-rechub-no-bn":
        return peers.build(lib, name, size)
    built = peers.build("torch-rechub", name, size)
    for module in list(built.model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm1d):
                setattr(module, child_name, torch.nn.Identity())
    return built


def model_size(name: str, schema: Any, embedding_dim: int, width: int) -> dict[str, Any]:
    """The size dict the builders of ``benchmarks/peers.py`` take, for census."""
    return dict(dense=schema.dense_dim, cards=list(schema.cardinalities),
                experts=EXPERTS[name](width), tower=32, embed=embedding_dim)


@torch.no_grad()
def predict(built: Any, data: Any, batch_size: int = 8192) -> Tensor:
    """Model outputs ``[N, T]`` (logits or probabilities: both rank the same) in eval mode."""
    built.model.eval()
    outs = [built.run(built.prepare(b.dense, b.cat)) for b in data.batches(batch_size)]
    built.model.train()
    return torch.cat(outs)  # n_batches x [b,T] -> [N,T]


def train_and_score(built: Any, splits: Any, seed: int, epochs: int, batch_size: int, lr: float,
              weight_decay: float) -> dict[str, Any]:
    """Train ``epochs`` epochs; the best mean-validation-AUC epoch's test AUC per task."""
    from adatt.train.metrics import auc

    model = built.model
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best: tuple[float, int, dict] | None = None
    model.train()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        for b in splits.train.batches(batch_size, shuffle=True, generator=g):
            peers.train_step(built, opt, built.prepare(b.dense, b.cat), b.labels)
        valid = auc(predict(built, splits.valid), splits.valid.labels)  # [T]
        score = float(valid.mean())
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    test = auc(predict(built, splits.test), splits.test.labels)  # [T]
    return dict(test=[float(v) for v in test], valid_mean=best[0], epoch=best[1] + 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from adatt.data.config import load_splits
    from adatt.data.errors import DataError

    torch.set_num_threads(args.threads)
    try:
        splits = load_splits({"source": "census", "data_dir": args.data_dir})
    except DataError as e:
        sys.exit(f"error: {e}")
    if args.standardize_dense:  # z-scores with training statistics instead of min-max
        mean = splits.train.dense.mean(0)  # [Dd]
        std = splits.train.dense.std(0).clamp_min(1e-6)  # [Dd]
        for d in (splits.train, splits.valid, splits.test):
            d.dense = (d.dense - mean) / std  # [N, Dd]
    schema = splits.schema
    if schema.num_tasks != peers.T:
        sys.exit(f"error: the builders expect {peers.T} tasks, census has {schema.num_tasks}")
    print(f"census: {splits.sizes()}, tasks {list(schema.task_names)}, "
          f"{len(schema.cardinalities)} categorical fields (embedding {args.embedding_dim}), "
          f"{schema.dense_dim} dense; {args.seeds} seeds x {args.epochs} epochs\n", flush=True)
    results: dict[str, Any] = {"tasks": list(schema.task_names), "runs": {}}
    for name in args.models.split(","):
        size = model_size(name, schema, args.embedding_dim, args.width)
        for lib in args.libs.split(","):
            runs = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                built = build(lib, name, size)
                t0 = time.perf_counter()
                r = train_and_score(built, splits, seed, args.epochs, args.batch_size, args.lr,
                              args.weight_decay)
                r.update(seed=seed, seconds=time.perf_counter() - t0,
                         params=sum(p.numel() for p in built.model.parameters()))
                runs.append(r)
                print(f"  {name:<5} {lib:<13} seed {seed}: test AUC "
                      + " ".join(f"{v:.4f}" for v in r["test"])
                      + f"  (epoch {r['epoch']}, {r['seconds']:.0f} s)", flush=True)
            results["runs"][f"{name}:{lib}"] = runs
    return results


def format_results(results: dict[str, Any]) -> str:
    """Markdown: mean test AUC +- 95% CI per task, then paired differences ours - peer."""
    from adatt.experiments.common import markdown_table, mean_ci, paired_comparison

    tasks, runs = results["tasks"], results["runs"]
    rows = []
    for key, rs in runs.items():
        name, lib = key.split(":")
        cells = []
        for t in range(len(tasks)):
            m, h = mean_ci([r["test"][t] for r in rs])
            cells.append(f"{m:.4f} ± {h:.4f}" if h == h else f"{m:.4f}")
        rows.append([name, lib, len(rs), f"{rs[0]['params']:,}", *cells,
                     f"{sum(r['seconds'] for r in rs) / len(rs):.0f}"])
    out = [markdown_table(["model", "library", "seeds", "params", *tasks, "s / run"], rows)]
    diffs = []
    for key in runs:
        name, lib = key.split(":")
        ours = runs.get(f"{name}:ours")
        if lib == "ours" or not ours:
            continue
        peer = runs[key]
        cells = []
        for t in range(len(tasks)):
            n = min(len(ours), len(peer))  # seeds 0..n-1 of both
            c = paired_comparison([r["test"][t] for r in ours[:n]],
                                  [r["test"][t] for r in peer[:n]])
            ci = f" ± {c['ci']:.4f}" if c["ci"] == c["ci"] else ""
            cells.append(f"{c['diff']:+.4f}{ci} ({c['wins']}/{c['n']})")
        diffs.append([name, lib, *cells])
    if diffs:
        out += ["", "ours - peer, paired by seed (mean ± 95% CI, seeds where ours is "
                    "higher):", "", markdown_table(["model", "peer", *tasks], diffs)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", help="census files (default: ADATT_DATA_DIR, then the cache)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model and library")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--models", default="mmoe,ple", help="comma list of mmoe, ple")
    p.add_argument("--libs", default="ours,torch-rechub", help="comma list of " + ", ".join(LIBS)
                   + " (the last: torch-rechub with its BatchNorm layers removed)")
    p.add_argument("--embedding-dim", type=int, default=16, help="embedding size, both libraries")
    p.add_argument("--width", type=int, default=128, help="first-level expert width")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--standardize-dense", action="store_true",
                   help="z-score the continuous columns (training mean and std) instead of the "
                   "census loader's min-max scaling (see benchmarks/README.md)")
    p.add_argument("--json", help="also write every run's numbers to this file")
    p.add_argument("--merge", help="a --json file of an earlier call: its runs are added to the "
                   "tables (same settings assumed; e.g. --libs torch-rechub-no-bn after a "
                   "default call)")
    args = p.parse_args()
    print(describe())
    bad = [m for m in args.models.split(",") if m not in EXPERTS]
    if bad:
        sys.exit(f"error: unknown model {bad[0]!r}; known: {', '.join(EXPERTS)}")
    bad = [lib for lib in args.libs.split(",") if lib not in LIBS]
    if bad:
        sys.exit(f"error: unknown library {bad[0]!r}; known: {', '.join(LIBS)}")
    earlier = None
    if args.merge:
        try:
            earlier = json.loads(Path(args.merge).read_text())
            earlier_runs = earlier["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"error: --merge {args.merge}: not a results file of this script ({e})")
    if args.seeds < 1 or args.epochs < 1:
        sys.exit("error: --seeds and --epochs must be >= 1")
    if importlib.util.find_spec("torch_rechub") is None:
        sys.exit("error: torch-rechub is not installed (pip install -e '.[bench]')")
    results = run(args)
    if earlier is not None:  # runs of an earlier call, e.g. other libraries, shown side by side
        if earlier.get("tasks") != results["tasks"]:
            sys.exit(f"error: --merge {args.merge}: its tasks differ")
        results["runs"] = {**{k: v for k, v in earlier_runs.items() if k not in results["runs"]},
                           **results["runs"]}
    print()
    print(format_results(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
