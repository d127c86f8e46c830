"""GPT-NeoX (Pythia): fused ``query_key_value``; with parallel residual the MLP
reads the block input, not the attention output, which the grouping still respects.
The LM head is ``embed_out`` in older transformers, ``lm_head`` in newer ones."""
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="gpt_neox",
    model_types=("gpt_neox",),
    blocks="gpt_neox.layers",
    pre_modules=("gpt_neox.embed_in", "gpt_neox.rotary_emb"),
    post_modules=("gpt_neox.final_layer_norm", "lm_head", "embed_out"),
    sequential=(
        ("attention.query_key_value",),
        ("attention.dense",),
        ("mlp.dense_h_to_4h",),
        ("mlp.dense_4h_to_h",),
    ),
)
