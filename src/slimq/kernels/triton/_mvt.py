"""Tensor-core GEMM for 2-16 tokens (path ``"mv"`` with ``M > 1``), layout ``slimq.segmented-bitplane.v1``.

The arithmetic of ``_mv`` (one LOP3 per code pair gives the fp16 A operand ``M + 2**c q``, the magic
removed per 128-column block with the gather's ``corr``), with the tokens spread over the 8 columns of
``mma.m16n8k16``'s B operand instead of repeated: lane ``(g, t)`` loads the activation pairs of token
``8 n + g`` for token block ``n`` (``NB = ceil(M / 8)`` blocks), so the A registers built from one load of
weights serve every token. Accumulator quad of row block ``b`` and token block ``n``: rows ``4g + 2b`` and
``4g + 2b + 1`` times tokens ``8n + 2t`` and ``8n + 2t + 1``; each lane owns those ``8 NB`` outputs (no
two lanes share one) and adds ``s * (acc - corr - z * sum x)`` to them per tile.

Split-K sums go to the float32 workspace and a ``finalize_kernel`` launch writes ``out``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._gv import _first
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._mv import (
    _TILE, _mma, _prefetch_start, _prefetch_tile, _shift, _tile_words, a_regs, block_sums, plane_pairs, plane_shifts,
    virtual1, vwords,
)
from slimq.kernels.triton._tiles import pdl_wait, plane_width

__all__ = ["mvt_kernel"]


@triton.jit
def _plane_x(xp, stride_wm, stride_wb, toks, P: tl.constexpr, BITS: tl.constexpr, NB: tl.constexpr,
             ASM: tl.constexpr):
    """Per token block, the lane's 16 pairs of its token (``toks[n]``, clamped to the last token) for plane
    ``P``."""
    out = ()
    for n in tl.static_range(NB):
        out = out + (plane_pairs(xp + toks[n] * stride_wm, stride_wb, P, BITS, ASM),)
    return out


@triton.jit
def _kstep(accs, w, v, xs, s: tl.constexpr, H: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
           NB: tl.constexpr, ASM: tl.constexpr):
    """k-step ``s`` of one plane: the A registers of both row blocks (pairs ``j``, ``j + 1`` of the words
    ``w``, ``v`` their shifts), each times every token block's activation pairs ``xs[n]``. ``accs`` is flat,
    index ``2 n + b``."""
    j: tl.constexpr = (2 * s) % H
    a0 = a_regs(w, v, 0, j, W, C, ASM)
    a1 = a_regs(w, v, 1, j, W, C, ASM)
    out = ()
    for n in tl.static_range(NB):
        x = xs[n]
        out = out + (_mma(a0[0], a0[1], a0[2], a0[3], x[2 * s], x[2 * s + 1], accs[2 * n], ASM),
                     _mma(a1[0], a1[1], a1[2], a1[3], x[2 * s], x[2 * s + 1], accs[2 * n + 1], ASM))
    return out


@triton.jit
def _plane(accs, words, xs, W: tl.constexpr, C: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr,
           HP: tl.constexpr = 0):
    """``accs`` plus one plane's 8 k-steps (``HP`` as in ``_mv._plane_mma``)."""
    H: tl.constexpr = HP if HP else 16 // W
    sh = plane_shifts(words, W, HP)
    for s in tl.static_range(8):
        accs = _kstep(accs, words[(2 * s) // H], sh[(2 * s) // H], xs, s, H, W, C, NB, ASM)
    return accs


@triton.jit
def _scales(p, g, NS: tl.constexpr, row4):
    """float32 values of the lane's four rows ``row4 .. row4 + 3`` in group row ``g`` of ``p``."""
    q = p + g * NS + row4
    return (tl.load(q).to(tl.float32), tl.load(q + 1).to(tl.float32), tl.load(q + 2).to(tl.float32),
            tl.load(q + 3).to(tl.float32))


@triton.jit
def _tile(ys, words, sc, zr, seg, k0, t, toks2, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk,
          BITS: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr):
    """``ys`` plus one tile: ``ys[4 (2 n + b) + 2 r + u]`` is row ``4g + 2b + r`` and token
    ``8n + 2t + u``; ``toks2`` the lane's two (clamped) tokens per block, ``toks2[2n + u]``."""
    c = seg[0] + k0
    xp = xw_ptr + c // 2 + t * 16
    lane_tok = ()
    for n in tl.static_range(NB):  # B column g of token block n: token 8n + g
        lane_tok = lane_tok + (toks2[2 * NB + n],)
    zero = tl.zeros(t.shape, tl.float32)
    accs = ()
    for i in tl.static_range(2 * NB):
        accs = accs + ((zero, zero, zero, zero),)
    x0 = _plane_x(xp, stride_wm, stride_wb, lane_tok, 0, BITS, NB, ASM)
    accs = _plane(accs, words[0], x0, plane_width(BITS, 0), _shift(BITS, 0), NB, ASM)
    if virtual1(BITS):  # plane 1 in plane 0's pair order: the same activation pairs
        accs = _plane(accs, vwords(words[1][0], ASM), x0, 1, _shift(BITS, 1), NB, ASM, 8)
    elif plane_width(BITS, 1) > 0:
        accs = _plane(accs, words[1], _plane_x(xp, stride_wm, stride_wb, lane_tok, 1, BITS, NB, ASM),
                      plane_width(BITS, 1), _shift(BITS, 1), NB, ASM)
    if plane_width(BITS, 2) > 0:
        accs = _plane(accs, words[2], _plane_x(xp, stride_wm, stride_wb, lane_tok, 2, BITS, NB, ASM),
                      plane_width(BITS, 2), _shift(BITS, 2), NB, ASM)
    blk = c // _TILE
    out = ()
    for n in tl.static_range(NB):
        corr0, xs0 = block_sums(xc_ptr + toks2[2 * n] * nblk + blk, stride_cs, BITS)
        corr1, xs1 = block_sums(xc_ptr + toks2[2 * n + 1] * nblk + blk, stride_cs, BITS)
        for b in tl.static_range(2):
            out = out + _scale_quad(ys, accs[2 * n + b], 4 * (2 * n + b), sc[2 * b], zr[2 * b], sc[2 * b + 1],
                                    zr[2 * b + 1], corr0, xs0, corr1, xs1)
    return out


@triton.jit
def _scale_quad(ys, a, base: tl.constexpr, s0, z0, s1, z1, corr0, xs0, corr1, xs1):
    """``ys[base .. base + 3]`` plus an accumulator quad scaled: rows ``r`` (scale ``s_r``, zero ``z_r``)
    times the lane's two tokens (``corr_u``, ``xs_u``)."""
    return (ys[base] + s0 * ((a[0] - corr0) - z0 * xs0), ys[base + 1] + s0 * ((a[1] - corr1) - z0 * xs1),
            ys[base + 2] + s1 * ((a[2] - corr0) - z1 * xs0), ys[base + 3] + s1 * ((a[3] - corr1) - z1 * xs1))


@triton.jit
def _weights(seg, k0, t, row4, BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """The weight-side loads of a tile: words of every plane, the four rows' scales and zeros."""
    return (_tile_words(seg, k0, t, row4, BITS, NS, ASM), _scales(seg[2], k0 // GS, NS, row4),
            _scales(seg[3], k0 // GS, NS, row4))


@triton.jit
def _segment(ys, seg, t, row4, toks2, pid_k, split_k, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk,
             BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr,
             WAIT: tl.constexpr, wrow, L2A: tl.constexpr):
    """``ys`` plus this program's share of one segment; the weight-side loads run one tile ahead, and with
    ``L2A`` the weights ``L2A`` tiles past those are prefetched into L2 (as ``_mv._segment``)."""
    ks = seg[1]
    t_lo, t_hi = _tile_range(ks, pid_k, _TILE, split_k)
    last = ks // _TILE - 1
    for d in tl.static_range(L2A):
        _prefetch_tile(seg, tl.minimum(t_lo + 1 + d, last) * _TILE, t, wrow, BITS, GS, NS, ASM)
    cur = _weights(seg, tl.minimum(t_lo, last) * _TILE, t, row4, BITS, GS, NS, ASM)
    pdl_wait(WAIT)
    for tt in range(t_lo, t_hi):
        if L2A > 0:
            _prefetch_tile(seg, tl.minimum(tt + 1 + L2A, last) * _TILE, t, wrow, BITS, GS, NS, ASM)
        nxt = _weights(seg, tl.minimum(tt + 1, last) * _TILE, t, row4, BITS, GS, NS, ASM)
        ys = _tile(ys, cur[0], cur[1], cur[2], seg, tt * _TILE, t, toks2, xw_ptr, stride_wm, stride_wb, xc_ptr,
                   stride_cs, nblk, BITS, NB, ASM)
        cur = nxt
    return ys


@triton.jit
def _store(v, tok, row, M, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, NS: tl.constexpr,
           ATOMIC: tl.constexpr, HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr):
    """One output per lane: ``(tok, row)`` of storage row ``r0 + row``; into the float32 workspace when
    ATOMIC (split-K), else ``out[tok, row_perm[r0 + row]] = v + bias``."""
    ok = (tok < M) & (row < NS)
    r = r0 + row
    if ATOMIC:
        tl.atomic_add(acc_ptr + tok * stride_am + r, v, mask=ok, sem="relaxed")
    else:
        if HAS_ROWPERM:
            r = tl.load(rowperm_ptr + r, mask=ok, other=0)
        if HAS_BIAS:
            v += tl.load(bias_ptr + r, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + tok * stride_om + r, v.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["r0", "M", "zero", "stride_cs", "nblk"])
def mvt_kernel(xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk, out_ptr, stride_om, acc_ptr, stride_am,
               rowperm_ptr, bias_ptr, r0, M, zero, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr,
               NS: tl.constexpr, NT: tl.constexpr, GS: tl.constexpr, NB: tl.constexpr, ATOMIC: tl.constexpr,
               HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr, XSCALE_INV: tl.constexpr,
               DEPTH: tl.constexpr = 1, PDL: tl.constexpr = False, L2A: tl.constexpr = 0):
    """Grid ``(cdiv(NS, NT), split_k)`` with ``NT = 32 * num_warps`` rows per program and ``M <= 8 NB``
    tokens: ``out[:M, rows] = x W^T`` for the band's rows ``r0 + [0, NS)`` (``mv_gather_kernel``'s pairs and
    sums). ``zero`` must be 0. ``DEPTH`` is accepted for the launch plan's sake (one tile ahead)."""
    pid_k = tl.program_id(1)
    split_k = tl.num_programs(1)
    tid = tl.arange(0, NT)
    t = tid % 4
    g = (tid % 32) // 4
    row4 = tl.minimum(tl.program_id(0) * NT + tid - t, NS - 4) + zero
    toks2 = ()  # the lane's output tokens 8n + 2t + u (clamped), then its B-column token 8n + g per block
    for n in tl.static_range(NB):
        toks2 = toks2 + (tl.minimum(8 * n + 2 * t, M - 1), tl.minimum(8 * n + 2 * t + 1, M - 1))
    for n in tl.static_range(NB):
        toks2 = toks2 + (tl.minimum(8 * n + g, M - 1),)
    wrow = tl.minimum(tl.program_id(0) * NT + tid - tid % 32, NS - 1)  # the warp's first row (L2 prefetch)
    if L2A > 0:
        for i in tl.static_range(1, NSEG):
            _prefetch_start(segs[i], pid_k, split_k, t, wrow, SEG_BITS[i], GS, NS, ASM, L2A)
    zf = tl.zeros([NT], tl.float32)
    ys = ()
    for i in tl.static_range(8 * NB):
        ys = ys + (zf,)
    for i in tl.static_range(NSEG):
        ys = _segment(ys, segs[i], t, row4, toks2, pid_k, split_k, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs,
                      nblk, SEG_BITS[i], GS, NS, NB, ASM, _first(PDL, i), wrow, L2A)
    base = tl.program_id(0) * NT + tid - t  # the lane's first row, unclamped
    for n in tl.static_range(NB):
        for b in tl.static_range(2):
            for r in tl.static_range(2):
                for u in tl.static_range(2):
                    _store(ys[4 * (2 * n + b) + 2 * r + u] * XSCALE_INV, 8 * n + 2 * t + u, base + 2 * b + r, M,
                           out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, NS, ATOMIC, HAS_ROWPERM,
                           HAS_BIAS)
