"""slimq: salience-driven mixed-precision post-training quantization for LLMs."""
__version__ = "0.1.0"

# Lets transformers' from_pretrained load slimq checkpoints (quant_method "slimq").
from slimq.format.hf_quantizer import register_with_transformers as _register_with_transformers  # noqa: E402

_register_with_transformers()
