"""The GPU path needs no code change: ``runtime.device=cuda`` (and bf16 autocast) on a
machine with CUDA; without CUDA the CUDA tests skip and asking for it is a one-line error."""

from __future__ import annotations

import pytest
import torch

from adatt.config import ConfigError, load_config
from adatt.train.trainer import train

TINY = ["data.source=mmoe_synthetic", "data.rows=2000", "model.name=adatt_sp",
        "model.expert_sizes=[8,8]", "model.tower_sizes=[4]", "train.epochs=1",
        "runtime.progress=false", "train.batch_size=256"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"out_dir={tmp_path}", *extra])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(_cfg(tmp_path, "runtime.device=cuda", "name=gpu"))


@needs_cuda
def test_cuda_run_matches_cpu_run(tmp_path):
    cpu = train(_cfg(tmp_path, "name=cpu", "runtime.threads=1"))
    gpu = train(_cfg(tmp_path, "name=gpu", "runtime.device=cuda"))
    for task, m in cpu["test"].items():
        assert gpu["test"][task]["auc"] == pytest.approx(m["auc"], abs=2e-3)


@needs_cuda
def test_cuda_bf16_run_is_close_to_fp32(tmp_path):
    fp32 = train(_cfg(tmp_path, "name=fp32", "runtime.device=cuda"))
    bf16 = train(_cfg(tmp_path, "name=bf16", "runtime.device=cuda", "train.bf16=true"))
    for task, m in fp32["test"].items():
        assert bf16["test"][task]["auc"] == pytest.approx(m["auc"], abs=2e-2)
