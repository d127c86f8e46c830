"""Tensor-core path on exact codes (``"tc"``), layout ``slimq.segmented-bitplane.v1``.

Why: ``h2dot`` applies scale and zero to every weight (one more HFMA2 per pair) and re-packs
the fp16 halves of its pairs into MMA operand registers (PRMT): ~3.7 instructions per weight.
Here the MMA multiplies *codes*, and scale and zero are applied once per block of columns to
the float32 block sum: ``sum_k x_k (q_k - z) s = s * sum_k x_k q_k - s z * sum_k x_k``.

The operand. One LOP3 + HSUB2 turn a plane word into the exact half2 ``(q_i, q_{i+H})`` of
slots ``i`` and ``i + H`` (``_h2``'s magic-number trick). That 32-bit value *is* a pair of
consecutive K entries of an fp16 MMA operand if the operand's K axis runs over
``(word row r, pair j, half h)``: rows ``2 (r J + j) + h`` of the ``[2 KP J, BN]`` operand hold
column ``r E + i0 + j + h H`` of the block (``KP`` word rows, ``J`` consecutive pairs starting
at ``i0``), so Triton builds it from ``join``/``permute``/``reshape`` without moving data.
The activations are pre-arranged in exactly that order by ``_wg.operand_gather_kernel`` with
``TC_ORDER`` (one buffer per plane width), so each piece of ``x`` is a contiguous ``[BM, 2 KP J]`` load.

Blocks. A block is ``BLK = min(group size, 128)`` storage columns, inside one group; every
segment must start on a multiple of ``BLK`` and end on one (or at ``K``). Per block and plane:
``KP = BLK / E`` word rows, ``J = max(1, 8 / KP)`` pairs per MMA (K = ``2 KP J`` >= 16), ``H / J``
MMAs into a fresh float32 block sum, then ``acc += coef s * sum`` (plane 0 also
``- s z * sum_k x_k``, the float32 block sums of the same fp16 activations).

Numerics: codes are exact in fp16 and products accumulate in float32; activations go through
fp16 (bf16 inputs are converted: ``|x|`` must stay below 65504, as for ``h2dot``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import _slot, pair_tree
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tiles import pdl_wait, plane_coef, plane_width, store_rows

__all__ = ["tc_kernel", "tc_pieces"]


@triton.constexpr_function
def tc_pieces(blk, w):
    """``(KP, J)``: word rows per block and pairs per MMA for plane width ``w``."""
    kp = int(blk) * int(w) // 32
    return kp, max(1, 8 // kp)


@triton.constexpr_function
def _kp(blk, w):
    return tc_pieces(blk, w)[0]


@triton.constexpr_function
def _j(blk, w):
    return tc_pieces(blk, w)[1]


@triton.jit
def _operand(words, sh, I0: tl.constexpr, J: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr):
    """fp16 codes ``[2 KP J, BN]``, row ``2 (r J + j) + h`` = slot ``I0 + j + h H`` of word row ``r``."""
    t = pair_tree(words, sh, words, words, words, I0, J, W, ASM, False)  # exact codes
    KP: tl.constexpr = words.shape[0]
    BN: tl.constexpr = words.shape[1]
    if J == 1:
        t = tl.permute(t, (0, 2, 1))
    elif J == 2:
        t = tl.permute(t, (0, 3, 2, 1))
    elif J == 4:
        t = tl.permute(t, (0, 4, 3, 2, 1))
    else:
        t = tl.permute(t, (0, 5, 4, 3, 2, 1))
    return tl.reshape(t, [2 * KP * J, BN])


@triton.jit
def _plane_sum(init, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, ns, offs_n, P: tl.constexpr, BITS: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BLK: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """float32 ``[BM, BN]``: ``init + sum_k x_k q_k`` of plane ``P`` over segment columns ``[k0, k0 + BLK)``
    (``offs_n`` clamped to valid rows; a block that is not FULL masks word rows past the segment)."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    KP: tl.constexpr = _kp(BLK, W)
    J: tl.constexpr = _j(BLK, W)
    KD: tl.constexpr = 2 * KP * J
    offs_kw = k0 // E + tl.arange(0, KP)
    wp = seg[4 + P] + offs_kw[:, None] * ns + offs_n[None, :]
    if FULL:
        words = tl.load(wp)
    else:
        words = tl.load(wp, mask=(offs_kw < (seg[1] + E - 1) // E)[:, None], other=0)
    sh = words >> 8
    xp = xt_ptr + _slot(W) * stride_tb + offs_m[:, None] * stride_tm + (seg[0] + k0 + tl.arange(0, KD))[None, :]
    part = init
    for p in tl.static_range(H // J):
        b = _operand(words, sh, p * J, J, W, ASM)
        a = tl.load(xp + p * KD)
        part = tl.dot(a, b, part)
    return part


@triton.jit
def _tc_block(acc, seg, k0, xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, offs_m, ns, offs_n,
              BITS: tl.constexpr, GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BLK: tl.constexpr,
              ASM: tl.constexpr, FULL: tl.constexpr):
    """``acc += x W^T`` over segment columns ``[k0, k0 + BLK)`` of every plane."""
    g = k0 // GS
    s = tl.load(seg[2] + g * ns + offs_n).to(tl.float32)
    z = tl.load(seg[3] + g * ns + offs_n).to(tl.float32)
    xs = tl.load(xs_ptr + offs_m * stride_sm + (seg[0] + k0) // BLK)
    # (sum_k x_k q_k - z sum_k x_k) s: the MMA starts from -z sum_k x_k
    part = _plane_sum(xs[:, None] * -z[None, :], seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, ns, offs_n, 0, BITS,
                      BM, BN, BLK, ASM, FULL)
    acc += part * s[None, :]
    if plane_width(BITS, 1) > 0:
        part = _plane_sum(tl.zeros([BM, BN], tl.float32), seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, ns, offs_n,
                          1, BITS, BM, BN, BLK, ASM, FULL)
        acc += part * (s * plane_coef(BITS, 1))[None, :]
    if plane_width(BITS, 2) > 0:
        part = _plane_sum(tl.zeros([BM, BN], tl.float32), seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, ns, offs_n,
                          2, BITS, BM, BN, BLK, ASM, FULL)
        acc += part * (s * plane_coef(BITS, 2))[None, :]
    return acc


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def tc_kernel(xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr,
              bias_ptr, M, r0, ns, split_k, cnt_ptr, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr, GS: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BLK: tl.constexpr, ATOMIC: tl.constexpr,
              HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED: tl.constexpr, ASM: tl.constexpr,
              PDL: tl.constexpr = False):
    """Grid ``(cdiv(M, BM) * cdiv(ns, BN), split_k)``; activations pre-arranged by
    ``_wg.operand_gather_kernel`` (``TC_ORDER``). ``ASM``: half2 inline PTX (else integer ops, for the interpreter)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_n = tl.cdiv(ns, BN)
    offs_m = (pid // n_n) * BM + tl.arange(0, BM)
    mask_m = offs_m < M
    offs_n = (pid % n_n) * BN + tl.arange(0, BN)
    mask_n = offs_n < ns
    # rows past M / ns re-read row M - 1 / ns - 1 (never stored): loads need no mask
    offs_mc = tl.minimum(offs_m, M - 1)
    offs_nc = tl.minimum(offs_n, ns - 1)
    pdl_wait(PDL)
    acc = tl.zeros([BM, BN], tl.float32)
    for i in tl.static_range(NSEG):
        seg = segs[i]
        t_lo, t_hi = _tile_range(seg[1], pid_k, BLK, split_k)
        for t in range(t_lo, tl.minimum(t_hi, seg[1] // BLK)):
            acc = _tc_block(acc, seg, t * BLK, xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, offs_mc, ns, offs_nc,
                            SEG_BITS[i], GS, BM, BN, BLK, ASM, True)
        if (t_hi > t_lo) & (t_hi * BLK > seg[1]):  # the segment's last block is partial and ours
            acc = _tc_block(acc, seg, (t_hi - 1) * BLK, xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, offs_mc, ns,
                            offs_nc, SEG_BITS[i], GS, BM, BN, BLK, ASM, False)
    store_rows(acc, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)


@triton.jit
def _tc_src(p, BLK: tl.constexpr, W: tl.constexpr):
    """Storage column whose activation sits at position ``p`` of a width-``W`` ``tc`` buffer."""
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    KP: tl.constexpr = _kp(BLK, W)
    J: tl.constexpr = _j(BLK, W)
    KD: tl.constexpr = 2 * KP * J
    q = p % BLK
    piece = q // KD
    e = q % KD
    rj = e // 2
    return (p // BLK) * BLK + (rj // J) * E + piece * J + rj % J + (e % 2) * H
