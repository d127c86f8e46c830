"""Gemma: Llama layout; the tokenizer's BOS must lead every sequence."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="gemma",
    model_types=("gemma",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE,
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
    needs_bos=True,
)
