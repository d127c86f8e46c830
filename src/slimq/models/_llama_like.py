"""Shared pieces of the Llama-style decoder (Llama, Mistral, Qwen, Gemma):
``model.layers`` of blocks with q/k/v/o attention and a gated MLP."""
from __future__ import annotations

__all__ = ["LLAMA_SEQUENTIAL", "LLAMA_PRE", "LLAMA_POST"]

LLAMA_SEQUENTIAL: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LLAMA_PRE: tuple[str, ...] = ("model.embed_tokens", "model.rotary_emb")
LLAMA_POST: tuple[str, ...] = ("model.norm", "lm_head")
