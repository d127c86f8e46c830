"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), with per-group bit-widths and pluggable
quantizer fitting so that SliM-LLM can reuse it unchanged.

The algorithm, for ``W [N, K]`` and the layer Hessian ``H = 2/n sum_t x_t x_t^T [K, K]``:

1. dead inputs (``H_ii == 0``) get ``H_ii = 1`` and ``W[:, i] = 0``;
2. with act-order, columns are processed by descending ``diag(H)``;
3. ``U`` = upper Cholesky factor of ``(H + percdamp * mean(diag H) I)^{-1}``;
4. columns are quantized one at a time; column ``i``'s rounding error
   ``e = (w_i - q_i) / U_ii`` is spread over the remaining columns of its block
   (``W[:, j] -= e U_ij``) at once, and over the columns after the block lazily,
   with one matrix product per block of ``blocksize`` columns (mathematically the
   same as the plain column-by-column OBS update, only batched);
5. the quantizer of a group is fitted when its first column is reached, on the
   weights as updated by all earlier errors (with ``static_groups`` all quantizers
   are instead fitted upfront on the original ``W``, per group in column order).

Pure: tensors in, ``QuantizedTensor`` out. Runs in float32 on ``W``'s device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from slimq.config import GPTQOptions
from slimq.quant.linalg import HessianError, dead_columns, inverse_hessian_cholesky
from slimq.quant.primitives import (
    QParamFitter,
    dequantize_codes,
    fit_qparams,
    group_bounds,
    make_g_idx,
    quantize_codes,
)
from slimq.quant.result import QuantizedTensor
from slimq.quant.rtn import BitsSpec, build_quantized, check_weight, fit_group, resolve_group_bits

__all__ = ["gptq_quantize"]

_DEFAULTS = GPTQOptions()


@dataclass
class _Sweep:
    """State of one GPTQ column sweep, everything in processing (permuted) order.

    ``W`` float32 ``[N, K]`` is updated in place; ``scales``/``zeros`` float32 ``[N, G]``
    are filled in place when a group is fitted; ``fit_at`` maps a position to
    ``(group, end position)`` for every group whose quantizer is fitted there.
    """

    W: torch.Tensor
    U: torch.Tensor
    group_of: list[int]
    group_bits: list[int]
    scales: torch.Tensor
    zeros: torch.Tensor
    fit_at: dict[int, tuple[int, int]]
    fitter: QParamFitter
    sym: bool
    salience: torch.Tensor | None


def _current_weights(s: _Sweep, W1: torch.Tensor, Err1: torch.Tensor, i1: int, i2: int,
                     c: int, e: int) -> torch.Tensor:
    """Columns ``[c, e)`` of the fully error-updated weights while column ``c`` of
    block ``[i1, i2)`` is next: in-block columns are current in ``W1``; columns past
    the block still lack the lazy update from the block's earlier columns."""
    inside = W1[:, c - i1:min(e, i2) - i1]
    if e <= i2:
        return inside
    pending = Err1[:, :c - i1] @ s.U[i1:c, i2:e]
    return torch.cat([inside, s.W[:, i2:e] - pending], dim=1)


def _fit(s: _Sweep, g: int, w: torch.Tensor, c: int, e: int) -> None:
    sal = None if s.salience is None else s.salience[:, c:e]
    s.scales[:, g], s.zeros[:, g] = fit_group(s.fitter, w, s.group_bits[g], s.sym, sal)


def _run_sweep(s: _Sweep, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The lazy-batch GPTQ sweep. Returns float32 ``codes [N, K]``, the dequantized
    weights ``Q [N, K]`` that the error propagation used, and the OBS loss
    ``sum_i ||w_i - q_i||^2 / (2 U_ii^2)``."""
    W, U = s.W, s.U
    k = W.shape[1]
    codes, Q = torch.empty_like(W), torch.empty_like(W)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            c = i1 + i
            if c in s.fit_at:
                g, e = s.fit_at[c]
                _fit(s, g, _current_weights(s, W1, Err1, i1, i2, c, e), c, e)
            g = s.group_of[c]
            w = W1[:, i:i + 1]
            q = quantize_codes(w, s.scales[:, g], s.zeros[:, g], s.group_bits[g])
            wq = dequantize_codes(q, s.scales[:, g], s.zeros[:, g])
            err = (w - wq) / U1[i, i]
            W1[:, i:] -= err @ U1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
            codes[:, c:c + 1], Q[:, c:c + 1] = q, wq
            loss += err.double().square().sum() / 2
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes, Q, float(loss)


def _check_args(W: torch.Tensor, H: torch.Tensor, blocksize: int) -> None:
    k = W.shape[1]
    if H.shape != (k, k):
        raise HessianError(f"H must be [K, K] = [{k}, {k}] for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be an int >= 1, got {blocksize!r}")


def _gptq_solve(W: torch.Tensor, H: torch.Tensor, *, bits: BitsSpec, group_size: int, sym: bool,
                percdamp: float, blocksize: int, act_order: bool, static_groups: bool,
                fitter: QParamFitter, salience: torch.Tensor | None
                ) -> tuple[QuantizedTensor, torch.Tensor]:
    """``gptq_quantize``, also returning the float32 weights ``[N, K]`` (original column
    order) that the error propagation used, so tests can check they equal ``dequantize()``."""
    t0 = time.perf_counter()
    check_weight(W, salience)
    _check_args(W, H, blocksize)
    n, k = W.shape
    bounds = group_bounds(k, group_size)
    gbits = resolve_group_bits(bits, len(bounds))
    W = W.to(torch.float32, copy=True)
    H = H.to(W.device)
    salience = None if salience is None else salience.to(W.device)
    dead = dead_columns(H)
    W[:, dead] = 0
    if act_order:
        diag = torch.where(dead, torch.ones_like(H.diagonal()), H.diagonal()).float()
        perm = torch.sort(diag, descending=True, stable=True).indices
    else:
        perm = torch.arange(k, device=W.device)
    g_idx = make_g_idx(k, group_size, None if static_groups or not act_order else perm.cpu()).to(W.device)
    scales = torch.zeros(n, len(bounds), dtype=torch.float32, device=W.device)
    sweep = _Sweep(W=W[:, perm], U=inverse_hessian_cholesky(H[perm][:, perm], percdamp),
                   group_of=g_idx[perm].tolist(), group_bits=gbits, scales=scales,
                   zeros=torch.zeros_like(scales), fit_at={}, fitter=fitter, sym=sym,
                   salience=None if salience is None else salience[:, perm])
    if static_groups:
        for g, (c0, c1) in enumerate(bounds):
            sal = None if salience is None else salience[:, c0:c1]
            sweep.scales[:, g], sweep.zeros[:, g] = fit_group(fitter, W[:, c0:c1], gbits[g], sym, sal)
    else:
        sweep.fit_at = {c0: (g, c1) for g, (c0, c1) in enumerate(bounds)}
    codes_p, Q_p, loss = _run_sweep(sweep, blocksize)
    inv = torch.argsort(perm)
    qt = build_quantized(codes_p[:, inv], sweep.scales, sweep.zeros, g_idx, gbits, group_size,
                         {"loss": loss, "seconds": time.perf_counter() - t0})
    return qt, Q_p[:, inv]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, *, bits: BitsSpec, group_size: int, sym: bool = False,
                  percdamp: float = _DEFAULTS.percdamp, blocksize: int = _DEFAULTS.blocksize,
                  act_order: bool = _DEFAULTS.act_order, static_groups: bool = _DEFAULTS.static_groups,
                  fitter: QParamFitter = fit_qparams, salience: torch.Tensor | None = None) -> QuantizedTensor:
    """Quantize ``W [N, K]`` (out x in, any float dtype) with GPTQ against the layer
    Hessian ``H [K, K]`` (any float dtype, e.g. ``2/n X^T X``).

    Args:
        bits: one width for all groups, or an integer tensor ``[G]``: ``bits[g]`` is the
            width of group ``g`` as numbered by the result's ``g_idx`` (1..8).
        group_size: columns per group (last group may be short); ``-1``: one quantizer
            per row over all of K.
        percdamp: diagonal damping as a fraction of ``mean(diag H)``.
        blocksize: columns per lazy-update block (changes speed, not the result beyond
            float32 rounding).
        act_order: process columns by descending ``diag(H)``; groups are then
            contiguous in that order and ``g_idx`` records them.
        static_groups: fit every group's quantizer upfront on the original ``W``
            (groups of consecutive original columns, also with ``act_order``).
        fitter: ``fitter(w_group float32 [N, C], bits_g, sym, salience_group)`` ->
            float16-representable ``(scale [N], zero [N])``; ``w_group`` holds the group's
            columns in processing order, already updated by earlier errors.
        salience: optional ``[N, K]`` element weights, sliced like ``w_group`` for ``fitter``.

    Returns a ``QuantizedTensor`` on ``W``'s device whose ``dequantize()`` equals, bit
    for bit, the weights GPTQ propagated errors against; ``info`` holds ``"loss"``
    (sum of the OBS error terms) and ``"seconds"``.

    Raises ``HessianError`` (a ``ValueError``) on a malformed, non-finite or (after
    damping) not positive definite ``H``; ``ValueError`` on bad ``W``/``bits``/sizes.
    """
    qt, _ = _gptq_solve(W, H, bits=bits, group_size=group_size, sym=sym, percdamp=percdamp,
                        blocksize=blocksize, act_order=act_order, static_groups=static_groups,
                        fitter=fitter, salience=salience)
    return qt
