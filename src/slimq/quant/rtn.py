"""Round-to-nearest (RTN) group-wise quantization, and the group bookkeeping that
GPTQ shares with it (bit-width resolution, validated quantizer fitting).

Pure: tensors in, ``QuantizedTensor`` out; no hooks, I/O or global state.
"""
from __future__ import annotations

import time

import torch

from slimq.quant.primitives import (
    QParamFitter,
    fit_qparams,
    group_bounds,
    make_g_idx,
    quantize_codes,
)
from slimq.quant.result import QuantizedTensor

__all__ = ["rtn_quantize", "check_weight", "resolve_group_bits", "fit_group", "build_quantized"]

BitsSpec = int | torch.Tensor


def check_weight(W: torch.Tensor, salience: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``W`` is a finite floating ``[N, K]`` matrix and
    ``salience`` (if given) has its shape."""
    if W.dim() != 2 or W.shape[0] < 1 or W.shape[1] < 1:
        raise ValueError(f"W must be a non-empty [N, K] matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"W must be floating point, got dtype {W.dtype}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"W [{W.shape[0]}, {W.shape[1]}] has {int((~torch.isfinite(W)).sum())} non-finite entries")
    if salience is not None and salience.shape != W.shape:
        raise ValueError(f"salience must have W's shape {tuple(W.shape)}, got {tuple(salience.shape)}")


def resolve_group_bits(bits: BitsSpec, n_groups: int) -> list[int]:
    """Bit-width of each of ``n_groups`` groups from an int or an integer tensor ``[G]``.

    Raises ``ValueError`` if a width lies outside 1..8 or the tensor length is not ``n_groups``.
    """
    if isinstance(bits, torch.Tensor):
        if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
            raise ValueError(f"per-group bits must be an integer tensor, got dtype {bits.dtype}")
        if bits.shape != (n_groups,):
            raise ValueError(f"per-group bits must have shape [G={n_groups}], got {tuple(bits.shape)}")
        out = [int(b) for b in bits.tolist()]
    elif isinstance(bits, int) and not isinstance(bits, bool):
        out = [bits] * n_groups
    else:
        raise TypeError(f"bits must be an int or an integer tensor [G], got {type(bits).__name__}")
    bad = [b for b in out if not 1 <= b <= 8]
    if bad:
        raise ValueError(f"bit-widths must lie in 1..8, got {sorted(set(bad))}")
    return out


def fit_group(fitter: QParamFitter, w: torch.Tensor, bits: int, sym: bool,
              salience: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call ``fitter`` on ``w [N, C]`` and check its answer: float32 ``(scale [N], zero [N])``,
    finite, ``scale > 0``, both exactly float16-representable (so that dequantizing the
    stored float16 parameters reproduces the fake-quantized weights bit for bit)."""
    scale, zero = fitter(w, bits, sym, salience)
    n = w.shape[0]
    if scale.shape != (n,) or zero.shape != (n,):
        raise ValueError(f"fitter must return scale and zero of shape [{n}], got "
                         f"{tuple(scale.shape)} and {tuple(zero.shape)}")
    scale, zero = scale.to(torch.float32), zero.to(torch.float32)
    for name, t in (("scale", scale), ("zero", zero)):
        t16 = t.to(torch.float16).to(torch.float32)
        if not bool(torch.isfinite(t16).all()):
            raise ValueError(f"fitter returned a {name} that is not finite in float16 (max |{name}| "
                             f"{float(t.abs().max()):.4g}, bits={bits})")
        if not torch.equal(t16, t):
            raise ValueError(f"fitter returned a {name} that is not float16-representable "
                             f"(max rounding error {float((t16 - t).abs().max()):.3g}); round it to float16")
    if not bool((scale > 0).all()):
        raise ValueError(f"fitter returned non-positive scales (min {float(scale.min()):.4g}, bits={bits})")
    return scale, zero


def build_quantized(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
                    group_bits: list[int], group_size: int, info: dict) -> QuantizedTensor:
    """Assemble a ``QuantizedTensor`` from float32 codes ``[N, K]`` (original column order),
    float32 ``scales``/``zeros`` ``[N, G]``, ``g_idx [K]`` and the bit-width of each group."""
    n = codes.shape[0]
    bits = torch.tensor(group_bits, dtype=torch.int8, device=codes.device).expand(n, -1).contiguous()
    return QuantizedTensor(
        codes=codes.to(torch.uint8), scales=scales.to(torch.float16), zeros=zeros.to(torch.float16),
        g_idx=g_idx.to(device=codes.device, dtype=torch.int32), bits=bits, group_size=group_size, info=info,
    )


def rtn_quantize(W: torch.Tensor, *, bits: BitsSpec, group_size: int, sym: bool = False,
                 fitter: QParamFitter = fit_qparams, salience: torch.Tensor | None = None) -> QuantizedTensor:
    """Round-to-nearest quantization of ``W [N, K]`` (any float dtype) in groups of
    ``group_size`` consecutive input columns (the last group may be short; ``-1``:
    one group per row spanning all of K).

    Args:
        bits: one width for all groups, or an integer tensor ``[G]`` with the width of
            each group (1..8; 1 bit binarises, see ``primitives``).
        fitter: fits ``(scale, zero)`` of each group, called as
            ``fitter(W[:, group] float32 [N, gs], bits_g, sym, salience[:, group])``.
        salience: optional ``[N, K]`` element weights forwarded to ``fitter``.

    Returns a ``QuantizedTensor`` on ``W``'s device with ``info = {"seconds": float}``.
    """
    t0 = time.perf_counter()
    check_weight(W, salience)
    n, k = W.shape
    bounds = group_bounds(k, group_size)
    gbits = resolve_group_bits(bits, len(bounds))
    Wf = W.to(torch.float32)
    salience = None if salience is None else salience.to(W.device)
    codes = torch.empty_like(Wf)
    scales = torch.empty(n, len(bounds), dtype=torch.float32, device=W.device)
    zeros = torch.empty_like(scales)
    for g, ((c0, c1), b) in enumerate(zip(bounds, gbits)):
        w = Wf[:, c0:c1]
        sal = None if salience is None else salience[:, c0:c1]
        scales[:, g], zeros[:, g] = fit_group(fitter, w, b, sym, sal)
        codes[:, c0:c1] = quantize_codes(w, scales[:, g], zeros[:, g], b)
    g_idx = make_g_idx(k, group_size)
    return build_quantized(codes, scales, zeros, g_idx, gbits, group_size,
                           {"seconds": time.perf_counter() - t0})
