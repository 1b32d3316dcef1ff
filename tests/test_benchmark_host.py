"""benchmarks/host.py: every benchmark names the CPU model and flags it ran on."""

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("adatt_benchmark_host", BENCH / "host.py")
host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host)


def test_docstring_example():
    assert doctest.testmod(host).failed == 0


def test_flags_and_model_come_from_cpuinfo(monkeypatch):
    info = {"model name": "Test CPU 9000", "flags": "fpu sse2 avx2 fma avx512f amx_tile amx_bf16"}
    monkeypatch.setattr(host, "_cpuinfo", lambda: info)
    assert host.cpu_model() == "Test CPU 9000"
    assert host.cpu_flags() == ["avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]
    line = host.describe()
    assert line.startswith("host: Test CPU 9000 | flags: avx2 fma avx512f amx_tile amx_bf16 |")
    monkeypatch.setattr(host, "_cpuinfo", lambda: {"flags": "sse2"})
    assert "flags: none of avx2/" in host.describe()


def test_every_benchmark_prints_the_host_line():
    for path in sorted(BENCH.glob("*.py")):
        if path.name in ("host.py", "paired.py"):
            continue
        text = path.read_text()
        assert "from host import describe" in text and "print(describe())" in text, path.name


def test_benchmarks_import_it_from_their_own_folder():
    for name in ("scaling.py", "export.py"):  # run as scripts, from any directory
        out = subprocess.run([sys.executable, str(BENCH / name), "--help"], cwd="/",
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr


def test_padding_benchmark_prints_a_row_per_model():
    """benchmarks/padding.py, one short turn: the host line, and the padding "auto" chose
    for MMoE's industrial first layer (1554 columns: 0 or 14)."""
    out = subprocess.run([sys.executable, str(BENCH / "padding.py"), "--models", "mmoe",
                          "--turns", "1", "--threads", "1"], cwd="/",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("host: ")
    row = lines[-1].split()
    assert row[0] == "mmoe" and row[1] in ("0", "14") and row[-1].endswith("x")
