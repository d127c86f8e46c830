"""Large-``M`` path ``wgr``: the weights as the *register* operand of an asynchronous ``wgmma``, in Gluon
(layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90). The dispatch picks it, with its copy warp, for uniform
2-, 3- and 4-bit layers and SliM layers at 256-1024 tokens where its tiles fill their waves
(``_dispatch.wgr_config``);
launches: ``_wgr_plan.wgr_launches``;
``benchmarks/wgr_probe.py`` times its configs.

Why: ``wgs`` dequantizes the weights into shared memory for ``wgmma``'s shared operand, which costs its producer
warps a partition barrier, a generic-to-async proxy fence and a second barrier per tile; on the H200 they set the
pace (tensor pipe busy 65-78% of the active cycles against cuBLAS's 90-98%, benchmarks/KERNEL_NOTES.md, session
13). Here the MMA warps build the weights in registers and ``wgmma`` reads them from there (as CUTLASS's
mixed-input Hopper GEMMs do): no weight stores, no proxy fence, and the dequantization of tile ``t + 1``
overlaps the asynchronous ``wgmma`` of tile ``t``.

The product is ``y^T [BN, BT] = W [BN, K] x^T [K, BT]``: weight rows are ``wgmma``'s M (64 per warpgroup, 16 per
warp), tokens its N (``BT`` up to 256), ``K`` in tiles of ``BK = 64``. The activations come by TMA from a
buffer gathered in *operand order* (:func:`wgr_src`): in the ``wgmma`` A fragment, lane ``l`` of a warp holds K
positions ``2 (l % 4) + {0, 1}`` and ``+ 8`` of each 16-wide step, so within a tile position ``k`` (bits
``b0..b5``) is given the code that lane ``b1 b2`` can take from its *own* words: word row ``r = (b1 b2) + 4 *
(higher row bits)``, code pair ``j``, half ``h`` (codes ``j`` and ``j + H`` of a word) as listed in
:func:`wgr_src`. Each thread then reads only its own words (one per row and tile at 2 bits, two at 4) and turns
them into its fragment with a reshape and permute that Gluon checks to be register renaming
(``convert_layout(assert_trivial=True)``). With ``KernelConfig(direct=True)`` there is no gather: the threads read
every word of their rows and take the natural order's codes from it (``_wgrn``; dispatched at 2 and 4 bits).

Each code pair becomes a register of the fragment in one LOP3, HSUB2 and HFMA2 (:func:`_fragment`). Every
operand of a K tile (activations, code words, the rows' scales and zeros) comes by TMA into one slot of a
``STAGES``-deep ring; the threads read their words from the slot, and tile ``t``'s fragment is built while tile
``t - 1``'s ``wgmma`` runs (one group left in flight). With ``WS`` (``KernelConfig(producers=1)``, what the
dispatch runs) one copy warp (``gl.warp_specialize``) issues the copies as soon as the MMA warps release a slot
(an mbarrier per slot); without it the MMA warps issue them ``STAGES - 1`` tiles ahead themselves, between their
``wgmma``s, with a third CTA barrier per tile (Gluon's shared-memory hazard analysis): 10-17% slower on the H200
(run 130).

3-bit codes (a 2-bit plane and a 1-bit one) use the 2-bit operand order: the 1-bit plane comes by TMA too, each
thread reads the 1-bit word of its 2-bit word row (:func:`_smem_partner`) and :func:`_fragment3` merges both.
1-bit codes are read the same way (:func:`_fragment1`), so a SliM layer's 1-, 2- and 3-bit segments share the
2-bit operand order: each K tile's copies and fragment come from the segment holding it (a branch per tile;
barriers an operand does not use are armed for 0 bytes so that every phase stays ``(t // STAGES) & 1``).
Uniform 1-bit layers run only as an explicit config (checked on the H200, not dispatched).

Limits: one segment of 1- to 4-bit codes or up to three of 1-3 bits, float16 activations, ``K``, the group size
and segment bounds multiples of 64, ``out_features`` a multiple of 8, no ``row_perm``; one program per ``[BN,
BT]`` output tile and K share (split-K through the float32 workspace, no stream-K). Measured on the H200:
benchmarks/KERNEL_NOTES.md, sessions 13-15."""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from slimq.kernels.triton._dq16 import _half2
from slimq.kernels.triton._h2 import _in_regs, _pair_asm
from slimq.kernels.triton._trace import stamp, stamp_unit
from slimq.kernels.triton._wgrn import nat_fragment, nat_rows, nat_words, smem_rows
from slimq.kernels.triton._wgs import _acc_layout, _cta_barrier, _tma_load
from slimq.kernels.triton._wgsk import _gdc_wait

__all__ = ["wgr_kernel", "wgr_src", "fragment_order", "seg_planes", "WGR_BK"]

WGR_BK = gl.constexpr(64)  # K columns per tile


def wgr_src(k: int, w: int) -> int:
    """Storage column (within its 64-column tile) whose activation sits at operand position ``k`` for ``w``-bit
    codes (module doc): position bits ``b0..b5`` name the half ``h``, the word row ``r`` and the pair ``j``;
    the code is slot ``j + h H`` of word row ``r``, column ``r E + j + h H`` (``E = 32 / w`` codes per word,
    ``H = E / 2``)."""
    if not 0 <= k < 64:
        raise ValueError(f"wgr: operand position {k} is outside a 64-column tile")
    b = [(k >> i) & 1 for i in range(6)]
    if w == 2:  # k bits (b0..b5) = (i3, r0, r1, i0, i1, i2): r = b1 + 2 b2, slot i = b3 + 2 b4 + 4 b5 + 8 b0
        r, i, e = b[1] + 2 * b[2], b[3] + 2 * b[4] + 4 * b[5] + 8 * b[0], 16
    elif w == 4:  # (i2, r0, r1, i0, i1, r2): r = b1 + 2 b2 + 4 b5, slot i = b3 + 2 b4 + 4 b0
        r, i, e = b[1] + 2 * b[2] + 4 * b[5], b[3] + 2 * b[4] + 4 * b[0], 8
    else:
        raise ValueError(f"wgr: plane width {w} is not supported (2 or 4)")
    return r * e + i


@triton.constexpr_function
def fragment_order(w):
    """How :func:`_fragment` permutes a tile's pairs ``[BN / 16, 2, 8, KP, H, 2]`` (rows, word row ``r``, pair
    ``j``, half ``h``), reshaped into single bits ``[BN / 16, 2, 8, b, b, b, b, b, b]``, so that the last six
    dimensions read (most significant first) as operand position ``k`` (:func:`wgr_src`): at 2 bits ``(r1, r0, j2,
    j1, j0, h) -> (j2, j1, j0, r1, r0, h)``, at 4 bits ``(r2, r1, r0, j1, j0, h) -> (r2, j1, j0, r1, r0, h)``."""
    if int(w) == 2:
        return [0, 1, 2, 5, 6, 7, 3, 4, 8]
    if int(w) == 4:
        return [0, 1, 2, 3, 6, 7, 4, 5, 8]
    raise ValueError(f"wgr: plane width {w} is not supported (2 or 4)")


@triton.constexpr_function
def _word_layout(kp, e, num_warps):
    """``[BN / 16, 2, 8, KP, E]`` codes: warp ``w`` rows ``16 w + 8 a + l // 4`` (``a`` in registers), lane ``l``
    word rows ``r`` with ``r % 4 == l % 4``, every code of those words in registers."""
    return gl.BlockedLayout([1, 2, 1, 1, e], [1, 1, 8, 4, 1], [num_warps, 1, 1, 1, 1], [4, 3, 2, 1, 0])


@gluon.jit
def _ar_last(n: gl.constexpr, L: gl.constexpr):
    """``arange(n)`` along the last dimension of a rank-5 tensor in layout ``L``."""
    a = gl.arange(0, n, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L)))))
    return a[None, None, None, None, :]


@triton.constexpr_function
def _words_smem_layout(kp, bn, num_warps):
    """How the MMA threads read a tile's words ``[KP, BN]`` (word row ``r``, weight row ``n``) from shared memory:
    the 2-D form of :func:`_word_layout`'s slice (lane bits 0-1: ``r % 4``, 2-4: ``n % 8``; registers: ``n``'s bit
    3, and ``r``'s bit 2 at 4 bits; warps: ``n // 16``), so that reshaping and permuting the loaded tensor to
    ``[BN / 16, 2, 8, KP]`` is register renaming."""
    regs = [[0, 8]] + ([[4, 0]] if kp == 8 else [])
    warps = [[0, 16 << i] for i in range((num_warps - 1).bit_length())]
    return gl.DistributedLinearLayout(regs, [[1, 0], [2, 0], [0, 1], [0, 2], [0, 4]], warps, [], [kp, bn])


@triton.constexpr_function
def _partner_layout(bn, num_warps):
    """How the MMA threads read a tile's two 1-bit partner words ``[2, BN]`` (3-bit codes): the slice along ``h``
    of ``[2, 2, BN]`` (1-bit word row ``r1``, half ``h``, row ``n``) with lane bit 0 as ``h`` and lane bit 1 as
    ``r1``, so that ``r = 2 r1 + h`` sits on the lanes of 2-bit word row ``r`` (:func:`_words_smem_layout`); the
    two lanes of one 1-bit word read it alike."""
    warps = [[0, 0, 16 << i] for i in range((num_warps - 1).bit_length())]
    full = gl.DistributedLinearLayout([[0, 0, 8]], [[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 4]], warps,
                                      [], [2, 2, bn])
    return gl.SliceLayout(1, full)


@gluon.jit
def _as_words(w, KP: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """Words ``[KP, BN]`` in :func:`_words_smem_layout` as ``[BN / 16, 2, 8, KP]`` in a slice of
    :func:`_word_layout` (``32 / KP`` code pairs per word): register renaming, checked."""
    L4: gl.constexpr = gl.SliceLayout(4, _word_layout(KP, 32 // KP, num_warps))
    return gl.convert_layout(gl.permute(gl.reshape(w, [KP, BN // 16, 2, 8]), [1, 2, 3, 0]), L4, assert_trivial=True)


@gluon.jit
def _smem_partner(v_s, BN: gl.constexpr, num_warps: gl.constexpr):
    """A 3-bit tile's 1-bit partner of each 2-bit word ``[BN / 16, 2, 8, 4]`` (slice of :func:`_word_layout`),
    respread for :func:`_fragment3`: for 2-bit word row ``r``, the 16 bits ``(r % 2) 16 ..`` of 1-bit word ``r //
    2`` with slot ``i < 8`` at bit ``i`` and slot ``i + 8`` at bit ``16 + i`` (one PRMT, as
    ``_wg._virtual_words``)."""
    v = gl.expand_dims(v_s.load(_partner_layout(BN, num_warps)), 1).broadcast_to([2, 2, BN])  # [r1, h, n]
    v = gl.convert_layout(gl.reshape(v, [4, BN]), _words_smem_layout(4, BN, num_warps), assert_trivial=True)
    h = gl.arange(0, 4, layout=gl.SliceLayout(1, _words_smem_layout(4, BN, num_warps)))[:, None] % 2
    sel = (0x4140 + 0x0202 * h).broadcast_to([4, BN])  # bytes (2h, 0, 2h + 1, 0) of the word
    v = gl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r", [v, sel], dtype=gl.int32, is_pure=True,
                                  pack=1)
    return _as_words(v, 4, BN, num_warps)


@triton.constexpr_function
def seg_planes(seg_bits):
    """``(USE_W, USE_V, PW)`` for a layer whose segments (in column order) have ``seg_bits``: whether any has a
    2- or 4-bit plane (``w``), any a 1-bit plane (``v``: 1-bit codes, the partner plane of 3-bit ones), and the
    plane width of the operand order. One segment of 1-4 bits, or up to three of 1-3 bits (SliM); 4-bit codes
    use the 4-bit operand order, so only alone."""
    bits = [int(b) for b in seg_bits]
    if bits == [4]:
        return True, False, 4
    if not 1 <= len(bits) <= 3 or any(b not in (1, 2, 3) for b in bits):
        raise ValueError(f"needs one segment of 1-4 bits or up to three of 1-3 bits, got segments of {bits} bits")
    return any(b in (2, 3) for b in bits), any(b in (1, 3) for b in bits), 2


@gluon.jit
def _smem_words(w_s, PW: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's words ``[BN / 16, 2, 8, KP]`` from their shared-memory slot, in a slice of :func:`_word_layout`
    (each thread reads its own words)."""
    KP: gl.constexpr = WGR_BK * PW // 32
    return _as_words(w_s.load(_words_smem_layout(KP, BN, num_warps)), KP, BN, num_warps)


@gluon.jit
def _smem_rows(s_s, z_s, PW: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's rows' float32 scale and zero ``[BN / 16, 2, 8]`` from their shared-memory slots."""
    KP: gl.constexpr = WGR_BK * PW // 32
    L3: gl.constexpr = gl.SliceLayout(3, gl.SliceLayout(4, _word_layout(KP, 16 // PW, num_warps)))
    return smem_rows(s_s, z_s, L3, BN, num_warps)


@gluon.jit
def _pair16(v, BF16: gl.constexpr):
    """float32 -> float16 (``BF16``: bfloat16) bits repeated in both halves of an int32."""
    if BF16:
        b = v.to(gl.bfloat16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        return b | (b << 16)
    else:
        return _half2(v)


@gluon.jit
def _code_at(j, W: gl.constexpr, SPAN: gl.constexpr, BF16: gl.constexpr):
    """``(S, p)`` for pair ``j`` of ``W``-bit codes (at bit ``j W`` of each half of a word) whose merged code spans
    ``SPAN`` bits: the word is shifted right by ``S`` so that the code sits at bit ``p = j W - S`` and ends below
    the 16-bit type's exponent. float16 (10 mantissa bits): ``S = 8`` where ``j W + SPAN > 10``, else 0.
    bfloat16 (7): at 4 bits ``S = 4 j`` (``p = 0``), at 2 bits ``S = 6 (j // 3)`` (``p`` 0, 2 or 4: a 3-bit code
    at ``p`` still ends at bit 6): ``_bf16.bf_shift``'s rule, here on a tensor of pair indices."""
    if BF16:
        if W == 4:
            S = j * 4
        else:
            S = (j // 3) * 6
    else:
        S = gl.where(j * W + SPAN > 10, 8, 0)
    return S, j * W - S


@gluon.jit
def _shifted(w, S, BF16: gl.constexpr):
    """Words ``w [..., KP, 1]`` shifted right by ``S [..., H]`` (:func:`_code_at`; float16: 0 or 8)."""
    if BF16:
        return w >> S
    else:
        return gl.where(S > 0, w >> 8, w)


@gluon.jit
def _magic(p, BF16: gl.constexpr):
    """int32 bits of the 16-bit pair ``(M, M)`` whose mantissa has bit ``p`` worth 1: ``M = 2^(10 - p)`` as float16
    (exponent field ``25 - p``), ``2^(7 - p)`` as bfloat16 (``134 - p``); ``(code << p) | M`` reads ``M + code``."""
    if BF16:
        e = 134 - p
        return (e << 7) | (e << 23)
    else:
        e = 25 - p
        return (e << 10) | (e << 26)


@gluon.jit
def _pairs(src, mask, magic, s, z, shape: gl.constexpr, BF16: gl.constexpr):
    """Each element's code pair ``(src & mask) | magic`` (both halves at the magic's bit ``p``) as float16
    (``BF16``: bfloat16) ``(lo, hi)`` of ``q s + (-z s)``: one LOP3, HSUB2 and HFMA2 (as ``_h2.pair_halves``)."""
    s2 = _pair16(s, BF16)[:, :, :, None, None].broadcast_to(shape)
    c2 = _pair16(-z * s, BF16)[:, :, :, None, None].broadcast_to(shape)
    return _scaled_pair([src, mask.broadcast_to(shape), magic.broadcast_to(shape), s2, c2], False, BF16)


@gluon.jit
def _scaled_pair(args, MERGE3: gl.constexpr, BF16: gl.constexpr):
    """``_h2._pair_asm`` (scaled) on ``args`` (source, mask, magic, scale pair; ``MERGE3``: both sources, both masks,
    magic, scale pair): the 16-bit ``(lo, hi)`` in float16, or ``BF16`` bfloat16."""
    if BF16:
        return gl.inline_asm_elementwise(_pair_asm(True, MERGE3, True), _in_regs(len(args)), args,
                                         dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=1)
    else:
        return gl.inline_asm_elementwise(_pair_asm(True, MERGE3, False), _in_regs(len(args)), args,
                                         dtype=(gl.float16, gl.float16), is_pure=True, pack=1)


@gluon.jit
def _operand(lo, hi, PW: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """The pairs ``[BN / 16, 2, 8, KP, H]`` of one tile, permuted into operand order (:func:`fragment_order`), as
    ``wgmma``'s register A operand ``[BN, 64]`` (a layout change Gluon checks to be register renaming)."""
    v = gl.reshape(gl.join(lo, hi), [BN // 16, 2, 8, 2, 2, 2, 2, 2, 2])
    ORDER: gl.constexpr = fragment_order(PW)
    v = gl.reshape(gl.permute(v, ORDER.value), [BN, WGR_BK])
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_acc_layout(BN, BT, num_warps), k_width=2)
    return gl.convert_layout(v, LA, assert_trivial=True)


@gluon.jit
def _fragment(w, s, z, W: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr,
              BF16: gl.constexpr = False):
    """The float16 (``BF16``: bfloat16) weights ``(q - z) s`` of one tile of ``W``-bit codes (2 or 4) as ``wgmma``'s
    register A operand ``[BN, 64]``, positions in operand order (:func:`wgr_src`). Per code pair ``(j, j + H)`` of
    a word (:func:`_pairs`): ``(src & mask) | magic`` is the 16-bit pair ``(M + q_j, M + q_(j+H))`` for the codes
    at bit ``p`` of each half (``src``: the word shifted so that the codes end below the exponent,
    :func:`_code_at`; ``M``: :func:`_magic`), less the magic the exact codes, then ``q s + (-z s)``. The pair is
    then a K position pair ``(k, k + 1)`` of the fragment: one 32-bit register of it."""
    KP: gl.constexpr = WGR_BK * W // 32
    H: gl.constexpr = 16 // W
    L: gl.constexpr = _word_layout(KP, H, num_warps)
    S, p = _code_at(_ar_last(H, L), W, W, BF16)
    m = ((1 << W) - 1) << p
    shape: gl.constexpr = [BN // 16, 2, 8, KP, H]
    src = _shifted(w[:, :, :, :, None], S, BF16)
    lo, hi = _pairs(src, m | (m << 16), _magic(p, BF16), s, z, shape, BF16)
    return _operand(lo, hi, W, BN, BT, num_warps)


@gluon.jit
def _partner_bits(v, BITS: gl.constexpr, num_warps: gl.constexpr, BF16: gl.constexpr = False):
    """The 1-bit partners ``v`` (:func:`_smem_partner`) of pair ``j`` shifted from bit ``j`` to ``p + BITS - 1``
    (above a 2-bit code at ``p`` for 3-bit codes, at ``p`` for 1-bit ones), ``(S, p)`` from :func:`_code_at` for
    3-bit codes (float16: ``p = 2 j``, or ``2 j - 8`` for ``j >= 4``, the 2-bit codes then from ``w >> 8``, so that
    a 3-bit code stays below bit 10): ``(S, p, shifted [BN / 16, 2, 8, 4, 8])``."""
    L: gl.constexpr = _word_layout(4, 8, num_warps)
    j = _ar_last(8, L)
    S, p = _code_at(j, 2, 3, BF16)
    sh = p + BITS - 1 - j
    vv = v[:, :, :, :, None]
    return S, p, gl.where(sh >= 0, vv << gl.maximum(sh, 0), vv >> gl.maximum(-sh, 0))


@gluon.jit
def _fragment3(w, v, s, z, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr, BF16: gl.constexpr = False):
    """:func:`_fragment` for 3-bit codes ``q = q2 + 4 q1``: ``w`` the 2-bit plane's words, ``v`` their 1-bit
    partners, shifted to ``p + 2`` (:func:`_partner_bits`); two LOP3 merge both into the magic, then HSUB2 and
    HFMA2 as at 2 bits (the pair math ``_h2.pair3_halves`` does)."""
    S, p, sv = _partner_bits(v, 3, num_warps, BF16)
    m2 = (3 << p) | (3 << (p + 16))
    m1 = (1 << (p + 2)) | (1 << (p + 18))
    shape: gl.constexpr = [BN // 16, 2, 8, 4, 8]
    src = _shifted(w[:, :, :, :, None], S, BF16)
    magic = _magic(p, BF16).broadcast_to(shape)
    s2 = _pair16(s, BF16)[:, :, :, None, None].broadcast_to(shape)
    c2 = _pair16(-z * s, BF16)[:, :, :, None, None].broadcast_to(shape)
    lo, hi = _scaled_pair([src, sv, m2.broadcast_to(shape), m1.broadcast_to(shape), magic, s2, c2], True, BF16)
    return _operand(lo, hi, 2, BN, BT, num_warps)


@gluon.jit
def _fragment1(v, s, z, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr, BF16: gl.constexpr = False):
    """:func:`_fragment` for 1-bit codes (SliM's 1-bit segments) in the 2-bit operand order: the 1-bit plane read
    as 3-bit codes' partners (:func:`_smem_partner`), each shifted to bit ``p`` (:func:`_partner_bits`)."""
    _, p, sv = _partner_bits(v, 1, num_warps, BF16)
    m = (1 << p) | (1 << (p + 16))
    lo, hi = _pairs(sv, m, _magic(p, BF16), s, z, [BN // 16, 2, 8, 4, 8], BF16)
    return _operand(lo, hi, 2, BN, BT, num_warps)


@gluon.jit
def _seg_fragment(w, v, s, z, BITS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr,
                  BF16: gl.constexpr = False, NAT: gl.constexpr = False):
    """The A fragment of a tile of ``BITS``-bit codes from its words ``w`` (2-, 3-, 4-bit) and partners ``v`` (1-,
    3-bit); the one not needed may be anything. ``BF16``: bfloat16 weights (bfloat16 activations). ``NAT``: in
    natural column order (``_wgrn``; float16)."""
    if NAT:
        return nat_fragment(w, v, s, z, BITS, BN, BT, num_warps)
    elif BITS == 3:
        return _fragment3(w, v, s, z, BN, BT, num_warps, BF16)
    elif BITS == 1:
        return _fragment1(v, s, z, BN, BT, num_warps, BF16)
    else:
        return _fragment(w, s, z, BITS, BN, BT, num_warps, BF16)


@gluon.jit
def _seg_expect(slot, bars, pred, BITS: gl.constexpr, SEG_BITS: gl.constexpr, BN: gl.constexpr):
    """Arm a slot's word, scale, zero and partner barriers for a tile of a ``BITS``-bit segment. A barrier the
    layer uses but this segment does not is armed for 0 bytes (it completes its phase at once), so that every
    barrier's phase stays ``(t // STAGES) & 1`` across segments."""
    USE_W: gl.constexpr = seg_planes(SEG_BITS)[0]
    USE_V: gl.constexpr = seg_planes(SEG_BITS)[1]
    KP: gl.constexpr = WGR_BK * seg_planes(SEG_BITS)[2] // 32
    if USE_W:
        mbarrier.expect(bars[1].index(slot), KP * BN * 4 if BITS != 1 else 0, pred=pred)
    mbarrier.expect(bars[2].index(slot), BN * 2, pred=pred)
    mbarrier.expect(bars[3].index(slot), BN * 2, pred=pred)
    if USE_V:
        mbarrier.expect(bars[4].index(slot), 2 * BN * 4 if BITS == 1 or BITS == 3 else 0, pred=pred)


@gluon.jit
def _seg_copy(seg, kk, n0, slot, bars, smem, pred, BITS: gl.constexpr, SEG_BITS: gl.constexpr, GS: gl.constexpr):
    """TMA of a ``BITS``-bit segment's K tile ``kk`` (counted from the segment's first column; ``seg``: its
    descriptors ``(pd, vd, sd, zd)``): words, the rows' scales and zeros, 1-bit partners."""
    KP: gl.constexpr = WGR_BK * seg_planes(SEG_BITS)[2] // 32
    pd, vd, sd, zd = seg
    if BITS != 1:
        _tma_load(pd, [kk * KP, n0], bars[1].index(slot), smem[1].index(slot), pred=pred)
    _tma_load(sd, [kk * WGR_BK // GS, n0], bars[2].index(slot), smem[2].index(slot), pred=pred)
    _tma_load(zd, [kk * WGR_BK // GS, n0], bars[3].index(slot), smem[3].index(slot), pred=pred)
    if BITS == 1 or BITS == 3:
        _tma_load(vd, [kk * 2, n0], bars[4].index(slot), smem[4].index(slot), pred=pred)


@gluon.jit
def _seg_issue(seg, kk, n0, slot, bars, smem, pred, BITS: gl.constexpr, SEG_BITS: gl.constexpr, GS: gl.constexpr,
               BN: gl.constexpr):
    _seg_expect(slot, bars, pred, BITS, SEG_BITS, BN)
    _seg_copy(seg, kk, n0, slot, bars, smem, pred, BITS, SEG_BITS, GS)


@gluon.jit
def _issue(xd, segs, tb, t0, n0, kb, t, bars, smem, pred, SEG_BITS: gl.constexpr, GS: gl.constexpr,
           BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, perm=0, PERM_X: gl.constexpr = False):
    """TMA of the program's ``t``-th tile (global K tile ``k = kb + t``) into ring slot ``t % STAGES``: the
    activations ``[BT, 64]``, and from the segment holding ``k`` (``tb``: the K tiles where segments 1 and 2
    start) its words ``[KP, BN]``, the rows' scales and zeros of ``k``'s group and 1-bit partner words ``[2, BN]``,
    each on its own barrier (``bars``, ``smem``: the operands' barrier and buffer rings). Separate barriers let
    the copies go out after one CTA barrier: on one shared barrier, Gluon's shared-memory hazard analysis put a
    CTA barrier between every two. ``PERM_X``: the activations of K tile
    ``k`` start at column ``perm[64 k]`` of ``x`` (``col_perm`` moving whole 64-column runs, read by the thread
    that issues the copies)."""
    NSEG: gl.constexpr = len(SEG_BITS)
    slot = t % STAGES
    k = kb + t
    if PERM_X:
        xk = gl.load(perm + k * WGR_BK)
    else:
        xk = k * WGR_BK
    mbarrier.expect(bars[0].index(slot), BT * WGR_BK * 2, pred=pred)
    if NSEG == 1:  # all expects first, then the copies
        _seg_expect(slot, bars, pred, SEG_BITS[0], SEG_BITS, BN)
        _tma_load(xd, [t0, xk], bars[0].index(slot), smem[0].index(slot), pred=pred)
        _seg_copy(segs[0], k, n0, slot, bars, smem, pred, SEG_BITS[0], SEG_BITS, GS)
    else:
        _tma_load(xd, [t0, xk], bars[0].index(slot), smem[0].index(slot), pred=pred)
        if k < tb[0]:
            _seg_issue(segs[0], k, n0, slot, bars, smem, pred, SEG_BITS[0], SEG_BITS, GS, BN)
        elif NSEG == 2 or k < tb[1]:
            _seg_issue(segs[1], k - tb[0], n0, slot, bars, smem, pred, SEG_BITS[1], SEG_BITS, GS, BN)
        else:
            _seg_issue(segs[NSEG - 1], k - tb[1], n0, slot, bars, smem, pred, SEG_BITS[NSEG - 1], SEG_BITS, GS, BN)


@gluon.jit
def _slot_fragment(t, kb, tb, bars, smem, SEG_BITS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr,
                   STAGES: gl.constexpr, num_warps: gl.constexpr, NAT: gl.constexpr = False):
    """Wait for tile ``t``'s words, scales, zeros and partners and build its ``wgmma`` A fragment (as the segment
    holding K tile ``kb + t`` codes it; ``NAT``: activations in natural column order, ``_wgrn``)."""
    NSEG: gl.constexpr = len(SEG_BITS)
    USE_W: gl.constexpr = seg_planes(SEG_BITS)[0]
    USE_V: gl.constexpr = seg_planes(SEG_BITS)[1]
    PW: gl.constexpr = seg_planes(SEG_BITS)[2]
    BF16: gl.constexpr = smem[0].dtype == gl.bfloat16
    slot = t % STAGES
    phase = (t // STAGES) & 1
    if USE_W:
        mbarrier.wait(bars[1].index(slot), phase)
    mbarrier.wait(bars[2].index(slot), phase)
    mbarrier.wait(bars[3].index(slot), phase)
    if NAT:
        s, z = nat_rows(smem[2].index(slot), smem[3].index(slot), BN, num_warps)
        w = nat_words(smem[1].index(slot), PW, BN, num_warps) if USE_W else 0
    else:
        s, z = _smem_rows(smem[2].index(slot), smem[3].index(slot), PW, BN, num_warps)
        w = _smem_words(smem[1].index(slot), PW, BN, num_warps) if USE_W else 0
    if USE_V:
        mbarrier.wait(bars[4].index(slot), phase)
        v = nat_words(smem[4].index(slot), 1, BN, num_warps) if NAT else _smem_partner(smem[4].index(slot), BN,
                                                                                        num_warps)
    else:
        v = 0
    if NSEG == 1:
        return _seg_fragment(w, v, s, z, SEG_BITS[0], BN, BT, num_warps, BF16, NAT)
    else:
        k = kb + t
        if k < tb[0]:
            a = _seg_fragment(w, v, s, z, SEG_BITS[0], BN, BT, num_warps, BF16, NAT)
        elif NSEG == 2 or k < tb[1]:
            a = _seg_fragment(w, v, s, z, SEG_BITS[1], BN, BT, num_warps, BF16, NAT)
        else:
            a = _seg_fragment(w, v, s, z, SEG_BITS[NSEG - 1], BN, BT, num_warps, BF16, NAT)
        return a


@gluon.jit
def _mma(t, a, acc, bars, smem, STAGES: gl.constexpr, FIRST: gl.constexpr = False):
    """Wait for tile ``t``'s activations and start its ``wgmma`` on fragment ``a`` (``FIRST``: ignoring ``acc``)."""
    slot = t % STAGES
    mbarrier.wait(bars[0].index(slot), (t // STAGES) & 1)
    return warpgroup_mma(a, smem[0].index(slot).permute((1, 0)), acc, use_acc=not FIRST, is_async=True)


@gluon.jit
def _mma_retire(xd, segs, tb, t0, n0, kb, t, kt, a, a_prev, acc, bars, empty, smem, SEG_BITS: gl.constexpr,
                GS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, WS: gl.constexpr,
                perm=0, PERM_X: gl.constexpr = False):
    """Start tile ``t``'s wgmma on fragment ``a``, wait for tile ``t - 1``'s (fragment ``a_prev``) in both
    warpgroups, and refill that tile's slot with tile ``t - 1 + STAGES`` (``WS``: release the slot to the copy
    warp instead)."""
    acc = _mma(t, a, acc, bars, smem, STAGES)
    acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_prev))
    _cta_barrier()
    if WS:
        mbarrier.arrive(empty.index((t - 1) % STAGES))
    else:
        _issue(xd, segs, tb, t0, n0, kb, t - 1 + STAGES, bars, smem, t - 1 + STAGES < kt, SEG_BITS, GS, BN, BT,
               STAGES, perm, PERM_X)
    return acc, a_prev


@gluon.jit
def _producer(xd, segs, tb, t0, n0, kb, kt, bars, empty, smem, SEG_BITS: gl.constexpr, GS: gl.constexpr,
              BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr, perm=0,
              PERM_X: gl.constexpr = False):
    """The copy warp (``WS``): each tile's operands into its slot once the MMA warps released the slot (``PDL``:
    first waiting for the gather launched before)."""
    if PDL:
        _gdc_wait()
    for t in range(kt):
        mbarrier.wait(empty.index(t % STAGES), ((t // STAGES) & 1) ^ 1)
        _issue(xd, segs, tb, t0, n0, kb, t, bars, smem, True, SEG_BITS, GS, BN, BT, STAGES, perm, PERM_X)


@gluon.jit
def _consumer(xd, segs, tb, t0, n0, kb, kt, it, bars, empty, smem, SEG_BITS: gl.constexpr, GS: gl.constexpr,
              BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr, WS: gl.constexpr,
              TAIL: gl.constexpr = False, NAT: gl.constexpr = False, perm=0, PERM_X: gl.constexpr = False):
    """The MMA warps' K loop: ``(sums,)``, the ``[BN, BT]`` float32 sums of K tiles ``[kb, kb + kt)``, which are
    the ring's tiles ``[it, it + kt)`` (slots and phases count ring tiles; a tuple: ``gl.warp_specialize`` takes
    the default partition's results as one). ``TAIL`` (with ``WS``): release the last slots too, for a copy warp
    that goes on filling the ring (``_wgrk``). ``NAT``: the activations in natural column order (``_wgrn``);
    ``perm``, ``PERM_X``: :func:`_issue`'s, for the copies the MMA warps issue without ``WS``."""
    LACC: gl.constexpr = _acc_layout(BN, BT, num_warps)
    kc = kb - it  # ring tile t holds K tile kc + t
    te = it + kt
    # Tile t's fragment is built while tile t - 1's wgmma runs, so two fragments alternate: ``fa`` for the odd
    # tiles, ``fb`` for the even ones. ptxas does not keep the registers an in-flight wgmma reads from being
    # reused (``deps`` keeps the fragment's 16-bit halves alive, not the packed registers wgmma takes), and a
    # fragment carried round the loop (t - 1 -> t) was rebuilt into the registers of the wgmma still running
    # (run 115: wrong sums at 256 tokens); unrolled by two, neither fragment is rebuilt before the wait that
    # retires its wgmma (tests/test_wgr.py checks the SASS).
    fb = _slot_fragment(it, kc, tb, bars, smem, SEG_BITS, BN, BT, STAGES, num_warps, NAT)
    # tile 0, peeled: the accumulator starts from a wgmma (ptxas serializes wgmma whose accumulator may come from
    # plain moves, info C7515; see _wgs)
    acc = _mma(it, fb, gl.zeros([BN, BT], gl.float32, layout=LACC), bars, smem, STAGES, True)
    acc, fb = warpgroup_mma_wait(num_outstanding=1, deps=(acc, fb))  # returns at once (one group in flight)
    for t in range(it + 1, te - 1, 2):  # tiles t and t + 1
        fa = _slot_fragment(t, kc, tb, bars, smem, SEG_BITS, BN, BT, STAGES, num_warps, NAT)
        acc, fb = _mma_retire(xd, segs, tb, t0, n0, kc, t, te, fa, fb, acc, bars, empty, smem, SEG_BITS, GS, BN, BT,
                              STAGES, WS, perm, PERM_X)
        fb = _slot_fragment(t + 1, kc, tb, bars, smem, SEG_BITS, BN, BT, STAGES, num_warps, NAT)
        acc, fa = _mma_retire(xd, segs, tb, t0, n0, kc, t + 1, te, fb, fa, acc, bars, empty, smem, SEG_BITS, GS, BN,
                              BT, STAGES, WS, perm, PERM_X)
    if kt % 2 == 0:  # the last tile, te - 1, pairs with the peeled one
        fa = _slot_fragment(te - 1, kc, tb, bars, smem, SEG_BITS, BN, BT, STAGES, num_warps, NAT)
        acc = _mma(te - 1, fa, acc, bars, smem, STAGES)
        acc, fb = warpgroup_mma_wait(num_outstanding=1, deps=(acc, fb))
        acc, fa = warpgroup_mma_wait(num_outstanding=0, deps=(acc, fa))
    else:
        acc, fb = warpgroup_mma_wait(num_outstanding=0, deps=(acc, fb))
    if TAIL:  # the loop released tiles [it, te - 2) or [it, te - 1); every wgmma has retired
        _cta_barrier()
        if kt % 2 == 0:
            mbarrier.arrive(empty.index((te - 2) % STAGES))
        mbarrier.arrive(empty.index((te - 1) % STAGES))
    return (acc,)


@gluon.jit
def wgr_kernel(xd, pd0, vd0, sd0, zd0, pd1, vd1, sd1, zd1, pd2, vd2, sd2, zd2, T1, T2, M, out_ptr, stride_om,
               acc_ptr, stride_am, bias_ptr, ns, K, perm_ptr, SEG_BITS: gl.constexpr, GS: gl.constexpr,
               BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
               SPLIT: gl.constexpr = 1, HAS_BIAS: gl.constexpr = False, WS: gl.constexpr = False,
               PDL: gl.constexpr = False, NAT: gl.constexpr = False, PERM_X: gl.constexpr = False, trace_ptr=None,
               TRACE: gl.constexpr = False):
    """``out[t, n] = sum_k x[t, k] W[n, k] (+ bias[n])`` for a layer of one segment of 1- to 4-bit codes, or of up
    to three segments of 1-3 bits in column order (SliM; ``SEG_BITS``, their widths). TMA descriptors: ``xd`` the
    activations gathered in operand order (``[M, K]``, ``[BT, 64]`` boxes), or with ``NAT`` (``_wgrn``) ``x``
    itself, K tile ``k`` at column ``64 k`` or (``PERM_X``) ``perm_ptr[64 k]`` (``col_perm``); per segment ``i``
    (unused ones: any copies): ``pd_i`` its 2- or 4-bit plane (``[c PW / 32, ns]`` int32, ``[KP, BN]`` boxes; ``PW`` from
    :func:`seg_planes`), ``vd_i`` its 1-bit plane (1- and 3-bit codes; ``[c / 32, ns]``, ``[2, BN]`` boxes),
    ``sd_i``/``zd_i`` its scales and zeros (``[G, ns]``, ``[1, BN]`` boxes); ``T1``, ``T2`` the K tiles where
    segments 1 and 2 start. Grid ``cdiv(ns, BN) * SPLIT * cdiv(M, BT)``, token tiles fastest: with ``SPLIT > 1``
    each program takes ``1 / SPLIT`` of the K tiles and adds its float32 sums into ``acc_ptr`` (``[M, N]``; a
    ``finalize_kernel`` launch writes ``out`` and the bias). ``WS``: a copy warp issues the copies (module doc);
    ``PDL`` (with ``WS``): launched with ``launch_pdl`` (after the gather), the copy warp waits for the launch
    before. ``TRACE``: timestamps into ``trace_ptr`` (``_trace``: one unit).

    Every operand of a K tile comes by TMA into one ring slot (``STAGES`` slots, one barrier per operand), issued
    ``STAGES - 1`` tiles ahead: run 114 (benchmarks/KERNEL_NOTES.md, session 14) found the words loaded into
    registers one or two tiles ahead set the pace (0.77x of cuBLAS FP16 against 1.02x with the loads left out)."""
    segs = ((pd0, vd0, sd0, zd0), (pd1, vd1, sd1, zd1), (pd2, vd2, sd2, zd2))
    tb = (T1, T2)
    pid = gl.program_id(0)
    n_t = gl.cdiv(M, BT)
    t0 = (pid % n_t) * BT
    pid_s = (pid // n_t) % SPLIT
    n0 = (pid // (n_t * SPLIT)) * BN
    kt_all = K // WGR_BK
    kb = pid_s * kt_all // SPLIT
    kt = (pid_s + 1) * kt_all // SPLIT - kb  # this program's K tiles: [kb, kb + kt) (kt >= 1: SPLIT <= K / 64)
    stamp(trace_ptr, 0, TRACE)
    smem, bars = _ring(xd, pd0, vd0, sd0, zd0, SEG_BITS, BN, BT, STAGES)
    if WS:  # the copy warp's ring: slot t % STAGES is empty again once the MMA warps retired tile t
        empty = _empty_ring(STAGES)
        res = gl.warp_specialize(
            [(_consumer, (xd, segs, tb, t0, n0, kb, kt, 0, bars, empty, smem, SEG_BITS, GS, BN, BT, STAGES,
                          num_warps, WS, False, NAT)),
             (_producer, (xd, segs, tb, t0, n0, kb, kt, bars, empty, smem, SEG_BITS, GS, BN, BT, STAGES, PDL,
                          perm_ptr, PERM_X))],
            [1], [48])
        _empty_done(empty, STAGES)
    else:
        for i in gl.static_range(STAGES):
            _issue(xd, segs, tb, t0, n0, kb, i, bars, smem, i < kt, SEG_BITS, GS, BN, BT, STAGES, perm_ptr, PERM_X)
        res = _consumer(xd, segs, tb, t0, n0, kb, kt, 0, bars, bars[0], smem, SEG_BITS, GS, BN, BT, STAGES, num_warps,
                        WS, False, NAT, perm_ptr, PERM_X)
    _ring_done(bars, SEG_BITS, STAGES)
    stamp_unit(trace_ptr, 0, 0, TRACE)
    stamp_unit(trace_ptr, 0, 1, TRACE)
    _store(res[0], n0, t0, ns, M, out_ptr, stride_om, acc_ptr, stride_am, bias_ptr, BN, BT, SPLIT, HAS_BIAS, num_warps)
    stamp_unit(trace_ptr, 0, 2, TRACE)


@gluon.jit
def _ring(xd, pd, vd, sd, zd, SEG_BITS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr):
    """The ``STAGES``-slot rings of a K tile's operands in shared memory (activations, words, scales, zeros, 1-bit
    partners; a ring the layer does not use holds one slot) and their barriers, initialised: ``(smem, bars)``."""
    USE_W: gl.constexpr = seg_planes(SEG_BITS)[0]
    USE_V: gl.constexpr = seg_planes(SEG_BITS)[1]
    KP: gl.constexpr = WGR_BK * seg_planes(SEG_BITS)[2] // 32
    smem = (gl.allocate_shared_memory(xd.dtype, [STAGES, BT, WGR_BK], xd.layout),
            gl.allocate_shared_memory(gl.int32, [STAGES if USE_W else 1, KP, BN], pd.layout),
            gl.allocate_shared_memory(sd.dtype, [STAGES, 1, BN], sd.layout),
            gl.allocate_shared_memory(zd.dtype, [STAGES, 1, BN], zd.layout),
            gl.allocate_shared_memory(gl.int32, [STAGES if USE_V else 1, 2, BN], vd.layout))
    bars = (gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
            gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
            gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
            gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()),
            gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout()))
    for i in gl.static_range(STAGES):
        for j in gl.static_range(5):
            if (j != 1 or USE_W) and (j != 4 or USE_V):
                mbarrier.init(bars[j].index(i), count=1)
    return smem, bars


@gluon.jit
def _empty_ring(STAGES: gl.constexpr):
    """The copy warp's barriers (``WS``, ``_wgrk``): ``STAGES`` mbarriers, one per ring slot, initialised for one
    arrival each (the MMA warps release the slot)."""
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(empty.index(i), count=1)
    return empty


@gluon.jit
def _empty_done(empty, STAGES: gl.constexpr):
    """Invalidate the barriers :func:`_empty_ring` initialised."""
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(empty.index(i))


@gluon.jit
def _ring_done(bars, SEG_BITS: gl.constexpr, STAGES: gl.constexpr):
    """Invalidate the barriers :func:`_ring` initialised."""
    USE_W: gl.constexpr = seg_planes(SEG_BITS)[0]
    USE_V: gl.constexpr = seg_planes(SEG_BITS)[1]
    for i in gl.static_range(STAGES):
        for j in gl.static_range(5):
            if (j != 1 or USE_W) and (j != 4 or USE_V):
                mbarrier.invalidate(bars[j].index(i))


@gluon.jit
def _store(acc, n0, t0, ns, M, out_ptr, stride_om, acc_ptr, stride_am, bias_ptr, BN: gl.constexpr, BT: gl.constexpr,
           SPLIT: gl.constexpr, HAS_BIAS: gl.constexpr, num_warps: gl.constexpr):
    """Write the ``[BN, BT]`` tile ``y^T`` to ``out[t0 + j, n0 + i]`` (with the bias), or with ``SPLIT > 1`` add it
    into the float32 ``acc_ptr``. The sums are rounded to ``out``'s type (after the bias) before they change layout
    through shared memory: half the bytes of float32 there."""
    LO: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])  # rows (n) fastest: coalesced
    rows = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, LO))
    toks = t0 + gl.arange(0, BT, layout=gl.SliceLayout(0, LO))
    mask = (rows < ns)[:, None] & (toks < M)[None, :]
    if SPLIT > 1:
        y = gl.convert_layout(acc, LO)
        gl.atomic_add(acc_ptr + toks[None, :] * stride_am + rows[:, None], y, mask=mask, sem="relaxed")
    else:
        if HAS_BIAS:
            LACC: gl.constexpr = acc.type.layout
            rb = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, LACC))
            acc = acc + gl.load(bias_ptr + rb, mask=rb < ns, other=0.0).to(gl.float32)[:, None]
        y = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), LO)
        gl.store(out_ptr + toks[None, :] * stride_om + rows[:, None], y, mask=mask)
