"""Qwen3 (q_norm/k_norm are norms, not linears)."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="qwen3",
    model_types=("qwen3",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE,
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
)
