"""Checkpoint save/load round trips on tiny random llama and gpt2 models, integrity errors,
transformers' from_pretrained, and checkpoint_info."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import slimq  # noqa: F401  (registers quant method "slimq" with transformers)
from slimq.format.checkpoint import (
    CheckpointError, linear_kind, load_quantized, read_quantization_config, save_quantized,
)
from slimq.format.info import checkpoint_info, format_info
from slimq.nn import QuantLinear
from slimq.quant.primitives import fit_minmax, group_bounds, make_g_idx, quantize_codes
from slimq.quant.result import QuantizedTensor

VOCAB = 96


def rtn(w: torch.Tensor, bits: torch.Tensor, gs: int) -> QuantizedTensor:
    """Round-to-nearest ``w [N, K]`` with ``bits [N, G]`` per (row, group) (a test oracle, not slimq's RTN)."""
    n, k = w.shape
    bounds = group_bounds(k, gs)
    codes = torch.empty(n, k, dtype=torch.uint8)
    scales, zeros = torch.empty(n, len(bounds)), torch.empty(n, len(bounds))
    for g, (a, b) in enumerate(bounds):
        for width in bits[:, g].unique().tolist():
            rows = bits[:, g] == width
            s, z = fit_minmax(w[rows, a:b].float(), width, sym=False)
            codes[rows, a:b] = quantize_codes(w[rows, a:b].float(), s, z, width).to(torch.uint8)
            scales[rows, g], zeros[rows, g] = s, z
    return QuantizedTensor(codes, scales.half(), zeros.half(), make_g_idx(k, gs), bits.to(torch.int8), gs)


def tiny_llama(tie: bool = True, dtype=torch.float32):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=72, intermediate_size=100, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def tiny_gpt2():
    cfg = GPT2Config(n_layer=2, n_embd=48, n_head=4, vocab_size=VOCAB, n_positions=32,
                     bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def fake_quantize_model(model, gs: int = 32, skip=("lm_head",)) -> dict[str, QuantizedTensor]:
    """Quantize every linear (mixed 2/3/4-bit groups; bits varying along rows in q_proj/c_attn),
    write the dequantized weights back; return the QuantizedTensors."""
    qts = {}
    for name, mod in list(model.named_modules()):
        try:
            kind, n, k = linear_kind(mod)
        except TypeError:
            continue
        if name in skip:
            continue
        w = mod.weight.data.float() if kind == "linear" else mod.weight.data.float().T
        g = math.ceil(k / gs)
        if name.endswith(("q_proj", "c_attn")):
            bits = (torch.arange(n) % 3 + 2)[:, None].expand(n, g)
        else:
            bits = (torch.arange(g) % 3 + 2)[None].expand(n, g)
        qt = qts[name] = rtn(w, bits.contiguous(), gs)
        dq = qt.dequantize(mod.weight.dtype)
        mod.weight.data.copy_(dq if kind == "linear" else dq.T)
    return qts


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


IDS = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    model = tiny_llama()
    qts = fake_quantize_model(model)
    out = tmp_path_factory.mktemp("ck") / "llama"
    save_quantized(model, qts, {"method": "rtn", "bits": 3, "group_size": 32}, out)
    return model, qts, out


def test_llama_round_trip(llama_ckpt):
    model, qts, out = llama_ckpt
    loaded, tok = load_quantized(out)
    assert tok is None
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, QuantLinear)
    assert loaded.model.layers[0].self_attn.q_proj.row_perm is not None
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not any(t.is_meta for t in loaded.state_dict().values())
    torch.testing.assert_close(logits(loaded, IDS), logits(model, IDS), atol=1e-4, rtol=1e-4)


def test_quantization_config_contents(llama_ckpt):
    _, qts, out = llama_ckpt
    qc = read_quantization_config(out)
    assert qc["layout"] == "slimq.segmented-bitplane.v1" and qc["format_version"] == 1
    assert qc["config"] == {"method": "rtn", "bits": 3, "group_size": 32}
    assert set(qc["linears"]) == set(qts)
    down = qc["linears"]["model.layers.0.mlp.down_proj"]
    assert down["group_bits"] == qts["model.layers.0.mlp.down_proj"].bits[0].tolist()
    assert sorted(s["bits"] for s in down["segments"]) == [2, 3, 4]
    assert qc["linears"]["model.layers.0.self_attn.q_proj"]["rows_per_pattern"] == [24, 24, 24]
    assert qc["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert list(qc["checksums"]) == ["model.safetensors"]
    files = sorted(p.name for p in out.parent.iterdir())
    assert files == ["llama"], f"temporary directories left behind: {files}"


def test_gpt2_conv1d_round_trip(tmp_path):
    model = tiny_gpt2()
    qts = fake_quantize_model(model, gs=16)
    save_quantized(model, qts, {"method": "rtn"}, tmp_path / "g")
    loaded, _ = load_quantized(tmp_path / "g")
    attn = loaded.transformer.h[0].attn.c_attn
    assert isinstance(attn, QuantLinear) and (attn.out_features, attn.in_features) == (144, 48)
    assert read_quantization_config(tmp_path / "g")["linears"]["transformer.h.0.attn.c_attn"]["conv1d"]
    torch.testing.assert_close(logits(loaded, IDS), logits(model, IDS), atol=1e-4, rtol=1e-4)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "g")
    assert isinstance(hf.transformer.h[1].mlp.c_proj, QuantLinear)
    torch.testing.assert_close(logits(hf, IDS), logits(model, IDS), atol=1e-4, rtol=1e-4)


def test_from_pretrained_sharded_and_dtypes(tmp_path):
    model = tiny_llama(tie=False, dtype=torch.float16)
    qts = fake_quantize_model(model)
    out = save_quantized(model, qts, {"method": "rtn"}, tmp_path / "s", max_shard_bytes=20_000)
    n_shards = len(list(out.glob("model-*-of-*.safetensors")))
    assert n_shards > 1 and (out / "model.safetensors.index.json").is_file()
    assert read_quantization_config(out)["dtype"] == "float16"
    ref = logits(model.float(), IDS)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    seg = hf.model.layers[0].mlp.up_proj.seg0
    assert seg.scales.dtype == torch.float16 and seg.plane0.dtype == torch.int32
    torch.testing.assert_close(logits(hf, IDS), ref, atol=1e-3, rtol=1e-3)
    ours, _ = load_quantized(out, dtype=torch.float32)
    assert ours.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(logits(ours, IDS), ref, atol=1e-3, rtol=1e-3)


def test_quantized_tied_lm_head_is_untied(tmp_path):
    model = tiny_llama(tie=True)
    qts = fake_quantize_model(model, skip=())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # both now hold the dequantized head
    save_quantized(model, qts, {"method": "rtn"}, tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    loaded, _ = load_quantized(tmp_path / "t")
    assert isinstance(loaded.lm_head, QuantLinear)
    torch.testing.assert_close(logits(loaded, IDS), logits(model, IDS), atol=1e-4, rtol=1e-4)


def test_existing_dir_and_force(tmp_path, llama_ckpt):
    model, qts, _ = llama_ckpt
    out = tmp_path / "x"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError):
        save_quantized(model, qts, {}, out)
    save_quantized(model, qts, {}, out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_shape_mismatch_rejected(tmp_path, llama_ckpt):
    model, qts, _ = llama_ckpt
    bad = dict(qts)
    bad["model.layers.0.mlp.up_proj"] = qts["model.layers.0.mlp.down_proj"]
    with pytest.raises(ValueError, match="up_proj"):
        save_quantized(model, bad, {}, tmp_path / "bad")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage,match", [("flip", "sha256"), ("truncate", "truncated"),
                                          ("delete", "missing"), ("config", "not a slimq")])
def test_integrity_errors(tmp_path, llama_ckpt, damage, match):
    import shutil

    _, _, src = llama_ckpt
    out = tmp_path / "c"
    shutil.copytree(src, out)
    st = out / "model.safetensors"
    data = bytearray(st.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        st.write_bytes(bytes(data))
    elif damage == "truncate":
        st.write_bytes(bytes(data[:-100]))
    elif damage == "delete":
        st.unlink()
    else:
        cfg = json.loads((out / "config.json").read_text())
        cfg["quantization_config"]["quant_method"] = "gptq"
        (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_quantized(out)


def test_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0")
    model = tiny_llama()
    qts = fake_quantize_model(model)
    save_quantized(model, qts, {}, tmp_path / "k", tokenizer=tok)
    _, tok2 = load_quantized(tmp_path / "k")
    assert tok2("w5 w7 w9")["input_ids"] == [5, 7, 9]


def test_checkpoint_info(llama_ckpt):
    _, qts, out = llama_ckpt
    info = checkpoint_info(out)
    n_weights = sum(qt.codes.numel() for qt in qts.values())
    code_bits = sum(qt.avg_bits() * qt.codes.numel() for qt in qts.values())
    assert info["total"]["weights"] == n_weights
    assert info["total"]["code_bits_per_weight"] == pytest.approx(code_bits / n_weights, rel=0.05)
    assert info["total"]["all_in_bits_per_weight"] > info["total"]["code_bits_per_weight"]
    assert info["file_bytes"] == (out / "model.safetensors").stat().st_size
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} == set(info["by_type"])
    text = format_info(info)
    assert "down_proj" in text and "total" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_load_on_gpu(llama_ckpt):
    model, _, out = llama_ckpt
    loaded, _ = load_quantized(out, device="cuda", dtype=torch.float16)
    assert loaded.model.layers[0].mlp.up_proj.seg0.plane0.is_cuda
    got = logits(loaded, IDS.cuda()).cpu()
    torch.testing.assert_close(got, logits(model, IDS), atol=5e-2, rtol=5e-2)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float16, device_map="cuda")
    torch.testing.assert_close(logits(hf, IDS.cuda()).cpu(), got, atol=5e-2, rtol=5e-2)
