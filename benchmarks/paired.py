"""Paired timing: the rows of one comparison run in their own processes, taking turns.

A shared machine speeds up and slows down over seconds to minutes. Timing one
row after another then puts part of that drift into every ratio: two runs of
the same code have given the reference's census step 16k and 24k examples/s.
Here every row of a comparison (ours, a peer, the reference) is a worker
process that builds its model, warms up, and then waits; the parent asks each
in turn for one timed window of steps, rotating who goes first, for several
turns. Each turn's ratio compares windows measured seconds apart, and the
reported ratio is the median over turns, so the drift cancels instead of
landing on one side.

Worker side (:func:`serve`): one JSON line when ready (or a ``status`` line
and exit when the row cannot run), then one JSON line ``{"s": seconds}`` per
``KIND STEPS`` command (``train 20``), and a final JSON line on ``done``;
every protocol line starts with :data:`TAG`, other output is ignored.
Each worker is its own process, so its peak memory is its own.

Example, with stand-in workers that sleep (one twice as long per step)::

    >>> import sys
    >>> def cmd(per_step):
    ...     return [sys.executable, __file__, "--demo-worker", str(per_step)]
    >>> fast, slow = Worker(cmd(0.001)), Worker(cmd(0.002))
    >>> times = take_turns([fast, slow], "train", steps=5, turns=3, gap=0)
    >>> 1.5 < paired_ratio(times[1], times[0]) < 2.5  # fast's rate / slow's rate
    True
    >>> fast.finish()["done"], slow.finish()["done"]
    (True, True)
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: start of every protocol line, told apart from whatever else a worker prints
TAG = "@paired "


def say(obj: dict[str, Any]) -> None:
    """Writes one protocol line."""
    print(TAG + json.dumps(obj), flush=True)


class WorkerFailed(RuntimeError):
    """A worker exited or answered out of protocol; the message is its last error line."""


class Worker:
    """Parent side of one worker process (``cmd`` runs :func:`serve`).

    Construction starts the process and waits for its ready line, available as
    :attr:`meta`; a worker that reports a ``status`` instead (a row that
    cannot run) has exited, and :attr:`meta` holds that status.
    """

    def __init__(self, cmd: list[str]) -> None:
        self._err = tempfile.TemporaryFile(mode="w+")  # a file, so a chatty worker never blocks
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, bufsize=1)
        self.meta: dict[str, Any] = self._read()
        self.alive = "status" not in self.meta
        if not self.alive:
            self.proc.wait()

    def _read(self) -> dict[str, Any]:
        """The worker's next protocol line; what else it prints (a library's chatter) is skipped."""
        while line := self.proc.stdout.readline():
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        self.proc.wait()
        self._err.seek(0)
        lines = self._err.read().strip().splitlines() or ["no output"]
        raise WorkerFailed(lines[-1][:200])

    def time(self, kind: str, steps: int) -> float:
        """Seconds per step of one window of ``steps`` steps of ``kind``."""
        self.proc.stdin.write(f"{kind} {steps}\n")
        return float(self._read()["s"]) / steps

    def finish(self) -> dict[str, Any]:
        """Ends the worker; returns its final line (its peak memory and the like)."""
        if not self.alive:
            return self.meta
        self.proc.stdin.write("done\n")
        out = self._read()
        self.proc.stdin.close()
        self.proc.wait()
        self._err.close()
        self.alive = False
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_workers(cmds: dict[str, list[str]]) -> tuple[dict[str, Worker], dict[str, str]]:
    """Starts one worker per command, in order; returns them and, per key, why one failed."""
    workers: dict[str, Worker] = {}
    failed: dict[str, str] = {}
    for key, cmd in cmds.items():
        try:
            workers[key] = Worker(cmd)
        except WorkerFailed as e:
            failed[key] = str(e)
    return workers, failed


def run_group(cmds: dict[str, list[str]],
              measure: Callable[[dict[str, Worker]], dict[str, dict[str, Any]]],
              ) -> dict[str, dict[str, Any]]:
    """One comparison: start a worker per command, ``measure`` them, end them.

    ``measure(workers)`` takes the turns and returns the fields of each worker's
    row; each row then gets the worker's final line. Returns a row per key of
    ``cmds``, in order: ``{"status": "failed: ..."}`` for a worker that failed to
    start, and for all of them when one dies mid-run (no row of the group is whole).
    """
    workers, failed = start_workers(cmds)
    rows = {key: {"status": f"failed: {why}"} for key, why in failed.items()}
    try:
        for key, fields in measure(workers).items():
            rows[key] = {**fields, **workers[key].finish()}
    except WorkerFailed as e:
        for w in workers.values():
            w.kill()
        rows.update({key: {"status": f"failed: {e}"} for key in workers})
    return {key: rows[key] for key in cmds}


def take_turns(workers: list[Worker], kind: str, steps: int, turns: int,
               gap: float = 0.05, window: float = 0.0) -> list[list[float]]:
    """Per worker, ``turns`` window times (seconds per step), the workers taking turns.

    A window is ``steps`` steps, or more for a worker whose ready line gives its step
    time (``step_s``) when ``steps`` would take under ``window`` seconds: a worker's
    first step after another's window runs on cold caches, which must not weigh more
    on a fast row than on a slow one. Turn ``t`` starts with worker ``t mod n``, so no
    row always runs first. ``gap`` seconds between windows let the previous worker's
    OpenMP threads stop spinning before the next one starts.
    """
    live = [i for i, w in enumerate(workers) if w.alive]
    n_steps = [max(steps, math.ceil(window / w.meta["step_s"]))
               if window and w.meta.get("step_s") else steps for w in workers]
    times: list[list[float]] = [[] for _ in workers]
    for t in range(turns):
        order = live[t % len(live):] + live[: t % len(live)] if live else []
        for i in order:
            times[i].append(workers[i].time(kind, n_steps[i]))
            if gap:
                time.sleep(gap)
    return times


def paired_ratio(times_a: list[float], times_b: list[float]) -> float:
    """Median over turns of ``times_a / times_b``: ``b``'s rate over ``a``'s, turn by turn."""
    return statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))


def serve(steps: dict[str, Callable[[int], Any]], ready: dict[str, Any],
          final: Callable[[], dict[str, Any]]) -> None:
    """Worker side: announce ``ready``, run timed windows on request, end with ``final()``.

    ``steps[kind](i)`` runs step ``i`` of that kind (``train``, ``infer``).
    """
    say({"ready": True, **ready})
    counter = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd == ["done"]:
            break
        kind, n = cmd[0], int(cmd[1])
        fn = steps[kind]
        t0 = time.perf_counter()
        for _ in range(n):
            fn(counter)
            counter += 1
        say({"s": time.perf_counter() - t0})
    say(final())


if __name__ == "__main__" and sys.argv[1:2] == ["--demo-worker"]:  # the docstring's example
    _per = float(sys.argv[2])
    serve({"train": lambda i: time.sleep(_per)}, {}, lambda: {"done": True})
