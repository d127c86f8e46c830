"""Quantized modules: :class:`QuantLinear` holds packed weights and runs a kernel backend."""
from slimq.nn.qlinear import QuantLinear, quant_linears, set_backend, share_workspace

__all__ = ["QuantLinear", "quant_linears", "set_backend", "share_workspace"]
