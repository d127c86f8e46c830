"""Half2 dequantization of a weight tile for the warp-specialised ``wgs`` (float16 activations).

The float32 dequantization of ``_wgs`` spends ~3.5 instructions per weight (LOP3, FADD, FFMA, half an
F2FP) and ~8 once loads, stores and address arithmetic are counted; in ``_wgsw`` the producer warps
that do it set the pace. Here a pair of codes becomes a pair of float16 weights in three ``f16x2``
instructions (``LOP3``, ``HADD2``, ``HFMA2``), plus one byte permute (``PRMT``) per byte of packed codes.

**Pair order.** A pair must sit in one 32-bit register, one code per 16-bit half, so within each block of
16 columns the tile pairs column ``j`` with column ``j + 8`` (``j < 8``) and stores the pair as two
adjacent float16 values: shared-memory column ``c`` of a block holds weight column
``PAIR16[c] = c // 2 + 8 * (c % 2)``. The activations are gathered in the same order (``gather_kernel``
with ``PAIR16``), so the product is unchanged; it needs ``K % 16 == 0`` (a block never straddles the end).

**Codes to floats.** In a plane of ``W`` bits per code a 16-column block is ``2W`` bytes: codes 0-7 in
the first ``W`` bytes, codes 8-15 in the next ``W``. For byte ``b < W`` one ``PRMT`` puts byte ``b``
into bits 0-7 and byte ``W + b`` into bits 16-23; the ``8 / W`` codes of that byte then lie at bit ``pos
= (j W) % 8`` of each half. ``(v & mask) | magic`` with ``magic`` the float16 ``2**(10 - pos + c)``
(``c``: the plane's bit offset in the code) reads as ``2**(10 - pos + c) + q_plane 2**c`` exactly (the
code is in the mantissa: ``pos + W <= 8 < 10``); subtracting ``magic`` leaves ``q_plane 2**c``, the planes
add exactly (integers below 2048), and ``HFMA2`` gives ``q * scale - zero * scale`` with one rounding
(``-zero * scale`` is rounded to float16 first). With two planes both magics come off plane 1 in one
``HSUB2`` (:func:`_pair_asm`).
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from slimq.kernels.triton._tiles import plane_width

__all__ = ["dq16_layout", "dq16_loads", "dq16_tile"]


@triton.constexpr_function
def dq16_layout(shape, bn, num_warps):
    """Layout of a ``[BN, NB, ...]`` tile (``NB`` blocks of 16 columns): a thread owns one row, warps
    tile the rows, then the blocks; trailing dimensions stay inside the thread."""
    shape = [int(s) for s in shape]
    wn = min(int(num_warps), int(bn) // 32)
    wk = int(num_warps) // wn
    if int(bn) % 32 or shape[1] % wk:
        raise ValueError(f"dq16: {num_warps} warps cannot tile [{bn}, {shape[1]}] blocks")
    r = len(shape)
    return gl.BlockedLayout([1, shape[1] // wk] + shape[2:], [32] + [1] * (r - 1), [wn, wk] + [1] * (r - 2),
                            list(range(r - 1, -1, -1)))


@triton.constexpr_function
def _word_shape(w, nb):
    """Shape of plane words loaded per tile: ``[NB, A, B]`` after the row dimension (see :func:`dq16_loads`)."""
    w = int(w)
    return {1: [nb, 1, 1], 2: [nb, 1, 1], 4: [nb, 1, 2], 8: [nb, 2, 2]}[w]


@gluon.jit
def _ar4(n: gl.constexpr, dim: gl.constexpr, L4: gl.constexpr):
    """``arange(n)`` along dimension ``dim`` of a rank-4 tensor in layout ``L4`` (size 1 elsewhere)."""
    if dim == 0:
        a = gl.arange(0, n, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L4))))
        return gl.expand_dims(gl.expand_dims(gl.expand_dims(a, 1), 2), 3)
    elif dim == 1:
        a = gl.arange(0, n, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, L4))))
        return gl.expand_dims(gl.expand_dims(gl.expand_dims(a, 0), 2), 3)
    elif dim == 2:
        a = gl.arange(0, n, layout=gl.SliceLayout(0, gl.SliceLayout(0, gl.SliceLayout(3, L4))))
        return gl.expand_dims(gl.expand_dims(gl.expand_dims(a, 0), 0), 3)
    else:
        a = gl.arange(0, n, layout=gl.SliceLayout(0, gl.SliceLayout(0, gl.SliceLayout(0, L4))))
        return gl.expand_dims(gl.expand_dims(gl.expand_dims(a, 0), 0), 0)


@gluon.jit
def _plane16(plane, k0, ks, n0, ns, P: gl.constexpr, BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
             NW: gl.constexpr):
    """int32 words of plane ``P`` for one tile, shaped ``[BN, NB] + _word_shape``: word ``nb // 2`` for
    1-bit planes (two blocks per word), ``nb`` for 2-bit, ``2 nb + h`` for 4-bit and ``4 nb + 2 h + q``
    for 8-bit (``[.., q, h]``): ``h`` selects the block's second half."""
    W: gl.constexpr = plane_width(BITS, P)
    NB: gl.constexpr = BK // 16
    S: gl.constexpr = _word_shape(W, NB)
    L4: gl.constexpr = dq16_layout([BN] + S, BN, NW)
    n = n0 + _ar4(BN, 0, L4)
    nb = _ar4(NB, 1, L4)
    if W == 1:
        widx = nb // 2
    elif W == 2:
        widx = nb
    elif W == 4:
        widx = 2 * nb + _ar4(2, 3, L4)
    else:
        widx = 4 * nb + 2 * _ar4(2, 3, L4) + _ar4(2, 2, L4)
    wrow = k0 * W // 32 + widx
    ok = (n < ns) & (wrow < (ks * W + 31) // 32)
    return gl.load(plane + wrow * ns + n, mask=ok, other=0)


@gluon.jit
def dq16_loads(seg, k0, lim, n0, ns, GS: gl.constexpr, BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
               NW: gl.constexpr):
    """The weight side of one tile (as ``_wgs._w_loads``): up to three planes' words and the rows'
    scale and zero; ``lim`` is the segment's column count, or 0 to load nothing."""
    w0 = _plane16(seg[4], k0, lim, n0, ns, 0, BITS, BN, BK, NW)
    w1 = w0
    w2 = w0
    if plane_width(BITS, 1) > 0:
        w1 = _plane16(seg[5], k0, lim, n0, ns, 1, BITS, BN, BK, NW)
    if plane_width(BITS, 2) > 0:
        w2 = _plane16(seg[6], k0, lim, n0, ns, 2, BITS, BN, BK, NW)
    LS: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, dq16_layout([BN, BK // 16, 8], BN, NW)))
    n = n0 + gl.arange(0, BN, layout=LS)
    g = k0 // GS
    mg = (n < ns) & (k0 < lim)
    s = gl.load(seg[2] + g * ns + n, mask=mg, other=0.0)
    z = gl.load(seg[3] + g * ns + n, mask=mg, other=0.0)
    return w0, w1, w2, s, z


@gluon.jit
def _prmt(a, b, sel):
    return gl.inline_asm_elementwise("prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, sel], dtype=gl.int32,
                                     is_pure=True, pack=1)


@gluon.jit
def _bcast(x, shape: gl.constexpr, NW: gl.constexpr):
    """``x`` (rank 4, or rank 3 to get a trailing dimension) broadcast to ``shape`` in that shape's
    :func:`dq16_layout` (a register copy at most)."""
    if len(x.shape) == 3:
        x = gl.expand_dims(gl.convert_layout(x, gl.SliceLayout(3, dq16_layout(x.shape + [1], shape[0], NW))), 3)
    x = gl.convert_layout(x, dq16_layout(x.shape, shape[0], NW))
    return gl.convert_layout(x.broadcast_to(shape), dq16_layout(shape, shape[0], NW))


@gluon.jit
def _arrange(words, P: gl.constexpr, BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, NW: gl.constexpr):
    """int32 ``[BN, NB, 8]``: for pair ``j`` of each block, the register holding code ``j``'s byte in
    bits 0-7 and code ``j + 8``'s byte in bits 16-23 (module doc)."""
    W: gl.constexpr = plane_width(BITS, P)
    NB: gl.constexpr = BK // 16
    L8: gl.constexpr = dq16_layout([BN, NB, 8], BN, NW)
    if W == 1:
        L1: gl.constexpr = dq16_layout([BN, NB, 1, 1], BN, NW)
        odd = _ar4(NB, 1, L1) % 2
        sel = gl.where(odd == 1, 0x3322, 0x1100)  # bytes (2, 3) or (0, 1) of the word
        a = _bcast(_prmt(words, words, sel), [BN, NB, 1, 8], NW)
    elif W == 2:
        w = _bcast(words, [BN, NB, 2, 1], NW)
        b = _ar4(2, 2, dq16_layout([BN, NB, 2, 1], BN, NW))
        sel = gl.where(b == 1, 0x3311, 0x2200)  # bytes (b, 2 + b)
        a = _bcast(_prmt(w, w, sel), [BN, NB, 2, 4], NW)
    elif W == 4:
        lo, hi = words.split()
        lo = _bcast(lo, [BN, NB, 4, 1], NW)
        hi = _bcast(hi, [BN, NB, 4, 1], NW)
        b = _ar4(4, 2, dq16_layout([BN, NB, 4, 1], BN, NW))
        sel = b * 0x11 + (4 + b) * 0x1100  # bytes (b, 4 + b) of (lo, hi)
        a = _bcast(_prmt(lo, hi, sel), [BN, NB, 4, 2], NW)
    else:
        lo, hi = words.split()
        lo = _bcast(lo, [BN, NB, 2, 4], NW)
        hi = _bcast(hi, [BN, NB, 2, 4], NW)
        r = _ar4(4, 3, dq16_layout([BN, NB, 2, 4], BN, NW))
        sel = r * 0x11 + (4 + r) * 0x1100
        a = _prmt(lo, hi, sel)
    return gl.convert_layout(gl.reshape(a, [BN, NB, 8]), L8)


@triton.constexpr_function
def _pair_asm(nplanes):
    """PTX for one pair: per plane ``LOP3`` (code under its magic), the magics subtracted exactly, the planes
    added, one ``HFMA2``. Operands: ``$1..$n`` arranged words, then per plane (mask, magic), then scale and
    ``-zero * scale``, then (two or more planes) the f16x2 sum of the first two planes' magics.

    With two or more planes, plane 1's value less *both* magics, ``q1 2**c - M0``, is an integer under 2048 and
    so exact in float16 (``M0 + M1``, two powers of two at most 2**10 apart, is exact too); adding plane 0's
    ``M0 + q0`` leaves ``q0 + q1 2**c`` exactly: one ``HSUB2`` fewer per pair than subtracting each magic."""
    n = int(nplanes)
    lines = ["{", ".reg .b32 q, t;", f"lop3.b32 q, $1, ${1 + n}, ${2 + n}, 0xEA;"]
    if n == 1:
        lines.append(f"sub.f16x2 q, q, ${2 + n};")
    for p in range(1, n):
        lines.append(f"lop3.b32 t, ${1 + p}, ${1 + n + 2 * p}, ${2 + n + 2 * p}, 0xEA;")
        lines.append(f"sub.f16x2 t, t, ${3 + 3 * n};" if p == 1 else f"sub.f16x2 t, t, ${2 + n + 2 * p};")
        lines.append("add.f16x2 q, q, t;")
    lines.append(f"fma.rn.f16x2 $0, q, ${1 + 3 * n}, ${2 + 3 * n};")
    lines.append("}")
    return " ".join(lines)


@gluon.jit
def _magic01(BITS: gl.constexpr, L8: gl.constexpr):
    """int32 ``[1, 1, 8]``: for pair ``j``, the f16x2 sum of plane 0's and plane 1's magics (:func:`_consts`)."""
    W0: gl.constexpr = plane_width(BITS, 0)
    W1: gl.constexpr = plane_width(BITS, 1)
    j = gl.expand_dims(gl.expand_dims(gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(0, L8))), 0), 0)
    e0 = 10 - (j * W0) % 8
    e1 = 10 - (j * W1) % 8 + W0
    return _half2(gl.exp2(e0.to(gl.float32)) + gl.exp2(e1.to(gl.float32)))


@gluon.jit
def _consts(P: gl.constexpr, BITS: gl.constexpr, L8: gl.constexpr):
    """``(mask, magic)`` int32 ``[1, 1, 8]`` of plane ``P`` for pair ``j`` (module doc)."""
    W: gl.constexpr = plane_width(BITS, P)
    C: gl.constexpr = plane_width(BITS, 0) * (P >= 1) + plane_width(BITS, 1) * (P >= 2)
    j = gl.expand_dims(gl.expand_dims(gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(0, L8))), 0), 0)
    pos = (j * W) % 8
    m = ((1 << W) - 1) << pos
    e = 25 - pos + C  # float16 biased exponent of 2**(10 - pos + C)
    return m | (m << 16), (e << 10) | (e << 26)


@gluon.jit
def _half2(v):
    """float32 -> float16 bits repeated in both halves of an int32."""
    b = v.to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    return b | (b << 16)


@gluon.jit
def dq16_tile(w0, w1, w2, s, z, BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, NW: gl.constexpr):
    """int32 ``[BN, BK // 2]``: the tile's float16 weights ``(q - zero) * scale`` in pairs, pair order
    (module doc); store it through an int32 view of the shared tile."""
    NB: gl.constexpr = BK // 16
    L8: gl.constexpr = dq16_layout([BN, NB, 8], BN, NW)
    sf = s.to(gl.float32)
    s2 = gl.expand_dims(gl.expand_dims(_half2(sf), 1), 2)
    c2 = gl.expand_dims(gl.expand_dims(_half2(-z.to(gl.float32) * sf), 1), 2)
    a0 = _arrange(w0, 0, BITS, BN, BK, NW)
    m0, g0 = _consts(0, BITS, L8)
    if plane_width(BITS, 2) > 0:
        a1 = _arrange(w1, 1, BITS, BN, BK, NW)
        a2 = _arrange(w2, 2, BITS, BN, BK, NW)
        m1, g1 = _consts(1, BITS, L8)
        m2, g2 = _consts(2, BITS, L8)
        v = gl.inline_asm_elementwise(_pair_asm(3), "=r" + ",r" * 12,
                                      [a0, a1, a2, m0, g0, m1, g1, m2, g2, s2, c2, _magic01(BITS, L8)],
                                      dtype=gl.int32, is_pure=True, pack=1)
    elif plane_width(BITS, 1) > 0:
        a1 = _arrange(w1, 1, BITS, BN, BK, NW)
        m1, g1 = _consts(1, BITS, L8)
        v = gl.inline_asm_elementwise(_pair_asm(2), "=r" + ",r" * 9, [a0, a1, m0, g0, m1, g1, s2, c2,
                                                                      _magic01(BITS, L8)],
                                      dtype=gl.int32, is_pure=True, pack=1)
    else:
        v = gl.inline_asm_elementwise(_pair_asm(1), "=r" + ",r" * 5, [a0, m0, g0, s2, c2], dtype=gl.int32,
                                      is_pure=True, pack=1)
    return gl.reshape(v, [BN, BK // 2])
