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
