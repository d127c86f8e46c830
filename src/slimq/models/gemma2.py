"""Gemma 2: Llama layout with alternating sliding-window layers (the driver
captures each block's own attention mask); needs BOS."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="gemma2",
    model_types=("gemma2",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE,
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
    needs_bos=True,
)
