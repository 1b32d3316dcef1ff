"""keep_freed_memory: training steps stop page-faulting their activations in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adatt.train.memory import keep_freed_memory

STEPS = """
import resource, sys, torch
from adatt.models import create_model
if sys.argv[1] == "keep":
    from adatt.train.memory import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
m = create_model("adatt_sp", num_tasks=3, dense_dim=9, cat_cardinalities=[40] * 12,
                 expert_sizes=[128, 64], experts_per_task=2, tower_sizes=[32])
opt = torch.optim.Adam(m.parameters())
dense, cat = torch.randn(512, 9), torch.randint(0, 40, (512, 12))
def step():
    loss = m(dense, cat).square().mean(); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(10): step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20): step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


def _faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "", "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip())


@pytest.mark.skipif(not keep_freed_memory(), reason="needs glibc malloc")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    plain, keep = _faults_per_step("plain"), _faults_per_step("keep")
    # measured on VMs whose kernel also reclaims pages in the background, some of them
    # loaded by other jobs: 95-680 minor faults per step without, 0-100 with (the two
    # counts of one call: 132 and 0.45 at the lowest, 380 and 20 at the highest)
    assert plain > 4 * keep + 20, (plain, keep)


def test_keep_freed_memory_respects_the_environment():
    code = "from adatt.train.memory import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"MALLOC_TRIM_THRESHOLD_": "0"})
    assert out.stdout.strip() == "False"
