"""benchmarks/plot_decode.py: decode.py JSONs as tables and a plot, kernels sorted by kind (CPU only)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plot_decode as pd


def _profile(kernels):
    return {"steps": 2, "kernels": [{"kernel": k, "calls_per_step": c, "us_per_step": us} for k, c, us in kernels]}


def _run(path: Path) -> Path:
    shared = [("_rope_attend", 32, 190.0), ("_add_rmsnorm", 65, 130.0), ("_silu_mul", 32, 40.0),
              ("nvjet_sm90_hsh_256x8_64x6_2x1_v_bz_TNT", 1, 64.0), ("void at::native::reduce_kernel<512>", 1, 10.0)]
    results = [
        {"variant": "fp16", "batch": 1, "tokens_per_s": 250.0, "speedup_vs_fp16": 1.0,
         "profile": _profile([("nvjet_sm90_hsh_192x8_64x8_4x1_v_bz_TNT", 32, 1500.0),
                              ("void cublasLt::splitKreduce_kernel<32, 16>", 64, 110.0)] + shared)},
        {"variant": "2b", "batch": 1, "tokens_per_s": 625.0, "speedup_vs_fp16": 2.5,
         "profile": _profile([("mv_kernel", 96, 1000.0), ("mvs_kernel", 32, 140.0)] + shared)},
        {"variant": "2b", "batch": 16, "tokens_per_s": 5000.0, "speedup_vs_fp16": 1.6},
    ]
    path.write_text(json.dumps({"gpu": "test GPU", "results": results}))
    return path


def test_kernels_are_sorted_by_kind():
    assert pd.kind("mv_kernel", 96) == "linears (slimq)"
    assert pd.kind("wgr_kernel", 4) == "linears (slimq)"
    assert pd.kind("gemm_kernel", 1) == "linears (slimq)"  # slimq's own path of that name, not cuBLAS
    assert pd.kind("sm90_xmma_gemm_f16f16_f16f32", 32) == "linears (cuBLAS FP16)"
    assert pd.kind("nvjet_sm90_hsh_192x8_64x8_4x1_v_bz_TNT", 32) == "linears (cuBLAS FP16)"
    assert pd.kind("nvjet_sm90_hsh_256x8_64x6_2x1_v_bz_TNT", 1) == "LM head (FP16)"
    assert pd.kind("cudnn_generated_fort_native_sdpa_sm80_flash_fprop", 32) == "attention"
    assert pd.kind("void at::native::elementwise_kernel<where_kernel_impl>", 32) == "attention"
    assert pd.kind("_add_rmsnorm", 65) == "RMSNorm"
    assert pd.kind("void at::native::reduce_kernel<ArgMaxOps>", 1) == "other"


def test_tables_and_plot(tmp_path):
    data = pd.load(_run(tmp_path / "d.json"))
    b = pd.breakdown(data["results"][1])
    assert b == {"linears (slimq)": 1140.0, "attention": 190.0, "RMSNorm": 130.0, "SiLU": 40.0,
                 "LM head (FP16)": 64.0, "other": 10.0}
    assert pd.breakdown(data["results"][2]) == {}
    text = pd.tables(data["results"])
    assert "2.50x" in text and "1.60x" in text and "1610" in text  # FP16's cuBLAS linears: 1500 + 110 us
    out = pd.plot(data, tmp_path / "p" / "decode.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "p").glob("*.tmp.png"))


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": [{"variant": "2b"}]}')
    with pytest.raises(pd.DecodeJSONError, match="bad.json: not a decode.py JSON"):
        pd.load(bad)
    empty = tmp_path / "empty.json"
    empty.write_text('{"results": []}')
    with pytest.raises(pd.DecodeJSONError, match="no results"):
        pd.load(empty)
    with pytest.raises(SystemExit):
        pd.main([str(bad), "--out", str(tmp_path / "x.png")])
