"""``mv``'s one-token tile with the activations read straight from ``x`` (no gather launch): for float16 or bfloat16
activations and layers whose ``col_perm`` is the identity or moves whole 128-column tiles (SliM's grouping of the
bit-widths without act-order: each tile read from ``col_perm`` at its first storage column, :func:`tile_source`;
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

bfloat16 ``x`` (``XBF16``) is used as it is: the MMAs take bfloat16 operands, so the codes are read with a
bfloat16 magic, whose mantissa has 7 bits (``_bf16``: pair ``j`` of a width-``w`` plane at bit ``(j % G) w`` of the
word shifted right by ``(j // G) G w``, ``G = 7 // w``): 4-bit words in 4 shifted copies (3 shifts), 2-bit in 3,
1-bit (and 3-bit codes' virtual 1-bit words, :func:`_mv.vwords`) in 3 or 2 (the float16 path: one ``word >> 8``).
The magic is ``2**(7 - p + c)`` (exponent field ``134 - p + c``), the correction rows' constants exact bfloat16
sums (:func:`corr_magic_bf16`), the ones ``0x3F80``. The tile costs a few
more shifts than float16's and no conversion of ``x`` (rounding bfloat16 ``x`` to float16, as the gather does,
cost 3 instructions per word of ``x`` and 8-14% of a decode step's matmul time, run 219).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._bf16 import bf_group, bf_magic, bf_mask2, bf_pos
from slimq.kernels.triton._h2 import _pos
from slimq.kernels.triton._mv import (
    _kstep,
    _ld4,
    _mma,
    _plane_mma,
    _shift,
    lop3_pair,
    plane_shifts,
    virtual1,
    vwords,
)
from slimq.kernels.triton._tiles import plane_width

__all__ = ["x_quads", "tile_direct", "tile_source", "corr_magic", "corr_magic_bf16"]

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


@triton.constexpr_function
def _bf_copies(h, w):
    """Shifted copies of a word that its ``h`` pairs need."""
    return -(-int(h) // bf_group(w))


@triton.constexpr_function
def corr_magic_bf16(j, w, c, c1):
    """:func:`corr_magic` for bfloat16 reads: the magic of pair ``j`` (plus the virtual 1-bit plane's) as an exact
    bfloat16 pair; raises where the sum is not exact."""
    j, w, c, c1 = int(j), int(w), int(c), int(c1)
    e0 = 7 - bf_pos(j, w) + c
    e1 = 7 - bf_pos(j, 1) + c1 if c1 >= 0 else None
    if e1 is None or e1 == e0:
        e, frac = (e0, 0) if e1 is None else (e0 + 1, 0)
    else:
        e, d = max(e0, e1), abs(e0 - e1)
        frac = 1 << (7 - d) if d <= 7 else -1
    if frac < 0:
        raise ValueError(f"correction magic of pair {j} (width {w}, exponents {e0}, {e1}) is not exact in bfloat16")
    bits = ((e + 127) << 7) | frac
    return bits | (bits << 16)


@triton.jit
def _bf_copies_of(words, H: tl.constexpr, W: tl.constexpr):
    """Each of the lane's words of a plane (a tuple of 4-tuples, one per word row) in the shifted copies its ``H``
    pairs are read from: ``out[i][k]`` is word row ``i`` shifted right by ``k G W``."""
    G: tl.constexpr = bf_group(W)
    out = ()
    for i in tl.static_range(len(words)):
        w = words[i]
        cp = ()
        for k in tl.static_range(_bf_copies(H, W)):
            cp = cp + ((w[0] >> (k * G * W), w[1] >> (k * G * W), w[2] >> (k * G * W), w[3] >> (k * G * W)),)
        out = out + (cp,)
    return out


@triton.jit
def _bf_pair(src, j: tl.constexpr, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """The bfloat16 pair ``(M + 2**C q_j, M + 2**C q_{j+H})`` from ``src``, the copy of the word pair ``j`` is read
    from: one LOP3."""
    return lop3_pair(src, bf_mask2(j, W), bf_magic(j, W, C), ASM)


@triton.jit
def _bf_kstep(accs, cp, b0, b1, j: tl.constexpr, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """``_mv._kstep`` for bfloat16 reads: pairs ``j`` and ``j + 1`` of the word row whose copies are ``cp``."""
    G: tl.constexpr = bf_group(W)
    u = cp[j // G]
    v = cp[(j + 1) // G]
    acc0, acc1 = accs
    a0 = (_bf_pair(u[0], j, W, C, ASM), _bf_pair(u[1], j, W, C, ASM), _bf_pair(v[0], j + 1, W, C, ASM),
          _bf_pair(v[1], j + 1, W, C, ASM))
    a1 = (_bf_pair(u[2], j, W, C, ASM), _bf_pair(u[3], j, W, C, ASM), _bf_pair(v[2], j + 1, W, C, ASM),
          _bf_pair(v[3], j + 1, W, C, ASM))
    return (_mma(a0[0], a0[1], a0[2], a0[3], b0, b1, acc0, ASM, True),
            _mma(a1[0], a1[1], a1[2], a1[3], b0, b1, acc1, ASM, True))


@triton.jit
def _bf_plane_mma(accs, cacc, words, x, W: tl.constexpr, C: tl.constexpr, C1: tl.constexpr, ONES: tl.constexpr,
                  CORR: tl.constexpr, ASM: tl.constexpr, HP: tl.constexpr = 0):
    """:func:`_plane_mma_c` for bfloat16 reads (``CORR``: with the correction ``mma``; without, ``HP`` pairs per
    word: 8 for 3-bit codes' virtual 1-bit words, which multiply plane 0's pairs)."""
    H: tl.constexpr = HP if HP else 16 // W
    cps = _bf_copies_of(words, H, W)
    z = tl.zeros(x[0].shape, tl.int32)
    ones = tl.full(x[0].shape, 0x3F803F80 if ONES else 0, tl.int32)
    for s in tl.static_range(8):
        accs = _bf_kstep(accs, cps[(2 * s) // H], x[2 * s], x[2 * s + 1], (2 * s) % H, W, C, ASM)
        if CORR:
            m0 = z + corr_magic_bf16((2 * s) % H, W, C, C1)
            m1 = z + corr_magic_bf16((2 * s) % H + 1, W, C, C1)
            cacc = _mma(m0, ones, m1, ones, x[2 * s], x[2 * s + 1], cacc, ASM, True)
    return accs, cacc


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
    """``_mv._tile`` from the lane's words ``v`` of ``x`` (:func:`x_quads`; ``XBF16``: bfloat16, multiplied as
    bfloat16, module doc) instead of the gather's pairs and sums."""
    words, s, zr = wl
    zero = tl.zeros(s.shape, tl.float32)
    accs = ((zero, zero, zero, zero), (zero, zero, zero, zero))
    cacc = (zero, zero, zero, zero)
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    x0 = _direct_pairs(v, W0, ASM)
    if XBF16:
        if virtual1(BITS):
            accs, cacc = _bf_plane_mma(accs, cacc, words[0], x0, W0, _shift(BITS, 0), _shift(BITS, 1), True, True,
                                       ASM)
            accs, cacc = _bf_plane_mma(accs, cacc, vwords(words[1][0], ASM), x0, 1, _shift(BITS, 1), -1, False,
                                       False, ASM, 8)
        else:
            accs, cacc = _bf_plane_mma(accs, cacc, words[0], x0, W0, _shift(BITS, 0), -1, True, True, ASM)
            if W1 > 0:
                accs, cacc = _bf_plane_mma(accs, cacc, words[1], _direct_pairs(v, W1, ASM), W1, _shift(BITS, 1), -1,
                                           False, True, ASM)
        if W2 > 0:
            accs, cacc = _bf_plane_mma(accs, cacc, words[2], _direct_pairs(v, W2, ASM), W2, _shift(BITS, 2), -1,
                                       False, True, ASM)
    else:
        if virtual1(BITS):
            accs, cacc = _plane_mma_c(accs, cacc, words[0], x0, W0, _shift(BITS, 0), _shift(BITS, 1), True, ASM)
            accs = _plane_mma(accs, vwords(words[1][0], ASM), x0, 1, _shift(BITS, 1), ASM, 8)
        else:
            accs, cacc = _plane_mma_c(accs, cacc, words[0], x0, W0, _shift(BITS, 0), -1, True, ASM)
            if W1 > 0:
                accs, cacc = _plane_mma_c(accs, cacc, words[1], _direct_pairs(v, W1, ASM), W1, _shift(BITS, 1), -1,
                                          False, ASM)
        if W2 > 0:
            accs, cacc = _plane_mma_c(accs, cacc, words[2], _direct_pairs(v, W2, ASM), W2, _shift(BITS, 2), -1,
                                      False, ASM)
    acc0, acc1 = accs  # rows 4g, 4g + 1 (block 0), 4g + 2, 4g + 3 (block 1): keep row 4g + t
    a = tl.where(t == 0, acc0[0], tl.where(t == 1, acc0[2], tl.where(t == 2, acc1[0], acc1[2])))
    return y + s.to(tl.float32) * ((a - cacc[0]) - zr.to(tl.float32) * cacc[2])
