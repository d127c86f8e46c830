"""Mistral."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="mistral",
    model_types=("mistral",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE,
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
)
