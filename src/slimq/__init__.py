"""slimq: salience-driven mixed-precision post-training quantization for LLMs."""
__version__ = "0.1.0"

# Lets transformers' from_pretrained load slimq checkpoints (quant_method "slimq").
from slimq.format.hf_quantizer import register_with_transformers as _register_with_transformers  # noqa: E402

_register_with_transformers()

from slimq.api import QuantizationResult, evaluate, load, quantize  # noqa: E402
from slimq.config import CalibConfig, GPTQOptions, QuantConfig, SlimOptions  # noqa: E402

__all__ = ["__version__", "quantize", "load", "evaluate", "QuantizationResult",
           "QuantConfig", "CalibConfig", "GPTQOptions", "SlimOptions"]
