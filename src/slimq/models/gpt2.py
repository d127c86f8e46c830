"""GPT-2: ``Conv1D`` linears store weights as ``[in, out]``; q, k and v are one
fused ``c_attn``."""
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    pre_modules=("transformer.wte", "transformer.wpe"),
    post_modules=("transformer.ln_f", "lm_head"),
    sequential=(("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)),
    conv1d=True,
)
