"""One-output-row-per-thread half2 GEMV for ``M == 1`` (path ``"gv"``), layout
``slimq.segmented-bitplane.v1``.

Same arithmetic as ``h2`` (``_h2``: one LOP3 + HSUB2 + HFMA2 per code pair, activations
pre-paired by ``pair_gather_kernel``, half2 sums over one word, then float32), laid out so that
the per-tile overhead is small:

* every thread owns whole columns of a ``[KW, BN]`` word tile (all ``KW`` word rows of its output
  rows): the scale, zero and float32 sums of a row live in one thread, so the tile needs no
  shared-memory layout conversion, barrier or shuffle (``h2`` spent 4 CTA barriers and a
  shuffle tree per tile on them). The word loads stay coalesced: a warp reads 32 consecutive
  words of one row. Triton picks that layout because a runtime ``zero`` (not specialized) is added
  to the row offsets: they stay contiguous but lose their known alignment, so Triton's coalescing
  gives each thread one word per row instead of a vector of 4 rows' words;
* the activation pairs of a word row are read four at a time (``ld.global.nc.v4``: every lane of a
  warp reads the same 16 bytes), not one 32-bit load per pair;
* the group size and the band height are compile-time constants: no integer division per tile,
  and the word rows of a tile are immediate offsets of one address;
* the first tile's weights, scales and zeros are loaded before waiting for the gather
  (programmatic dependent launch), so they arrive while it runs; ``DEPTH = 2`` keeps two tiles of
  words in registers ahead of the one computed.

* two word rows of a 1- or 2-bit tile share one half2 sum (:func:`_rows_per_sum`): half the float32
  conversions, and 80 instead of 119 registers at 2 bits, which lets ``depth=2`` pay there.

3-bit codes (a 2-bit and a 1-bit plane) are multiplied as one code: :func:`_gv_v3` respreads the
1-bit plane per 2-bit word row, :func:`_pair3_fma` shifts it above the 2-bit code (5 instructions per
pair instead of 6 for two plane passes, and one pass of activation loads).

With ``GATHER`` (``KernelConfig(gather=True)``) every program pairs its own columns of ``x``
(:func:`_gv_gather`) instead of reading a ``pair_gather_kernel`` pass: one launch per call, which pays
on small layers (KERNEL_NOTES, run 27).

Measured on an H200 (benchmarks/KERNEL_NOTES.md, runs 18-31): 2.2 instructions per weight at 2 bits
(``h2``: 2.9), 3.4 at 3 bits (``h2``: 4.9); against ``h2``, 7-14% less time on 2-bit layers, 10-22% on
3-bit and 4-23% on SliM layers; ``h2`` stays faster on 4-bit layers of the large shapes.

Requirements: those of ``h2`` (segments on 32-column boundaries, ``BK`` divides the group size).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import (
    _c3, _lo_hi_f32, _pair_cols, _pair_src, _put_pairs, _slot, _store_pairs, _x_at, code3_exact, code3_parts,
    half2_sum_f32, pair_fma,
)
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tiles import pdl_wait, plane_coef, plane_rows, plane_width, store_rows

__all__ = ["gv_kernel"]


@triton.constexpr_function
def _seg_depth(depth, bits):
    """A segment's look-ahead: ``depth`` for 1- and 2-bit codes, 1 for wider ones (their loops need
    the registers: two tiles ahead made 3-bit layers 10-27% slower, runs 19 and 26)."""
    return int(depth) if int(bits) <= 2 else 1


@triton.constexpr_function
def _first(flag, i):
    """``flag`` for the first segment (``i == 0``) only."""
    return bool(flag) and int(i) == 0


@triton.constexpr_function
def _ld_asm(v, nc):
    """PTX loading ``v`` (2 or 4) 32-bit values from ``[$v]`` into ``$0..``: through the read-only
    (non-coherent) path when ``nc``, else a plain load that sees this CTA's own earlier stores."""
    v = int(v)
    regs = ", ".join(f"${i}" for i in range(v))
    return f"ld.global{'.nc' if nc else ''}.v{v}.b32 {{{regs}}}, [${v}];"


@triton.jit
def _quad(p, V: tl.constexpr, ASM: tl.constexpr, NC: tl.constexpr = True):
    """Activation pairs ``p[0..V)`` (int32 half2 bit patterns; ``V`` 2 or 4; with ``V == 2`` the last
    two are copies): one vector load per element of the pointer tensor ``p`` under ASM (``NC``: through
    the read-only path; not for pairs this kernel wrote itself)."""
    if ASM:
        if V == 4:
            a, b, c, d = tl.inline_asm_elementwise(
                _ld_asm(4, NC), "=r,=r,=r,=r,l", [p],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            a, b = tl.inline_asm_elementwise(
                _ld_asm(2, NC), "=r,=r,l", [p], dtype=(tl.int32, tl.int32), is_pure=True,
                pack=1)
            c = a
            d = b
    else:
        a = tl.load(p)
        b = tl.load(p + 1)
        if V == 4:
            c = tl.load(p + 2)
            d = tl.load(p + 3)
        else:
            c = a
            d = b
    return a, b, c, d


@triton.jit
def _gv_step(acc2, acc_lo, acc_hi, words, sh, x2, I: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr):
    """Code pair ``I`` of every word times its activation pair ``x2``."""
    return pair_fma(acc2, acc_lo, acc_hi, _pair_src(words, sh, I, W), x2, I, W, ASM)


@triton.constexpr_function
def _rows_per_sum(w, kw):
    """Word rows whose products share one half2 sum before it goes to float32: 2 for 1- and 2-bit
    planes (32 or 16 products of codes <= 3 per lane, as many code-units as 16 products of 2-bit
    codes: the half2 bound on activations stays that of ``h2``), 1 for wider codes."""
    return 2 if int(w) <= 2 and int(kw) >= 2 else 1


@triton.jit
def _halves(t, KW: tl.constexpr):
    """Rows ``[0, KW/2)`` and ``[KW/2, KW)`` of ``t [KW, X]`` (in-thread rows: no data movement)."""
    return tl.split(tl.permute(tl.reshape(t, [2, KW // 2, t.shape[1]]), (1, 2, 0)))


@triton.jit
def _gv_rows(acc2, acc_lo, acc_hi, words, xrow, W: tl.constexpr, ASM: tl.constexpr, NC: tl.constexpr):
    """``acc2 += sum_e q_e x_e`` over every pair of every word of ``words`` (half2)."""
    H: tl.constexpr = 16 // W
    V: tl.constexpr = 4 if H >= 4 else 2
    sh = words >> 8
    for q in tl.static_range(H // V):
        x0, x1, x2, x3 = _quad(xrow + q * V, V, ASM, NC)
        acc2, acc_lo, acc_hi = _gv_step(acc2, acc_lo, acc_hi, words, sh, x0, q * V, W, ASM)
        acc2, acc_lo, acc_hi = _gv_step(acc2, acc_lo, acc_hi, words, sh, x1, q * V + 1, W, ASM)
        if V == 4:
            acc2, acc_lo, acc_hi = _gv_step(acc2, acc_lo, acc_hi, words, sh, x2, q * V + 2, W, ASM)
            acc2, acc_lo, acc_hi = _gv_step(acc2, acc_lo, acc_hi, words, sh, x3, q * V + 3, W, ASM)
    return acc2, acc_lo, acc_hi


@triton.jit
def _gv_plane(words, xrow, W: tl.constexpr, ASM: tl.constexpr, NC: tl.constexpr):
    """float32 ``[KW / R, BN]``: ``sum_e q_e x_e`` of every ``R`` words of one plane tile
    (:func:`_rows_per_sum`; rows ``r`` and ``r + KW / R`` share a half2 sum); ``xrow [KW, 1]`` points at
    the first activation pair of each word row."""
    KW: tl.constexpr = words.shape[0]
    if _rows_per_sum(W, KW) == 2:
        wa, wb = _halves(words, KW)
        xa, xb = _halves(xrow, KW)
        acc2 = tl.zeros(wa.shape, tl.int32)  # half2 (+0, +0)
        acc_lo = tl.zeros(wa.shape, tl.float32)  # interpreter path
        acc_hi = tl.zeros(wa.shape, tl.float32)
        acc2, acc_lo, acc_hi = _gv_rows(acc2, acc_lo, acc_hi, wa, xa, W, ASM, NC)
        acc2, acc_lo, acc_hi = _gv_rows(acc2, acc_lo, acc_hi, wb, xb, W, ASM, NC)
    else:
        acc2 = tl.zeros(words.shape, tl.int32)
        acc_lo = tl.zeros(words.shape, tl.float32)
        acc_hi = tl.zeros(words.shape, tl.float32)
        acc2, acc_lo, acc_hi = _gv_rows(acc2, acc_lo, acc_hi, words, xrow, W, ASM, NC)
    return half2_sum_f32(acc2, acc_lo, acc_hi, ASM)


@triton.constexpr_function
def _merge3(bits):
    """Whether ``bits``-bit codes (a 2-bit and a 1-bit plane) are multiplied as one 3-bit code."""
    return int(bits) == 3


@triton.jit
def _pair3_fma(acc2, acc_lo, acc_hi, words, sh, v, x2, I: tl.constexpr, ASM: tl.constexpr):
    """3-bit pair ``I``: ``acc2 += (q_I, q_{I+8}) * x2`` with ``q = q0 + 4 q1``, ``q0`` from the 2-bit
    ``words`` (or ``sh = words >> 8``) and ``q1`` from the virtual 1-bit words ``v`` (slot ``i`` at
    bit ``i`` and ``16 + i``, :func:`_gv_v3`): ``_h2.code3_parts`` (one SHF), two LOP3 build the half2
    ``(2^(10-p) + q)``, one HSUB2 and one HFMA2 as for 2 bits (5 instructions per pair instead of 6 for
    two plane passes). Else the float32 emulation in ``acc_lo`` / ``acc_hi``."""
    src, sv = code3_parts(words, sh, v, I, ASM)
    q2, x2 = tl.broadcast(src, x2)
    v2, x2 = tl.broadcast(sv, x2)
    if ASM:
        acc2 = tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, $3, $5, 0xEA; lop3.b32 t, $2, $4, t, 0xEA; sub.f16x2 t, t, $5; "
            "fma.rn.f16x2 $0, t, $6, $7; }",
            "=r,r,r,r,r,r,r,r",
            [q2, v2, tl.full(q2.shape, _c3(I, "m0"), tl.int32), tl.full(q2.shape, _c3(I, "m1"), tl.int32),
             tl.full(q2.shape, _c3(I, "magic"), tl.int32), x2, acc2],
            dtype=tl.int32, is_pure=True, pack=1)
    else:
        q_lo, q_hi = code3_exact(q2, v2, I)
        x_lo, x_hi = _lo_hi_f32(x2)
        acc_lo += q_lo.to(tl.float32) * x_lo
        acc_hi += q_hi.to(tl.float32) * x_hi
    return acc2, acc_lo, acc_hi


@triton.jit
def _gv_plane3(words, v, xrow, ASM: tl.constexpr, NC: tl.constexpr):
    """float32 ``[KW, BN]``: ``sum_e q_e x_e`` of every 2-bit word with its 1-bit partners ``v`` as
    3-bit codes; ``xrow [KW, 1]`` points at each word row's first (2-bit) activation pair."""
    sh = words >> 8
    acc2 = tl.zeros(words.shape, tl.int32)
    acc_lo = tl.zeros(words.shape, tl.float32)
    acc_hi = tl.zeros(words.shape, tl.float32)
    for q in tl.static_range(2):
        x0, x1, x2, x3 = _quad(xrow + q * 4, 4, ASM, NC)
        acc2, acc_lo, acc_hi = _pair3_fma(acc2, acc_lo, acc_hi, words, sh, v, x0, q * 4, ASM)
        acc2, acc_lo, acc_hi = _pair3_fma(acc2, acc_lo, acc_hi, words, sh, v, x1, q * 4 + 1, ASM)
        acc2, acc_lo, acc_hi = _pair3_fma(acc2, acc_lo, acc_hi, words, sh, v, x2, q * 4 + 2, ASM)
        acc2, acc_lo, acc_hi = _pair3_fma(acc2, acc_lo, acc_hi, words, sh, v, x3, q * 4 + 3, ASM)
    return half2_sum_f32(acc2, acc_lo, acc_hi, ASM)


@triton.jit
def _gv_v3(seg, k0, cols, ok, BK: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """int32 ``[BK / 16, BN]``: for 2-bit word row ``r`` of a 3-bit tile at ``k0``, the 16 bits of its
    1-bit plane (half ``r % 2`` of 1-bit word ``r // 2``) respread so that slot ``i`` sits at bit ``i``
    and slot ``i + 8`` at bit ``16 + i``: one load per row (the two rows of a word hit L1 for the
    second) and one PRMT whose selector depends only on the row; ``ok`` the 2-bit rows' load mask."""
    r = tl.arange(0, BK // 16)
    w = tl.load(seg[5] + (k0 // 32) * NS + cols[None, :] + ((r // 2) * NS)[:, None], mask=ok, other=0)
    h = (r % 2)[:, None]
    if ASM:  # bytes (2h, -, 2h + 1, -) of w, zeros in between
        sel = tl.zeros_like(w) + (0x4140 + 0x0202 * h)
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r", [w, sel], dtype=tl.int32, is_pure=True,
                                         pack=1)
    else:
        u = (w >> (16 * h)) & 0xFFFF
        return (u & 0xFF) | ((u >> 8) << 16)


@triton.jit
def _gv_words(seg, k0, cols, m, P: tl.constexpr, BITS: tl.constexpr, BK: tl.constexpr, NS: tl.constexpr,
              FULL: tl.constexpr):
    """int32 words ``[KW, BN]`` of plane ``P`` for segment columns ``[k0, k0 + BK)`` (``cols`` the rows'
    offsets, alignment hidden; ``m`` the rows' mask). The row stride ``NS`` is a constant, so the word
    rows are immediate offsets of one address. Unless FULL, word rows past the segment read 0."""
    E: tl.constexpr = 32 // plane_width(BITS, P)
    r = tl.arange(0, plane_rows(BITS, P, BK))
    ptrs = seg[4 + P] + (k0 // E) * NS + cols[None, :] + r[:, None] * NS
    return tl.load(ptrs, mask=_row_mask(seg, k0, m, r, E, FULL), other=0)


@triton.jit
def _row_mask(seg, k0, m, r, E: tl.constexpr, FULL: tl.constexpr):
    """``[KW, BN]`` load mask of word rows ``r`` (``E`` codes per word): the rows' mask ``m``, and unless
    FULL, rows inside the segment."""
    if FULL:
        return m[None, :] & (r >= 0)[:, None]
    else:
        return m[None, :] & (k0 // E + r < (seg[1] + E - 1) // E)[:, None]


@triton.jit
def _gv_loads(seg, k0, valid, cols, offs_n, BITS: tl.constexpr, BK: tl.constexpr, GS: tl.constexpr,
              NS: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """The weight-side loads of one tile (words of every plane, scale, zero; for 3-bit codes the 2-bit
    words and their virtual 1-bit partners, :func:`_gv_v3`); zeros unless ``valid``."""
    m = offs_n < tl.where(valid, NS, 0)
    w0 = _gv_words(seg, k0, cols, m, 0, BITS, BK, NS, FULL)
    if _merge3(BITS):
        w1 = _gv_v3(seg, k0, cols, _row_mask(seg, k0, m, tl.arange(0, BK // 16), 16, FULL), BK, NS, ASM)
    elif plane_width(BITS, 1) > 0:
        w1 = _gv_words(seg, k0, cols, m, 1, BITS, BK, NS, FULL)
    else:
        w1 = w0
    if plane_width(BITS, 2) > 0:
        w2 = _gv_words(seg, k0, cols, m, 2, BITS, BK, NS, FULL)
    else:
        w2 = w0
    g = k0 // GS
    s = tl.load(seg[2] + g * NS + cols, mask=m, other=0.0).to(tl.float32)
    z = tl.load(seg[3] + g * NS + cols, mask=m, other=0.0).to(tl.float32)
    return w0, w1, w2, s, z


@triton.jit
def _gv_xsum(xs_ptr, c0, ks, k0, BK: tl.constexpr, FULL: tl.constexpr):
    """Scalar float32 sum of the tile's (scaled fp16) activations, from the 32-column block sums."""
    p = xs_ptr + c0 // 32 + k0 // 32
    t = tl.load(p)
    for b in tl.static_range(1, BK // 32):
        if FULL:
            t += tl.load(p + b)
        else:
            t += tl.load(p + b, mask=k0 + b * 32 < ks, other=0.0)
    return t


@triton.jit
def _gv_plane_sum(words, v, seg, k0, xw_ptr, stride_wb, P: tl.constexpr, BITS: tl.constexpr, BK: tl.constexpr,
                  ASM: tl.constexpr, FULL: tl.constexpr, NC: tl.constexpr):
    """float32 ``[BN]``: plane ``P``'s ``sum_k x_k q_k`` over the tile, unscaled (3-bit codes: plane 0
    with its 1-bit partners ``v``, the whole code)."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    KW: tl.constexpr = plane_rows(BITS, P, BK)
    r = tl.arange(0, KW)
    if not FULL:  # rows past the segment hold zero words; read the last row's (written) pairs for them
        r = tl.minimum(r, (seg[1] + E - 1) // E - 1 - k0 // E)
    xrow = xw_ptr + _slot(W) * stride_wb + seg[0] // 2 + k0 // 2 + r[:, None] * H
    if _merge3(BITS):
        return tl.sum(_gv_plane3(words, v, xrow, ASM, NC), axis=0)
    else:
        return tl.sum(_gv_plane(words, xrow, W, ASM, NC), axis=0)


@triton.jit
def _gv_tile(y, w0, w1, w2, s, z, seg, k0, xw_ptr, stride_wb, xs_ptr, BITS: tl.constexpr, BK: tl.constexpr,
             ASM: tl.constexpr, FULL: tl.constexpr, NC: tl.constexpr):
    """``y [BN]`` plus the tile's ``s * (sum_p 2**shift_p sum_k x_k plane_p[k] - z sum_k x_k)``."""
    t = _gv_plane_sum(w0, w1, seg, k0, xw_ptr, stride_wb, 0, BITS, BK, ASM, FULL, NC)
    if _merge3(BITS):
        pass  # the 1-bit plane went in with the 2-bit one
    elif plane_width(BITS, 1) > 0:
        t += plane_coef(BITS, 1) * _gv_plane_sum(w1, w1, seg, k0, xw_ptr, stride_wb, 1, BITS, BK, ASM, FULL, NC)
    if plane_width(BITS, 2) > 0:
        t += plane_coef(BITS, 2) * _gv_plane_sum(w2, w2, seg, k0, xw_ptr, stride_wb, 2, BITS, BK, ASM, FULL, NC)
    return y + s * (t - z * _gv_xsum(xs_ptr, seg[0], seg[1], k0, BK, FULL))


@triton.jit
def _pair_perm(perm_ptr, j, K, W: tl.constexpr):
    """``col_perm`` of both columns of activation pairs ``j`` of width ``W`` (``_h2._pair_cols``); -1 past
    ``K``. Weight-side data: loaded before the wait for the launch that writes ``x``."""
    c_lo, c_hi = _pair_cols(j, W)
    return tl.load(perm_ptr + c_lo, mask=c_lo < K, other=-1), tl.load(perm_ptr + c_hi, mask=c_hi < K, other=-1)


@triton.jit
def _gv_gather_chunk(x_ptr, perm_ptr, K, xw_ptr, stride_wb, xs_ptr, c, c_end, ilo, ihi, BITS: tl.constexpr,
                     XSCALE: tl.constexpr, CH: tl.constexpr):
    """Columns ``[c, c + CH)`` (up to ``c_end``) of :func:`_gv_gather`; ``ilo``/``ihi`` their first plane
    width's :func:`_pair_perm`."""
    j_end = (c_end + 31) // 32 * 16
    W0: tl.constexpr = plane_width(BITS, 0)
    j = c // 2 + tl.arange(0, CH // 2)
    lo = _x_at(x_ptr, 0, ilo, ilo >= 0, XSCALE)
    hi = _x_at(x_ptr, 0, ihi, ihi >= 0, XSCALE)
    bi = c // 32 + tl.arange(0, CH // 32)
    sums = tl.sum(tl.reshape(lo.to(tl.float32) + hi.to(tl.float32), [CH // 32, 16]), axis=1)
    tl.store(xs_ptr + bi, sums, mask=bi * 32 < c_end)
    _put_pairs(lo, hi, xw_ptr, 0, stride_wb, 0, j, j_end, W0)
    if plane_width(BITS, 1) > 0 and not _merge3(BITS):
        _store_pairs(x_ptr, 0, perm_ptr, xw_ptr, 0, stride_wb, 0, j, j_end, K, XSCALE, plane_width(BITS, 1))
    if plane_width(BITS, 2) > 0:
        _store_pairs(x_ptr, 0, perm_ptr, xw_ptr, 0, stride_wb, 0, j, j_end, K, XSCALE, plane_width(BITS, 2))


@triton.jit
def _gv_gather(x_ptr, perm_ptr, K, xw_ptr, stride_wb, xs_ptr, c0, c_end, ilo, ihi, BITS: tl.constexpr,
               XSCALE: tl.constexpr, CH: tl.constexpr):
    """``pair_gather_kernel``'s work for this program's columns ``[c0, c_end)`` of one segment: the
    activation pairs of every plane width it reads and the 32-column sums (from the first width's pairs:
    16 pairs cover a 32-column block), into the workspace, ``CH`` columns at a time (``ilo``/``ihi``: the
    first chunk's :func:`_pair_perm`, loaded early). Programs sharing a K range write the same values."""
    _gv_gather_chunk(x_ptr, perm_ptr, K, xw_ptr, stride_wb, xs_ptr, c0, c_end, ilo, ihi, BITS, XSCALE, CH)
    for c in range(c0 + CH, c_end, CH):
        nlo, nhi = _pair_perm(perm_ptr, c // 2 + tl.arange(0, CH // 2), tl.minimum(K, c_end), plane_width(BITS, 0))
        _gv_gather_chunk(x_ptr, perm_ptr, K, xw_ptr, stride_wb, xs_ptr, c, c_end, nlo, nhi, BITS, XSCALE, CH)


@triton.jit
def _gv_segment(y, seg, xw_ptr, stride_wb, xs_ptr, cols, offs_n, pid_k, split_k, x_ptr, perm_ptr, K,
                BITS: tl.constexpr, BK: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr,
                WAIT: tl.constexpr, DEPTH: tl.constexpr, GATHER: tl.constexpr, XSCALE: tl.constexpr):
    """``y [BN]`` plus this program's share of one segment. The weight loads of the next ``DEPTH`` (1 or
    2) full tiles are issued before the current one is computed (register double / triple buffering).
    WAIT: wait for the launch before (PDL) after the first weight loads. GATHER: pair this program's
    activations itself (:func:`_gv_gather`, then a CTA barrier) instead of reading a gather pass's."""
    ks = seg[1]
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    t_full = tl.minimum(t_hi, ks // BK)
    w0, w1, w2, s, z = _gv_loads(seg, t_lo * BK, t_lo < t_full, cols, offs_n, BITS, BK, GS, NS, ASM, True)
    if DEPTH == 2:
        v0, v1, v2, vs, vz = _gv_loads(seg, (t_lo + 1) * BK, t_lo + 1 < t_full, cols, offs_n, BITS, BK, GS, NS,
                                       ASM, True)
    if GATHER:  # the first chunk's column order is weight-side: load it before the wait
        CH: tl.constexpr = 512
        c0 = seg[0] + t_lo * BK
        c_end = seg[0] + tl.minimum(t_hi * BK, ks)
        ilo, ihi = _pair_perm(perm_ptr, c0 // 2 + tl.arange(0, CH // 2), tl.minimum(K, c_end), plane_width(BITS, 0))
    pdl_wait(WAIT)
    if GATHER:
        _gv_gather(x_ptr, perm_ptr, K, xw_ptr, stride_wb, xs_ptr, c0, c_end, ilo, ihi, BITS, XSCALE, CH)
        tl.debug_barrier()
    for t in range(t_lo, t_full):
        c0w, c1w, c2w, cs, cz = w0, w1, w2, s, z
        if DEPTH == 2:
            w0, w1, w2, s, z = v0, v1, v2, vs, vz
            v0, v1, v2, vs, vz = _gv_loads(seg, (t + 2) * BK, t + 2 < t_full, cols, offs_n, BITS, BK, GS, NS, ASM, True)
        else:
            w0, w1, w2, s, z = _gv_loads(seg, (t + 1) * BK, t + 1 < t_full, cols, offs_n, BITS, BK, GS, NS, ASM, True)
        y = _gv_tile(y, c0w, c1w, c2w, cs, cz, seg, t * BK, xw_ptr, stride_wb, xs_ptr, BITS, BK, ASM, True,
                     not GATHER)
    if (t_hi > t_lo) & (t_hi * BK > ks):  # the segment's last tile is partial and ours
        k0 = (t_hi - 1) * BK
        w0, w1, w2, s, z = _gv_loads(seg, k0, t_hi > t_lo, cols, offs_n, BITS, BK, GS, NS, ASM, False)
        y = _gv_tile(y, w0, w1, w2, s, z, seg, k0, xw_ptr, stride_wb, xs_ptr, BITS, BK, ASM, False, not GATHER)
    return y


@triton.jit(do_not_specialize=["r0", "split_k", "zero"])
def gv_kernel(xw_ptr, stride_wb, xs_ptr, out_ptr, acc_ptr, rowperm_ptr, bias_ptr, r0, split_k, cnt_ptr, zero, segs,
              x_ptr, perm_ptr, K, SEG_BITS: tl.constexpr, NSEG: tl.constexpr, NS: tl.constexpr, BN: tl.constexpr,
              BK: tl.constexpr, GS: tl.constexpr, ATOMIC: tl.constexpr, HAS_ROWPERM: tl.constexpr,
              HAS_BIAS: tl.constexpr, FUSED: tl.constexpr, ASM: tl.constexpr, XSCALE_INV: tl.constexpr,
              DEPTH: tl.constexpr = 1, PDL: tl.constexpr = False, GATHER: tl.constexpr = False):
    """Grid ``(cdiv(NS, BN), split_k)``, one token: ``out[0, rows] = x W^T`` for the band's rows
    ``r0 + [0, NS)`` (a constant: one compiled variant per band height). ``zero`` must be 0 (it only
    hides the rows' alignment from the compiler). Activations come pre-paired from
    ``pair_gather_kernel`` (its row 0), or with GATHER every program pairs its own columns of
    ``x [1, K]`` (``perm_ptr`` the layer's column order) into the same workspace buffers first: one
    launch per call. ``ASM``: half2 inline PTX (else a float32 emulation for the interpreter)."""
    pid_k = tl.program_id(1)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    mask_n = offs_n < NS
    cols = offs_n + zero
    y = tl.zeros([BN], tl.float32)
    for i in tl.static_range(NSEG):
        y = _gv_segment(y, segs[i], xw_ptr, stride_wb, xs_ptr, cols, offs_n, pid_k, split_k, x_ptr, perm_ptr, K,
                        SEG_BITS[i], BK, GS, NS, ASM, _first(PDL, i), _seg_depth(DEPTH, SEG_BITS[i]), GATHER,
                        1.0 / XSCALE_INV)
    offs_m = tl.arange(0, 1)
    store_rows((y * XSCALE_INV)[None, :], out_ptr, 0, acc_ptr, 0, rowperm_ptr, bias_ptr, r0, offs_m, offs_m < 1,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)
