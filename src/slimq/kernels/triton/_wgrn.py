"""``wgr``'s A fragment with the activations in their *natural* column order (``KernelConfig("wgr",
direct=True)``; layout ``slimq.segmented-bitplane.v1``; Gluon, sm_90): no gather launch before the kernel.

Why: ``_wgr`` reads the activations in an operand order (``_wgr.wgr_src``) in which every thread turns only its
own words into its fragment, and a gather launch writes them so before each call: 5-12 us of a 28-86 us call on
the 7B-sized layers at 256-512 tokens (H200, run 161, each launch alone in a graph), where the kernel alone ran
within 0-12% of cuBLAS. TMA cannot reorder within the 16-byte rows ``wgmma`` reads, so here the threads fetch
the codes the natural order gives them instead.

Fragment (``wgmma``'s register A operand, ``k_width = 2``): lane ``l`` of a warp holds, for its two rows ``n``
and every 16-column step ``s`` of a 64-column tile, columns ``16 s + 8 h + 2 t + e`` (``t = l % 4``, ``h``, ``e`` in
0..1): one register per ``(row, s, h)``, the pair ``e = 0, 1``. Both columns' codes lie in one byte of a plane's
word (:func:`nat_code_source`):

* 2-bit plane (16 codes per word, code ``c`` at bit ``2 c`` of the low half, ``c + 8`` at bit ``2 c`` of the high
  one): word row ``s``, byte ``t // 2 + 2 h``, bits ``4 (t % 2)`` and ``+ 2``;
* 4-bit plane (8 per word): word row ``2 s + h``, byte ``t``, bits 0 and 4;
* 1-bit plane (32 per word; 1-bit codes, and 3-bit codes' third bit): word row ``s // 2``, byte ``2 (s % 2) + h``,
  bits ``2 t`` and ``2 t + 1``.

Each thread reads every word of its two rows (the four lanes of a row read the same words: one broadcast), and
per register one PRMT copies the byte into both halves; one LOP3 keeps the first code in the low half and the
second in the high half under a magic whose two halves differ (bit ``p`` worth 1 in each half: ``_wgr._magic``),
HSUB2 takes the magic off and HFMA2 scales: the register *is* the fragment pair, with no further moves. 3-bit codes
(``q2 + 4 q1``) put the 1-bit plane's two bits above the 2-bit codes (a shift, a mask and one IMAD spreading the
two bits 17 places apart) and merge them in a second LOP3. Per tile and thread: 16 PRMT, LOP3, HSUB2 and HFMA2
each (the operand order: 16 LOP3, HSUB2, HFMA2 and a shift per word), 3-bit codes three more instructions per
register. SliM's segments each take their width's fragment; its ``col_perm`` (whole groups) is followed by the
copies (``_wgr._issue``'s ``PERM_X``). float16 only: bfloat16's 7 mantissa bits do not hold a 2-bit code at bit 6.

Dispatched for uniform 2- and 4-bit layers of up to ``_dispatch.WGR_DIRECT_MAX_N`` rows (H200 runs 262-263: 4-12%
faster on the 7B-sized layers at 256-1024 tokens); 3-bit and SliM layers run it only as an explicit config
(``KernelConfig("wgr", direct=True)``): their extra instructions cost more than the gather (run 264,
``_dispatch.wgr_config``).
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from slimq.kernels.triton._dq16 import _half2
from slimq.kernels.triton._h2 import _in_regs, _pair_asm
from slimq.kernels.triton._wgs import _acc_layout

__all__ = ["nat_fragment", "nat_words", "nat_rows", "nat_code_source", "rows_smem_layout", "smem_rows"]

_BK = gl.constexpr(64)  # K columns per tile (_wgr.WGR_BK)


def nat_code_source(k: int, w: int) -> tuple[int, int, int]:
    """Where the fragment of a 64-column tile takes the code of column ``k`` from in a ``w``-bit plane (1, 2 or 4;
    3-bit codes: their 2- and 1-bit planes): ``(word row, byte, bit)``, the bit of that byte the code starts at
    (module doc). The host-side model of :func:`nat_fragment`, for tests."""
    if not 0 <= k < 64:
        raise ValueError(f"wgr: column {k} is outside a 64-column tile")
    s, h, t, e = k // 16, (k // 8) % 2, (k // 2) % 4, k % 2
    if w == 1:
        return s // 2, 2 * (s % 2) + h, 2 * t + e
    if w == 2:
        return s, t // 2 + 2 * h, 4 * (t % 2) + 2 * e
    if w == 4:
        return 2 * s + h, t, 4 * e
    raise ValueError(f"wgr: a plane is 1, 2 or 4 bits wide, got {w}")


@triton.constexpr_function
def _nat_layout(num_warps):
    """``[BN / 16, 2, 8, 4, 4, 2]``: rows ``16 w + 8 a + l // 4`` (warp ``w``, ``a`` in registers), lane bits 0-1
    ``t``, then the 16-column step ``s`` and the half ``h`` in registers (``h`` fastest)."""
    return gl.BlockedLayout([1, 2, 1, 1, 4, 2], [1, 1, 8, 4, 1, 1], [num_warps, 1, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0])


@triton.constexpr_function
def rows_smem_layout(bn, num_warps):
    """How the MMA threads read a tile's per-row scales or zeros ``[1, BN]`` from shared memory (here and in
    ``_wgr``): register ``n``'s bit 3, lane bits 2-4 ``n % 8`` (the four lanes of a row read the same value),
    warps ``n // 16``."""
    warps = [[0, 16 << i] for i in range((num_warps - 1).bit_length())]
    return gl.DistributedLinearLayout([[0, 8]], [[0, 0], [0, 0], [0, 1], [0, 2], [0, 4]], warps, [], [1, bn])


@triton.constexpr_function
def _nat_words_layout(kp, bn, num_warps):
    """How the MMA threads read a tile's words ``[KP, BN]`` (word row ``r``, weight row ``n``): every word row of
    the thread's two rows in registers (``r`` first, then ``n``'s bit 3), lane bits 0-1 alike (broadcast), 2-4
    ``n % 8``, warps ``n // 16``; reshaped and permuted to ``[BN / 16, 2, 8, KP]`` it is a slice of
    :func:`_nat_layout` (register renaming)."""
    regs = [[1 << i, 0] for i in range((kp - 1).bit_length())] + [[0, 8]]
    warps = [[0, 16 << i] for i in range((num_warps - 1).bit_length())]
    return gl.DistributedLinearLayout(regs, [[0, 0], [0, 0], [0, 1], [0, 2], [0, 4]], warps, [], [kp, bn])


@gluon.jit
def nat_words(w_s, W: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's words of one plane as ``[BN / 16, 2, 8, 4, 4, 2]`` in :func:`_nat_layout` (the word of row ``n``
    holding step ``s`` and half ``h``, alike for the four ``t``): 2-bit words (word row ``s``) repeat over ``h``,
    4-bit word rows are ``2 s + h``, 1-bit word rows ``s // 2`` (``W`` 1: the ``[2, BN]`` partner slot)."""
    L: gl.constexpr = _nat_layout(num_warps)
    KP: gl.constexpr = _BK * W // 32
    w = w_s.load(_nat_words_layout(KP, BN, num_warps))
    w = gl.permute(gl.reshape(w, [KP, BN // 16, 2, 8]), [1, 2, 3, 0])
    if W == 1:  # word row v = s // 2: each word twice, as steps 2 v and 2 v + 1
        w = gl.reshape(gl.join(w, w), [BN // 16, 2, 8, 4])
    if W == 4:
        w = gl.reshape(w, [BN // 16, 2, 8, 4, 2])
        w = gl.convert_layout(w, gl.SliceLayout(3, L), assert_trivial=True)
        w = gl.expand_dims(w, 3)
    else:
        w = gl.convert_layout(w, gl.SliceLayout(3, gl.SliceLayout(5, L)), assert_trivial=True)
        w = gl.expand_dims(gl.expand_dims(w, 3), 5)
    return w.broadcast_to([BN // 16, 2, 8, 4, 4, 2])


@gluon.jit
def smem_rows(s_s, z_s, L3: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's rows' float32 scale and zero ``[BN / 16, 2, 8]`` from their shared-memory slots, in ``L3`` (a
    layout whose rows are :func:`rows_smem_layout`'s: here and in ``_wgr``)."""
    LR: gl.constexpr = rows_smem_layout(BN, num_warps)
    s = gl.convert_layout(gl.reshape(s_s.load(LR), [BN // 16, 2, 8]), L3, assert_trivial=True).to(gl.float32)
    z = gl.convert_layout(gl.reshape(z_s.load(LR), [BN // 16, 2, 8]), L3, assert_trivial=True).to(gl.float32)
    return s, z


@gluon.jit
def nat_rows(s_s, z_s, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's rows' float32 scale and zero as ``[BN / 16, 2, 8, 1, 1, 1]`` in :func:`_nat_layout`."""
    L3: gl.constexpr = gl.SliceLayout(3, gl.SliceLayout(4, gl.SliceLayout(5, _nat_layout(num_warps))))
    s, z = smem_rows(s_s, z_s, L3, BN, num_warps)
    return s[:, :, :, None, None, None], z[:, :, :, None, None, None]


@gluon.jit
def _axes(num_warps: gl.constexpr):
    """``t`` (lane bits 0-1), ``s`` and ``h`` as ``[1, 1, 1, 4, 1, 1]``, ``[1, 1, 1, 1, 4, 1]``, ``[1, 1, 1, 1, 1,
    2]`` in :func:`_nat_layout`."""
    L: gl.constexpr = _nat_layout(num_warps)
    ta = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        4, gl.SliceLayout(5, L))))))
    sa = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        3, gl.SliceLayout(5, L))))))
    ha = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        3, gl.SliceLayout(4, L))))))
    return ta[None, None, None, :, None, None], sa[None, None, None, None, :, None], ha[None, None, None, None, None, :]


@gluon.jit
def _prmt_byte(w, b):
    """Byte ``b`` of ``w`` in all four bytes (``prmt.b32 w, 0, b * 0x1111``): at bits 0-7 of both halves."""
    return gl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r", [w, b * 0x1111], dtype=gl.int32,
                                     is_pure=True, pack=1)


@gluon.jit
def _two_magic(p_lo, p_hi):
    """int32 bits of the float16 pair ``(2^(10 - p_lo), 2^(10 - p_hi))`` (bit ``p`` of each half's mantissa worth 1,
    as ``_wgr._magic``)."""
    return ((25 - p_lo) << 10) | ((25 - p_hi) << 26)


@gluon.jit
def _operand(lo, hi, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """The pairs ``[BN / 16, 2, 8, 4, 4, 2]`` (``lo``: column ``16 s + 8 h + 2 t``, ``hi``: the next) as ``wgmma``'s
    register A operand ``[BN, 64]`` (register renaming, checked)."""
    v = gl.reshape(gl.join(lo, hi), [BN // 16, 2, 8, 2, 2, 2, 2, 2, 2])  # t1 t0 s1 s0 h e
    v = gl.reshape(gl.permute(v, [0, 1, 2, 5, 6, 7, 3, 4, 8]), [BN, _BK])
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_acc_layout(BN, BT, num_warps), k_width=2)
    return gl.convert_layout(v, LA, assert_trivial=True)


@gluon.jit
def nat_fragment(w, v, s, z, BITS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """The float16 weights ``(q - z) s`` of one tile of ``BITS``-bit codes (1-4) as ``wgmma``'s register A operand
    ``[BN, 64]``, columns in natural order (module doc), from :func:`nat_words` of the 2- or 4-bit plane (``w``)
    and of the 1-bit plane (``v``; 1- and 3-bit codes), and :func:`nat_rows` (``s``, ``z``)."""
    shape: gl.constexpr = [BN // 16, 2, 8, 4, 4, 2]
    t, st, h = _axes(num_warps)
    s2 = _half2(s).broadcast_to(shape)
    c2 = _half2(-z * s).broadcast_to(shape)
    if BITS == 1:  # bits 2 t and 2 t + 1 of byte 2 (s % 2) + h of the 1-bit word: p = 2 t and 2 t + 1
        src = _prmt_byte(v, (2 * (st % 2) + h).broadcast_to(shape))
        p_lo = 2 * t
        p_hi = p_lo + 1
        mask = ((1 << p_lo) | (1 << (p_hi + 16))).broadcast_to(shape)
        args = [src, mask, _two_magic(p_lo, p_hi).broadcast_to(shape), s2, c2]
    else:
        if BITS == 4:  # byte t of word row 2 s + h: codes at bits 0 and 4
            b = t + 0 * h
            p_lo = 0 * t
            p_hi = p_lo + 4
            m = 15
        else:  # byte t // 2 + 2 h of word row s: codes at bits 4 (t % 2) and + 2
            b = t // 2 + 2 * h
            p_lo = 4 * (t % 2)
            p_hi = p_lo + 2
            m = 3
        src = _prmt_byte(w, b.broadcast_to(shape))
        mask = ((m << p_lo) | (m << (p_hi + 16))).broadcast_to(shape)
        magic = _two_magic(p_lo, p_hi).broadcast_to(shape)
        if BITS == 3:  # the 1-bit plane's two codes (bits 16 (s % 2) + 8 h + 2 t, + 1) to p_lo + 2, 16 + p_hi + 2
            q1 = (v >> (16 * (st % 2) + 8 * h + 2 * t).broadcast_to(shape)) & 3
            sv = q1 * ((1 << (p_lo + 2)) + (1 << (p_lo + 19))).broadcast_to(shape)
            m1 = ((1 << (p_lo + 2)) | (1 << (p_lo + 20))).broadcast_to(shape)
            args = [src, sv, mask, m1, magic, s2, c2]
        else:
            args = [src, mask, magic, s2, c2]
    lo, hi = gl.inline_asm_elementwise(_pair_asm(True, BITS == 3, False), _in_regs(len(args)), args,
                                       dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    return _operand(lo, hi, BN, BT, num_warps)
