"""Gemma 3: the text-only model (``gemma3_text``) and the text tower of the
multimodal ``gemma3`` model (transformers >= 4.52 layout, ``model.language_model``);
the vision tower is left untouched. Local/global layers get their own masks and
rotary tables, which the driver captures per block. Needs BOS."""
from slimq.models._llama_like import LLAMA_POST, LLAMA_PRE, LLAMA_SEQUENTIAL
from slimq.models.base import ArchSpec

__all__ = ["SPEC", "SPEC_MULTIMODAL"]

SPEC = ArchSpec(
    name="gemma3_text",
    model_types=("gemma3_text",),
    blocks="model.layers",
    pre_modules=LLAMA_PRE + ("model.rotary_emb_local",),
    post_modules=LLAMA_POST,
    sequential=LLAMA_SEQUENTIAL,
    needs_bos=True,
)

SPEC_MULTIMODAL = ArchSpec(
    name="gemma3",
    model_types=("gemma3",),
    blocks="model.language_model.layers",
    pre_modules=(
        "model.language_model.embed_tokens",
        "model.language_model.rotary_emb",
        "model.language_model.rotary_emb_local",
    ),
    post_modules=("model.language_model.norm", "lm_head"),
    sequential=LLAMA_SEQUENTIAL,
    needs_bos=True,
)
