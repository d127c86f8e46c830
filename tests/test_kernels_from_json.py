"""benchmarks/kernels.py --from-json / --write: a tune run re-read for the configs the dispatch picks now (CPU)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kernels as kb  # noqa: E402  (imports triton lazily: test_kernels_triton decides the interpreter mode first)


def _cell(auto: str, timings: list[tuple[str, float]], ok: bool = True) -> dict:
    """A tuned cell as kernels.py writes it: the run's own config first, then the candidates."""
    return {"us": timings[0][1], "cfg": auto, "err": 1e-4, "ok": ok, "GBps": 100.0, "best_us": 0.0, "best_cfg": "",
            "all": [{"cfg": c, "us": us, "err": 1e-4, "ok": ok} for c, us in timings]}


def test_reselection_uses_the_current_dispatch_and_writes_a_kernels_json(tmp_path, capsys):
    from slimq.kernels.triton import select_config
    meta = {"gpu": "test GPU", "sms": 132, "torch": "t", "triton": "t", "python": "p", "group_size": 128,
            "convention": "c", "copy_GBps": 4000.0}
    big = kb.cfg_name(select_config(256, 28672, 8192, num_sms=132, bits=(3,)))
    assert big.startswith("wgr:")  # the dispatch of now: not the run's own config, nor its other candidate
    small = kb.cfg_name(select_config(512, 1024, 1024, num_sms=132, bits=(3,)))
    assert small == "dequant"
    rows = [
        # the dispatch's config was timed twice (as the run's default and as a candidate): the mean is kept
        {"N": 28672, "K": 8192, "M": 256, "fp16_us": 200.0, "int4_us": None,
         "3b": _cell("dequant", [("dequant", 340.0), (big, 260.0), (big, 270.0), ("wgs:x", 250.0)])},
        # a cell whose current config was not timed in that run
        {"N": 1024, "K": 1024, "M": 512, "fp16_us": 25.0, "int4_us": None,
         "3b": _cell("wgs:x", [("wgs:x", 60.0)])},
    ]
    src = tmp_path / "tune.json"
    src.write_text(json.dumps({"meta": meta, "rows": rows}))
    out = tmp_path / "sub" / "dispatch.json"
    assert kb.main(["--from-json", str(src), "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1024x1024 M=512 3b: dequant not timed" in printed
    data = json.loads(out.read_text())
    assert data["meta"]["reselected_from"] == "tune.json" and data["meta"]["gpu"] == "test GPU"
    first, second = data["rows"]
    assert first["3b"]["cfg"] == big and first["3b"]["us"] == 265.0 and first["3b"]["ok"]
    assert math.isnan(second["3b"]["us"]) and not second["3b"]["ok"]
    assert not list(out.parent.glob("*.tmp"))  # written atomically
