"""2-16 tokens on small layers: ``_mvt``'s tiles with the warps of a program splitting K and every tile's loads
issued up front (``KernelConfig("mv", block_m=16, k_warps=NW)``), layout ``slimq.segmented-bitplane.v1``.

What ``_mvs`` does for one token: a program owns 32 rows and all of K, its ``NW`` warps take consecutive
128-column tiles of each segment (``SEG_TPW``), load every tile's words, scales and zeros before the wait for the
gather (PDL) and every tile's activation pairs and block sums after it, and only then compute (each word depends on
a zero folded from every loaded value, so ptxas cannot sink the loads next to their use); the warps' sums meet in
one CTA reduction. Per tile and warp the arithmetic is ``_mvt``'s: tokens in the B operand's 8 columns per token
block (``NB = ceil(M / 8)``), each lane ``(g, t)`` owning rows ``4g .. 4g + 3`` times tokens ``8n + 2t``, ``+ 1``.
No split-K workspace, no finalize launch.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._mv import _TILE, _shift, block_sums, virtual1, vwords
from slimq.kernels.triton._mvs import _bits32, _fold, _hold_words, _pdl_wait_after
from slimq.kernels.triton._mvt import _plane, _plane_x, _scale_quad, _scales, _weights
from slimq.kernels.triton._tiles import plane_width

__all__ = ["mvts_kernel"]


@triton.jit
def _acts(seg, k0, t, toks2, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk, BITS: tl.constexpr,
          NB: tl.constexpr, ASM: tl.constexpr):
    """The activation-side loads of one tile: per plane with pairs of its own, every token block's pairs of the
    lane's B-column token, and per token block the block sums ``(corr, sum x)`` of the lane's two output tokens."""
    c = seg[0] + k0
    xp = xw_ptr + c // 2 + t * 16
    lane_tok = ()
    for n in tl.static_range(NB):  # B column g of token block n: token 8n + g
        lane_tok = lane_tok + (toks2[2 * NB + n],)
    x0 = _plane_x(xp, stride_wm, stride_wb, lane_tok, 0, BITS, NB, ASM)
    x1 = ()
    if plane_width(BITS, 1) > 0 and not virtual1(BITS):
        x1 = _plane_x(xp, stride_wm, stride_wb, lane_tok, 1, BITS, NB, ASM)
    x2 = ()
    if plane_width(BITS, 2) > 0:
        x2 = _plane_x(xp, stride_wm, stride_wb, lane_tok, 2, BITS, NB, ASM)
    blk = c // _TILE
    sums = ()
    for n in tl.static_range(NB):
        corr0, xs0 = block_sums(xc_ptr + toks2[2 * n] * nblk + blk, stride_cs, BITS)
        corr1, xs1 = block_sums(xc_ptr + toks2[2 * n + 1] * nblk + blk, stride_cs, BITS)
        sums = sums + ((corr0, xs0, corr1, xs1),)
    return x0, x1, x2, sums


@triton.jit
def _fold_weights(d, wl, BITS: tl.constexpr):
    """``d`` xor every value one tile's weight-side loads (words, four rows' scales and zeros) returned."""
    words, sc, zr = wl
    for p in tl.static_range(3):
        for i in tl.static_range(plane_width(BITS, p)):
            d = _fold(d, words[p][i], 4)
    return _fold(_fold(d, sc, 4), zr, 4)


@triton.jit
def _fold_acts(d, al, NB: tl.constexpr):
    """``d`` xor every value one tile's activation-side loads returned."""
    x0, x1, x2, sums = al
    for n in tl.static_range(NB):
        d = _fold(d, x0[n], len(x0[n]))
        if len(x1) > 0:
            d = _fold(d, x1[n], len(x1[n]))
        if len(x2) > 0:
            d = _fold(d, x2[n], len(x2[n]))
        d = _fold(d, sums[n], 4)
    return d


@triton.jit
def _tile(ys, wl, al, BITS: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr):
    """``ys`` plus one tile (``_mvt._tile``'s arithmetic on loads already made)."""
    words, sc, zr = wl
    x0, x1, x2, sums = al
    zero = tl.zeros(sc[0].shape, tl.float32)
    accs = ()
    for i in tl.static_range(2 * NB):
        accs = accs + ((zero, zero, zero, zero),)
    accs = _plane(accs, words[0], x0, plane_width(BITS, 0), _shift(BITS, 0), NB, ASM)
    if virtual1(BITS):
        accs = _plane(accs, vwords(words[1][0], ASM), x0, 1, _shift(BITS, 1), NB, ASM, 8)
    elif plane_width(BITS, 1) > 0:
        accs = _plane(accs, words[1], x1, plane_width(BITS, 1), _shift(BITS, 1), NB, ASM)
    if plane_width(BITS, 2) > 0:
        accs = _plane(accs, words[2], x2, plane_width(BITS, 2), _shift(BITS, 2), NB, ASM)
    out = ()
    for n in tl.static_range(NB):
        corr0, xs0, corr1, xs1 = sums[n]
        for b in tl.static_range(2):
            out = out + _scale_quad(ys, accs[2 * n + b], 4 * (2 * n + b), sc[2 * b], zr[2 * b], sc[2 * b + 1],
                                    zr[2 * b + 1], corr0, xs0, corr1, xs1)
    return out


@triton.jit
def _seg_weights(seg, warp, t, row4, TPW: tl.constexpr, BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr,
                 ASM: tl.constexpr):
    last = seg[1] // _TILE - 1
    out = ()
    for i in tl.static_range(TPW):
        out = out + (_weights(seg, tl.minimum(warp * TPW + i, last) * _TILE, t, row4, BITS, GS, NS, ASM),)
    return out


@triton.jit
def _seg_acts(seg, warp, t, toks2, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk, TPW: tl.constexpr,
              BITS: tl.constexpr, NB: tl.constexpr, ASM: tl.constexpr):
    last = seg[1] // _TILE - 1
    out = ()
    for i in tl.static_range(TPW):
        out = out + (_acts(seg, tl.minimum(warp * TPW + i, last) * _TILE, t, toks2, xw_ptr, stride_wm, stride_wb,
                           xc_ptr, stride_cs, nblk, BITS, NB, ASM),)
    return out


@triton.jit
def _seg_fold(d, wl, al, TPW: tl.constexpr, BITS: tl.constexpr, NB: tl.constexpr, ACT: tl.constexpr):
    for i in tl.static_range(TPW):
        if ACT:
            d = _fold_acts(d, al[i], NB)
        else:
            d = _fold_weights(d, wl[i], BITS)
    return d


@triton.jit
def _seg_tiles(ys, seg, warp, wl, al, dep, TPW: tl.constexpr, BITS: tl.constexpr, NB: tl.constexpr,
               ASM: tl.constexpr):
    """``ys`` plus the sums of the warp's tiles of one segment that lie inside it."""
    for i in tl.static_range(TPW):
        new = _tile(ys, _hold_words(wl[i], dep, BITS), al[i], BITS, NB, ASM)
        ok = warp * TPW + i < seg[1] // _TILE
        upd = ()
        for j in tl.static_range(8 * NB):
            upd = upd + (tl.where(ok, new[j], ys[j]),)
        ys = upd
    return ys


@triton.jit
def _store(v, tok, row, M, out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, NS: tl.constexpr,
           HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``out[tok, row_perm[r0 + row]] = v + bias`` for the valid ``(tok, row)``."""
    ok = (tok < M) & (row < NS)
    r = r0 + row
    if HAS_ROWPERM:
        r = tl.load(rowperm_ptr + r, mask=ok, other=0)
    if HAS_BIAS:
        v += tl.load(bias_ptr + r, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + tok * stride_om + r, v.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _add8(a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7):
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4, a5 + b5, a6 + b6, a7 + b7


@triton.jit
def _add16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
           b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15):
    return (a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4, a5 + b5, a6 + b6, a7 + b7, a8 + b8, a9 + b9, a10 + b10,
            a11 + b11, a12 + b12, a13 + b13, a14 + b14, a15 + b15)


@triton.jit
def _warp_sums(ys, NW: tl.constexpr, NB: tl.constexpr):
    """Each of the ``8 NB`` tensors ``[32 NW]`` of ``ys`` summed over the warps (``[32]`` each), in one reduction
    (one shared-memory exchange for all of them)."""
    v = ()
    for i in tl.static_range(8 * NB):
        v = v + (tl.reshape(ys[i], [NW, 32]),)
    if NB == 1:
        return tl.reduce(v, 0, _add8)
    else:
        return tl.reduce(v, 0, _add16)


@triton.jit(do_not_specialize=["r0", "M", "zero", "stride_cs", "nblk"])
def mvts_kernel(xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk, out_ptr, stride_om, rowperm_ptr, bias_ptr,
                r0, M, zero, segs, SEG_BITS: tl.constexpr, SEG_TPW: tl.constexpr, NSEG: tl.constexpr,
                NS: tl.constexpr, NW: tl.constexpr, GS: tl.constexpr, NB: tl.constexpr, HAS_ROWPERM: tl.constexpr,
                HAS_BIAS: tl.constexpr, ASM: tl.constexpr, XSCALE_INV: tl.constexpr, PDL: tl.constexpr = False):
    """Grid ``(cdiv(NS, 32),)``, ``num_warps == NW``, ``M <= 8 NB`` tokens: ``out[:M, rows] = x W^T`` for 32 of the
    band's rows ``r0 + [0, NS)``; warp ``w`` takes tiles ``[w TPW, (w + 1) TPW)`` of each segment. Activation
    pairs and block sums from ``mv_gather_kernel``; ``zero`` must be 0."""
    NT: tl.constexpr = 32 * NW
    tid = tl.arange(0, NT)
    lane = tid % 32
    warp = tid // 32
    t = tid % 4
    g = lane // 4
    row4 = tl.minimum(tl.program_id(0) * 32 + lane - t, NS - 4) + zero
    toks2 = ()  # the lane's output tokens 8n + 2t + u (clamped), then its B-column token 8n + g per block
    for n in tl.static_range(NB):
        toks2 = toks2 + (tl.minimum(8 * n + 2 * t, M - 1), tl.minimum(8 * n + 2 * t + 1, M - 1))
    for n in tl.static_range(NB):
        toks2 = toks2 + (tl.minimum(8 * n + g, M - 1),)
    wl = ()
    for i in tl.static_range(NSEG):
        wl = wl + (_seg_weights(segs[i], warp, t, row4, SEG_TPW[i], SEG_BITS[i], GS, NS, ASM),)
    dep = tl.zeros([NT], tl.int32)
    for i in tl.static_range(NSEG):
        dep = _seg_fold(dep, wl[i], wl[i], SEG_TPW[i], SEG_BITS[i], NB, False)
    _pdl_wait_after(dep & zero, PDL)
    al = ()
    for i in tl.static_range(NSEG):
        al = al + (_seg_acts(segs[i], warp, t, toks2, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk,
                             SEG_TPW[i], SEG_BITS[i], NB, ASM),)
    for i in tl.static_range(NSEG):
        dep = _seg_fold(dep, wl[i], al[i], SEG_TPW[i], SEG_BITS[i], NB, True)
    dep = dep & zero
    zf = tl.zeros([NT], tl.float32)
    ys = ()
    for i in tl.static_range(8 * NB):
        ys = ys + (zf,)
    for i in tl.static_range(NSEG):
        ys = _seg_tiles(ys, segs[i], warp, wl[i], al[i], dep, SEG_TPW[i], SEG_BITS[i], NB, ASM)
    sums = _warp_sums(ys, NW, NB)  # the warps' sums of the lane's 8 NB outputs
    ln = tl.arange(0, 32)
    lt = ln % 4
    base = tl.program_id(0) * 32 + ln - lt  # the lane's first row, unclamped
    for n in tl.static_range(NB):
        for b in tl.static_range(2):
            for r in tl.static_range(2):
                for u in tl.static_range(2):
                    _store(sums[4 * (2 * n + b) + 2 * r + u] * XSCALE_INV, 8 * n + 2 * lt + u, base + 2 * b + r, M,
                           out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, NS, HAS_ROWPERM, HAS_BIAS)
