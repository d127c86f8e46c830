"""``wgr``'s A fragment with the activations in their *natural* column order (``KernelConfig("wgr",
direct=True)``; layout ``slimq.segmented-bitplane.v1``; Gluon, sm_90): no gather launch before the kernel.

Why: ``_wgr`` reads the activations in an operand order (``_wgr.wgr_src``) in which every thread turns only its
own words into its fragment, and a gather launch writes them so before each call: 5-12 us of a 28-86 us call on
the 7B-sized layers at 256-512 tokens (H200, run 161, each launch alone in a graph), where the kernel alone ran
within 0-12% of cuBLAS. TMA cannot reorder within the 16-byte rows ``wgmma`` reads, so here the threads fetch
the codes the natural order gives them instead.

Fragment (``wgmma``'s register A operand, ``k_width = 2``): lane ``l`` of a warp holds, for its two rows ``n``
and every 16-column step ``s`` of a 64-column tile, columns ``16 s + 8 h + 2 t + e`` (``t = l % 4``, ``h``, ``e`` in
0..1). Those columns' codes lie in the word holding columns ``16 s + 8 h + 2 t`` and ``+ 1``:

* 2-bit codes (16 per word, code ``c`` at bit ``2 c`` of the low half, ``c + 8`` at bit ``2 c`` of the high one):
  word row ``s``, codes ``2 t + 8 h`` and ``+ 1``, both in byte ``b = t // 2 + 2 h``, at bits ``4 (t % 2)`` and
  ``4 (t % 2) + 2`` of it;
* 4-bit codes (8 per word): word row ``2 s + h``, codes ``2 t`` and ``2 t + 1``: byte ``b = t``, bits 0 and 4.

Each thread reads every word of its two rows (the four lanes of a row read the same words: one broadcast), and
per ``(s, h)`` one PRMT copies byte ``b`` into both halves of a register; one LOP3 keeps the first code in the
low half and the second in the high half under a magic whose two halves differ (bit ``p`` worth 1 in each half:
``_wgr._magic``), HSUB2 takes the magic off and HFMA2 scales: the register *is* the fragment pair ``(e = 0, e =
1)``, with no further moves. Per tile and thread: 16 PRMT, LOP3, HSUB2 and HFMA2 each (the operand order: 16
LOP3, HSUB2, HFMA2 and a shift per word). Uniform 2- and 4-bit layers, float16 (bfloat16's 7 mantissa bits do
not hold a 2-bit code at bit 6); 3-bit codes would need their 1-bit plane moved by two different shifts per
register, and SliM's segments keep the operand order too.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from slimq.kernels.triton._dq16 import _half2
from slimq.kernels.triton._h2 import _in_regs, _pair_asm
from slimq.kernels.triton._wgs import _acc_layout

__all__ = ["nat_fragment", "nat_code_source", "rows_smem_layout", "NAT_BITS"]

NAT_BITS = (2, 4)  # code widths with a natural-order fragment
_BK = gl.constexpr(64)  # K columns per tile (_wgr.WGR_BK)


def nat_code_source(k: int, w: int) -> tuple[int, int, int]:
    """Where the fragment of a 64-column tile takes the code of column ``k`` from, for ``w``-bit codes: ``(word
    row, byte, bit)`` of the word and the bit of that byte the code starts at (module doc). The host-side model of
    :func:`nat_fragment`, for tests (the code's column is ``word row * 32 / w`` plus its slot in the word)."""
    if not 0 <= k < 64:
        raise ValueError(f"wgr: column {k} is outside a 64-column tile")
    s, h, t, e = k // 16, (k // 8) % 2, (k // 2) % 4, k % 2
    if w == 2:
        return s, t // 2 + 2 * h, 4 * (t % 2) + 2 * e
    if w == 4:
        return 2 * s + h, t, 4 * e
    raise ValueError(f"wgr: natural column order takes 2- or 4-bit codes, got {w}")


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
def _nat_words(w_s, W: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's words as ``[BN / 16, 2, 8, 4, 4, 2]`` in :func:`_nat_layout` (the word of row ``n``, step ``s`` and
    half ``h``, alike for the four ``t``): 2-bit words repeat over ``h``, 4-bit word rows are ``2 s + h``."""
    L: gl.constexpr = _nat_layout(num_warps)
    KP: gl.constexpr = _BK * W // 32
    w = w_s.load(_nat_words_layout(KP, BN, num_warps))
    w = gl.permute(gl.reshape(w, [KP, BN // 16, 2, 8]), [1, 2, 3, 0])
    if W == 2:
        w = gl.convert_layout(w, gl.SliceLayout(3, gl.SliceLayout(5, L)), assert_trivial=True)
        w = gl.expand_dims(gl.expand_dims(w, 3), 5)
    else:
        w = gl.reshape(w, [BN // 16, 2, 8, 4, 2])
        w = gl.convert_layout(w, gl.SliceLayout(3, L), assert_trivial=True)
        w = gl.expand_dims(w, 3)
    return w.broadcast_to([BN // 16, 2, 8, 4, 4, 2])


@gluon.jit
def _nat_rows(s_s, z_s, BN: gl.constexpr, num_warps: gl.constexpr):
    """A tile's rows' float32 scale and zero as ``[BN / 16, 2, 8, 1, 1, 1]`` in :func:`_nat_layout`."""
    L3: gl.constexpr = gl.SliceLayout(3, gl.SliceLayout(4, gl.SliceLayout(5, _nat_layout(num_warps))))
    LR: gl.constexpr = rows_smem_layout(BN, num_warps)
    s = gl.convert_layout(gl.reshape(s_s.load(LR), [BN // 16, 2, 8]), L3, assert_trivial=True).to(gl.float32)
    z = gl.convert_layout(gl.reshape(z_s.load(LR), [BN // 16, 2, 8]), L3, assert_trivial=True).to(gl.float32)
    return s[:, :, :, None, None, None], z[:, :, :, None, None, None]


@gluon.jit
def nat_fragment(w_s, s_s, z_s, W: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """The float16 weights ``(q - z) s`` of one tile of ``W``-bit codes (2 or 4) as ``wgmma``'s register A operand
    ``[BN, 64]``, columns in natural order, from the tile's words, scales and zeros in shared memory (module
    doc)."""
    L: gl.constexpr = _nat_layout(num_warps)
    shape: gl.constexpr = [BN // 16, 2, 8, 4, 4, 2]
    w = _nat_words(w_s, W, BN, num_warps)
    s, z = _nat_rows(s_s, z_s, BN, num_warps)
    ta = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        4, gl.SliceLayout(5, L))))))
    t = ta[None, None, None, :, None, None]
    ha = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        3, gl.SliceLayout(4, L))))))
    h = ha[None, None, None, None, None, :]
    if W == 2:
        b = t // 2 + 2 * h
        p_lo = 4 * (t % 2)
        p_hi = p_lo + 2
        m = 3
    else:
        b = t + 0 * h
        p_lo = 0 * t
        p_hi = p_lo + 4
        m = 15
    sel = (b * 0x1111).broadcast_to(shape)
    src = gl.inline_asm_elementwise("prmt.b32 $0, $1, 0, $2;", "=r,r,r", [w, sel], dtype=gl.int32, is_pure=True,
                                    pack=1)
    mask = ((m << p_lo) | (m << (p_hi + 16))).broadcast_to(shape)
    magic = (((25 - p_lo) << 10) | ((25 - p_hi) << 26)).broadcast_to(shape)  # 2^(10 - p) per half (_wgr._magic)
    s2 = _half2(s).broadcast_to(shape)
    c2 = _half2(-z * s).broadcast_to(shape)
    lo, hi = gl.inline_asm_elementwise(_pair_asm(True, False, False), _in_regs(5), [src, mask, magic, s2, c2],
                                       dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    # [rows..., t, s, h, e] -> column 16 s + 8 h + 2 t + e
    v = gl.reshape(gl.join(lo, hi), [BN // 16, 2, 8, 2, 2, 2, 2, 2, 2])  # t1 t0 s1 s0 h e
    v = gl.reshape(gl.permute(v, [0, 1, 2, 5, 6, 7, 3, 4, 8]), [BN, _BK])
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_acc_layout(BN, BT, num_warps), k_width=2)
    return gl.convert_layout(v, LA, assert_trivial=True)
