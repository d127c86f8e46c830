"""Tensor-core path with half2 dequantization (``"h2dot"``), layout ``slimq.segmented-bitplane.v1``.

Why: the ``dot`` path unpacks codes in float32 and spends ~12 instructions per weight before the
MMA. Here each plane word is dequantized in half2 arithmetic straight into fp16 operands:
one LOP3 + HSUB2 (exact codes, see ``_h2``) + HFMA2 ``q * s - z * s`` give two weights
``(w[c + i], w[c + i + H])``. Since ``sum_k x_k w_k`` does not care about the order of ``k``,
the operand of pair ``i`` is the ``[KW, BN]`` tile of slot ``i`` (low halves) or ``i + H``
(high halves) of every word row, and the activations are loaded in the same order
(columns ``c0 + r * E + i`` for word row ``r``). Each piece feeds its own ``tl.dot`` with
``K = KW = 16`` word rows, so a plane of width ``W`` is walked in tiles of ``BK = 512 / W``
columns (several groups: scale and zero are loaded per word row).

Planes are independent: ``w = (q0 + 4 q1 - z) s = (q0 - z) s + 4 q1 s``, so plane 0 carries the
zero point and the others only ``coef * s``. Rows past the segment read scale 0, so their
weights are exactly 0.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import _scaled_x, _slot, pair_halves, pair_tree
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tiles import pdl_wait, plane_coef, plane_width, store_rows, word_tile

__all__ = ["h2dot_kernel", "tree_gather_kernel"]

KW_DOT = tl.constexpr(16)  # word rows per operand piece (the MMA's K)


@triton.constexpr_function
def _log2(v):
    return int(v).bit_length() - 1


@triton.jit
def _tree_col(j, H: tl.constexpr):
    """Column (within a word row) of position ``j`` of a ``pair_tree`` row: ``(j // H) H + rev(j % H)``."""
    L: tl.constexpr = _log2(H)
    jm = j % H
    i = tl.zeros_like(j)
    for b in tl.static_range(L):
        i |= ((jm >> b) & 1) << (L - 1 - b)
    return (j // H) * H + i


@triton.jit
def _joined_dot(acc, words, sh, s2, z2, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, W: tl.constexpr,
                ASM: tl.constexpr, FULL: tl.constexpr):
    """``JOIN`` variant of one tile: all code pairs joined into one ``[16 E, BN]`` operand, the
    activations read in the same (tree) order from ``tree_gather_kernel``'s buffer."""
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    BK: tl.constexpr = KW_DOT * E
    t = pair_tree(words, sh, words, s2, z2, 0, H, W, ASM, True)
    if H == 2:
        t = tl.permute(t, (0, 2, 3, 1))
    elif H == 4:
        t = tl.permute(t, (0, 2, 3, 4, 1))
    elif H == 8:
        t = tl.permute(t, (0, 2, 3, 4, 5, 1))
    else:
        t = tl.permute(t, (0, 2, 3, 4, 5, 6, 1))
    w = tl.reshape(t, [BK, words.shape[1]])
    xt = xt_ptr + _slot(W) * stride_tb + offs_m[:, None] * stride_tm + (seg[0] + k0 + tl.arange(0, BK))[None, :]
    if FULL:
        xv = tl.load(xt)
    else:
        jj = tl.arange(0, BK)
        col = k0 + (jj // E) * E + _tree_col(jj % E, H)
        xv = tl.load(xt, mask=(col < seg[1])[None, :], other=0.0)
    return tl.dot(xv, w, acc)


@triton.jit
def _tile_dot(acc, seg, k0, x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_m, ns, gs, offs_n, mask_n,
              P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr, JOIN: tl.constexpr):
    """``acc += x W^T`` over plane ``P``'s segment columns ``[k0, k0 + 16 E)``. ``offs_m`` is
    clamped to valid rows by the caller, so only a partial (not FULL) tile needs masks."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    BK: tl.constexpr = KW_DOT * E
    ks = seg[1]
    rows = tl.arange(0, KW_DOT)
    words = word_tile(seg[4 + P], k0, ks, ns, offs_n, mask_n, W, BK)
    sh = words >> 8
    col_r = k0 + rows * E  # first segment column of each word row
    sptr = (col_r // gs)[:, None] * ns + offs_n[None, :]
    if FULL:
        smask = mask_n[None, :] & (rows >= 0)[:, None]
    else:
        smask = (col_r < ks)[:, None] & mask_n[None, :]  # rows past the segment get scale 0
    s = tl.load(seg[2] + sptr, mask=smask, other=0.0).to(tl.float32)
    if P == 0:
        zs = -tl.load(seg[3] + sptr, mask=smask, other=0.0).to(tl.float32) * s
    else:
        s = s * plane_coef(BITS, P)
        zs = tl.zeros_like(s)
    if ASM:
        s2 = tl.inline_asm_elementwise("mov.b32 $0, {$1, $1};", "=r,h", [s.to(tl.float16)], dtype=tl.int32,
                                       is_pure=True, pack=1)
        z2 = tl.inline_asm_elementwise("mov.b32 $0, {$1, $1};", "=r,h", [zs.to(tl.float16)], dtype=tl.int32,
                                       is_pure=True, pack=1)
    else:
        s2 = s
        z2 = zs
    if JOIN:  # one [16 E, BN] operand and one tl.dot for the whole tile
        return _joined_dot(acc, words, sh, s2, z2, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, W, ASM, FULL)
    xp = x_ptr + offs_m[:, None] * stride_xm + (seg[0] + col_r)[None, :]
    for i in tl.static_range(H):
        lo, hi = pair_halves(words, sh, s2, z2, i, W, ASM, True)
        if FULL:
            x_lo = tl.load(xp + i).to(tl.float16)
            x_hi = tl.load(xp + (i + H)).to(tl.float16)
        else:  # columns past the segment (a partial last word) must meet x = 0: their weights are -z s
            x_lo = tl.load(xp + i, mask=((col_r + i) < ks)[None, :], other=0.0).to(tl.float16)
            x_hi = tl.load(xp + (i + H), mask=((col_r + i + H) < ks)[None, :], other=0.0).to(tl.float16)
        acc = tl.dot(x_lo, lo, acc)
        acc = tl.dot(x_hi, hi, acc)
    return acc


@triton.jit
def _plane_dot(acc, seg, x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_m, ns, gs, offs_n, mask_n, pid_k, split_k,
               P: tl.constexpr, BITS: tl.constexpr, ASM: tl.constexpr, JOIN: tl.constexpr):
    """``acc [BM, BN] += x W_p^T`` over this program's share of plane ``P`` of one segment."""
    BK: tl.constexpr = KW_DOT * (32 // plane_width(BITS, P))
    ks = seg[1]
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    t_full = tl.minimum(t_hi, ks // BK)
    for t in range(t_lo, t_full):
        acc = _tile_dot(acc, seg, t * BK, x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_m, ns, gs, offs_n,
                        mask_n, P, BITS, ASM, True, JOIN)
    if (t_hi > t_lo) & (t_hi * BK > ks):  # the segment's last tile is partial and ours
        acc = _tile_dot(acc, seg, (t_hi - 1) * BK, x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_m, ns, gs,
                        offs_n, mask_n, P, BITS, ASM, False, JOIN)
    return acc


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def h2dot_kernel(x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr,
                 M, r0, ns, gs, split_k, cnt_ptr, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, ATOMIC: tl.constexpr, HAS_ROWPERM: tl.constexpr,
                 HAS_BIAS: tl.constexpr, FUSED: tl.constexpr, ASM: tl.constexpr, JOIN: tl.constexpr = False,
                 PDL: tl.constexpr = False):
    """Grid ``(cdiv(M, BM) * cdiv(ns, BN), split_k)``; ``x`` already in storage column order
    (fp16). ``ASM``: half2 inline PTX (else a float32 emulation for the interpreter)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_n = tl.cdiv(ns, BN)
    pid_m = pid // n_n
    pid_n = pid % n_n
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_m = offs_m < M
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < ns
    acc = tl.zeros([BM, BN], tl.float32)
    offs_mc = tl.minimum(offs_m, M - 1)  # rows past M re-read row M - 1 (never stored): loads need no mask
    pdl_wait(PDL)
    for i in tl.static_range(NSEG):
        acc = _plane_dot(acc, segs[i], x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_mc, ns, gs, offs_n, mask_n, pid_k, split_k,
                         0, SEG_BITS[i], ASM, JOIN)
        if plane_width(SEG_BITS[i], 1) > 0:
            acc = _plane_dot(acc, segs[i], x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_mc, ns, gs, offs_n, mask_n, pid_k, split_k,
                             1, SEG_BITS[i], ASM, JOIN)
        if plane_width(SEG_BITS[i], 2) > 0:
            acc = _plane_dot(acc, segs[i], x_ptr, stride_xm, xt_ptr, stride_tm, stride_tb, offs_mc, ns, gs, offs_n, mask_n, pid_k, split_k,
                             2, SEG_BITS[i], ASM, JOIN)
    store_rows(acc, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)


@triton.jit(do_not_specialize=["K"])
def tree_gather_kernel(x_ptr, stride_xm, perm_ptr, xt_ptr, stride_tm, stride_tb, K, WIDTHS: tl.constexpr,
                       NW: tl.constexpr, BLOCK: tl.constexpr):
    """fp16 activations in the column order of the joined ``h2dot`` operands, per plane width:
    ``xt[slot(W)][m, b + j] = x[m, col_perm[b + (j // H) H + rev(j % H)]]`` for ``b`` a multiple of
    ``E`` (0 past ``K``). Grid ``(cdiv(Kpad, BLOCK), M)``, ``Kpad = K`` rounded up to 32."""
    m = tl.program_id(1)
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = m.to(tl.int64) * stride_xm
    for w in tl.static_range(NW):
        _store_tree(x_ptr, row, perm_ptr, xt_ptr, stride_tm, stride_tb, m, c, K, WIDTHS[w])


@triton.jit
def _store_tree(x_ptr, row, perm_ptr, xt_ptr, stride_tm, stride_tb, m, c, K, W: tl.constexpr):
    E: tl.constexpr = 32 // W
    src = (c // E) * E + _tree_col(c % E, E // 2)
    v = _scaled_x(x_ptr, row, perm_ptr, src, K, 1.0)
    tl.store(xt_ptr + _slot(W) * stride_tb + m * stride_tm + c, v, mask=c < (K + 31) // 32 * 32)
