"""One token on small layers: ``mv``'s tensor-core tiles with the warps of a program splitting K and every
tile's loads issued up front (``KernelConfig("mv", k_warps=NW)``), layout ``slimq.segmented-bitplane.v1``.

Why: on layers of a few million weights (4096 x 4096: 4.2 MB of 2-bit codes) a one-token call is a chain of
memory round trips, not a stream: ``gv`` and ``mv`` split K over programs, so every output row is finished
through float32 atomics, a tile counter and a last program that reads the sums back (three dependent trips to
L2), and each program's tile loop waits for its next tile's words once per tile (one tile ahead). Here a
program owns 32 output rows and all of K: its ``NW`` warps take ``SEG_TPW[i]`` consecutive 128-column tiles
of each segment ``i``, issue the word, scale and zero loads of all of them before waiting for the gather
(PDL), then every tile's activation loads, then compute them (``_mv``'s mapping and arithmetic per warp and
tile), and sum the warps' rows through shared memory (a CTA reduction): no atomics, no counters, one
launch after the gather.

Registers grow with the tiles per warp (words, then 16 activation registers per tile and plane width), so the
dispatch takes it only where a few tiles per warp cover K (:func:`slimq.kernels.triton._dispatch._m1_config`);
:func:`slimq.kernels.triton._plan.mv_launches` refuses more than ``MVS_MAX_TILES`` per warp. Requirements are
``mv``'s (``_support.mv_supported``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._mv import _TILE, _act_loads, _tile, _weight_loads
from slimq.kernels.triton._mvx import tile_direct, tile_source, x_quads
from slimq.kernels.triton._tiles import plane_width, store_rows

__all__ = ["mvs_kernel", "MVS_MAX_TILES"]

MVS_MAX_TILES = 8  # K tiles per warp (summed over segments) whose loads one launch keeps in registers


@triton.jit
def _seg_weight_loads(seg, warp, t, row4, rows, TPW: tl.constexpr, BITS: tl.constexpr, GS: tl.constexpr,
                      NS: tl.constexpr, ASM: tl.constexpr):
    """The weight-side loads of the warp's ``TPW`` tiles of one segment (tiles ``warp * TPW + i``, clamped
    to the segment's last: a warp past the end reloads it and :func:`_seg_tiles` drops the sums)."""
    last = seg[1] // _TILE - 1
    out = ()
    for i in tl.static_range(TPW):
        k0 = tl.minimum(warp * TPW + i, last) * _TILE
        out = out + (_weight_loads(seg, k0, t, row4, rows, BITS, GS, NS, ASM),)
    return out


@triton.jit
def _seg_sources(seg, warp, perm_ptr, TPW: tl.constexpr, DIRECT_PERM: tl.constexpr):
    """The column of ``x`` each of the warp's tiles of one segment starts at: its storage column, or
    (``DIRECT_PERM``: ``col_perm`` moves whole tiles) the storage column's source, one load per tile (issued
    before the weights', so that it is back before the tile's ``x`` is loaded)."""
    last = seg[1] // _TILE - 1
    out = ()
    for i in tl.static_range(TPW):
        c = seg[0] + tl.minimum(warp * TPW + i, last) * _TILE
        out = out + (tile_source(perm_ptr, c, DIRECT_PERM),)
    return out


@triton.jit
def _seg_act_loads(seg, warp, t, xw_ptr, stride_wb, xc_ptr, stride_cs, src, TPW: tl.constexpr, BITS: tl.constexpr,
                   DIRECT: tl.constexpr, ASM: tl.constexpr):
    """The activation-side loads of the same tiles: the gather's pairs and sums, or (``DIRECT``) the lane's 32
    columns of ``x`` (``xw_ptr``: ``x`` as int32) from the tiles' source columns ``src``."""
    last = seg[1] // _TILE - 1
    out = ()
    for i in tl.static_range(TPW):
        if DIRECT:
            out = out + (x_quads(xw_ptr, src[i], t, ASM),)
        else:
            k0 = tl.minimum(warp * TPW + i, last) * _TILE
            out = out + (_act_loads(seg, k0, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS, ASM),)
    return out


@triton.jit
def _bits32(v):
    """``v`` (int32, float32 or float16) as int32 bits."""
    if v.dtype == tl.float16:
        return v.to(tl.int16, bitcast=True).to(tl.int32)
    elif v.dtype == tl.float32:
        return v.to(tl.int32, bitcast=True)
    else:
        return v


@triton.jit
def _fold(d, vals, N: tl.constexpr):
    """``d`` xor the bits of the ``N`` values of the flat tuple ``vals``."""
    for i in tl.static_range(N):
        d = d ^ _bits32(vals[i])
    return d


@triton.jit
def _fold_weights(d, wl, BITS: tl.constexpr):
    """``d`` xor every value one tile's weight-side loads returned."""
    words, s, z = wl
    for p in tl.static_range(3):
        for i in tl.static_range(plane_width(BITS, p)):
            d = _fold(d, words[p][i], 4)
    return d ^ _bits32(s) ^ _bits32(z)


@triton.jit
def _fold_acts(d, al, DIRECT: tl.constexpr):
    """``d`` xor every value one tile's activation-side loads returned."""
    if DIRECT:
        d = _fold(d, al, 16)
    else:
        for p in tl.static_range(3):
            d = _fold(d, al[p], len(al[p]))
        d = d ^ _bits32(al[3]) ^ _bits32(al[4])
    return d


@triton.jit
def _hold_words(wl, dep, BITS: tl.constexpr):
    """One tile's weight-side loads with ``dep`` (0 at run time, unknown to the compiler) added to every word:
    each word then depends on every load of the program, so that ptxas issues all of them before the first MMA
    (it otherwise moves loads down next to their use, which leaves one memory round trip per tile)."""
    words, s, z = wl
    out = ()
    for p in tl.static_range(3):
        plane = ()
        for i in tl.static_range(plane_width(BITS, p)):
            q = words[p][i]
            plane = plane + ((q[0] + dep, q[1] + dep, q[2] + dep, q[3] + dep),)
        out = out + (plane,)
    return out, s, z


@triton.jit
def _seg_fold_weights(d, wl, TPW: tl.constexpr, BITS: tl.constexpr):
    """``d`` xor every value the weight-side loads of the warp's tiles of one segment returned."""
    for i in tl.static_range(TPW):
        d = _fold_weights(d, wl[i], BITS)
    return d


@triton.jit
def _seg_fold_acts(d, al, TPW: tl.constexpr, DIRECT: tl.constexpr):
    """``d`` xor every value the activation-side loads of the warp's tiles of one segment returned."""
    for i in tl.static_range(TPW):
        d = _fold_acts(d, al[i], DIRECT)
    return d


@triton.jit
def _pdl_wait_after(dep, PDL: tl.constexpr):
    """``griddepcontrol.wait`` predicated on ``dep == 0`` (always, at run time): ptxas otherwise moves the word
    loads written before the wait below it, so that they no longer overlap the gather."""
    if PDL:
        tl.inline_asm_elementwise("{ .reg .pred p; setp.eq.s32 p, $1, 0; @p griddepcontrol.wait; mov.b32 $0, $1; }",
                                  "=r,r", [dep], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _seg_tiles(y, seg, warp, t, wl, al, dep, TPW: tl.constexpr, BITS: tl.constexpr, DIRECT: tl.constexpr,
               ASM: tl.constexpr, XBF16: tl.constexpr = False):
    """``y`` plus the sums of the warp's tiles of one segment that lie inside it (``XBF16``: ``DIRECT`` reads
    bfloat16 ``x``)."""
    for i in tl.static_range(TPW):
        if DIRECT:
            yi = tile_direct(y, _hold_words(wl[i], dep, BITS), al[i], t, BITS, ASM, XBF16)
        else:
            yi = _tile(y, _hold_words(wl[i], dep, BITS), al[i], t, BITS, ASM)
        y = tl.where(warp * TPW + i < seg[1] // _TILE, yi, y)
    return y


@triton.jit(do_not_specialize=["r0", "zero"])
def mvs_kernel(xw_ptr, stride_wb, xc_ptr, stride_cs, out_ptr, rowperm_ptr, bias_ptr, r0, zero, segs, perm_ptr,
               SEG_BITS: tl.constexpr, SEG_TPW: tl.constexpr, NSEG: tl.constexpr, NS: tl.constexpr,
               NW: tl.constexpr, GS: tl.constexpr, HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr,
               ASM: tl.constexpr, XSCALE_INV: tl.constexpr, PDL: tl.constexpr = False, DIRECT: tl.constexpr = False,
               DIRECT_PERM: tl.constexpr = False, XBF16: tl.constexpr = False):
    """Grid ``(cdiv(NS, 32),)``, ``num_warps == NW``, one token: ``out[0, rows] = x W^T`` for 32 of the band's
    rows ``r0 + [0, NS)``; warp ``w`` takes tiles ``[w TPW, (w + 1) TPW)`` of each segment (``SEG_TPW``).
    Activation pairs and block sums as ``mv_kernel`` (``mv_gather_kernel``), or (``DIRECT``) ``x`` itself
    (float16, or ``XBF16`` bfloat16), each tile from its storage column or (``DIRECT_PERM``) from ``col_perm``
    (``perm_ptr``) at it; ``zero`` must be 0."""
    NT: tl.constexpr = 32 * NW
    tid = tl.arange(0, NT)
    lane = tid % 32
    warp = tid // 32
    t = tid % 4
    offs_n = tl.program_id(0) * 32 + lane  # every warp: the same 32 rows
    rows = tl.minimum(offs_n, NS - 1) + zero
    row4 = tl.minimum(offs_n - t, NS - 4) + zero
    src = ()
    if DIRECT:
        for i in tl.static_range(NSEG):
            src = src + (_seg_sources(segs[i], warp, perm_ptr, SEG_TPW[i], DIRECT_PERM),)
    else:
        for i in tl.static_range(NSEG):
            src = src + (0,)
    wl = ()
    for i in tl.static_range(NSEG):
        wl = wl + (_seg_weight_loads(segs[i], warp, t, row4, rows, SEG_TPW[i], SEG_BITS[i], GS, NS, ASM),)
    dep = tl.zeros([NT], tl.int32)
    for i in tl.static_range(NSEG):
        dep = _seg_fold_weights(dep, wl[i], SEG_TPW[i], SEG_BITS[i])
    _pdl_wait_after(dep & zero, PDL)
    al = ()
    for i in tl.static_range(NSEG):
        al = al + (_seg_act_loads(segs[i], warp, t, xw_ptr, stride_wb, xc_ptr, stride_cs, src[i], SEG_TPW[i],
                                  SEG_BITS[i], DIRECT, ASM),)
    for i in tl.static_range(NSEG):
        dep = _seg_fold_acts(dep, al[i], SEG_TPW[i], DIRECT)
    dep = dep & zero
    y = tl.zeros([NT], tl.float32)
    for i in tl.static_range(NSEG):
        y = _seg_tiles(y, segs[i], warp, t, wl[i], al[i], dep, SEG_TPW[i], SEG_BITS[i], DIRECT, ASM, XBF16)
    y = tl.sum(tl.reshape(y, [NW, 32]), axis=0) * XSCALE_INV  # the warps' shares of each row
    offs = tl.program_id(0) * 32 + tl.arange(0, 32)
    offs_m = tl.arange(0, 1)
    store_rows(y[None, :], out_ptr, 0, out_ptr, 0, rowperm_ptr, bias_ptr, r0, offs_m, offs_m < 1, offs,
               offs < NS, False, HAS_ROWPERM, HAS_BIAS, out_ptr, 1, False)
