"""Tiny random-weight models of every supported architecture, for tests and examples.

Each is built from its transformers config class with a small width (64), two
blocks and a small vocabulary, so a forward pass takes milliseconds on CPU.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import transformers as tf

__all__ = ["TINY_VOCAB", "tiny_config", "tiny_model", "tiny_model_types"]

TINY_VOCAB = 128
_H, _I, _L, _P = 64, 128, 2, 256  # hidden, intermediate, layers, max positions
# One sliding-window and one global layer, so per-block masks differ (window 8 < test seqlen).
_LOCAL_GLOBAL = ["sliding_attention", "full_attention"]


def _llama_kw() -> dict[str, Any]:
    return dict(vocab_size=TINY_VOCAB, hidden_size=_H, intermediate_size=_I, num_hidden_layers=_L,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=_P,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gemma3() -> Any:
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    text = dict(_llama_kw(), sliding_window=8, layer_types=_LOCAL_GLOBAL)
    return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                           image_token_index=TINY_VOCAB - 1, boi_token_index=TINY_VOCAB - 2,
                           eoi_token_index=TINY_VOCAB - 3)


_CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: tf.LlamaConfig(**_llama_kw()),
    "mistral": lambda: tf.MistralConfig(**_llama_kw(), sliding_window=8),
    "qwen2": lambda: tf.Qwen2Config(**_llama_kw()),
    "qwen3": lambda: tf.Qwen3Config(**_llama_kw()),
    "gemma": lambda: tf.GemmaConfig(**_llama_kw()),
    "gemma2": lambda: tf.Gemma2Config(**_llama_kw(), sliding_window=8),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**_llama_kw(), sliding_window=8, layer_types=_LOCAL_GLOBAL),
    "gemma3": _gemma3,
    "opt": lambda: tf.OPTConfig(vocab_size=TINY_VOCAB, hidden_size=_H, ffn_dim=_I, num_hidden_layers=_L,
                                num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=_P,
                                bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(vocab_size=TINY_VOCAB, n_embd=_H, n_layer=_L, n_head=4, n_positions=_P,
                                  bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=TINY_VOCAB, hidden_size=_H, intermediate_size=_I,
                                         num_hidden_layers=_L, num_attention_heads=4, max_position_embeddings=_P,
                                         bos_token_id=1, eos_token_id=2),
}


def tiny_model_types() -> tuple[str, ...]:
    """The ``model_type`` values ``tiny_config`` can build."""
    return tuple(_CONFIGS)


def tiny_config(model_type: str) -> Any:
    """A small transformers config of ``model_type`` (width 64, 2 blocks, vocab 128)."""
    if model_type not in _CONFIGS:
        raise ValueError(f"no tiny config for model_type {model_type!r}; have {', '.join(_CONFIGS)}")
    return _CONFIGS[model_type]()


def tiny_model(model_type: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-weight causal LM of ``model_type`` in eval mode; weights depend only on ``seed``."""
    config = tiny_config(model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()
