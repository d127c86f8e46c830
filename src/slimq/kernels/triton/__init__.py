"""Triton GPU backend for layout ``slimq.segmented-bitplane.v1`` (no compiled extension).

Importing this package registers backend ``"triton"`` in :mod:`slimq.kernels`. The fast,
allocation-free entry point is :func:`sbp_matmul` with a preallocated ``out`` and
:class:`Workspace`; :func:`triton_matmul` is the registry's ``(x, packed, bias) -> y`` form.
"""
from __future__ import annotations

import torch

from slimq.format.layout import PackedLinear
from slimq.kernels import REGISTRY, Backend
from slimq.kernels.triton._perm import identity_perm, perm_run
from slimq.kernels.triton.ops import (
    DEQUANT_MIN_M, FMA_MAX_M, WGS_SPLIT_MAX_M, H2_MAX_M, H2_XSCALE, PATHS, SKINNY_MAX_M, WG_MAX_M, KernelConfig, Launch, Workspace, fallback_config,
    h2_supported, mv_supported, plan_launches, resolve_config, sbp_matmul, select_config, tc_block, tc_supported, workspace_fits,
    wgs_supported, wgs_unavailable,
)

__all__ = ["KernelConfig", "Workspace", "Launch", "select_config", "resolve_config", "fallback_config", "h2_supported", "mv_supported",
           "tc_supported", "tc_block", "sbp_matmul", "wgs_supported", "wgs_unavailable",
           "plan_launches", "triton_matmul", "triton_unavailable", "make_workspace", "prepare", "PATHS", "FMA_MAX_M", "H2_MAX_M", "SKINNY_MAX_M",
           "WG_MAX_M", "DEQUANT_MIN_M", "WGS_SPLIT_MAX_M", "H2_XSCALE"]

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


def triton_matmul(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None, *,
                  workspace: Workspace | None = None) -> torch.Tensor:
    """``y [..., N] = x [..., K] @ W_hat^T + bias``. With a ``workspace`` (from
    :func:`make_workspace`) large enough for this call only ``y`` is allocated; otherwise a
    workspace is allocated per call."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    ws = workspace if workspace is not None and workspace_fits(workspace, x2, packed) else None
    return sbp_matmul(x2, packed, bias, workspace=ws).reshape(*lead, packed.out_features)


def make_workspace(device: torch.device | str, max_m: int, max_n: int, max_k: int,
                   dtype: torch.dtype = torch.float16) -> Workspace:
    """One :class:`Workspace` serving every layer up to ``max_n x max_k`` and ``max_m`` rows of
    activations. With ``max_m >= DEQUANT_MIN_M`` it includes the dequant path's buffer: one fp16
    copy of the largest layer (``max_n x max_k``; dequantizing in one pass is faster than in row
    chunks, benchmarks/KERNEL_NOTES.md). The dispatch still sends many long-prompt calls there (``wgs``
    takes layers of 2^26+ weights up to 1024 tokens, of 2^25+ up to 256), so the buffer is kept on sm_90 too."""
    dequant = max_m >= DEQUANT_MIN_M
    return Workspace(device, max_m, max_n, max_k, dtype, dequant=dequant)


def prepare(packed: PackedLinear) -> None:
    """The layer facts the plans and the dispatch read from ``col_perm`` (whether it is the identity, the
    longest run of whole blocks it moves: ``_perm.identity_perm``, ``_perm.perm_run``), computed now and kept
    on ``packed``: under CUDA-graph capture an unknown answer is taken as the slower one."""
    identity_perm(packed)
    perm_run(packed)


REGISTRY.register(Backend("triton", triton_matmul, triton_unavailable, priority=10, make_workspace=make_workspace,
                          prepare=prepare), replace=True)
