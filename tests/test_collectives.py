"""adatt.train.distributed's collectives for evaluation: values, and no abort at exit.

A gloo worker thread that drops the last reference to a finished collective frees
its Python tensors and needs the GIL; at interpreter shutdown it cannot take it and
the process aborts (SIGABRT, "terminate called without an active exception"). With
``dist.all_gather`` / ``dist.broadcast_object_list`` as the last collectives before
exit, a 2-rank run aborted in about 1 of 4 runs on a loaded 2-core machine; the
helpers keep their works, so this thread drops the last reference.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.ranks import spawn_ranks

RUNS = 4


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    from adatt.train import distributed as ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), world),
                            rank=rank, world_size=world)
    parts = ddp.all_gather(torch.full((3, 2), float(rank)))  # W x [3, 2]
    assert [p[0, 0].item() for p in parts] == list(range(world))
    got = ddp.broadcast_object({"rank": rank, "auc": [0.5, rank]} if rank == 0 else None,
                               torch.device("cpu"))
    assert got == {"rank": 0, "auc": [0.5, 0]}
    with open(os.path.join(tmp, f"ok{rank}"), "w") as f:
        f.write("ok")
    # exit right after the collectives, without destroying the process group: the case
    # that aborted


@pytest.mark.parametrize("run", range(RUNS))
def test_gather_and_broadcast_then_exit(tmp_path, run):
    out = spawn_ranks(_worker, 2, str(tmp_path), timeout=120.0)  # a SIGABRT fails here
    assert {"ok0", "ok1"} <= set(os.listdir(out))
