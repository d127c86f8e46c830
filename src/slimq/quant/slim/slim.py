"""SliM-LLM for one linear layer: salience, bit allocation (SBA), then GPTQ with the
salience-weighted quantizer calibration (SQC) as its quantizer fitter.

Pure: tensors in, ``QuantizedTensor`` out; no hooks, I/O or global state.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import torch

from slimq.config import GPTQOptions, SlimOptions
from slimq.quant.gptq import gptq_quantize
from slimq.quant.primitives import dequantize_codes, fit_minmax, fit_qparams, quantize_codes
from slimq.quant.result import QuantizedTensor
from slimq.quant.slim.allocation import (
    MAX_BITS,
    MIN_BITS,
    SBAResult,
    output_kl,
    plan_budget,
    required_widths,
    sba_search,
    start_allocation,
)
from slimq.quant.slim.salience import element_salience, gptq_column_order, gptq_group_index, group_salience
from slimq.quant.slim.sqc import make_sqc_fitter

__all__ = ["slim_quantize", "validate_allocation", "rtn_candidates"]

log = logging.getLogger(__name__)


def validate_allocation(allocation: torch.Tensor | Sequence[int], n_groups: int) -> torch.Tensor:
    """int8 ``[G]`` copy of a given per-group allocation; raises ``ValueError`` unless it
    is integral, of length ``n_groups`` and every width lies in 1..8."""
    t = torch.as_tensor(allocation)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"allocation must hold integer bit-widths, got dtype {t.dtype}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all() and (t == t.round()).all()):
            raise ValueError(f"allocation must hold integer bit-widths, got {t.tolist()[:8]}")
    if t.shape != (n_groups,):
        raise ValueError(f"allocation must have shape [G={n_groups}] (one width per column group), "
                         f"got {tuple(t.shape)}")
    bad = t[(t < MIN_BITS) | (t > MAX_BITS)]
    if bad.numel():
        raise ValueError(f"allocation widths must lie in {MIN_BITS}..{MAX_BITS}, got {sorted(set(bad.tolist()))}")
    return t.to(torch.int8).cpu().clone()


def _fake_quant_groups(Wo: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Min/max quantize-dequantize of ``Wo [N, K]`` in groups of consecutive columns,
    every full group at once (reshaped to rows of ``gs``), the short last one apart;
    the same arithmetic as ``rtn_quantize(..., fitter=fit_qparams).dequantize()``."""
    n, k = Wo.shape
    gs = k if group_size == -1 else min(group_size, k)
    kf = k - k % gs
    out = torch.empty_like(Wo)
    for c0, c1 in ((0, kf), (kf, k)):
        if c1 > c0:
            w = Wo[:, c0:c1].reshape(-1, min(gs, c1 - c0))
            scale, zero = fit_minmax(w, bits, sym)
            out[:, c0:c1] = dequantize_codes(quantize_codes(w, scale, zero, bits), scale, zero).reshape(n, c1 - c0)
    return out


def rtn_candidates(W: torch.Tensor, widths: Sequence[int], group_size: int, sym: bool,
                   order: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """For each width ``b``, float32 ``[N, K]`` RTN (min/max; 1 bit binarised)
    quantize-dequantize of ``W [N, K]`` at ``b`` bits in every group. ``order`` (int64
    ``[K]``) is the column order in which groups are contiguous (act-order), ``None``
    for plain column order."""
    Wo = W.float() if order is None else W.float()[:, order]
    inv = None if order is None else torch.argsort(order)
    out = {}
    for b in widths:
        wq = _fake_quant_groups(Wo, int(b), group_size, sym)
        out[int(b)] = wq if inv is None else wq[:, inv]
    return out


def _samples(X_sample: torch.Tensor | None, k: int, device: torch.device, why: str) -> torch.Tensor:
    if X_sample is None:
        raise ValueError(f"X_sample [m, K={k}] is required for {why}, got None")
    if X_sample.shape[-1] != k or X_sample.numel() == 0:
        raise ValueError(f"X_sample must be [m, K={k}] (m >= 1), got {tuple(X_sample.shape)}")
    return X_sample.reshape(-1, k).to(device=device, dtype=torch.float32)


def _search(W, H, X_sample, bits, group_size, sym, options, gptq, g_idx, gsal) -> SBAResult:
    counts = torch.bincount(g_idx.long(), minlength=len(gsal)).tolist()
    widths = required_widths(bits, options.palette, counts)
    order = gptq_column_order(H.to(W.device), gptq.act_order) if gptq.act_order and not gptq.static_groups else None
    wq = rtn_candidates(W.float(), widths, group_size, sym, order)
    X = _samples(X_sample, W.shape[1], W.device, "SBA (options.sba=True)")
    return sba_search(W, X, gsal, g_idx, bits, options.palette, wq)


def _gptq_rescore(W, H, X_sample, ranked, n, run) -> tuple[QuantizedTensor, list[float], int]:
    """Run GPTQ on the ``n`` best RTN-scored allocations, keep the one whose output KL on
    ``X_sample`` is lowest. Returns ``(result, kl per shortlisted candidate, index)``."""
    X = _samples(X_sample, W.shape[1], W.device, "score='gptq'")
    logp_ref = torch.log_softmax((X @ W.float().T).double(), dim=-1)
    best, scores = None, []
    for i, (_, _, alloc) in enumerate(ranked[:n]):
        qt = run(alloc)
        scores.append(output_kl(logp_ref, X @ qt.dequantize().T))
        if best is None or scores[-1] < scores[best[1]]:
            best = (qt, i)
    return best[0], scores, best[1]


def slim_quantize(W: torch.Tensor, H: torch.Tensor, X_sample: torch.Tensor | None, *, bits: float,
                  group_size: int, sym: bool = False, options: SlimOptions = SlimOptions(),
                  gptq: GPTQOptions = GPTQOptions(), allocation: torch.Tensor | Sequence[int] | None = None
                  ) -> QuantizedTensor:
    """SliM-LLM quantization of ``W [N, K]`` (out x in, any float dtype).

    Args:
        H: ``[K, K]`` layer Hessian (``2/n sum x x^T``).
        X_sample: float ``[m, K]`` sampled layer inputs for SBA's output KL; may be
            ``None`` when SBA does not search (``options.sba`` off or ``allocation`` given)
            and ``options.score == "rtn"``.
        bits: average target bits in 1..8, may be fractional (see ``allocation`` module
            doc for how it is realised exactly and rounded when the group count forces it).
        group_size: columns per group (``-1``: one group).
        options: SBA/SQC options; ``gptq``: the GPTQ solver's options (its ``percdamp``
            also damps the Hessian for the salience).
        allocation: optional int ``[G]`` widths (groups as numbered by the result's
            ``g_idx``), e.g. loaded with ``slim.io.load_allocation``; used as is (validated).

    Returns a ``QuantizedTensor`` whose ``info`` adds to GPTQ's (``loss``):
    ``target_bits``, ``avg_bits``, ``allocation`` (list [G]), ``allocation_source``
    (``"given"``, ``"sba"`` or ``"start"``), ``sba_k`` (moves from the start allocation;
    the paper's k), ``sba_scores`` (KL along the search path), ``sba_n_scored``,
    ``group_salience`` (list [G]), ``gptq_scores`` (with ``score="gptq"``), and
    ``seconds`` (total) with ``seconds_salience`` / ``seconds_sba`` / ``seconds_gptq``.
    """
    t0 = time.perf_counter()
    if not (isinstance(bits, (int, float)) and math.isfinite(bits) and MIN_BITS <= bits <= MAX_BITS):
        raise ValueError(f"bits must be a number in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if W.dim() != 2:
        raise ValueError(f"W must be [N, K], got shape {tuple(W.shape)}")
    g_idx = gptq_group_index(H, group_size, gptq.act_order, gptq.static_groups)
    n_groups = int(g_idx.max()) + 1
    sal = element_salience(W, H, gptq.percdamp, gptq.act_order)
    gsal = group_salience(sal, g_idx, n_groups)
    t1 = time.perf_counter()
    info: dict = {"target_bits": float(bits), "group_salience": gsal.tolist()}
    sba = None
    if allocation is not None:
        alloc, info["allocation_source"] = validate_allocation(allocation, n_groups), "given"
    elif options.sba:
        sba = _search(W, H, X_sample, bits, group_size, sym, options, gptq, g_idx, gsal)
        alloc, info["allocation_source"] = sba.bits, "sba"
        info.update(sba_k=sba.steps, sba_scores=sba.path_scores, sba_n_scored=sba.n_scored)
    else:
        counts = torch.bincount(g_idx.long(), minlength=n_groups).tolist()
        alloc, info["allocation_source"] = start_allocation(plan_budget(bits, counts), gsal), "start"
    t2 = time.perf_counter()
    fitter = make_sqc_fitter(options.sqc_lambda, options.sqc_threshold, options.sqc_grid,
                             search=options.sqc_search) if options.sqc else fit_qparams

    def run(a: torch.Tensor) -> QuantizedTensor:
        return gptq_quantize(W, H, bits=a.to(torch.int64), group_size=group_size, sym=sym,
                             percdamp=gptq.percdamp, blocksize=gptq.blocksize, act_order=gptq.act_order,
                             static_groups=gptq.static_groups, fitter=fitter,
                             salience=sal if options.sqc else None)

    if sba is not None and options.score == "gptq":
        qt, info["gptq_scores"], pick = _gptq_rescore(W, H, X_sample, sba.ranked, options.gptq_shortlist, run)
        _, info["sba_k"], alloc = sba.ranked[pick]
        info["gptq_pick"] = pick
    else:
        qt = run(alloc)
    t3 = time.perf_counter()
    qt.info.update(info)
    qt.info.update(allocation=alloc.tolist(), avg_bits=qt.avg_bits(), seconds=t3 - t0,
                   seconds_salience=t1 - t0, seconds_sba=t2 - t1, seconds_gptq=t3 - t2)
    if abs(qt.avg_bits() - bits) > 1e-9:
        log.info("slim: target %.4g bits realised as %.6g (group count/sizes allow no closer average)",
                 bits, qt.avg_bits())
    return qt
