"""Half2 CUDA-core kernels for decode-sized ``M <= 16`` (path ``"h2"``), layout
``slimq.segmented-bitplane.v1``.

Why: the float32 ``fma`` path spends ~3 instructions per weight (mask, subtract, FFMA) and is
issue-bound at 2-3 bits. Here two codes share one 32-bit register as a half2, so one LOP3, one
HSUB2 and one HFMA2 serve two weights (1.5 instructions per weight and row of ``x``).

The pairing. A width-``W`` plane word holds ``E = 32 / W`` codes; slot ``i`` of the low half and
slot ``i + H`` (``H = E / 2``) of the high half sit at the same bit offset ``b = i * W`` of their
half-words. One LOP3 ``(word & MASK2) | MAGIC2`` turns both into the half2
``(2^(10-p) + q_i, 2^(10-p) + q_{i+H})`` (``p`` the code's bit position, ``b`` or ``b - 8`` when
the code would reach the exponent: then ``word >> 8`` is used, once per word); HSUB2 removes
the magic exactly. The matching activations are pre-paired by ``pair_gather_kernel``: for each
width, ``xw[m, (c / E) * H + i] = (x[c + i], x[c + i + H])`` (fp16 bits, ``c`` a multiple of
``E``), so one 32-bit load gives the half2 partner of a code pair.

Numerics. Products accumulate in half2 over one word only (``H`` <= 16 pairs, i.e. at most 16
products per lane), then in float32. ``x`` is pre-scaled by ``1/16`` (``XSCALE``) so that a
lane stays far below the fp16 limit (65504) for activations up to ~``4e4 / max_code``; the
float32 result is multiplied back. The zero-point term uses float32 sums of the same fp16
values per 32-column block (``xs``), so ``sum (q - z) x`` has no cancellation in fp16.

Requirements (checked on the host): every segment starts on a multiple of 32 storage columns
and ends on one (or at ``K``), and the tile ``BK`` divides the group size.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._bf16 import bf_magic, bf_mask2, bf_pos, bf_shift
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tiles import (
    group_params, pdl_release, pdl_wait, plane_coef, plane_width, skinny_program, store_rows, word_tile,
)

__all__ = ["h2_kernel", "pair_gather_kernel", "pair_halves", "pair3_halves", "code3_parts", "code3_exact", "pair_tree",
           "pair_fma", "half2_sum_f32", "WIDTH_SLOT"]

# pair buffer slot of each plane width (the workspace holds 4 slots of ``[M, Kpad / 2]`` int32)
WIDTH_SLOT = {1: 0, 2: 1, 4: 2, 8: 3}


@triton.constexpr_function
def _slot(w):
    """Slot of the workspace's ``xpair`` buffer holding the activations for plane width ``w``."""
    return WIDTH_SLOT[int(w)]


@triton.constexpr_function
def _shifted(i, w):
    """Whether pair ``i`` of a width-``w`` plane is read from ``word >> 8``."""
    return int(i) * int(w) + int(w) > 10


@triton.constexpr_function
def _mask2(i, w):
    m = ((1 << int(w)) - 1) << _pos(i, w)
    return m | (m << 16)


@triton.constexpr_function
def _magic2(i, w):
    m = (25 - _pos(i, w)) << 10
    return m | (m << 16)


@triton.constexpr_function
def _pos(i, w):
    """Bit position (within its half-word) at which pair ``i``'s codes are read."""
    return int(i) * int(w) - (8 if _shifted(i, w) else 0)


@triton.jit
def _pair_src(words, sh, I: tl.constexpr, W: tl.constexpr):
    """The words pair ``I`` is read from: ``words``, or ``sh = words >> 8`` when the codes would
    reach the fp16 exponent."""
    if _shifted(I, W):
        return sh
    else:
        return words


@triton.jit
def pair_halves(words, sh, s2, z2, I: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr):
    """fp16 ``(lo, hi)`` of slots ``I`` and ``I + H`` of every word, each shaped like ``words``: the
    exact codes (one LOP3 + HSUB2), or with SCALED the weights ``q s - z s`` (one more HFMA2;
    ``s2``/``z2`` the int32 half2 bit patterns ``(s, s)`` and ``(-z s, -z s)`` under ASM, else
    float32 ``s`` and ``-z s``; unused without SCALED)."""
    M2: tl.constexpr = _mask2(I, W)
    MAGIC2: tl.constexpr = _magic2(I, W)
    P: tl.constexpr = _pos(I, W)
    src = _pair_src(words, sh, I, W)
    if ASM:
        args = [src, tl.full(src.shape, M2, tl.int32), tl.full(src.shape, MAGIC2, tl.int32)]
        return _halves_asm(args + [s2, z2] if SCALED else args, SCALED, False, False)
    else:
        return _halves_emulated((src >> P) & ((1 << W) - 1), (src >> (P + 16)) & ((1 << W) - 1), s2, z2, SCALED,
                                False)


@triton.constexpr_function
def _pair_asm(scaled, merge3, bf16):
    """PTX of the code pairs: ``$2`` source, ``$3`` mask, ``$4`` magic (``$5``/``$6`` the scale pair), or with
    ``merge3`` (3-bit codes) ``$2``/``$3`` the sources, ``$4``-``$6`` masks and magic (``$7``/``$8`` the scale
    pair); LOP3(s), then the magic subtracted and (``scaled``) the pair scaled, in float16 or (``bf16``) bfloat16
    pairs; outputs the two halves."""
    t = "bf16x2" if bf16 else "f16x2"
    if merge3:
        body, fma = f"lop3.b32 t, $2, $4, $6, 0xEA; lop3.b32 t, $3, $5, t, 0xEA; sub.{t} t, t, $6; ", "$7, $8"
    else:
        body, fma = f"lop3.b32 t, $2, $3, $4, 0xEA; sub.{t} t, t, $4; ", "$5, $6"
    return "{ .reg .b32 t; " + body + (f"fma.rn.{t} t, t, {fma}; " if scaled else "") + "mov.b32 {$0, $1}, t; }"


@triton.constexpr_function
def _in_regs(n):
    """Constraints of :func:`_halves_asm`: two 16-bit outputs, ``n`` 32-bit inputs."""
    return "=h,=h," + ",".join(["r"] * int(n))


@triton.jit
def _halves_asm(args, SCALED: tl.constexpr, MERGE3: tl.constexpr, BF16: tl.constexpr):
    """The pair ``(lo, hi)`` of :func:`_pair_asm` from ``args`` (float16, or ``BF16`` bfloat16)."""
    if BF16:
        return tl.inline_asm_elementwise(_pair_asm(SCALED, MERGE3, True), _in_regs(len(args)), args,
                                         dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(_pair_asm(SCALED, MERGE3, False), _in_regs(len(args)), args,
                                         dtype=(tl.float16, tl.float16), is_pure=True, pack=1)


@triton.jit
def _halves_emulated(q_lo, q_hi, s2, z2, SCALED: tl.constexpr, BF16: tl.constexpr):
    """The interpreter's pair: integer codes as float16 (``BF16``: bfloat16), or SCALED ``q s - z s`` (``s2``/``z2``
    float32 there)."""
    DT: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
    if SCALED:
        return (q_lo.to(tl.float32) * s2 + z2).to(DT), (q_hi.to(tl.float32) * s2 + z2).to(DT)
    else:
        return q_lo.to(tl.float32).to(DT), q_hi.to(tl.float32).to(DT)


@triton.constexpr_function
def _pos3(i):
    """Bit position of 3-bit pair ``i``'s codes within its half-word source (``words`` for ``i < 4``,
    ``words >> 8`` from 4 on, so that 3 bits stay below the fp16 exponent)."""
    return 2 * int(i) if int(i) < 4 else 2 * int(i) - 8


@triton.constexpr_function
def _c3(i, what):
    """Constants of 3-bit pair ``i`` (both half-words): ``"m0"`` the 2-bit code's mask, ``"m1"`` the
    high bit's, ``"magic"`` the fp16 ``2 ** (10 - p)``."""
    p = _pos3(i)
    v = {"m0": 3 << p, "m1": 4 << p, "magic": (25 - p) << 10}[what]
    return v | (v << 16)


@triton.constexpr_function
def _shift_asm(d):
    """PTX shifting ``$1`` left by ``d`` bits (right for ``d < 0``) into ``$0``."""
    d = int(d)
    return f"shl.b32 $0, $1, {d};" if d >= 0 else f"shr.b32 $0, $1, {-d};"


@triton.jit
def code3_parts(words, sh, v, I: tl.constexpr, ASM: tl.constexpr):
    """The two sources of 3-bit pair ``I`` (codes ``q = q0 + 4 q1``): the 2-bit ``words`` (or
    ``sh = words >> 8`` from pair 4 on, :func:`_pos3`) holding ``q0`` at bit ``p``, and the 1-bit
    partners ``v`` (slot ``i`` at bits ``i`` and ``16 + i``) shifted so that ``q1`` sits at ``p + 2``:
    one SHF. ``(a & m0) | (b & m1) | magic`` (two LOP3, :func:`_c3`) then is the half2
    ``(2^(10-p) + q_I, 2^(10-p) + q_{I+8})``."""
    D: tl.constexpr = _pos3(I) + 2 - I
    if I < 4:
        src = words
    else:
        src = sh
    if ASM:
        return src, tl.inline_asm_elementwise(_shift_asm(D), "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return src, v


@triton.jit
def code3_exact(src, sv, I: tl.constexpr):
    """Emulation (no ASM) of 3-bit pair ``I`` from :func:`code3_parts`: int32 ``(q_I, q_{I+8})``."""
    P: tl.constexpr = _pos3(I)
    q_lo = ((src >> P) & 3) + 4 * ((sv >> I) & 1)
    q_hi = ((src >> (P + 16)) & 3) + 4 * ((sv >> (I + 16)) & 1)
    return q_lo, q_hi


@triton.jit
def pair3_halves(words, sh, v, s2, z2, I: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr):
    """fp16 ``(lo, hi)`` of 3-bit codes ``q0 + 4 q1`` (exact, or SCALED to ``q s - z s``) of pair ``I``
    of 2-bit plane words ``words`` and their 1-bit partners ``v`` (slot ``i`` at bit ``i``, slot ``i + 8`` at
    bit ``16 + i``; ``_wg._virtual_words`` builds them): :func:`code3_parts` (one SHF), two LOP3 and one
    HSUB2 make the exact codes in one pass (one HFMA2 more scales them)."""
    src, sv = code3_parts(words, sh, v, I, ASM)
    if ASM:
        args = [src, sv, tl.full(src.shape, _c3(I, "m0"), tl.int32), tl.full(src.shape, _c3(I, "m1"), tl.int32),
                tl.full(src.shape, _c3(I, "magic"), tl.int32)]
        return _halves_asm(args + [s2, z2] if SCALED else args, SCALED, True, False)
    else:
        q_lo, q_hi = code3_exact(src, sv, I)
        return _halves_emulated(q_lo, q_hi, s2, z2, SCALED, False)


@triton.constexpr_function
def _bf_m1(i):
    """bfloat16 reads of 3-bit pair ``i``: the mask of the high bit (``p + 2``) in both halves."""
    m = 4 << bf_pos(i, 2)
    return m | (m << 16)


@triton.jit
def pair_halves_bf16(words, s2, z2, I: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr):
    """:func:`pair_halves` as bfloat16 (``_bf16``: the word shifted so that the codes end below bit 7, the magic
    ``2**(7 - p)``; ``s2``/``z2`` bfloat16 pairs under ASM): the exact codes, or SCALED ``q s - z s``."""
    S: tl.constexpr = bf_shift(I, W)
    P: tl.constexpr = bf_pos(I, W)
    src = words >> S if S > 0 else words
    if ASM:
        args = [src, tl.full(src.shape, bf_mask2(I, W), tl.int32), tl.full(src.shape, bf_magic(I, W), tl.int32)]
        return _halves_asm(args + [s2, z2] if SCALED else args, SCALED, False, True)
    else:
        return _halves_emulated((src >> P) & ((1 << W) - 1), (src >> (P + 16)) & ((1 << W) - 1), s2, z2, SCALED,
                                True)


@triton.jit
def pair3_halves_bf16(words, v, s2, z2, I: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr):
    """:func:`pair3_halves` as bfloat16: ``q0`` from the 2-bit ``words`` shifted by ``_bf16.bf_shift`` (at bit
    ``p <= 4``), the partner of pair ``I`` (bit ``I`` of ``v``) shifted to ``p + 2`` (one SHF)."""
    S: tl.constexpr = bf_shift(I, 2)
    P: tl.constexpr = bf_pos(I, 2)
    src = words >> S if S > 0 else words
    if ASM:
        sv = tl.inline_asm_elementwise(_shift_asm(P + 2 - I), "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
        args = [src, sv, tl.full(src.shape, bf_mask2(I, 2), tl.int32), tl.full(src.shape, _bf_m1(I), tl.int32),
                tl.full(src.shape, bf_magic(I, 2), tl.int32)]
        return _halves_asm(args + [s2, z2] if SCALED else args, SCALED, True, True)
    else:
        q_lo = ((src >> P) & 3) + 4 * ((v >> I) & 1)
        q_hi = ((src >> (P + 16)) & 3) + 4 * ((v >> (I + 16)) & 1)
        return _halves_emulated(q_lo, q_hi, s2, z2, SCALED, True)


@triton.jit
def pair_tree(words, sh, v, s2, z2, I0: tl.constexpr, N: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr,
              SCALED: tl.constexpr, MERGE3: tl.constexpr = False, BF16: tl.constexpr = False):
    """Code pairs ``I0 .. I0 + N - 1`` of every word, joined: ``words.shape + [2 (half), 2, ...]`` (``log2 N``
    more axes of 2: the bits of ``j = I - I0``, least significant first). Each pair is
    :func:`pair_halves` (exact, or SCALED), or with MERGE3 :func:`pair3_halves` of 2-bit ``words`` and
    their 1-bit partners ``v`` (unused otherwise); ``BF16``: their bfloat16 versions (``sh`` unused)."""
    if N == 1:
        if BF16:
            if MERGE3:
                lo, hi = pair3_halves_bf16(words, v, s2, z2, I0, ASM, SCALED)
            else:
                lo, hi = pair_halves_bf16(words, s2, z2, I0, W, ASM, SCALED)
        elif MERGE3:
            lo, hi = pair3_halves(words, sh, v, s2, z2, I0, ASM, SCALED)
        else:
            lo, hi = pair_halves(words, sh, s2, z2, I0, W, ASM, SCALED)
        return tl.join(lo, hi)
    else:
        return tl.join(pair_tree(words, sh, v, s2, z2, I0, N // 2, W, ASM, SCALED, MERGE3, BF16),
                       pair_tree(words, sh, v, s2, z2, I0 + N // 2, N // 2, W, ASM, SCALED, MERGE3, BF16))


@triton.jit
def _lo_hi_f32(v):
    """float32 values of the low and high fp16 halves of int32 bit patterns ``v``."""
    lo = (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def pair_fma(acc2, acc_lo, acc_hi, src, x2, I: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr):
    """Code pair ``I`` of the words ``src`` (the words, or ``words >> 8``: :func:`_pair_src`) times the
    activation pairs ``x2`` (int32 half2 bit patterns; broadcast against ``src``): ``acc2 +=
    (q_I, q_{I+H}) * (x_I, x_{I+H})`` in half2 (``ASM``), else the float32 emulation in
    ``acc_lo`` / ``acc_hi``."""
    M2: tl.constexpr = _mask2(I, W)
    MAGIC2: tl.constexpr = _magic2(I, W)
    P: tl.constexpr = _pos(I, W)
    q2, x2 = tl.broadcast(src, x2)
    if ASM:
        acc2 = tl.inline_asm_elementwise(
            "{ .reg .b32 t; lop3.b32 t, $1, $2, $3, 0xEA; sub.f16x2 t, t, $3; fma.rn.f16x2 $0, t, $4, $5; }",
            "=r,r,r,r,r,r",
            [q2, tl.full(q2.shape, M2, tl.int32), tl.full(q2.shape, MAGIC2, tl.int32), x2, acc2],
            dtype=tl.int32, is_pure=True, pack=1)
    else:
        qv = q2 & M2
        q_lo = ((qv >> P) & ((1 << W) - 1)).to(tl.float32)
        q_hi = ((qv >> (P + 16)) & ((1 << W) - 1)).to(tl.float32)
        x_lo, x_hi = _lo_hi_f32(x2)
        acc_lo += q_lo * x_lo
        acc_hi += q_hi * x_hi
    return acc2, acc_lo, acc_hi


@triton.jit
def half2_sum_f32(acc2, acc_lo, acc_hi, ASM: tl.constexpr):
    """float32 ``lo + hi`` of the half2 sums ``acc2`` (``ASM``), else of the emulation's two sums."""
    if ASM:
        s = tl.inline_asm_elementwise(
            "{ .reg .f16 lo, hi; .reg .f32 a, b; mov.b32 {lo, hi}, $1; cvt.f32.f16 a, lo; cvt.f32.f16 b, hi; "
            "add.f32 a, a, b; mov.b32 $0, a; }",
            "=r,r", [acc2], dtype=tl.int32, is_pure=True, pack=1)
        return s.to(tl.float32, bitcast=True)
    else:
        return acc_lo + acc_hi


@triton.jit
def _h2_pair(acc2, acc_lo, acc_hi, words, sh, xw_ptr, pair0, stride_wm, offs_m, mask_m, offs_kw, kw_ok,
             I: tl.constexpr, W: tl.constexpr, BM: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """Code pair ``I`` of every word times its activation pairs (loaded here): :func:`pair_fma`."""
    H: tl.constexpr = 16 // W
    src = _pair_src(words, sh, I, W)
    if BM == 1:
        xp = xw_ptr + pair0 + offs_kw * H + I
        if FULL:
            x2 = tl.load(xp)[:, None]
        else:
            x2 = tl.load(xp, mask=kw_ok, other=0)[:, None]
    else:
        # offs_m is clamped to M - 1 by the caller: rows past M read row M - 1 (never stored)
        xp = xw_ptr + offs_m[:, None] * stride_wm + (pair0 + offs_kw * H + I)[None, :]
        if FULL:
            x2 = tl.load(xp)[:, :, None]
        else:
            x2 = tl.load(xp, mask=kw_ok[None, :], other=0)[:, :, None]
        src = src[None, :, :]
    return pair_fma(acc2, acc_lo, acc_hi, src, x2, I, W, ASM)


@triton.jit
def _h2_plane(words, xw_ptr, pair0, stride_wm, offs_m, mask_m, kw_ok, W: tl.constexpr, BM: tl.constexpr,
              KW: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """float32 ``sum_e q * x`` per word of one plane tile: ``[KW, BN]`` (``BM == 1``) or
    ``[BM, KW, BN]``. ``words [KW, BN]`` int32; the pairs of word row ``r`` start at
    ``xw_ptr + pair0 + r * H``."""
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    offs_kw = tl.arange(0, KW)
    sh = words >> 8
    if BM == 1:
        zero_shape = words
    else:
        zero_shape = tl.broadcast_to(words[None, :, :], (BM, KW, words.shape[1]))
    acc2 = tl.zeros(zero_shape.shape, tl.int32)  # half2 (+0, +0)
    acc_lo = tl.zeros(zero_shape.shape, tl.float32)  # interpreter path
    acc_hi = tl.zeros(zero_shape.shape, tl.float32)
    for i in tl.static_range(H):
        acc2, acc_lo, acc_hi = _h2_pair(acc2, acc_lo, acc_hi, words, sh, xw_ptr, pair0, stride_wm, offs_m, mask_m,
                                        offs_kw, kw_ok, i, W, BM, ASM, FULL)
    return half2_sum_f32(acc2, acc_lo, acc_hi, ASM)


@triton.jit
def _h2_plane_acc(acc, seg, k0, xw_ptr, stride_wm, stride_wb, ns, offs_m, mask_m, offs_n, mask_n, s, z, xs,
                  P: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr,
                  FULL: tl.constexpr):
    """``acc`` plus plane ``P``'s share of the tile (the zero-point term with plane 0)."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    c0 = seg[0]
    ks = seg[1]
    n_words = (ks + E - 1) // E
    kw_ok = (k0 // E + tl.arange(0, KW)) < n_words
    words = word_tile(seg[4 + P], k0, ks, ns, offs_n, mask_n, W, BK)
    part = _h2_plane(words, xw_ptr + _slot(W) * stride_wb, (c0 + k0) // 2, stride_wm, offs_m, mask_m,
                     kw_ok, W, BM, KW, ASM, FULL)
    if BM == 1:
        if P == 0:
            acc += s[None, :] * tl.sum(part, axis=0)[None, :] - (s * z)[None, :] * xs
        else:
            acc += (s * plane_coef(BITS, P))[None, :] * tl.sum(part, axis=0)[None, :]
    else:
        if P == 0:
            acc += s[None, :] * tl.sum(part, axis=1) - (s * z)[None, :] * xs[:, None]
        else:
            acc += (s * plane_coef(BITS, P))[None, :] * tl.sum(part, axis=1)
    return acc


@triton.jit
def _h2_acc1(acc, words, seg, k0, xw_ptr, stride_wb, s, z, xs, P: tl.constexpr, BITS: tl.constexpr,
             BK: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """``M == 1``: ``acc [KW, BN] +=`` plane ``P``'s per-word share of the tile, from its loaded
    ``words [KW, BN]`` (no reduction: the zero-point term is spread evenly over the word rows)."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    kw_ok = (k0 // E + tl.arange(0, KW)) < (seg[1] + E - 1) // E
    part = _h2_plane(words, xw_ptr + _slot(W) * stride_wb, (seg[0] + k0) // 2, 0, tl.arange(0, 1), kw_ok, kw_ok,
                     W, 1, KW, ASM, FULL)
    if P == 0:
        return acc + s[None, :] * part - (s * z)[None, :] * (xs / KW)
    else:
        return acc + (s * plane_coef(BITS, P))[None, :] * part


@triton.jit
def _h2_loads1(seg, k0, valid, xs_ptr, ns, gs, offs_n, BITS: tl.constexpr, BK: tl.constexpr):
    """``M == 1``: the global loads of one K-tile (words of every plane, scale, zero, sum of x);
    all zero unless ``valid``, so a prefetch may run past the end."""
    ks = seg[1]
    m = offs_n < tl.where(valid, ns, 0)
    w0 = word_tile(seg[4], k0, ks, ns, offs_n, m, plane_width(BITS, 0), BK)
    if plane_width(BITS, 1) > 0:
        w1 = word_tile(seg[5], k0, ks, ns, offs_n, m, plane_width(BITS, 1), BK)
    else:
        w1 = w0
    if plane_width(BITS, 2) > 0:
        w2 = word_tile(seg[6], k0, ks, ns, offs_n, m, plane_width(BITS, 2), BK)
    else:
        w2 = w0
    s, z = group_params(seg[2], seg[3], k0, gs, ns, offs_n, m)
    blk = tl.arange(0, BK // 32)
    xs = tl.sum(tl.load(xs_ptr + (seg[0] + k0) // 32 + blk, mask=(k0 + blk * 32) < tl.where(valid, ks, 0), other=0.0),
                axis=0)
    return w0, w1, w2, s, z, xs


@triton.jit
def _h2_compute1(acc0, acc1, acc2, w0, w1, w2, s, z, xs, seg, k0, xw_ptr, stride_wb, BITS: tl.constexpr,
                 BK: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    acc0 = _h2_acc1(acc0, w0, seg, k0, xw_ptr, stride_wb, s, z, xs, 0, BITS, BK, ASM, FULL)
    if plane_width(BITS, 1) > 0:
        acc1 = _h2_acc1(acc1, w1, seg, k0, xw_ptr, stride_wb, s, z, xs, 1, BITS, BK, ASM, FULL)
    if plane_width(BITS, 2) > 0:
        acc2 = _h2_acc1(acc2, w2, seg, k0, xw_ptr, stride_wb, s, z, xs, 2, BITS, BK, ASM, FULL)
    return acc0, acc1, acc2


@triton.jit
def _h2_segment1(seg, xw_ptr, stride_wb, xs_ptr, ns, gs, offs_n, mask_n, pid_k, split_k, BITS: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, PREFETCH: tl.constexpr):
    """``M == 1``: float32 ``[1, BN]``, this program's share of one segment. PREFETCH: issue the
    next tile's loads before computing the current one (register double buffering)."""
    ks = seg[1]
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    acc0 = tl.zeros([BK * plane_width(BITS, 0) // 32, BN], tl.float32)
    acc1 = tl.zeros([max(BK * W1 // 32, 1), BN], tl.float32)
    acc2 = tl.zeros([max(BK * W2 // 32, 1), BN], tl.float32)
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    t_full = tl.minimum(t_hi, ks // BK)
    if PREFETCH:
        w0, w1, w2, s, z, xs = _h2_loads1(seg, t_lo * BK, t_lo < t_full, xs_ptr, ns, gs, offs_n, BITS, BK)
        for t in range(t_lo, t_full):
            c0w, c1w, c2w, cs, cz, cxs = w0, w1, w2, s, z, xs
            w0, w1, w2, s, z, xs = _h2_loads1(seg, (t + 1) * BK, t + 1 < t_full, xs_ptr, ns, gs, offs_n, BITS, BK)
            acc0, acc1, acc2 = _h2_compute1(acc0, acc1, acc2, c0w, c1w, c2w, cs, cz, cxs, seg, t * BK, xw_ptr,
                                            stride_wb, BITS, BK, ASM, True)
    else:
        for t in range(t_lo, t_full):
            w0, w1, w2, s, z, xs = _h2_loads1(seg, t * BK, t < t_full, xs_ptr, ns, gs, offs_n, BITS, BK)
            acc0, acc1, acc2 = _h2_compute1(acc0, acc1, acc2, w0, w1, w2, s, z, xs, seg, t * BK, xw_ptr, stride_wb,
                                            BITS, BK, ASM, True)
    if (t_hi > t_lo) & (t_hi * BK > ks):  # the segment's last tile is partial and ours
        k0 = (t_hi - 1) * BK
        w0, w1, w2, s, z, xs = _h2_loads1(seg, k0, t_hi > t_lo, xs_ptr, ns, gs, offs_n, BITS, BK)
        acc0, acc1, acc2 = _h2_compute1(acc0, acc1, acc2, w0, w1, w2, s, z, xs, seg, k0, xw_ptr, stride_wb,
                                        BITS, BK, ASM, False)
    y = tl.sum(acc0, axis=0)
    if W1 > 0:
        y += tl.sum(acc1, axis=0)
    if W2 > 0:
        y += tl.sum(acc2, axis=0)
    return y[None, :]


@triton.jit
def _h2_tile(acc, seg, k0, xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, ns, gs, offs_m, mask_m, offs_n, mask_n,
             BITS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """``acc += W_tile x_tile`` (scaled) for segment columns ``[k0, k0 + BK)`` of every plane."""
    c0 = seg[0]
    ks = seg[1]
    s, z = group_params(seg[2], seg[3], k0, gs, ns, offs_n, mask_n)
    # float32 sum of the tile's (scaled fp16) activations, from the 32-column block sums
    NB: tl.constexpr = BK // 32
    blk = tl.arange(0, NB)
    bmask = (k0 + blk * 32) < ks
    if BM == 1:
        xs = tl.sum(tl.load(xs_ptr + (c0 + k0) // 32 + blk, mask=bmask, other=0.0), axis=0)
    else:
        xsp = xs_ptr + offs_m[:, None] * stride_sm + ((c0 + k0) // 32 + blk)[None, :]
        if FULL:
            xs = tl.sum(tl.load(xsp), axis=1)
        else:
            xs = tl.sum(tl.load(xsp, mask=bmask[None, :], other=0.0), axis=1)
    acc = _h2_plane_acc(acc, seg, k0, xw_ptr, stride_wm, stride_wb, ns, offs_m, mask_m, offs_n, mask_n, s, z, xs,
                        0, BITS, BM, BK, ASM, FULL)
    if plane_width(BITS, 1) > 0:
        acc = _h2_plane_acc(acc, seg, k0, xw_ptr, stride_wm, stride_wb, ns, offs_m, mask_m, offs_n, mask_n, s, z, xs,
                            1, BITS, BM, BK, ASM, FULL)
    if plane_width(BITS, 2) > 0:
        acc = _h2_plane_acc(acc, seg, k0, xw_ptr, stride_wm, stride_wb, ns, offs_m, mask_m, offs_n, mask_n, s, z, xs,
                            2, BITS, BM, BK, ASM, FULL)
    return acc


@triton.jit
def _h2_segment(acc, seg, xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, ns, gs, offs_m, mask_m, offs_n, mask_n,
                pid_k, split_k, BITS: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, ASM: tl.constexpr):
    """``M > 1``: ``acc [BM, BN]`` plus this program's share of one segment."""
    ks = seg[1]
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    t_full = tl.minimum(t_hi, ks // BK)
    for t in range(t_lo, t_full):
        acc = _h2_tile(acc, seg, t * BK, xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, ns, gs, offs_m, mask_m,
                       offs_n, mask_n, BITS, BM, BK, ASM, True)
    if (t_hi > t_lo) & (t_hi * BK > ks):
        acc = _h2_tile(acc, seg, (t_hi - 1) * BK, xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, ns, gs,
                       offs_m, mask_m, offs_n, mask_n, BITS, BM, BK, ASM, False)
    return acc


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def h2_kernel(xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr,
              bias_ptr, M, r0, ns, gs, split_k, cnt_ptr, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ATOMIC: tl.constexpr,
              HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED: tl.constexpr, ASM: tl.constexpr, XSCALE_INV: tl.constexpr,
              PREFETCH: tl.constexpr = False, PDL: tl.constexpr = False):
    """Grid ``(cdiv(ns, BN), split_k)``, ``M <= BM``; activations come pre-paired from
    ``pair_gather_kernel``. ``ASM``: half2 inline PTX (else a float32 emulation for the interpreter)."""
    pid_k, offs_n, mask_n, offs_m, mask_m = skinny_program(ns, M, BM, BN)
    pdl_wait(PDL)
    acc = tl.zeros([BM, BN], tl.float32)
    for i in tl.static_range(NSEG):
        if BM == 1:
            acc += _h2_segment1(segs[i], xw_ptr, stride_wb, xs_ptr, ns, gs, offs_n, mask_n, pid_k, split_k,
                                SEG_BITS[i], BN, BK, ASM, PREFETCH)
        else:
            acc = _h2_segment(acc, segs[i], xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, ns, gs,
                              tl.minimum(offs_m, M - 1), mask_m, offs_n, mask_n, pid_k, split_k, SEG_BITS[i], BM, BK,
                              ASM)
    store_rows(acc * XSCALE_INV, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)


@triton.jit
def _x_at(x_ptr, row_off, idx, ok, XSCALE: tl.constexpr):
    """fp16 ``x[m, idx] * XSCALE`` (0 where not ``ok``), any shape of ``idx``."""
    v = tl.load(x_ptr + row_off + idx, mask=ok, other=0.0).to(tl.float32)
    return (v * XSCALE).to(tl.float16)


@triton.jit
def _scaled_x(x_ptr, row_off, perm_ptr, cols, K, XSCALE: tl.constexpr):
    """fp16 ``x[m, col_perm[cols]] * XSCALE`` (0 past ``K``), any shape of ``cols``."""
    ok = cols < K
    return _x_at(x_ptr, row_off, tl.load(perm_ptr + cols, mask=ok, other=0), ok, XSCALE)


@triton.jit(do_not_specialize=["K"])
def pair_gather_kernel(x_ptr, stride_xm, perm_ptr, xw_ptr, stride_wm, stride_wb, xs_ptr, stride_sm, K,
                       XSCALE: tl.constexpr, WIDTHS: tl.constexpr, NW: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = False):
    """Pairs the activations of row ``m`` for every plane width in ``WIDTHS`` and sums them per
    32-column block. Grid ``(cdiv(K, BLOCK), M)``; ``BLOCK`` a multiple of 32.

    ``xw[slot(W)][m, (c / E) * H + i] = (x16[c + i], x16[c + i + H])`` (int32 with the fp16 bits),
    ``xs[m, c / 32] = sum of x16[c : c + 32]`` in float32, where ``x16 = fp16(x[m, col_perm] * XSCALE)``.
    """
    pdl_release(PDL)
    m = tl.program_id(1)
    base = tl.program_id(0) * BLOCK
    row = m.to(tl.int64) * stride_xm
    cols = base + tl.arange(0, BLOCK // 32)[:, None] * 32 + tl.arange(0, 32)[None, :]
    sums = tl.sum(_scaled_x(x_ptr, row, perm_ptr, cols, K, XSCALE).to(tl.float32), axis=1)
    nblk = tl.cdiv(K, 32)
    bi = base // 32 + tl.arange(0, BLOCK // 32)
    tl.store(xs_ptr + m * stride_sm + bi, sums, mask=bi < nblk)
    j = base // 2 + tl.arange(0, BLOCK // 2)  # pair indices of this block
    for w in tl.static_range(NW):
        _store_pairs(x_ptr, row, perm_ptr, xw_ptr, stride_wm, stride_wb, m, j, (K + 31) // 32 * 16, K, XSCALE,
                     WIDTHS[w])


@triton.jit
def _pair_cols(j, W: tl.constexpr):
    """Storage columns ``(lo, hi)`` of activation pairs ``j`` (any shape) of width ``W``: slot ``i`` and
    ``i + H`` of word ``j // H`` (see ``pair_gather_kernel``)."""
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    c_lo = (j // H) * E + j % H
    return c_lo, c_lo + H


@triton.jit
def _pair_vals(x_ptr, row, perm_ptr, j, K, XSCALE: tl.constexpr, W: tl.constexpr):
    """fp16 ``(lo, hi)`` of activation pairs ``j`` (any shape) of width ``W`` (see ``pair_gather_kernel``)."""
    c_lo, c_hi = _pair_cols(j, W)
    return _scaled_x(x_ptr, row, perm_ptr, c_lo, K, XSCALE), _scaled_x(x_ptr, row, perm_ptr, c_hi, K, XSCALE)


@triton.jit
def _put_pairs(lo, hi, xw_ptr, stride_wm, stride_wb, m, j, j_end, W: tl.constexpr):
    """Store fp16 pairs ``(lo, hi)`` as pairs ``j < j_end`` of width ``W``'s buffer."""
    v = (lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)
    tl.store(xw_ptr + _slot(W) * stride_wb + m * stride_wm + j, v, mask=j < j_end)


@triton.jit
def _store_pairs(x_ptr, row, perm_ptr, xw_ptr, stride_wm, stride_wb, m, j, j_end, K, XSCALE: tl.constexpr,
                 W: tl.constexpr):
    """Pairs ``j < j_end`` of width ``W`` (see ``pair_gather_kernel``)."""
    lo, hi = _pair_vals(x_ptr, row, perm_ptr, j, K, XSCALE, W)
    _put_pairs(lo, hi, xw_ptr, stride_wm, stride_wb, m, j, j_end, W)
