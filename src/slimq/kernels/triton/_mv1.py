"""One token on layers whose K is split over programs (path ``"mv"`` with ``split_k``; ``_mv``'s tiles, mapping and
arithmetic), layout ``slimq.segmented-bitplane.v1``.

Each program takes 32 rows per warp and its share of K's 128-column tiles, loads the next tile's words one (or
two, ``DEPTH``) tiles ahead of the MMAs and, with ``L2A``, prefetches later tiles into L2; the split-K sums finish
in the last program of each row tile (``_tiles.store_rows``). The activations come from ``mv_gather_kernel``
(pairs and per-block sums, written by a launch before this one), or (``DIRECT``, ``_mvx``) from ``x`` itself:
float16, each tile from its storage column or, where ``col_perm`` moves whole tiles (SliM's grouping of the
bit-widths without act-order), from ``col_perm`` at it (``DIRECT_PERM``: read two tiles ahead).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._gv import _first
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._mv import _TILE, _act_loads, _prefetch_start, _prefetch_tile, _tile, _weight_loads
from slimq.kernels.triton._mvx import tile_direct, tile_source, x_quads
from slimq.kernels.triton._tiles import pdl_wait, store_rows, unit_range

__all__ = ["mv_kernel"]


@triton.jit
def _acts(seg, tile, src, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS: tl.constexpr, ASM: tl.constexpr,
          DIRECT: tl.constexpr):
    """The activation-side loads of segment tile ``tile``: the gather's pairs and sums, or (``DIRECT``) the lane's
    32 columns of ``x`` from the tile's source column ``src`` (``_mvx``)."""
    if DIRECT:
        return x_quads(xw_ptr, src, t, ASM)
    else:
        return _act_loads(seg, tile * _TILE, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS, ASM)


@triton.jit
def _segment(y, seg, t, row4, rows, wrow, t_lo, t_hi, xw_ptr, stride_wb, xc_ptr, stride_cs, perm_ptr,
             BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr, WAIT: tl.constexpr,
             DEPTH: tl.constexpr, L2A: tl.constexpr, DIRECT: tl.constexpr, DIRECT_PERM: tl.constexpr,
             XBF16: tl.constexpr = False):
    """``y`` plus this program's share of one segment, its 128-column tiles ``[t_lo, t_hi)``. The weight-side
    loads run ``DEPTH`` (1 or 2) tiles ahead of the one computed, the activation-side ones one tile ahead (with ``DIRECT_PERM`` each tile's
    source column in ``col_perm`` two ahead, so that its ``x`` load never waits for it); with ``L2A``, the
    weights of the tile ``L2A`` past the next loaded are prefetched into L2 (:func:`_prefetch_tile`).
    WAIT: wait for the gather (PDL) after the first weight loads."""
    last = seg[1] // _TILE - 1
    for d in tl.static_range(L2A):
        _prefetch_tile(seg, tl.minimum(t_lo + DEPTH + d, last) * _TILE, t, wrow, BITS, GS, NS, ASM)
    s_cur = tile_source(perm_ptr, seg[0] + tl.minimum(t_lo, last) * _TILE, DIRECT_PERM)
    s_nxt = tile_source(perm_ptr, seg[0] + tl.minimum(t_lo + 1, last) * _TILE, DIRECT_PERM)
    w_cur = _weight_loads(seg, tl.minimum(t_lo, last) * _TILE, t, row4, rows, BITS, GS, NS, ASM)
    if DEPTH == 2:
        w_nxt = _weight_loads(seg, tl.minimum(t_lo + 1, last) * _TILE, t, row4, rows, BITS, GS, NS, ASM)
    pdl_wait(WAIT)
    a_cur = _acts(seg, tl.minimum(t_lo, last), s_cur, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS, ASM, DIRECT)
    for tt in range(t_lo, t_hi):
        if L2A > 0:
            _prefetch_tile(seg, tl.minimum(tt + DEPTH + L2A, last) * _TILE, t, wrow, BITS, GS, NS, ASM)
        if DEPTH == 2:
            w_new = _weight_loads(seg, tl.minimum(tt + 2, last) * _TILE, t, row4, rows, BITS, GS, NS, ASM)
        else:
            w_new = _weight_loads(seg, tl.minimum(tt + 1, last) * _TILE, t, row4, rows, BITS, GS, NS, ASM)
        s_new = tile_source(perm_ptr, seg[0] + tl.minimum(tt + 2, last) * _TILE, DIRECT_PERM)
        a_nxt = _acts(seg, tl.minimum(tt + 1, last), s_nxt, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS, ASM,
                      DIRECT)
        if DIRECT:
            y = tile_direct(y, w_cur, a_cur, t, BITS, ASM, XBF16)
        else:
            y = _tile(y, w_cur, a_cur, t, BITS, ASM)
        if DEPTH == 2:
            w_cur = w_nxt
            w_nxt = w_new
        else:
            w_cur = w_new
        a_cur = a_nxt
        s_nxt = s_new
    return y


@triton.jit(do_not_specialize=["r0", "split_k", "zero", "stride_cs"])
def mv_kernel(xw_ptr, stride_wb, xc_ptr, stride_cs, out_ptr, acc_ptr, rowperm_ptr, bias_ptr, r0, split_k, cnt_ptr, zero,
              segs, perm_ptr, SEG_BITS: tl.constexpr, NSEG: tl.constexpr, NS: tl.constexpr, NT: tl.constexpr,
              GS: tl.constexpr, ATOMIC: tl.constexpr, HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr,
              FUSED: tl.constexpr, ASM: tl.constexpr, XSCALE_INV: tl.constexpr, DEPTH: tl.constexpr = 1,
              PDL: tl.constexpr = False, L2A: tl.constexpr = 0, DIRECT: tl.constexpr = False,
              DIRECT_PERM: tl.constexpr = False, XBF16: tl.constexpr = False,
              SEG_UNITS: tl.constexpr = None):
    """Grid ``(cdiv(NS, NT), split_k)`` with ``NT = 32 * num_warps`` rows per program, one token:
    ``out[0, rows] = x W^T`` for the band's rows ``r0 + [0, NS)``. Activation pairs and the block sums
    ``xc`` (``[XC_SLOTS, tokens, nblk]``, slot stride ``stride_cs``; token 0 here) come from ``mv_gather_kernel``,
    or (``DIRECT``, ``_mvx``) ``xw_ptr`` is ``x`` itself (float16, or ``XBF16`` bfloat16, read as int32), each tile read from its storage
    column or (``DIRECT_PERM``) from ``col_perm`` (``perm_ptr``) at it. ``zero`` must be 0 (it hides the rows'
    alignment, so that every lane keeps one row). ``ASM``: PTX (else lane-by-lane emulation for the
    interpreter). With ``SEG_UNITS`` (a tile's weight in each segment, in any common unit: its bytes per row,
    plus a fixed cost per tile, :func:`_plan.segment_units`; else every program takes its ``1 / split_k`` of
    every segment's tiles) program ``pid_k`` takes the band's tiles (all segments in storage order) whose start
    falls in its ``1 / split_k`` of the band's total weight, entering only the segments it has tiles of (fewer
    pipeline starts)."""
    pid_k = tl.program_id(1)
    tid = tl.arange(0, NT)
    t = tid % 4
    offs_n = tl.program_id(0) * NT + tid
    mask_n = offs_n < NS
    rows = tl.minimum(offs_n, NS - 1) + zero
    row4 = tl.minimum(offs_n - t, NS - 4) + zero
    wrow = tl.minimum(offs_n - tid % 32, NS - 1)  # the warp's first row (L2 prefetch)
    y = tl.zeros([NT], tl.float32)
    if SEG_UNITS is not None:  # equal shares: tiles in storage order, cut at every 1 / split_k of the band's weight
        for i in tl.static_range(NSEG):
            t_lo, t_hi = unit_range(segs, i, NSEG, SEG_UNITS, _TILE, pid_k, split_k)
            if t_lo < t_hi:
                y = _segment(y, segs[i], t, row4, rows, wrow, t_lo, t_hi, xw_ptr, stride_wb, xc_ptr, stride_cs,
                             perm_ptr, SEG_BITS[i], GS, NS, ASM, PDL, DEPTH, L2A, DIRECT, DIRECT_PERM, XBF16)
    else:
        if L2A > 0:
            for i in tl.static_range(1, NSEG):
                _prefetch_start(segs[i], pid_k, split_k, t, wrow, SEG_BITS[i], GS, NS, ASM, L2A)
        for i in tl.static_range(NSEG):
            t_lo, t_hi = _tile_range(segs[i][1], pid_k, _TILE, split_k)
            y = _segment(y, segs[i], t, row4, rows, wrow, t_lo, t_hi, xw_ptr, stride_wb, xc_ptr, stride_cs,
                         perm_ptr, SEG_BITS[i], GS, NS, ASM, _first(PDL, i), DEPTH, L2A, DIRECT, DIRECT_PERM, XBF16)
    offs_m = tl.arange(0, 1)
    store_rows((y * XSCALE_INV)[None, :], out_ptr, 0, acc_ptr, 0, rowperm_ptr, bias_ptr, r0, offs_m, offs_m < 1,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)
