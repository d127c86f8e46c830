"""Qwen2."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="qwen2",
    model_types=("qwen2",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE,
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
)
