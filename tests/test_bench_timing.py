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


def test_evict_probe_checks_its_sizes_before_any_gpu_work():
    """``evict_probe.py``: sizes must be positive numbers of MB, refused by name; the modes are the ``_mv``
    loads the kernels use."""
    import evict_probe
    assert evict_probe._parse([]).sizes == [58.7, 8.4, 4.2]
    for bad in (["--mb", "x"], ["--mb", "0"], ["--mb", "8,-1"]):
        with pytest.raises(SystemExit):
            evict_probe._parse(bad)
    assert evict_probe.MODES == ("normal", "evict_first", "evict_unchanged")


def test_rounds_are_checked_before_any_gpu_work():
    """``--rounds`` (FP16 and the dispatch timed in alternating rounds) defaults to five rounds (``1``: one
    window each, in turn) and refuses fewer than one round; so does ``timing.time_graphs``."""
    assert kb._parse([]).rounds == 5 and kb._parse(["--rounds", "1"]).rounds == 1
    assert kb._parse(["--rounds", "5"]).rounds == 5
    with pytest.raises(SystemExit):
        kb._parse(["--rounds", "0"])
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        timing.time_graphs({"f": lambda: None}, rounds=0)


def test_rounds_rotate_the_order_of_the_calls():
    """Each round of ``time_graphs`` starts one call later, so no call always follows FP16."""
    names = ["fp16", "2b", "3b"]
    assert [timing.round_order(names, r) for r in range(4)] == [
        ["fp16", "2b", "3b"], ["2b", "3b", "fp16"], ["3b", "fp16", "2b"], ["fp16", "2b", "3b"]]
    assert timing.round_order([], 3) == []


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


def test_clock_drift_reads_nvidia_smi_lines_and_matches_windows():
    """benchmarks/clock_drift.py: nvidia-smi CSV lines (bad ones skipped) become (time, MHz, W, C) samples, and
    each timed window gets the clock range, peak power and last temperature logged inside it."""
    import clock_drift
    smi = clock_drift.parse_smi(["2026/11/30 09:20:00.100, 1980 MHz, 120.50 W, 40",
                                 "garbage", "2026/11/30 09:20:00.500, 1515 MHz, 300.00 W, 50",
                                 "2026/11/30 09:20:01.000, 1605 MHz, 250.00 W, 52"])
    assert [s[1:] for s in smi] == [(1980, 120.5, 40), (1515, 300.0, 50), (1605, 250.0, 52)]
    t0 = smi[0][0]
    rows = clock_drift.summarize([("a", t0 - 0.01, t0 + 0.6, 1.0), ("b", t0 + 5, t0 + 6, 2.0)], smi)
    assert rows[0] == {"window": "a", "us": 1.0, "clock_mhz": [1515, 1980], "power_w_max": 300.0, "temp_c": 50}
    assert rows[1] == {"window": "b", "us": 2.0}  # nothing logged inside


def test_stream_k_benchmark_refuses_zero_rounds_and_bad_extras():
    import stream_k
    for bad in (["--rounds", "0"], ["--extra", "num_stages=5"], ["--extra", "split_k=0"], ["--extra", "depth"]):
        with pytest.raises(SystemExit):
            stream_k.main(bad)


def test_wg_split_benchmark_refuses_bad_arguments_and_lists_balanced_candidates():
    import wg_split
    for bad in (["--rounds", "0"], ["--m", "17"], ["--m", "0"], ["--m", "2048", "--no-splits"]):
        with pytest.raises(SystemExit, match="2"):  # argparse's error, before any GPU work
            wg_split.main(bad)
    from slimq.kernels.triton import select_config
    auto = select_config(16, 28672, 8192)
    cands = wg_split.candidates(auto, 28672, 8192, 132)
    got = {(c.block_n, c.split_k) for c in cands}
    assert (auto.block_n, auto.split_k) not in got  # the dispatch's own config is timed once, as the dispatch
    assert got == {(64, 1), (64, 2), (128, 1), (128, 2), (128, 3), (128, 4)} - {(auto.block_n, auto.split_k)}
    assert {(c.block_n, c.split_k) for c in wg_split.candidates(select_config(16, 11008, 4096), 11008, 4096, 132)} \
        >= {(64, 2), (64, 6), (128, 3), (128, 12)}  # (64, 3) is the dispatch there


def test_wg_split_extra_variants_parse_and_refuse_bad_fields():
    import wg_split
    from kernels import parse_extra
    assert parse_extra("num_warps=8,num_stages=4") == {"num_warps": 8, "num_stages": 4}
    assert parse_extra("pdl=0,join=1") == {"pdl": False, "join": True}
    for bad in ("num_stages", "num_stages=x", "path=2", "nosuch=1", "join=2", "join=True"):
        with pytest.raises(ValueError):
            parse_extra(bad)
    for bad in (["--extra", "split_k=0"], ["--extra", "num_stages"],  # KernelConfig's range check, then syntax
                ["--extra", "k_warps=3"], ["--extra", "stream_k=4,split_k=2"]):  # no path it times takes these
        with pytest.raises(SystemExit, match="2"):
            wg_split.main(bad)
    assert wg_split.short("wg:16x64x128/w4s3/k2/j/nopdl") == "64/k2/nopdl"
    assert wg_split.short("wg:16x128x128/w8s4/k12/j") == "128/k12/w8s4"
