"""OPT: learned positions; ``project_in``/``project_out`` exist only when the
word-embedding width differs from the hidden size (OPT-350m)."""
from slimq.models.base import ArchSpec

__all__ = ["SPEC"]

SPEC = ArchSpec(
    name="opt",
    model_types=("opt",),
    blocks="model.decoder.layers",
    pre_modules=("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
    post_modules=("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head"),
    sequential=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.out_proj",),
        ("fc1",),
        ("fc2",),
    ),
)
