"""Quantized modules: :class:`QuantLinear` holds packed weights and runs a kernel backend."""
from slimq.nn.qlinear import QuantLinear, quant_linears, set_backend

__all__ = ["QuantLinear", "quant_linears", "set_backend"]
