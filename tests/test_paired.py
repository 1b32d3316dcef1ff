"""benchmarks/paired.py: workers take turns, chatter is skipped, failures say why."""

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "paired.py"
_spec = importlib.util.spec_from_file_location("adatt_benchmark_paired", _PATH)
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def _worker(code: str) -> "paired.Worker":
    """A worker running ``code`` after ``from paired import *`` (benchmarks/ on the path)."""
    prelude = f"import sys, time; sys.path.insert(0, {str(_PATH.parent)!r}); from paired import *\n"
    return paired.Worker([sys.executable, "-c", prelude + code])


def test_docstring_example():
    assert doctest.testmod(paired).failed == 0


def test_turns_rotate_who_goes_first():
    code = ("starts = []\n"
            "serve({'train': lambda i: starts.append(time.time())}, {},"
            " lambda: {'starts': starts})")
    a, b = _worker(code), _worker(code)
    times = paired.take_turns([a, b], "train", steps=1, turns=3, gap=0.01)
    assert [len(t) for t in times] == [3, 3]
    sa, sb = a.finish()["starts"], b.finish()["starts"]
    assert sa[0] < sb[0] and sb[1] < sa[1] and sa[2] < sb[2]


def test_short_steps_get_longer_windows():
    code = ("n = []\n"
            "serve({'train': lambda i: n.append(i)}, {'step_s': 0.002},"
            " lambda: {'steps': len(n)})")
    fast, unknown = _worker(code), _worker(code.replace("{'step_s': 0.002}", "{}"))
    paired.take_turns([fast, unknown], "train", steps=3, turns=1, gap=0, window=0.02)
    assert fast.finish() == {"steps": 10}  # 0.02 s / 0.002 s per step
    assert unknown.finish() == {"steps": 3}  # no step time given: the steps asked for


def test_chatter_on_stdout_is_skipped():
    w = _worker("print('a library says hello'); "
                "serve({'train': lambda i: print('step', i)}, {'x': 1}, lambda: {'n': 2})")
    assert w.meta == {"ready": True, "x": 1}
    assert w.time("train", 3) >= 0
    assert w.finish() == {"n": 2}


def test_a_row_that_cannot_run_is_left_out_of_the_turns():
    ok = _worker("serve({'train': lambda i: None}, {}, lambda: {})")
    no = _worker("say({'status': 'cannot express'})")
    assert not no.alive and no.meta == {"status": "cannot express"}
    times = paired.take_turns([ok, no], "train", steps=2, turns=2, gap=0)
    assert len(times[0]) == 2 and times[1] == []
    assert no.finish() == {"status": "cannot express"}
    ok.finish()


def test_a_crashing_worker_raises_with_its_last_error_line():
    with pytest.raises(paired.WorkerFailed, match="ValueError: bad config"):
        _worker("raise ValueError('bad config')")


def test_paired_ratio_is_the_median_of_the_turns_ratios():
    assert paired.paired_ratio([2.0, 4.0, 30.0], [1.0, 1.0, 1.0]) == 4.0


def test_one_worker_failing_to_start_leaves_the_others():
    prelude = f"import sys; sys.path.insert(0, {str(_PATH.parent)!r}); from paired import *\n"
    cmds = {"ok": [sys.executable, "-c", prelude + "serve({'train': lambda i: None}, {}, "
                   "lambda: {})"],
            "bad": [sys.executable, "-c", "raise FileNotFoundError('no mtl_lib.py')"]}
    workers, failed = paired.start_workers(cmds)
    assert list(workers) == ["ok"] and "no mtl_lib.py" in failed["bad"]
    assert workers["ok"].finish() == {}


def test_run_group_rows_keep_the_order_and_a_death_mid_run_fails_the_group():
    prelude = f"import sys; sys.path.insert(0, {str(_PATH.parent)!r}); from paired import *\n"
    ok = [sys.executable, "-c", prelude + "serve({'train': lambda i: None}, {}, "
          "lambda: {'peak_mb': 1.0})"]
    bad = [sys.executable, "-c", "raise FileNotFoundError('no mtl_lib.py')"]
    dies = [sys.executable, "-c", prelude + "import os\n"
            "serve({'train': lambda i: os._exit(3)}, {}, lambda: {})"]

    def measure(workers):
        times = paired.take_turns(list(workers.values()), "train", steps=1, turns=1, gap=0)
        return {key: {"turns": len(t)} for key, t in zip(workers, times, strict=True)}

    rows = paired.run_group({"bad": bad, "ok": ok}, measure)
    assert list(rows) == ["bad", "ok"]
    assert "no mtl_lib.py" in rows["bad"]["status"]
    assert rows["ok"] == {"turns": 1, "peak_mb": 1.0}
    rows = paired.run_group({"ok": ok, "dies": dies}, measure)
    assert all(r["status"].startswith("failed") for r in rows.values())
