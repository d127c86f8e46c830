"""``mv``'s one-token tile with the activations read straight from ``x`` (no gather launch): for float16 or bfloat16
activations (bfloat16 words rounded to float16 in registers, :func:`f16_words`, as the gather rounds them) and layers whose ``col_perm`` is the identity or moves whole 128-column tiles (SliM's grouping of the bit-widths
without act-order: each tile read from ``col_perm`` at its first storage column, :func:`tile_source`;
``_mv``/``_mvs``, ``DIRECT``).

The gather (``_mv.mv_gather_kernel``) gives ``mv`` two things: each lane's 16 activation pairs per plane width
(pair ``P = i H + j`` of lane ``t``: columns ``c + 32 t + i E + j`` and ``+ H``, ``E = 32 / W``, ``H = E / 2``),
and per 128-column block ``corr = sum_k M_k x_k`` (the magic the codes are read with) and ``sum x``. Here a lane
loads its 32 columns as 16 half2 words ``v[m] = (x[2m], x[2m + 1])`` (four 16-byte loads), and every pair is one
PRMT of two of them (``H`` is even, so both columns of a pair sit in the same half of their words). ``corr``
and ``sum x`` come from one more ``mma`` per k-step whose A rows ``0..7`` hold the k-step's magic (``M_j``, plus
the virtual 1-bit plane's for 3-bit codes: both planes multiply the same pairs) and rows ``8..15`` ones: every
lane then finds ``corr`` in its first accumulator and ``sum x`` in its third, exact products summed in float32
as the MMAs of the codes are. The activations are not scaled (the tensor cores add in float32).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import _pos
from slimq.kernels.triton._mv import (
    _kstep,
    _ld4,
    _mma,
    _plane_mma,
    _shift,
    plane_shifts,
    virtual1,
    vwords,
)
from slimq.kernels.triton._tiles import plane_width

__all__ = ["x_quads", "tile_direct", "tile_source", "corr_magic", "f16_words"]

_ONES = tl.constexpr(0x3C003C00)  # half2 (1, 1)


@triton.constexpr_function
def corr_magic(j, w, c, c1):
    """int32 bits of the half2 ``(M, M)`` for the correction A rows of pair ``j``: the magic ``2**(10 - pos + c)``
    pair ``j`` of a width-``w`` plane is read with, plus (``c1 >= 0``) that of the virtual 1-bit plane of 3-bit
    codes (:func:`slimq.kernels.triton._mv.virtual1`, coefficient ``2**c1``). Raises where the sum is not exact in
    float16."""
    j, w, c, c1 = int(j), int(w), int(c), int(c1)
    e0 = 10 - _pos(j, w) + c  # the sum 2**e0 (+ 2**e1) as a normal float16: exponent e, 10 fraction bits
    e1 = 10 - _pos(j, 1) + c1 if c1 >= 0 else None
    if e1 is None or e1 == e0:  # one power of two
        e, frac = (e0, 0) if e1 is None else (e0 + 1, 0)
    else:
        e, d = max(e0, e1), abs(e0 - e1)
        frac = 1 << (10 - d) if d <= 10 else -1
    if frac < 0 or not -14 <= e <= 15:
        raise ValueError(f"correction magic of pair {j} (width {w}, exponents {e0}, {e1}) is not exact in float16")
    bits = ((e + 15) << 10) | frac
    return bits | (bits << 16)


@triton.jit
def tile_source(perm_ptr, c, PERM: tl.constexpr):
    """The column of ``x`` where the 128-column tile at storage column ``c`` starts: ``c`` itself, or (``PERM``:
    ``col_perm`` moves whole tiles, ``_perm.perm_run``) ``col_perm[c]``, a multiple of 128."""
    if PERM:
        return tl.multiple_of(tl.load(perm_ptr + c), 128)
    else:
        return c


@triton.jit
def x_quads(x32_ptr, c, t, ASM: tl.constexpr):
    """The lane's 32 columns ``[c + 32 t, c + 32 t + 32)`` of ``x`` (float16, read as int32 ``x32_ptr``) as 16
    half2 words (a flat tuple)."""
    p = x32_ptr + c // 2 + t * 16
    v = ()
    for q in tl.static_range(4):
        v = v + _ld4(p + 4 * q, ASM)
    return v


@triton.jit
def _bf16_word_to_f16(v, ASM: tl.constexpr):
    """A word of two bfloat16 as the half2 of the same values, round to nearest (``|x| > 65504`` becomes inf, as in
    the gather's rounding): the halves widened to float32 by a shift and a mask, then one ``cvt.rn.f16x2.f32``."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 lo, hi; shl.b32 lo, $1, 16; and.b32 hi, $1, 0xFFFF0000; cvt.rn.f16x2.f32 $0, hi, lo; }",
            "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        lo = (v << 16).to(tl.float32, bitcast=True).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        hi = (v & -65536).to(tl.float32, bitcast=True).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
        return lo | (hi << 16)


@triton.jit
def f16_words(v, BF16: tl.constexpr, ASM: tl.constexpr):
    """The lane's words of ``x`` (:func:`x_quads`) as half2: as loaded for float16 ``x``, converted (``BF16``) for
    bfloat16."""
    if BF16:
        out = ()
        for i in tl.static_range(len(v)):
            out = out + (_bf16_word_to_f16(v[i], ASM),)
        return out
    else:
        return v


@triton.jit
def _halves(a, b, HI: tl.constexpr, ASM: tl.constexpr):
    """half2 ``(a.lo, b.lo)`` (``HI``: ``(a.hi, b.hi)``): one PRMT."""
    if ASM:
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r",
                                         [a, b, tl.full(a.shape, 0x7632 if HI else 0x5410, tl.int32)],
                                         dtype=tl.int32, is_pure=True, pack=1)
    elif HI:
        return ((a >> 16) & 0xFFFF) | (b & -65536)
    else:
        return (a & 0xFFFF) | (b << 16)


@triton.constexpr_function
def _pair_word(p, w, which):
    """Of pair ``p`` of width ``w`` (columns ``lo = i E + j`` and ``lo + H`` of the lane's 32): the half2 word of
    ``lo`` (``which`` 0), of ``lo + H`` (1), or the half both sit in (2)."""
    e = 32 // int(w)
    h = e // 2
    lo = (int(p) // h) * e + int(p) % h
    return (lo // 2, (lo + h) // 2, lo % 2)[int(which)]


@triton.jit
def _direct_pairs(v, W: tl.constexpr, ASM: tl.constexpr):
    """The lane's 16 activation pairs of width ``W`` (pair ``P = i H + j``: columns ``i E + j`` and ``+ H`` of its
    32) from its half2 words ``v``."""
    out = ()
    for p in tl.static_range(16):
        out = out + (_halves(v[_pair_word(p, W, 0)], v[_pair_word(p, W, 1)], _pair_word(p, W, 2), ASM),)
    return out


@triton.jit
def _plane_mma_c(accs, cacc, words, x, W: tl.constexpr, C: tl.constexpr, C1: tl.constexpr, ONES: tl.constexpr,
                 ASM: tl.constexpr):
    """``_mv._plane_mma`` for a plane with pairs of its own, plus per k-step the correction ``mma`` into ``cacc``
    (module doc; ``C1 >= 0``: the virtual 1-bit plane's magic too, ``ONES``: rows 8-15 sum ``x``)."""
    H: tl.constexpr = 16 // W
    sh = plane_shifts(words, W)
    z = tl.zeros(x[0].shape, tl.int32)
    ones = tl.full(x[0].shape, _ONES if ONES else 0, tl.int32)
    for s in tl.static_range(8):
        accs = _kstep(accs, words[(2 * s) // H], sh[(2 * s) // H], x[2 * s], x[2 * s + 1], (2 * s) % H, W, C, ASM)
        cacc = _mma(z + corr_magic((2 * s) % H, W, C, C1), ones, z + corr_magic((2 * s) % H + 1, W, C, C1), ones,
                    x[2 * s], x[2 * s + 1], cacc, ASM)
    return accs, cacc


@triton.jit
def tile_direct(y, wl, v, t, BITS: tl.constexpr, ASM: tl.constexpr, XBF16: tl.constexpr = False):
    """``_mv._tile`` from the lane's words ``v`` of ``x`` (:func:`x_quads`; ``XBF16``: bfloat16 pairs, rounded to
    float16 here) instead of the gather's pairs and sums."""
    v = f16_words(v, XBF16, ASM)
    words, s, zr = wl
    zero = tl.zeros(s.shape, tl.float32)
    accs = ((zero, zero, zero, zero), (zero, zero, zero, zero))
    cacc = (zero, zero, zero, zero)
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    x0 = _direct_pairs(v, W0, ASM)
    if virtual1(BITS):
        accs, cacc = _plane_mma_c(accs, cacc, words[0], x0, W0, _shift(BITS, 0), _shift(BITS, 1), True, ASM)
        accs = _plane_mma(accs, vwords(words[1][0], ASM), x0, 1, _shift(BITS, 1), ASM, 8)
    else:
        accs, cacc = _plane_mma_c(accs, cacc, words[0], x0, W0, _shift(BITS, 0), -1, True, ASM)
        if W1 > 0:
            accs, cacc = _plane_mma_c(accs, cacc, words[1], _direct_pairs(v, W1, ASM), W1, _shift(BITS, 1), -1,
                                      False, ASM)
    if W2 > 0:
        accs, cacc = _plane_mma_c(accs, cacc, words[2], _direct_pairs(v, W2, ASM), W2, _shift(BITS, 2), -1, False,
                                  ASM)
    acc0, acc1 = accs  # rows 4g, 4g + 1 (block 0), 4g + 2, 4g + 3 (block 1): keep row 4g + t
    a = tl.where(t == 0, acc0[0], tl.where(t == 1, acc0[2], tl.where(t == 2, acc1[0], acc1[2])))
    return y + s.to(tl.float32) * ((a - cacc[0]) - zr.to(tl.float32) * cacc[2])
