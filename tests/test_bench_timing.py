"""benchmarks/timing.py and the ``--flush`` options that use it: bad flush names are refused by name before
anything touches a GPU (the timing loops themselves need CUDA and run in the GPU benchmarks)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kernels as kb  # noqa: E402
import timing  # noqa: E402


def test_flush_names():
    assert timing.FLUSHES == ("zero", "clean", "none")
    with pytest.raises(ValueError, match=r"flush must be one of \('zero', 'clean', 'none'\), got 'dirty'"):
        timing.bench(lambda: None, flush="dirty")


def test_kernels_cli_takes_a_flush_and_defaults_to_the_protocol():
    assert kb._parse([]).flush == "zero"
    assert kb._parse(["--flush", "clean"]).flush == "clean"
    with pytest.raises(SystemExit):
        kb._parse(["--flush", "dirty"])


def test_read_floor_refuses_an_unknown_flush():
    import read_floor
    with pytest.raises(SystemExit, match="--flush takes zero, clean, none, got zero,dirty"):
        read_floor.main(["--flush", "zero,dirty"])


def test_rounds_are_checked_before_any_gpu_work():
    """``--rounds`` (FP16 and the dispatch timed in alternating rounds) defaults to one window each and refuses
    fewer than one round; so does ``timing.time_graphs``."""
    assert kb._parse([]).rounds == 1
    assert kb._parse(["--rounds", "5"]).rounds == 5
    with pytest.raises(SystemExit):
        kb._parse(["--rounds", "0"])
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        timing.time_graphs({"f": lambda: None}, rounds=0)


def test_kernels_dry_run_with_rounds(tmp_path):
    """A CPU smoke run of benchmarks/kernels.py (Triton interpreter, its own process) with ``--rounds 2``: every
    row gets the FP16 and dispatch times from the alternating rounds, and the JSON says how many rounds."""
    import json
    import os
    import subprocess
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root / "src"))
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "kernels.py"), "--dry-run", "--shapes", "64x128",
                        "--ms", "1", "--variants", "2b", "--rounds", "2", "--no-peer", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["rounds"] == 2 and rows[0]["fp16_us"] > 0 and rows[0]["2b"]["us"] > 0
