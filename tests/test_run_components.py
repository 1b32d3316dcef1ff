"""The run components every recipe uses: RunDir, Selection/Progress, one evaluation,
seeding, the optimizer factories."""

from __future__ import annotations

import pytest
import torch

from adatt.config import TrainConfig, load_config
from adatt.data.batch import TensorDataset
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.train.evaluation import evaluate
from adatt.train.metrics import MetricAccumulator
from adatt.train.optim import make_optimizer, make_schedule
from adatt.train.progress import Progress
from adatt.train.rundir import RUN_FILES, RunDir, RunError
from adatt.train.seeding import rng_state, seed_everything, set_rng_state
from adatt.train.selection import Selection

SCHEMA = FeatureSchema(("x0", "x1"), ("c",), (4,), (TaskSpec("a"), TaskSpec("b", "regression")))


def _data(n: int = 37) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 2, generator=g), torch.randint(0, 4, (n, 1), generator=g),
                         torch.stack([(torch.rand(n, generator=g) < 0.4).float(),
                                      torch.randn(n, generator=g)], 1))


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, dense: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.lin(dense) + cat.float()  # [B, T]


def test_rundir_owns_every_file_and_only_a_writer_writes(tmp_path):
    from adatt.data.splits import Splits

    cfg = load_config(None, ["name=r"])
    data = _data()
    splits = Splits("toy", SCHEMA, data, data, data)
    quiet = RunDir(tmp_path / "q", writes=False)
    quiet.start(cfg, splits)
    quiet.append_metrics({"eval": 1})
    quiet.save_best({"w": torch.zeros(1)})
    quiet.save_checkpoint({"state": {}})
    quiet.write_results({"x": 1})
    assert list((tmp_path / "q").iterdir()) == []  # a non-zero rank: the directory, no file
    run = RunDir(tmp_path / "r", writes=True)
    run.start(cfg, splits)
    run.append_metrics({"eval": 1})
    run.save_best({"w": torch.ones(1)})
    run.save_checkpoint({"state": {"evals": 1}})
    run.write_results({"x": 1})
    assert sorted(p.name for p in run.path.iterdir()) == sorted(RUN_FILES)
    assert run.read_results() == {"x": 1} and run.metrics() == [{"eval": 1}]
    assert torch.equal(run.load_best()["w"], torch.ones(1))
    with pytest.raises(RunError, match="already exists: say so"):
        run.check_new(resume=False, overwrite=False, advice="say so")
    run.check_new(resume=True, overwrite=False, advice="")
    run.start(cfg, splits)  # a fresh run removes the last run's outputs
    assert not run.file("best.pt").exists() and run.metrics() == []
    # killed before its first checkpoint: nothing trained to keep, --resume starts afresh
    assert run.check_new(resume=True, overwrite=False, advice="") is False
    for f in ("config.yaml", "data.json", "metrics.jsonl"):
        run.file(f).unlink()
    run.file("other.txt").write_text("not a run")
    with pytest.raises(RunError, match="holds no run.*--overwrite"):
        run.check_new(resume=True, overwrite=False, advice="")


def test_selection_and_progress_read_a_flat_checkpoint_state():
    """Checkpoints keep one flat state dict (older ones too): each dataclass takes its keys."""
    state = {"step": 7, "examples": 700, "epoch": 1, "batch_in_epoch": 2, "evals": 3,
             "best_score": 0.8, "best_eval": {"eval": 2}, "bad_evals": 1, "train_time": 1.5,
             "next_eval": 900, "done": False, "wall_time": 2.0, "epoch_loss": [0.1, 0.2],
             "epoch_steps": 2}
    p, s = Progress.from_state_dict(state), Selection.from_state_dict(state)
    assert (p.step, p.examples, p.evals, p.epoch_loss, p.source) == (7, 700, 3, [0.1, 0.2], None)
    assert (s.best_score, s.best_eval, s.bad_evals, s.done) == (0.8, {"eval": 2}, 1, False)
    assert not s.update(0.9, higher=False, at={"eval": 4}, patience=2)  # lower is better
    assert s.done and s.best_score == 0.8
    assert s.update(0.7, higher=False, at={"eval": 5}, patience=None) and s.bad_evals == 0


@pytest.mark.parametrize("batch_size", [5, 37, 100])
def test_evaluate_equals_one_accumulation_in_batches(batch_size):
    model, data = _Linear(), _data()
    acc = MetricAccumulator(SCHEMA.task_names, SCHEMA.task_kinds)
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            b = data.batch(slice(s, s + batch_size))
            acc.update(model(b.dense, b.cat), b.labels)
    model.train()
    assert evaluate(model, data, SCHEMA, batch_size) == acc.compute()
    assert model.training  # the mode is restored


def test_evaluate_an_ensemble_scores_every_copy():
    from adatt.models import create_model
    from adatt.train.ensemble import EnsembleModel

    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(create_model("mmoe", num_tasks=2, dense_dim=2, cat_cardinalities=[4],
                                   expert_sizes=[[4]], num_experts=2))
    ens, data = EnsembleModel(models), _data()
    got = evaluate(ens, data, SCHEMA, batch_size=16)  # 8 rows per copy per call
    for k, m in enumerate(models):
        want = evaluate(m, data, SCHEMA, batch_size=8)
        for task in want:
            for name, v in want[task].items():
                assert got[k][task][name] == pytest.approx(v, rel=1e-5, abs=1e-7), (k, task)


def test_seeding_and_rng_state_round_trip():
    seed_everything(5)
    a = torch.rand(3)
    seed_everything(5)
    state = rng_state()
    assert torch.equal(torch.rand(3), a)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_optimizer_factories_follow_the_train_config():
    p = torch.nn.Parameter(torch.zeros(2))
    tc = TrainConfig(optimizer={"name": "adamw", "lr": 0.1, "weight_decay": 0.01},
                     schedule={"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0})
    opt = make_optimizer([p], tc)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.01
    sched = make_schedule(opt, tc, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.05, 0.1]) and lrs[2] == pytest.approx(0.1)
    assert lrs[-1] < lrs[3] < lrs[2]
