"""Triton kernels for ``y = x W^T`` with ``W`` in layout ``slimq.segmented-bitplane.v1``.

Launch-level kernels (host wrappers live in ``slimq.kernels.triton.ops``):

* ``skinny_kernel``: decode-sized ``M <= 16``. Streams each packed word once. ``USE_DOT=False``
  multiplies on the CUDA cores (the dispatch uses it for ``M == 1``: a dedicated 2-D path; the
  generic 3-D path serves gathered x / unaligned groups), ``USE_DOT=True`` feeds the unpacked
  codes to the tensor cores with ``M`` padded to 16. Scales and zeros are applied once per
  (tile, row): ``sum_k x_k w_k = s * (sum_k x_k q_k - z * sum_k x_k)`` inside a group.
* ``gemm_kernel``: ``M > 16``. Dequantizes a ``[BK, BN]`` tile to the activation dtype and
  feeds ``tl.dot``; ``M x N`` output tiles, optional split-K.
* ``dequant_kernel``: writes ``W_hat`` (activation dtype, ``[N, K]`` in storage column order,
  original row order) for dequantize-then-cuBLAS.
* ``finalize_kernel``: float32 split-K workspace -> ``out`` (bias, ``row_perm``, dtype), and
  re-zeroes the workspace so the next call needs no memset.

Every launch covers one *band* (segments sharing the rows ``[r0, r0 + ns)``). ``segs`` is a tuple
of segment tuples ``(c0, ks, scales, zeros, plane0, ...)`` and ``SEG_BITS`` their bit-widths;
a kernel walks its segments with a static loop, so one launch serves a whole SliM-LLM layer.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._tiles import (
    code_tile, elem_group_params, group_params, pdl_release, plane_coef, plane_rows, plane_width, skinny_program,
    slot_codes, store_rows, word_tile, x_tile2, x_tile3,
)

__all__ = ["skinny_kernel", "gemm_kernel", "dequant_kernel", "gather_kernel", "finalize_kernel"]


@triton.jit
def _tile_range(ks, pid_k, BK: tl.constexpr, split_k):
    """K-tiles ``[t_lo, t_hi)`` of a ``ks``-column segment owned by split ``pid_k``."""
    n_tiles = tl.cdiv(ks, BK)
    per = tl.cdiv(n_tiles, split_k)
    t_lo = pid_k * per
    return t_lo, tl.minimum(t_lo + per, n_tiles)


@triton.jit
def _fma_plane(acc, plane_ptr, coef, x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr, c0, ks, k0, ns, gs,
               offs_m, mask_m, offs_n, mask_n, s, z, W: tl.constexpr, FIRST: tl.constexpr,
               BK: tl.constexpr, GATHER: tl.constexpr, ALIGNED: tl.constexpr):
    """``acc [BM, KW, BN] += coef * sum_e x * plane`` for one plane; the first plane also
    carries the zero-point term. ``s``/``z`` are the tile's group parameters (ALIGNED)."""
    q = code_tile(plane_ptr, k0, ks, ns, offs_n, mask_n, W, BK)
    xv = x_tile3(x_ptr, stride_xm, perm_ptr, c0, ks, k0, offs_m, mask_m, W, BK, GATHER)
    if ALIGNED:
        part = tl.sum(q[None, :, :, :] * xv[:, :, :, None], axis=2)
        if FIRST:
            xs = tl.sum(xv, axis=2)
            acc += s[None, None, :] * (part - z[None, None, :] * xs[:, :, None])
        else:
            acc += (s * coef)[None, None, :] * part
    else:
        s3, z3 = elem_group_params(sc_ptr, zr_ptr, k0, ks, gs, ns, offs_n, mask_n, W, BK)
        if FIRST:
            w = s3 * (q - z3)
        else:
            w = (s3 * coef) * q
        acc += tl.sum(w[None, :, :, :] * xv[:, :, :, None], axis=2)
    return acc


@triton.jit
def _fma_plane2d(acc, words, coef, x_ptr, c0, ks, k0, s, z, W: tl.constexpr, FIRST: tl.constexpr,
                 BK: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """``M == 1`` variant of ``_fma_plane`` (ALIGNED, contiguous ``x``) on loaded ``words
    [KW, BN]``: 2-D ``acc [KW, BN]``, slots unrolled, so every tensor keeps the coalesced
    layout of the word load."""
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    hi = words >> 16
    cols0 = k0 + tl.arange(0, KW) * E
    part = tl.zeros(acc.shape, tl.float32)
    xs = tl.zeros([KW], tl.float32)
    for j in tl.static_range(E):
        q = slot_codes(words, hi, j, W, ASM)
        cols = cols0 + j
        if FULL:  # the whole tile lies inside the segment: no masks
            xj = tl.load(x_ptr + c0 + cols).to(tl.float32)
        else:
            xj = tl.load(x_ptr + c0 + cols, mask=cols < ks, other=0.0).to(tl.float32)
        part += q * xj[:, None]
        if FIRST:
            xs += xj
    if FIRST:
        acc += s[None, :] * (part - z[None, :] * xs[:, None])
    else:
        acc += (s * coef)[None, :] * part
    return acc


@triton.jit
def _fma1_loads(seg, k0, valid, ns, gs, offs_n, mask_n, BITS: tl.constexpr, BK: tl.constexpr):
    """Global loads of one K-tile for ``M == 1``: the words of every plane and the group's
    ``(scale, zero)``; everything reads as 0 unless ``valid`` (so a prefetch may run past the end)."""
    ks = seg[1]
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    m = offs_n < tl.where(valid, ns, 0)  # == mask_n when valid, all False otherwise
    w0 = word_tile(seg[4], k0, ks, ns, offs_n, m, W0, BK)
    if W1 > 0:
        w1 = word_tile(seg[5], k0, ks, ns, offs_n, m, W1, BK)
    else:
        w1 = w0
    if W2 > 0:
        w2 = word_tile(seg[6], k0, ks, ns, offs_n, m, W2, BK)
    else:
        w2 = w0
    s, z = group_params(seg[2], seg[3], k0, gs, ns, offs_n, m)
    return w0, w1, w2, s, z


@triton.jit
def _fma1_compute(acc0, acc1, acc2, w0, w1, w2, s, z, x_ptr, seg, k0, BITS: tl.constexpr, BK: tl.constexpr,
                  ASM: tl.constexpr, FULL: tl.constexpr):
    """All planes of one loaded K-tile for ``M == 1``."""
    c0 = seg[0]
    ks = seg[1]
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    acc0 = _fma_plane2d(acc0, w0, 1.0, x_ptr, c0, ks, k0, s, z, W0, True, BK, ASM, FULL)
    if W1 > 0:
        acc1 = _fma_plane2d(acc1, w1, plane_coef(BITS, 1), x_ptr, c0, ks, k0, s, z, W1, False, BK, ASM, FULL)
    if W2 > 0:
        acc2 = _fma_plane2d(acc2, w2, plane_coef(BITS, 2), x_ptr, c0, ks, k0, s, z, W2, False, BK, ASM, FULL)
    return acc0, acc1, acc2


@triton.jit
def _segment_fma1(x_ptr, seg, ns, gs, offs_n, mask_n, pid_k, BITS: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, split_k, ASM: tl.constexpr, PREFETCH: tl.constexpr):
    """float32 ``[1, BN]`` for ``M == 1``, aligned groups, ``x`` already in storage order.

    PREFETCH: issue the next tile's global loads before multiplying the current one (register
    double buffering; Triton's pipeliner does not pipeline loads that feed no ``tl.dot``)."""
    ks = seg[1]
    acc0 = tl.zeros([plane_rows(BITS, 0, BK), BN], tl.float32)
    acc1 = tl.zeros([plane_rows(BITS, 1, BK), BN], tl.float32)
    acc2 = tl.zeros([plane_rows(BITS, 2, BK), BN], tl.float32)
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    t_full = tl.minimum(t_hi, ks // BK)
    if PREFETCH:
        w0, w1, w2, s, z = _fma1_loads(seg, t_lo * BK, t_lo < t_full, ns, gs, offs_n, mask_n, BITS, BK)
        for t in range(t_lo, t_full):
            c0w, c1w, c2w, cs, cz = w0, w1, w2, s, z
            w0, w1, w2, s, z = _fma1_loads(seg, (t + 1) * BK, t + 1 < t_full, ns, gs, offs_n, mask_n, BITS, BK)
            acc0, acc1, acc2 = _fma1_compute(acc0, acc1, acc2, c0w, c1w, c2w, cs, cz, x_ptr, seg, t * BK,
                                             BITS, BK, ASM, True)
    else:
        for t in range(t_lo, t_full):
            w0, w1, w2, s, z = _fma1_loads(seg, t * BK, t < t_full, ns, gs, offs_n, mask_n, BITS, BK)
            acc0, acc1, acc2 = _fma1_compute(acc0, acc1, acc2, w0, w1, w2, s, z, x_ptr, seg, t * BK,
                                             BITS, BK, ASM, True)
    if (t_hi > t_lo) & (t_hi * BK > ks):  # the segment's last tile is partial and ours
        k0 = (t_hi - 1) * BK
        w0, w1, w2, s, z = _fma1_loads(seg, k0, t_hi > t_lo, ns, gs, offs_n, mask_n, BITS, BK)
        acc0, acc1, acc2 = _fma1_compute(acc0, acc1, acc2, w0, w1, w2, s, z, x_ptr, seg, k0, BITS, BK, ASM, False)
    y = tl.sum(acc0, axis=0)
    if plane_width(BITS, 1) > 0:
        y += tl.sum(acc1, axis=0)
    if plane_width(BITS, 2) > 0:
        y += tl.sum(acc2, axis=0)
    return y[None, :]


@triton.jit
def _segment_fma(x_ptr, stride_xm, perm_ptr, seg, ns, gs, offs_m, mask_m, offs_n, mask_n, pid_k,
                 BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 split_k, GATHER: tl.constexpr, ALIGNED: tl.constexpr):
    """float32 ``[BM, BN]``: this program's share of one segment, on the CUDA cores."""
    c0 = seg[0]
    ks = seg[1]
    sc_ptr = seg[2]
    zr_ptr = seg[3]
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    acc0 = tl.zeros([BM, plane_rows(BITS, 0, BK), BN], tl.float32)
    acc1 = tl.zeros([BM, plane_rows(BITS, 1, BK), BN], tl.float32)
    acc2 = tl.zeros([BM, plane_rows(BITS, 2, BK), BN], tl.float32)
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    for t in range(t_lo, t_hi):
        k0 = t * BK
        if ALIGNED:
            s, z = group_params(sc_ptr, zr_ptr, k0, gs, ns, offs_n, mask_n)
        else:
            s = 0.0
            z = 0.0
        acc0, acc1, acc2 = _fma_tile3(acc0, acc1, acc2, seg, x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr, c0, ks,
                                      k0, ns, gs, offs_m, mask_m, offs_n, mask_n, s, z, BITS, BK, GATHER, ALIGNED)
    y = tl.sum(acc0, axis=1)
    if W1 > 0:
        y += tl.sum(acc1, axis=1)
    if W2 > 0:
        y += tl.sum(acc2, axis=1)
    return y


@triton.jit
def _fma_tile3(acc0, acc1, acc2, seg, x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr, c0, ks, k0, ns, gs,
               offs_m, mask_m, offs_n, mask_n, s, z, BITS: tl.constexpr, BK: tl.constexpr,
               GATHER: tl.constexpr, ALIGNED: tl.constexpr):
    """One K-tile of every plane with the 3-D ``[KW, E, BN]`` expansion (any alignment, gathered x)."""
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    acc0 = _fma_plane(acc0, seg[4], 1.0, x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr, c0, ks, k0, ns, gs,
                      offs_m, mask_m, offs_n, mask_n, s, z, W0, True, BK, GATHER, ALIGNED)
    if W1 > 0:
        acc1 = _fma_plane(acc1, seg[5], plane_coef(BITS, 1), x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr, c0, ks,
                          k0, ns, gs, offs_m, mask_m, offs_n, mask_n, s, z, W1, False, BK, GATHER, ALIGNED)
    if W2 > 0:
        acc2 = _fma_plane(acc2, seg[6], plane_coef(BITS, 2), x_ptr, stride_xm, perm_ptr, sc_ptr, zr_ptr,
                          c0, ks, k0, ns, gs, offs_m, mask_m, offs_n, mask_n, s, z, W2, False, BK, GATHER,
                          ALIGNED)
    return acc0, acc1, acc2


@triton.jit
def _codes2d(seg, k0, ks, ns, offs_n, mask_n, BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """float32 codes ``q [BK, BN]`` (all planes combined) of segment columns ``[k0, k0 + BK)``."""
    W0: tl.constexpr = plane_width(BITS, 0)
    W1: tl.constexpr = plane_width(BITS, 1)
    W2: tl.constexpr = plane_width(BITS, 2)
    q = tl.reshape(code_tile(seg[4], k0, ks, ns, offs_n, mask_n, W0, BK), [BK, BN])
    if W1 > 0:
        q1 = tl.reshape(code_tile(seg[5], k0, ks, ns, offs_n, mask_n, W1, BK), [BK, BN])
        q += q1 * plane_coef(BITS, 1)
    if W2 > 0:
        q2 = tl.reshape(code_tile(seg[6], k0, ks, ns, offs_n, mask_n, W2, BK), [BK, BN])
        q += q2 * plane_coef(BITS, 2)
    return q


@triton.jit
def _dequant2d(seg, k0, ks, ns, gs, offs_n, mask_n, BITS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               ALIGNED: tl.constexpr):
    """float32 ``W_hat^T [BK, BN]`` of segment columns ``[k0, k0 + BK)``."""
    q = _codes2d(seg, k0, ks, ns, offs_n, mask_n, BITS, BN, BK)
    if ALIGNED:
        s, z = group_params(seg[2], seg[3], k0, gs, ns, offs_n, mask_n)
        return (q - z[None, :]) * s[None, :]
    else:
        cols = k0 + tl.arange(0, BK)
        ptrs = (cols // gs)[:, None] * ns + offs_n[None, :]
        mask = (cols < ks)[:, None] & mask_n[None, :]
        s = tl.load(seg[2] + ptrs, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(seg[3] + ptrs, mask=mask, other=0.0).to(tl.float32)
        return (q - z) * s


@triton.jit
def _segment_dot(x_ptr, stride_xm, perm_ptr, seg, ns, gs, offs_m, mask_m, offs_n, mask_n, pid_k,
                 BITS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 split_k, GATHER: tl.constexpr, ALIGNED: tl.constexpr):
    """float32 ``[BM, BN]``: this program's share of one segment, on the tensor cores."""
    c0 = seg[0]
    ks = seg[1]
    acc = tl.zeros([BM, BN], tl.float32)
    t_lo, t_hi = _tile_range(ks, pid_k, BK, split_k)
    for t in range(t_lo, t_hi):
        k0 = t * BK
        xv = x_tile2(x_ptr, stride_xm, perm_ptr, c0, ks, k0, offs_m, mask_m, BK, GATHER)
        if ALIGNED:
            # codes are small integers: exact in fp16/bf16; scale and zero after the product
            q = _codes2d(seg, k0, ks, ns, offs_n, mask_n, BITS, BN, BK).to(xv.dtype)
            d = tl.dot(xv, q)
            s, z = group_params(seg[2], seg[3], k0, gs, ns, offs_n, mask_n)
            xs = tl.sum(xv.to(tl.float32), axis=1)
            acc += s[None, :] * (d - z[None, :] * xs[:, None])
        else:
            w = _dequant2d(seg, k0, ks, ns, gs, offs_n, mask_n, BITS, BN, BK, ALIGNED).to(xv.dtype)
            acc = tl.dot(xv, w, acc)
    return acc


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def skinny_kernel(x_ptr, stride_xm, perm_ptr, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr,
                  M, r0, ns, gs, split_k, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  USE_DOT: tl.constexpr, GATHER: tl.constexpr, ALIGNED: tl.constexpr, ATOMIC: tl.constexpr,
                  HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr = False,
                  PREFETCH: tl.constexpr = False):
    """Grid ``(cdiv(ns, BN), split_k)``; ``M <= BM``. ``ASM``: inline PTX (not in the interpreter)."""
    pid_k, offs_n, mask_n, offs_m, mask_m = skinny_program(ns, M, BM, BN)
    y = tl.zeros([BM, BN], tl.float32)
    for i in tl.static_range(NSEG):
        if USE_DOT:
            y += _segment_dot(x_ptr, stride_xm, perm_ptr, segs[i], ns, gs, offs_m, mask_m, offs_n, mask_n, pid_k,
                              SEG_BITS[i], BM, BN, BK, split_k, GATHER, ALIGNED)
        elif BM == 1 and ALIGNED and not GATHER:
            y += _segment_fma1(x_ptr, segs[i], ns, gs, offs_n, mask_n, pid_k, SEG_BITS[i], BN, BK, split_k, ASM, PREFETCH)
        else:
            y += _segment_fma(x_ptr, stride_xm, perm_ptr, segs[i], ns, gs, offs_m, mask_m, offs_n, mask_n, pid_k,
                              SEG_BITS[i], BM, BN, BK, split_k, GATHER, ALIGNED)
    store_rows(y, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, acc_ptr, split_k, False)


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def gemm_kernel(x_ptr, stride_xm, perm_ptr, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr,
                M, r0, ns, gs, split_k, segs, SEG_BITS: tl.constexpr, NSEG: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                GROUP_M: tl.constexpr, GATHER: tl.constexpr, ALIGNED: tl.constexpr, ATOMIC: tl.constexpr,
                HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Grid ``(cdiv(M, BM) * cdiv(ns, BN), split_k)``, programs grouped ``GROUP_M`` M-tiles at a
    time so that neighbouring programs share weight tiles in L2."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_m = tl.cdiv(M, BM)
    n_n = tl.cdiv(ns, BN)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    mask_m = offs_m < M
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < ns
    acc = tl.zeros([BM, BN], tl.float32)
    for i in tl.static_range(NSEG):
        seg = segs[i]
        t_lo, t_hi = _tile_range(seg[1], pid_k, BK, split_k)
        for t in range(t_lo, t_hi):
            k0 = t * BK
            xv = x_tile2(x_ptr, stride_xm, perm_ptr, seg[0], seg[1], k0, offs_m, mask_m, BK, GATHER)
            w = _dequant2d(seg, k0, seg[1], ns, gs, offs_n, mask_n, SEG_BITS[i], BN, BK, ALIGNED)
            acc = tl.dot(xv, w.to(xv.dtype), acc)
    store_rows(acc, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, acc_ptr, split_k, False)


@triton.jit(do_not_specialize=["n_lo", "n_hi", "row0"])
def dequant_kernel(w_ptr, stride_wn, rowperm_ptr, r0, ns, n_lo, n_hi, row0, gs, segs, SEG_BITS: tl.constexpr,
                   NSEG: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ALIGNED: tl.constexpr,
                   HAS_ROWPERM: tl.constexpr):
    """``w[row_perm[r0 + n] - row0, c0 + k] = W_hat`` for band rows ``n in [n_lo, n_hi)``; grid
    ``(cdiv(n_hi - n_lo, BN), max_tiles)``: program ``(i, t)`` writes K-tile ``t`` of every
    segment that has one. (``row0 > 0`` only without ``row_perm``: a chunk of rows.)"""
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = n_lo + pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < n_hi
    rows = r0 + offs_n
    if HAS_ROWPERM:
        rows = tl.load(rowperm_ptr + rows, mask=mask_n, other=0)
    rows -= row0
    offs_k = tl.arange(0, BK)
    for i in tl.static_range(NSEG):
        seg = segs[i]
        k0 = t * BK
        if k0 < seg[1]:
            w = _dequant2d(seg, k0, seg[1], ns, gs, offs_n, mask_n, SEG_BITS[i], BN, BK, ALIGNED)
            cols = seg[0] + k0 + offs_k
            ptrs = w_ptr + rows[None, :].to(tl.int64) * stride_wn + cols[:, None]
            tl.store(ptrs, w.to(w_ptr.dtype.element_ty), mask=((k0 + offs_k) < seg[1])[:, None] & mask_n[None, :])


@triton.jit
def gather_kernel(x_ptr, stride_xm, perm_ptr, xp_ptr, stride_pm, K, BLOCK: tl.constexpr, PAIR16: tl.constexpr = False,
                  PDL: tl.constexpr = False, WGR: tl.constexpr = 0):
    """``xp[m, k] = x[m, col_perm[k]]`` (in ``xp``'s dtype). Grid ``(cdiv(K, BLOCK), M)``. With
    ``PAIR16`` (``K % 16 == 0``), column ``k`` takes ``col_perm[16 (k // 16) + c // 2 + 8 (c % 2)]``, ``c = k %
    16``: the pair order of ``_dq16`` (columns ``j`` and ``j + 8`` of each 16-column block adjacent). With
    ``WGR`` (2 or 4, ``K % 64 == 0``) the operand order of ``_wgr`` for codes of that width within each
    64-column tile (``_wgr.wgr_src``). ``PDL``: the next launch (``launch_pdl``) may start at once and waits for
    this one where it reads ``xp``."""
    pdl_release(PDL)
    m = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    src = offs
    if PAIR16:
        src = (offs & ~15) | ((offs & 15) >> 1) | ((offs & 1) << 3)
    if WGR == 2:  # position bits (b0..b5) = (i3, r0, r1, i0, i1, i2): column 16 r + i
        src = (offs & ~63) | (((offs >> 1) & 3) << 4) | ((offs >> 3) & 7) | ((offs & 1) << 3)
    if WGR == 4:  # (i2, r0, r1, i0, i1, r2): column 8 r + i, r = b1 + 2 b2 + 4 b5, i = b3 + 2 b4 + 4 b0
        src = ((offs & ~63) | (((offs >> 1) & 3) << 3) | (((offs >> 5) & 1) << 5) | ((offs >> 3) & 3)
               | ((offs & 1) << 2))
    idx = tl.load(perm_ptr + src, mask=mask, other=0)
    v = tl.load(x_ptr + m * stride_xm + idx, mask=mask, other=0.0)
    tl.store(xp_ptr + m * stride_pm + offs, v.to(xp_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def finalize_kernel(acc_ptr, stride_am, out_ptr, stride_om, rowperm_ptr, bias_ptr, M, N,
                    BLOCK: tl.constexpr, HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr):
    """``out[m, row_perm[n]] = acc[m, n] + bias``; then ``acc[m, n] = 0``. Grid ``(cdiv(N, BLOCK), M)``."""
    m = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    # read the sums (from L2, where the atomics left them), then re-zero them once every thread has its
    # values: the barrier orders the CTA's loads before its stores however the two are laid out over threads
    # (an atomic exchange per element did the same at ~1 TB/s: 20 us for a [256, 8192] workspace, H200 run 86)
    ptrs = acc_ptr + m * stride_am + offs
    y = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    tl.debug_barrier()
    tl.store(ptrs, tl.zeros_like(y), mask=mask)
    if HAS_ROWPERM:
        dst = tl.load(rowperm_ptr + offs, mask=mask, other=0)
    else:
        dst = offs
    if HAS_BIAS:
        y += tl.load(bias_ptr + dst, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * stride_om + dst, y.to(out_ptr.dtype.element_ty), mask=mask)
