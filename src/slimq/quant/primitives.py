"""Uniform quantization primitives: pure functions, tensors in, tensors out.

Conventions used throughout slimq:
    * a quantizer maps a float ``w`` to a code ``q = clamp(round(w / s) + z, 0, 2**b - 1)``
      and back to ``w_hat = (q - z) * s``;
    * scale ``s`` and zero ``z`` are rounded to float16 *before* codes are computed,
      so the fake-quantized weights equal what the packed checkpoint reproduces;
    * quantizer parameters are per output row (leading dimension) of the slice
      they were fitted on.
    * 1-bit quantizers binarise as ``sign(w - mu) * mean|w - mu| + mu`` per row
      (SliM-LLM / BiLLM), encoded as codes {0, 1} with ``s = 2*alpha`` and
      ``z = 1/2 - mu / (2*alpha)``.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

__all__ = [
    "QParamFitter",
    "group_bounds",
    "make_g_idx",
    "fit_minmax",
    "fit_binary",
    "fit_qparams",
    "quantize_codes",
    "dequantize_codes",
    "fake_quantize",
]

_EPS = 1e-8


class QParamFitter(Protocol):
    """Fits a quantizer to ``w [R, C]``; returns ``(scale [R], zero [R])`` float32,
    float16-representable. ``salience`` (same shape as w, optional) lets
    salience-aware fitters weight elements."""

    def __call__(self, w: torch.Tensor, bits: int, sym: bool, salience: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


def group_bounds(n_cols: int, group_size: int) -> list[tuple[int, int]]:
    """Column ranges ``[(start, end), ...]`` of groups of ``group_size`` columns;
    the last group may be short. ``group_size == -1`` gives one group."""
    if n_cols < 1:
        raise ValueError(f"n_cols must be >= 1, got {n_cols}")
    if group_size == -1 or group_size >= n_cols:
        return [(0, n_cols)]
    if group_size < 1:
        raise ValueError(f"group_size must be -1 or >= 1, got {group_size}")
    return [(s, min(s + group_size, n_cols)) for s in range(0, n_cols, group_size)]


def make_g_idx(n_cols: int, group_size: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    """int32 ``[n_cols]`` group index of every column. With ``perm`` (the order in
    which columns are quantized, as in act-order) groups are contiguous in that order."""
    gs = n_cols if group_size == -1 else group_size
    order_gidx = torch.arange(n_cols, dtype=torch.int32) // gs
    if perm is None:
        return order_gidx
    g_idx = torch.empty(n_cols, dtype=torch.int32)
    g_idx[perm.long()] = order_gidx
    return g_idx


def _to_half_exact(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def fit_minmax(w: torch.Tensor, bits: int, sym: bool, scale_range: float | torch.Tensor = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max quantizer of ``w [R, C]`` at ``bits`` (>= 2; 1 is binarised by ``fit_binary``).

    ``scale_range`` (a float or ``[R]`` / broadcastable tensor) shrinks or widens the
    range around its centre, as range searches need. Returns float32 ``(scale [R], zero [R])``.
    """
    if bits == 1:
        return fit_binary(w)
    w = w.float()
    maxq = 2 ** bits - 1
    xmin = torch.minimum(w.min(dim=1).values, torch.zeros(1, device=w.device))
    xmax = torch.maximum(w.max(dim=1).values, torch.zeros(1, device=w.device))
    if sym:
        amax = torch.maximum(xmin.abs(), xmax) * scale_range
        scale = 2 * amax / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        xmin = xmin * scale_range
        xmax = xmax * scale_range
        scale = (xmax - xmin) / maxq
        zero = None
    scale = _to_half_exact(torch.where(scale > _EPS, scale, torch.ones_like(scale)))
    if zero is None:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero.float()


def fit_binary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-bit quantizer: ``w_hat = mu + alpha * sign(w - mu)`` per row, as codes {0, 1}."""
    w = w.float()
    mu = w.mean(dim=1)
    alpha = (w - mu[:, None]).abs().mean(dim=1).clamp_min(1e-6)
    scale = _to_half_exact(2 * alpha)
    zero = _to_half_exact(0.5 - mu / scale)
    return scale, zero


def fit_qparams(w: torch.Tensor, bits: int, sym: bool, salience: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The default ``QParamFitter``: plain min/max (binarisation at 1 bit)."""
    del salience
    return fit_minmax(w, bits, sym)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of ``w [R, C]`` under per-row ``scale``/``zero`` ``[R]`` (or ``[R, C]``), as float32.

    At 1 bit the code is ``w >= mu`` (the binarisation's sign), which equals rounding
    ``w / s + z`` at threshold 1/2.
    """
    s = scale if scale.dim() == w.dim() else scale[:, None]
    z = zero if zero.dim() == w.dim() else zero[:, None]
    maxq = 2 ** bits - 1
    return torch.clamp(torch.round(w.float() / s + z), 0, maxq)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(q - z) * s`` in float32; ``scale``/``zero`` per row ``[R]`` or elementwise."""
    s = scale if scale.dim() == q.dim() else scale[:, None]
    z = zero if zero.dim() == q.dim() else zero[:, None]
    return (q.float() - z) * s


def fake_quantize(w: torch.Tensor, bits: int, sym: bool = False,
                  fitter: Callable[..., tuple[torch.Tensor, torch.Tensor]] = fit_qparams) -> torch.Tensor:
    """Quantize-dequantize ``w [R, C]`` with one quantizer per row."""
    scale, zero = fitter(w, bits, sym)
    return dequantize_codes(quantize_codes(w, scale, zero, bits), scale, zero)
