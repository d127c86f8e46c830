"""Tensor-core GEMV for one token (path ``"mv"``), layout ``slimq.segmented-bitplane.v1``: the tile's mapping and
arithmetic and the activation gather (``mv_gather_kernel``), shared by the kernels (``_mv1``: K split over
programs; ``_mvs``: over the warps of a program; ``_mvt``: 2-16 tokens; ``_mvx``: reading ``x`` itself).

Why: the half2 GEMV ``gv`` spends 1.5 core instructions per weight and code bit-plane (LOP3, HSUB2,
HFMA2) plus float32 conversions, ~2.2 per weight at 2 bits: at ``M == 1`` it is bound by instruction
issue, not DRAM (KERNEL_NOTES, session 5). Here the multiply-add goes to the tensor cores
(``mma.sync.m16n8k16``, the token in every one of the 8 columns of the B operand) and the magic
constant stays in the weights: one LOP3 turns two codes into the fp16 pair ``(M + c q_a, M + c q_b)``
(``M = 2**(10 - pos) * c``, ``c`` the plane's coefficient ``2**shift``), which is the A operand as it
is. ``sum_k x_k (M_k + c q_k) = acc`` then needs ``corr = sum_k x_k M_k`` removed; that does not
depend on the output row, so ``mv_gather_kernel`` computes it once per 128-column block and plane
width (float32), next to the activation pairs. Core work per weight and plane: half a LOP3, one
``mma`` per 8 weights of a thread, a shift per word; then per 128-column tile and row one
``y += s * (acc - corr - z * sum x)``. SASS on sm_90 (KERNEL_NOTES, session 9): 1.2 instructions per
weight at 2 bits; the kernel then waits on memory rather than on instruction issue.

Mapping. A warp computes 32 output rows over a 128-column tile; lane ``(g, t) = (lane // 4, lane % 4)``
loads the words of rows ``4g .. 4g + 3`` (one 16-byte load per word row) of its 32 columns
``[32 t, 32 t + 32)`` (word rows ``t W .. t W + W - 1`` of a width-``W`` plane): the 16 natural pairs
of those words (slot ``j`` and ``j + H`` of a word, ``H = 16 / W``: the pair order of
``pair_gather_kernel``) are numbered ``P = i H + j``. k-step ``s`` (8 per tile and plane) takes pairs
``2 s`` and ``2 s + 1`` as the A registers ``(k 2t, 2t+1)`` and ``(k 2t+8, 2t+9)``; rows ``4g + 2b`` and
``4g + 2b + 1`` are rows ``g`` and ``g + 8`` of MMA block ``b``. The B registers are the same pairs of
activations (16 per thread and plane, four 16-byte loads shared by the 8 lanes of each ``t``). Every lane
ends a tile with the sums of its four rows (the 8 B columns are equal) and keeps row ``4g + t``, its
own output row. The 1-bit plane of 3-bit codes is read in the 2-bit plane's pair order
(:func:`vwords`), so both planes multiply the same activation pairs.

L2 prefetch (``L2A``, ``KernelConfig.l2_ahead``). ptxas keeps the next tile's loads ahead of this tile's
MMAs only with registers to spare, and each segment of a band starts on a cold read. With ``L2A > 0`` every
warp also issues ``prefetch.global.L2`` for the words, scales and zeros of the tile ``L2A`` past the next
(one instruction per 4 word rows: the 8 lanes of a ``t`` name the same 128-byte line), and at its start
for the first ``L2A`` tiles of its share of every later segment: bytes in flight without registers.
H200 (KERNEL_NOTES, session 10): one token, 28672 x 8192, 2-bit 35.1 -> 33.2 us, 3-bit 51.9 -> 47.8 (was
``gv``), SliM 44.3 -> 38.4 (was ``gv``).

Numerics: products of fp16 values are exact and the tensor cores add them in float32. ``acc`` and
``corr`` are each up to ``M sum |x|`` per block (``M <= 2**10`` for 1-, 2-, 4- and 8-bit planes, ``2**12``
for the 1-bit plane of 3-bit codes, ``2**14`` for the second plane of 5- and 6-bit codes), so their
difference carries an absolute error of about ``2**-24 M sum |x|``: ``2**-14 sum |x|`` for most widths,
``2**-10 sum |x|`` at 5 and 6 bits; the tests bound the result's relative error at 2e-3 (float16).

Requirements (checked on the host, :func:`slimq.kernels.triton._support.mv_supported`): group sizes and
segment boundaries on multiples of 128 columns (no partial tiles), band heights multiples of 4, planes
16-byte aligned, no 7-bit codes (their third plane's magic would pass the fp16 range).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import (
    _lo_hi_f32, _mask2, _pair_vals, _pos, _put_pairs, _scaled_x, _shifted, _slot,
)
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tiles import pdl_release, plane_coef, plane_width

__all__ = ["mv_gather_kernel", "a_regs", "lop3_pair", "block_sums", "plane_pairs", "plane_shifts", "virtual1", "vwords",
           "TILE",
           "XC_SLOTS"]

TILE = 128  # columns per tile: each lane covers 32 of them
_TILE = tl.constexpr(TILE)
# mv_gather_kernel's float32 block sums: corr per plane width slot (4), sum x, and the corr of 3-bit codes'
# 1-bit plane read in the 2-bit pair order (virtual1)
XC_SLOTS = 6


@triton.constexpr_function
def _shift(bits, p):
    """log2 of plane ``p``'s coefficient."""
    return int(plane_coef(bits, p)).bit_length() - 1


@triton.constexpr_function
def _magic(j, w, c):
    """int32 bits of the half2 ``(M, M)``, ``M = 2**(10 - pos + c)``: masked codes of pair ``j`` of a
    width-``w`` plane read as ``M + 2**c q``."""
    m = (25 - _pos(j, w) + int(c)) << 10
    return m | (m << 16)


@triton.jit
def _lane_mma(a_lo, a_hi, b_lo, b_hi):
    """float32 ``D[w, g, n] = sum_t a[w, g, t] . b[w, n, t]`` over the 4 lanes ``t`` of each row (the
    two halves of two registers each), as the lane quad ``(D[g, 2t], D[g, 2t + 1])`` of every lane
    (interpreter path; element ``i`` of a ``[32 * num_warps]`` tensor is thread ``i``)."""
    NT: tl.constexpr = a_lo[0].shape[0]
    d = tl.zeros([NT // 32, 8, 8], tl.float32)
    for v in tl.static_range(2):
        for h in tl.static_range(2):
            a = tl.reshape(a_hi[v] if h else a_lo[v], [NT // 32, 8, 4])
            b = tl.reshape(b_hi[v] if h else b_lo[v], [NT // 32, 8, 4])
            d += tl.sum(tl.expand_dims(a, 2) * tl.expand_dims(b, 1), axis=3)
    d0, d1 = tl.split(tl.reshape(d, [NT // 32, 8, 4, 2]))
    return tl.reshape(d0, [NT]), tl.reshape(d1, [NT])


@triton.jit
def _lo_hi(v, BF16: tl.constexpr):
    """float32 values of the low and high 16-bit halves of int32 bit patterns ``v``: float16, or ``BF16`` bfloat16."""
    if BF16:
        return (v << 16).to(tl.float32, bitcast=True), (v & -65536).to(tl.float32, bitcast=True)
    else:
        return _lo_hi_f32(v)


@triton.constexpr_function
def _mma_asm(bf16):
    """PTX of one ``mma.m16n8k16`` with float16 (``bf16``: bfloat16) operands and float32 accumulators."""
    t = "bf16" if bf16 else "f16"
    return (f"mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{$0, $1, $2, $3}}, {{$4, $5, $6, $7}}, {{$8, $9}}, "
            "{$10, $11, $12, $13};")


@triton.jit
def _mma(a0, a1, a2, a3, b0, b1, c, ASM: tl.constexpr, BF16: tl.constexpr = False):
    """One ``mma.m16n8k16`` (f16 in, or ``BF16`` bf16 in; f32 accumulate) on the lane's accumulators ``c = (c0, c1,
    c2, c3)`` (rows ``g`` and ``g + 8``, columns ``2t`` and ``2t + 1``; with one token every column carries it, so
    ``c1 == c0`` and ``c3 == c2``, kept apart so that the accumulators stay a register quad).
    Volatile like the loads (:func:`_ld4`), so that LLVM keeps the two in order. Else the same sums
    computed lane by lane (the interpreter: element ``i`` of a ``[32 * num_warps]``
    tensor is thread ``i``)."""
    c0, c1, c2, c3 = c
    if ASM:
        return tl.inline_asm_elementwise(
            _mma_asm(BF16), "=f,=f,=f,=f,r,r,r,r,r,r,0,1,2,3", [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=False, pack=1)
    else:
        a0l, a0h = _lo_hi(a0, BF16)
        a1l, a1h = _lo_hi(a1, BF16)
        a2l, a2h = _lo_hi(a2, BF16)
        a3l, a3h = _lo_hi(a3, BF16)
        b0l, b0h = _lo_hi(b0, BF16)
        b1l, b1h = _lo_hi(b1, BF16)
        d0, d1 = _lane_mma((a0l, a2l), (a0h, a2h), (b0l, b1l), (b0h, b1h))
        d2, d3 = _lane_mma((a1l, a3l), (a1h, a3h), (b0l, b1l), (b0h, b1h))
        return c0 + d0, c1 + d1, c2 + d2, c3 + d3


@triton.constexpr_function
def ld4_ptx(policy):
    """PTX of one 16-byte read-only load into four registers, plain (``policy`` None) or under the L2 cache
    policy ``createpolicy.fractional.L2::<policy>`` (e.g. ``"evict_first"``) as its cache-hint operand."""
    if policy is None:
        return "ld.global.nc.v4.b32 {$0, $1, $2, $3}, [$4];"
    return (f"{{ .reg .b64 pol; createpolicy.fractional.L2::{policy}.b64 pol, 1.0; "
            "ld.global.nc.L2::cache_hint.v4.b32 {$0, $1, $2, $3}, [$4], pol; }")


@triton.jit
def _ld4(p, ASM: tl.constexpr, POLICY: tl.constexpr = None):
    """Four int32 at ``p`` (16-byte aligned), one vector load through the read-only path (``POLICY``: an L2 cache
    policy, :func:`ld4_ptx`). Volatile, so that LLVM keeps the loads where they are written, one tile ahead of
    their use; ptxas still sinks them to the end of the loop when registers are short (``maxnreg`` keeps them
    ahead: ``tests/test_mv_compile.py``)."""
    if ASM:
        return tl.inline_asm_elementwise(ld4_ptx(POLICY), "=r,=r,=r,=r,l", [p],
                                         dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=False, pack=1)
    else:
        return tl.load(p), tl.load(p + 1), tl.load(p + 2), tl.load(p + 3)


@triton.jit
def _ld4_stream(p, ASM: tl.constexpr):
    """:func:`_ld4` for weights, which a call reads once: the lines come into L2 marked evict-first, so that the
    call's later misses replace them rather than other lines: after the issue's zeroing flush those are dirty and
    would be written back first (a bare read of 58.7 MB: 23.8 -> 22.0 us on the H200, benchmarks/KERNEL_NOTES.md
    session 24)."""
    return _ld4(p, ASM, "evict_first")


@triton.jit
def _l2_prefetch(p, ASM: tl.constexpr):
    """``prefetch.global.L2`` of the line at ``p``: the bytes are on their way to L2 without holding a
    register (the interpreter has no cache: nothing)."""
    if ASM:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [p], dtype=tl.int32, is_pure=False,
                                  pack=1)


@triton.jit
def _prefetch_plane(seg, k0, t, wrow, P: tl.constexpr, BITS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """:func:`_prefetch_tile` for plane ``P`` (nothing when it does not exist)."""
    W: tl.constexpr = plane_width(BITS, P)
    if W > 0:
        for i in tl.static_range(W):
            _l2_prefetch(seg[4 + P] + (k0 // (32 // W) + t * W + i) * NS + wrow, ASM)


@triton.jit
def _prefetch_tile(seg, k0, t, wrow, BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """Prefetch into L2 the weight-side bytes of the tile at segment column ``k0`` for the warp's 32 rows from
    ``wrow``: each lane ``(g, t)`` names the line of word row ``t W + i`` (the 8 lanes of a ``t`` the same
    one), so a warp instruction covers 4 word rows; then the lines of the rows' scales and zeros."""
    _prefetch_plane(seg, k0, t, wrow, 0, BITS, NS, ASM)
    _prefetch_plane(seg, k0, t, wrow, 1, BITS, NS, ASM)
    _prefetch_plane(seg, k0, t, wrow, 2, BITS, NS, ASM)
    g = k0 // GS
    _l2_prefetch(seg[2] + g * NS + wrow, ASM)
    _l2_prefetch(seg[3] + g * NS + wrow, ASM)


@triton.jit
def _prefetch_start(seg, pid_k, split_k, t, wrow, BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr,
                    ASM: tl.constexpr, N: tl.constexpr):
    """Prefetch into L2 the first ``N`` tiles of this program's share of a segment (done for the later
    segments of a band when the program starts, so that no segment begins on a cold DRAM read)."""
    t_lo, _ = _tile_range(seg[1], pid_k, _TILE, split_k)
    last = seg[1] // _TILE - 1
    for d in tl.static_range(N):
        _prefetch_tile(seg, tl.minimum(t_lo + d, last) * _TILE, t, wrow, BITS, GS, NS, ASM)


@triton.jit
def _words(ptr, kr, row4, W: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """Word rows ``kr .. kr + W - 1`` of one plane for rows ``row4 .. row4 + 3``: a tuple of ``W``
    4-tuples (one 16-byte load each)."""
    out = ()
    for i in tl.static_range(W):
        a, b, c, d = _ld4_stream(ptr + (kr + i) * NS + row4, ASM)
        out = out + ((a, b, c, d),)
    return out


@triton.jit
def _plane_words(seg, k0, t, row4, P: tl.constexpr, BITS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """The lane's words of plane ``P`` in the tile at segment column ``k0`` (an empty tuple when the
    plane does not exist)."""
    W: tl.constexpr = plane_width(BITS, P)
    if W > 0:
        return _words(seg[4 + P], k0 // (32 // W) + t * W, row4, W, NS, ASM)
    else:
        return ()


@triton.jit
def _tile_words(seg, k0, t, row4, BITS: tl.constexpr, NS: tl.constexpr, ASM: tl.constexpr):
    """Words of every plane of the tile at segment column ``k0``."""
    return (_plane_words(seg, k0, t, row4, 0, BITS, NS, ASM), _plane_words(seg, k0, t, row4, 1, BITS, NS, ASM),
            _plane_words(seg, k0, t, row4, 2, BITS, NS, ASM))


@triton.jit
def _pair(word, sh, j: tl.constexpr, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """The half2 ``(M + 2**C q_j, M + 2**C q_{j+H})`` of pair ``j`` of ``word`` (``sh = word >> 8``)."""
    if _shifted(j, W):
        src = sh
    else:
        src = word
    return lop3_pair(src, _mask2(j, W), _magic(j, W, C), ASM)


@triton.jit
def lop3_pair(src, MASK: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr):
    """``(src & MASK) | MAGIC``: the 16-bit pair of codes read with the magic in the exponent."""
    if ASM:  # one LOP3 with both constants in registers (two LOP3 when both are immediates)
        return tl.inline_asm_elementwise(
            "lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
            [src, tl.full(src.shape, MASK, tl.int32), tl.full(src.shape, MAGIC, tl.int32)],
            dtype=tl.int32, is_pure=True, pack=1)
    else:
        return (src & MASK) | MAGIC


@triton.constexpr_function
def virtual1(bits):
    """Whether plane 1 of ``bits``-bit codes (the 1-bit plane of 3-bit codes) is read in plane 0's 2-bit
    pair order (:func:`vwords`), so that both planes multiply the same activation pairs."""
    return int(bits) == 3


@triton.jit
def _prmt(w, h: tl.constexpr, ASM: tl.constexpr):
    """Bytes ``(2h, -, 2h + 1, -)`` of ``w``, zeros in between: bit ``s`` of half ``h`` of a 1-bit word goes
    to bit ``s`` (``s < 8``) or ``16 + s - 8`` (``s >= 8``)."""
    if ASM:
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r",
                                         [w, tl.full(w.shape, 0x4140 + 0x0202 * h, tl.int32)], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        u = (w >> (16 * h)) & 0xFFFF
        return (u & 0xFF) | ((u >> 8) << 16)


@triton.jit
def vwords(w, ASM: tl.constexpr):
    """The lane's 1-bit words ``w`` (one per row: 32 columns) as two virtual words each, one per 16-column
    2-bit word: slot ``j`` of 2-bit word ``i`` at bit ``j``, slot ``j + 8`` at bit ``16 + j`` (one PRMT):
    so pair ``j`` of the 2-bit order is read with the mask and magic of 1-bit pair ``j`` (``j < 8``)."""
    return ((_prmt(w[0], 0, ASM), _prmt(w[1], 0, ASM), _prmt(w[2], 0, ASM), _prmt(w[3], 0, ASM)),
            (_prmt(w[0], 1, ASM), _prmt(w[1], 1, ASM), _prmt(w[2], 1, ASM), _prmt(w[3], 1, ASM)))


@triton.jit
def plane_shifts(words, W: tl.constexpr, HP: tl.constexpr = 0):
    """``word >> 8`` of each of the lane's words of one plane (:func:`_pair` reads the pairs past the
    mantissa from them); with ``HP`` (the virtual 1-bit words of 3-bit codes, :func:`vwords`) the words
    themselves: their pairs ``j < 8`` are never read shifted."""
    if HP:
        sh = words
    else:
        sh = ()
        for i in tl.static_range(W):
            w = words[i]
            sh = sh + ((w[0] >> 8, w[1] >> 8, w[2] >> 8, w[3] >> 8),)
    return sh


@triton.jit
def a_regs(w, v, b: tl.constexpr, j: tl.constexpr, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """The A registers of MMA block ``b`` (rows ``4g + 2b``, ``4g + 2b + 1`` of the words ``w``; ``v`` their
    shifts) for a k-step on pairs ``j`` and ``j + 1``."""
    return (_pair(w[2 * b], v[2 * b], j, W, C, ASM), _pair(w[2 * b + 1], v[2 * b + 1], j, W, C, ASM),
            _pair(w[2 * b], v[2 * b], j + 1, W, C, ASM), _pair(w[2 * b + 1], v[2 * b + 1], j + 1, W, C, ASM))


@triton.jit
def _plane_mma(accs, words, x, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr, HP: tl.constexpr = 0):
    """``accs`` (two blocks' accumulator quads) plus one plane's 8 k-steps; ``x`` the lane's 16
    activation pairs (``HP``: pairs per word when not ``16 // W``: 8 for the virtual 1-bit words of
    3-bit codes, :func:`vwords`, which multiply plane 0's pairs)."""
    H: tl.constexpr = HP if HP else 16 // W
    sh = plane_shifts(words, W, HP)
    for s in tl.static_range(8):
        accs = _kstep(accs, words[(2 * s) // H], sh[(2 * s) // H], x[2 * s], x[2 * s + 1], (2 * s) % H, W, C, ASM)
    return accs


@triton.jit
def _kstep(accs, w, v, b0, b1, j: tl.constexpr, W: tl.constexpr, C: tl.constexpr, ASM: tl.constexpr):
    """One k-step of both MMA blocks: pairs ``j`` and ``j + 1`` of the words ``w`` (``v = w >> 8``) of
    rows ``4g .. 4g + 3`` times the activation pairs ``b0``, ``b1``."""
    acc0, acc1 = accs
    a0 = a_regs(w, v, 0, j, W, C, ASM)
    a1 = a_regs(w, v, 1, j, W, C, ASM)
    return (_mma(a0[0], a0[1], a0[2], a0[3], b0, b1, acc0, ASM), _mma(a1[0], a1[1], a1[2], a1[3], b0, b1, acc1, ASM))


@triton.jit
def _weight_loads(seg, k0, t, row4, rows, BITS: tl.constexpr, GS: tl.constexpr, NS: tl.constexpr,
                  ASM: tl.constexpr):
    """The weight-side loads of the tile at segment column ``k0``: the lane's words of every plane,
    and the scale and zero of its row."""
    g = k0 // GS
    return (_tile_words(seg, k0, t, row4, BITS, NS, ASM), tl.load(seg[2] + g * NS + rows, eviction_policy="evict_first"),
            tl.load(seg[3] + g * NS + rows, eviction_policy="evict_first"))


@triton.jit
def plane_pairs(xbase, stride_wb, P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr):
    """The lane's 16 activation pairs of plane ``P``'s width (four 16-byte loads), or ``()`` (no plane, or
    the virtual plane 1 of 3-bit codes, which multiplies plane 0's pairs)."""
    W: tl.constexpr = plane_width(BITS, P)
    x = ()
    if W > 0 and not (P == 1 and virtual1(BITS)):
        for q in tl.static_range(4):
            x = x + _ld4(xbase + _slot(W) * stride_wb + 4 * q, ASM)
    return x


@triton.jit
def _act_loads(seg, k0, t, xw_ptr, stride_wb, xc_ptr, stride_cs, BITS: tl.constexpr, ASM: tl.constexpr):
    """The activation-side loads of the tile at segment column ``k0``: the lane's pairs for every
    plane, ``corr`` (summed over the planes with their coefficients) and ``sum x``."""
    c = seg[0] + k0  # storage column of the tile
    xbase = xw_ptr + c // 2 + t * 16
    blk = c // _TILE
    corr, xsum = block_sums(xc_ptr + blk, stride_cs, BITS)
    return (plane_pairs(xbase, stride_wb, 0, BITS, ASM), plane_pairs(xbase, stride_wb, 1, BITS, ASM),
            plane_pairs(xbase, stride_wb, 2, BITS, ASM), corr, xsum)


@triton.jit
def block_sums(p, stride_cs, BITS: tl.constexpr):
    """``(corr, sum x)`` of one 128-column block of one token from ``mv_gather_kernel``'s sums at ``p``
    (``xc`` at the block and token): ``corr`` summed over the planes of a ``BITS``-bit code with their
    coefficients."""
    corr = tl.load(p + _slot(plane_width(BITS, 0)) * stride_cs)
    if virtual1(BITS):
        corr += plane_coef(BITS, 1) * tl.load(p + 5 * stride_cs)
    elif plane_width(BITS, 1) > 0:
        corr += plane_coef(BITS, 1) * tl.load(p + _slot(plane_width(BITS, 1)) * stride_cs)
    if plane_width(BITS, 2) > 0:
        corr += plane_coef(BITS, 2) * tl.load(p + _slot(plane_width(BITS, 2)) * stride_cs)
    return corr, tl.load(p + 4 * stride_cs)


@triton.jit
def _tile(y, wl, al, t, BITS: tl.constexpr, ASM: tl.constexpr):
    """``y`` plus the tile's ``s * (acc - corr - z * sum x)`` for the lane's row, from the tile's
    weight-side loads ``wl`` and activation-side loads ``al``."""
    words, s, z = wl
    zero = tl.zeros(s.shape, tl.float32)
    accs = ((zero, zero, zero, zero), (zero, zero, zero, zero))
    accs = _plane_mma(accs, words[0], al[0], plane_width(BITS, 0), _shift(BITS, 0), ASM)
    if virtual1(BITS):
        accs = _plane_mma(accs, vwords(words[1][0], ASM), al[0], 1, _shift(BITS, 1), ASM, 8)
    elif plane_width(BITS, 1) > 0:
        accs = _plane_mma(accs, words[1], al[1], plane_width(BITS, 1), _shift(BITS, 1), ASM)
    if plane_width(BITS, 2) > 0:
        accs = _plane_mma(accs, words[2], al[2], plane_width(BITS, 2), _shift(BITS, 2), ASM)
    acc0, acc1 = accs  # rows 4g, 4g + 1 (block 0), 4g + 2, 4g + 3 (block 1): keep row 4g + t
    a = tl.where(t == 0, acc0[0], tl.where(t == 1, acc0[2], tl.where(t == 2, acc1[0], acc1[2])))
    return y + s.to(tl.float32) * ((a - al[3]) - z.to(tl.float32) * al[4])


@triton.jit
def _pair_magic(j, W: tl.constexpr):
    """float32 ``2**(10 - pos)`` of activation pairs ``j`` of width ``W``: ``_h2._pos`` (a compile-time
    function) for a tensor of pair indices, the magic :func:`_magic` reads their codes with (``c = 0``)."""
    H: tl.constexpr = 16 // W
    i = j % H
    pos = i * W - tl.where(i * W + W > 10, 8, 0)
    return (1 << (10 - pos)).to(tl.float32)


@triton.jit(do_not_specialize=["K", "nblk", "stride_cs"])
def mv_gather_kernel(x_ptr, stride_xm, perm_ptr, xw_ptr, stride_wm, stride_wb, xc_ptr, stride_cs, nblk, K,
                     XSCALE: tl.constexpr, WIDTHS: tl.constexpr, NW: tl.constexpr, PDL: tl.constexpr = False):
    """Grid ``(nblk, M)``: one 128-column block of one token each: for every plane width ``W`` in
    ``WIDTHS`` its activation pairs (as ``pair_gather_kernel``: ``xw[slot(W), m, (c / E) * H + i] =
    (x16[c + i], x16[c + i + H])``) and ``xc[slot(W), m, b] = sum_pairs 2**(10 - pos) (lo + hi)`` (the
    magic each pair's codes are read with), ``xc[4, m, b] = sum x16`` and, with width 2, ``xc[5, m, b]`` the
    same sum as slot 2 with the magic of 1-bit codes in that pair order (:func:`virtual1`), where ``x16 = fp16(x[m, col_perm] *
    XSCALE)`` (0 past ``K``); ``xc``'s slot stride is ``stride_cs``, its token stride ``nblk``."""
    pdl_release(PDL)
    b = tl.program_id(0)
    m = tl.program_id(1)
    row = m.to(tl.int64) * stride_xm
    c = xc_ptr + m * nblk + b
    cols = b * _TILE + tl.arange(0, _TILE)
    tl.store(c + 4 * stride_cs, tl.sum(_scaled_x(x_ptr, row, perm_ptr, cols, K, XSCALE).to(tl.float32), axis=0))
    j = b * (_TILE // 2) + tl.arange(0, _TILE // 2)
    for w in tl.static_range(NW):
        _gather_width(x_ptr, row, perm_ptr, xw_ptr + m * stride_wm, stride_wb, c, stride_cs, nblk, K, j, XSCALE,
                      WIDTHS[w])


@triton.jit
def _gather_width(x_ptr, row, perm_ptr, xw_ptr, stride_wb, c, stride_cs, nblk, K, j, XSCALE: tl.constexpr,
                  W: tl.constexpr):
    """One token's activation pairs ``j`` of width ``W`` in one block and their magic-weighted sum (to ``c``)."""
    lo, hi = _pair_vals(x_ptr, row, perm_ptr, j, K, XSCALE, W)
    _put_pairs(lo, hi, xw_ptr, 0, stride_wb, 0, j, nblk * (_TILE // 2), W)
    both = lo.to(tl.float32) + hi.to(tl.float32)
    tl.store(c + _slot(W) * stride_cs, tl.sum(_pair_magic(j, W) * both, axis=0))
    if W == 2:  # the 1-bit plane of 3-bit codes, read in this pair order (virtual1)
        tl.store(c + 5 * stride_cs, tl.sum(_pair_magic(j % 8, 1) * both, axis=0))
