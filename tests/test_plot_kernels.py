"""benchmarks/plot_kernels.py: merging kernels.py JSONs cell by cell and the speedup plot (CPU only)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plot_kernels as pk  # noqa: E402


def _run(path: Path, fp16: float, cells: dict, dtype: str | None = None) -> Path:
    """A kernels.py-shaped JSON: ``cells[(n, k, m)] = {variant: us}``, FP16 at ``fp16`` us everywhere."""
    rows = [dict(N=n, K=k, M=m, fp16_us=fp16, int4_us=None,
                 **{v: {"us": us, "ok": True, "cfg": "x"} for v, us in vs.items()})
            for (n, k, m), vs in cells.items()]
    meta = {"gpu": "test GPU", "group_size": 128, **({"dtype": dtype} if dtype else {})}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_later_runs_replace_cells_and_ratios_stay_within_their_run(tmp_path):
    a = _run(tmp_path / "a.json", 100.0, {(64, 128, 1): {"2b": 50.0, "3b": 80.0}, (64, 128, 16): {"2b": 90.0}})
    b = _run(tmp_path / "b.json", 60.0, {(64, 128, 1): {"2b": 20.0}})
    _, cells = pk.merge_runs([a, b])
    got = {(c["M"], c["series"]): (c["speedup"], c["run"]) for c in cells}
    assert got[(1, "2b")] == (3.0, "b.json")  # b's own FP16 (60 / 20), not a's
    assert got[(1, "3b")] == (100.0 / 80.0, "a.json")  # b did not re-time it
    assert got[(16, "2b")] == (100.0 / 90.0, "a.json")
    text = pk.table(cells)
    assert "a = a.json" in text and "b = b.json" in text and "3.00xb" in text


def test_plot_writes_a_png_and_skips_single_m_shapes(tmp_path):
    a = _run(tmp_path / "a.json", 100.0, {(64, 128, 1): {"2b": 50.0, "slim": 60.0}, (64, 128, 16): {"2b": 90.0},
                                          (32, 32, 1): {"2b": 40.0}})
    _, cells = pk.merge_runs([a])
    out = pk.plot(cells, tmp_path / "p" / "speed.png", "title")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "p").glob("*.tmp.png"))
    with pytest.raises(pk.KernelsJSONError, match="two or more token counts"):
        pk.plot([c for c in cells if c["N"] == 32], tmp_path / "q.png")


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(pk.KernelsJSONError, match="bad.json: not a kernels.py JSON"):
        pk.merge_runs([bad])
    with pytest.raises(pk.KernelsJSONError, match="at least one"):
        pk.merge_runs([])
    with pytest.raises(SystemExit):
        pk.main([str(bad), "--out", str(tmp_path / "x.png")])


def test_bfloat16_runs_name_their_baseline_and_do_not_merge_with_float16(tmp_path):
    a = _run(tmp_path / "a.json", 100.0, {(64, 128, 1): {"2b": 50.0}, (64, 128, 16): {"2b": 90.0}})
    b = _run(tmp_path / "b.json", 100.0, {(64, 128, 1): {"2b": 40.0}, (64, 128, 16): {"2b": 80.0}}, "bfloat16")
    meta, cells = pk.merge_runs([b])
    assert pk.baseline(meta) == "BF16" and pk.table(cells, "BF16").startswith("speedup over cuBLAS BF16")
    assert pk.baseline(pk.merge_runs([a])[0]) == "FP16"
    with pytest.raises(pk.KernelsJSONError, match=r"different activation dtypes.*a.json \(float16\).*b.json"):
        pk.merge_runs([a, b])
    assert pk.main([str(b), "--out", str(tmp_path / "bf.png")]) == 0 and (tmp_path / "bf.png").exists()


def test_targets_report_reads_merged_cells(tmp_path):
    import kernel_targets as kt
    a = _run(tmp_path / "a.json", 120.0, {(28672, 8192, 1): {"2b": 20.0, "3b": 40.0, "slim": 21.0},
                                          (4096, 4096, 16): {"2b": 100.0}, (4096, 4096, 256): {"4b": 200.0}})
    b = _run(tmp_path / "b.json", 100.0, {(4096, 4096, 16): {"2b": 50.0}})
    _, cells = pk.merge_runs([a, b])
    rows = {(r["target"], r["where"]): r for r in kt.checks(cells)}
    assert rows[("M=1 2b >= 5x", "28672x8192")]["met"]  # 120 / 20 = 6x
    assert not rows[("M=1 3b >= 4x", "28672x8192")]["met"]  # 3x
    slim = rows[("M=1 SliM time <= 1.10x 2-bit", "28672x8192")]
    assert slim["met"] and abs(slim["value"] - 1.05) < 1e-9
    m16 = rows[("M=16 2b >= 1.5x", "4096x4096")]
    assert m16["met"] and m16["run"] == "b.json"  # b's re-timing (2x) replaces a's 1.2x
    assert not rows[("M=256 4b >= 0.9x", "4096x4096")]["met"]
    assert ("M=1 4b >= 3x", "28672x8192") not in rows  # not timed: no check
    assert kt.report(kt.checks(cells)).endswith("3 of 5 checks met")
