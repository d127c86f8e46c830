"""``benchmarks/wgr_timeline.py`` (CPU): the units it expects each program to run, and its reading of the stamps."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import wgr_timeline as wt  # noqa: E402


@pytest.mark.parametrize("tiles,kt,programs", [(86, 64, 132), (344, 64, 132), (224, 128, 132), (3, 5, 7), (4, 2, 3)])
def test_sk_units_cover_every_step_once_partial_first(tiles, kt, programs):
    seen = []
    for units in wt.sk_units(tiles * kt, kt, programs):
        tiles_run = [u.tile for u in units]
        assert tiles_run == sorted(tiles_run, reverse=True)  # last tile first
        for i, u in enumerate(units):
            assert 0 <= u.kb < u.ke <= kt and u.finishes == (u.ke == kt)
            if not u.finishes:
                assert i == 0  # the one partial a program leaves is its first unit
            seen += [u.tile * kt + k for k in range(u.kb, u.ke)]
    assert sorted(seen) == list(range(tiles * kt))


def test_sk_units_match_the_kernels_share():
    """Program 1 of 3 over 2 tiles of 3 K tiles: steps [2, 4), tile 1's K tile 0 first, then tile 0's last."""
    assert wt.sk_units(6, 3, 3)[1] == [wt.Unit(1, 0, 1, False), wt.Unit(0, 2, 3, True)]
    with pytest.raises(ValueError, match="must be >= 1"):
        wt.sk_units(0, 3, 3)


def test_dp_units_split_shares():
    units = wt.dp_units(8, 10, 2, 2)  # 2 row tiles x split 2 x 2 token tiles
    assert [u[0].kb for u in units] == [0, 0, 5, 5, 0, 0, 5, 5]
    assert [u[0].tile for u in units] == [0, 1, 0, 1, 2, 3, 2, 3]
    assert not any(u[0].finishes for u in units)
    assert wt.dp_units(2, 4, 1, 1)[1] == [wt.Unit(1, 0, 4, True)]
    with pytest.raises(ValueError, match="split"):
        wt.dp_units(2, 4, 5, 1)


def _row(start, stamps, sm):
    row = [0] * wt.TRACE_SLOTS
    row[0] = start
    for i, v in enumerate(stamps):
        row[1 + i] = v
    row[-1] = sm
    return row


def test_analyse_reads_the_stamps():
    units = [[wt.Unit(1, 0, 4, False), wt.Unit(0, 6, 10, True)], [wt.Unit(0, 0, 6, False)]]
    trace = [_row(1000, [9000, 10000, 10000, 18000, 21000, 23000], 5),  # ns
             _row(2000, [14000, 15000, 15000], 7)]
    got = wt.analyse(trace, units, 9)
    p0, p1 = got["programs"]
    assert p0["sm"] == 5 and p0["start"] == 0 and p0["end"] == 22
    assert p0["units"][0]["loop_us"] == 8 and p0["units"][0]["us_per_k_tile"] == 2
    assert p0["units"][1]["loop_us"] == 8 and p0["units"][1]["partial_us"] == 3 and p0["units"][1]["store_us"] == 2
    assert p1["units"][0]["us_per_k_tile"] == 2 and p1["units"][0]["partial_us"] == 1
    s = got["summary"]
    assert s["span_us"] == 22 and s["start_skew_us"] == 1 and s["idle_after_us_median"] == 4
    assert s["partials_added_us"] == 3 and s["tile_store_us"] == 2 and s["us_per_k_tile_later_units"] == 2
    with pytest.raises(ValueError, match="out of order"):
        wt.analyse([_row(1000, [900, 1000, 1000], 0)], [[wt.Unit(0, 0, 1, True)]], 9)
    with pytest.raises(ValueError, match="planned"):
        wt.analyse(trace, units[:1], 9)
    assert len(wt.analyse(trace, units, 1)["programs"][0]["units"]) == 1  # units past the stamped ones dropped


def test_trace_layout_matches_the_kernels():
    pytest.importorskip("triton")
    from slimq.kernels.triton._trace import TRACE_SLOTS, TRACE_UNITS, unit_slot
    assert TRACE_SLOTS == wt.TRACE_SLOTS and unit_slot(TRACE_UNITS - 1, 2) < TRACE_SLOTS - 1
    with pytest.raises(ValueError, match="stamps 0, 1 and 2"):
        unit_slot(0, 3)


def test_from_a_stored_run_prints_and_draws(tmp_path, capsys):
    ref = (Path(__file__).resolve().parents[1] / "benchmarks" / "reference"
           / "wgr_timeline_h200_run271_11008x4096_m256_blocks.json")
    assert wt.main(["--from", str(ref), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sk132" in out and "partials added 2.14" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a wgr_timeline.py result"):
        wt.main(["--from", str(bad)])
