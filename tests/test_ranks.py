"""tests/ranks.py: a gloo abort gets up to two reruns from the starting files; nothing else
does."""

import sys

import pytest

from tests.ranks import GLOO_ABORT, run_ranks

# appends to a count file outside the work dir, writes into the work dir, then fails
# (with the abort message while the count is below FAIL_TIMES) or succeeds
SCRIPT = """
import pathlib, sys
count, work, fail_times, message = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), \\
    int(sys.argv[3]), sys.argv[4]
n = len(count.read_text()) if count.exists() else 0
count.write_text("x" * (n + 1))
assert not (work / "partial.txt").exists(), "the rerun must start from the starting files"
(work / "partial.txt").write_text("written by a run")
if n < fail_times:
    print(message, file=sys.stderr)
    sys.exit(134)
"""


def _run(tmp_path, fail_times, message=GLOO_ABORT):
    work = tmp_path / "work"
    work.mkdir()
    (work / "input.txt").write_text("kept")
    count = tmp_path / "count"
    cmd = [sys.executable, "-c", SCRIPT, str(count), str(work), str(fail_times), message]
    return run_ranks(cmd, {}, work), len(count.read_text()), work


def test_an_abort_is_rerun_from_the_starting_files(tmp_path):
    with pytest.warns(UserWarning, match="rerunning"):
        p, runs, work = _run(tmp_path, fail_times=1)
    assert p.returncode == 0 and runs == 2, p.stderr
    assert (work / "input.txt").read_text() == "kept"
    assert not (tmp_path / "work.before").exists()


def test_a_second_abort_is_rerun_too(tmp_path):
    with pytest.warns(UserWarning, match="rerunning"):
        p, runs, _ = _run(tmp_path, fail_times=2)
    assert p.returncode == 0 and runs == 3, p.stderr


def test_a_third_abort_fails(tmp_path):
    with pytest.warns(UserWarning):
        p, runs, _ = _run(tmp_path, fail_times=3)
    assert p.returncode != 0 and runs == 3


def test_other_failures_are_not_rerun(tmp_path):
    p, runs, _ = _run(tmp_path, fail_times=1, message="ValueError: bad config")
    assert p.returncode != 0 and runs == 1
