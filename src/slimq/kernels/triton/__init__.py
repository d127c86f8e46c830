"""Triton GPU backend for layout ``slimq.segmented-bitplane.v1`` (no compiled extension).

Importing this package registers backend ``"triton"`` in :mod:`slimq.kernels`. The fast,
allocation-free entry point is :func:`sbp_matmul` with a preallocated ``out`` and
:class:`Workspace`; :func:`triton_matmul` is the registry's ``(x, packed, bias) -> y`` form.
"""
from __future__ import annotations

import torch

from slimq.format.layout import PackedLinear
from slimq.kernels import REGISTRY, Backend
from slimq.kernels.triton.ops import (
    DEQUANT_MIN_M, FMA_MAX_M, PATHS, SKINNY_MAX_M, KernelConfig, Launch, Workspace, plan_launches, sbp_matmul, select_config,
)

__all__ = ["KernelConfig", "Workspace", "Launch", "select_config", "sbp_matmul", "plan_launches", "triton_matmul",
           "triton_unavailable", "PATHS", "FMA_MAX_M", "SKINNY_MAX_M", "DEQUANT_MIN_M"]

_MIN_CAPABILITY = (8, 0)  # bf16 tensor-core dots


def triton_unavailable(device: torch.device) -> str | None:
    """None if the Triton kernels can run on ``device``, else the reason."""
    if device.type != "cuda":
        return f"needs a CUDA device, got {device.type!r}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    cap = torch.cuda.get_device_capability(device)
    if cap < _MIN_CAPABILITY:
        return f"needs compute capability >= {_MIN_CAPABILITY}, device has {cap}"
    return None


def triton_matmul(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y [..., N] = x [..., K] @ W_hat^T + bias`` (allocates ``y`` and a workspace per call)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return sbp_matmul(x2, packed, bias).reshape(*lead, packed.out_features)


REGISTRY.register(Backend("triton", triton_matmul, triton_unavailable, priority=10), replace=True)
