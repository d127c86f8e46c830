"""Triton building blocks shared by the slimq kernels (layout ``slimq.segmented-bitplane.v1``).

Everything here is ``@triton.jit`` device code. Conventions:

* a *segment* is handed over as a tuple ``(c0, ks, scales, zeros, plane0[, plane1[, plane2]])``:
  storage columns ``[c0, c0 + ks)``, fp16 ``scales``/``zeros`` ``[Gs, Ns]`` and int32 planes
  ``[ceil(ks * w / 32), Ns]`` (see ``slimq.format.layout``); ``Ns`` is passed separately.
* a plane of width ``W`` holds ``E = 32 // W`` codes per word; a K-tile of ``BK`` columns is
  ``KW = BK // E`` word rows. Codes are expanded as ``[KW, E, BN]`` so that each thread
  unpacks the words it loaded itself (no re-reads, no shared-memory round trip).
* by linearity, ``sum_k x_k q_k = sum_p 2**shift_p * sum_k x_k plane_p[k]``: every plane is
  multiplied separately, so 3-bit weights cost exactly a 2-bit plus a 1-bit pass.
* codes become floats with the exponent trick: ``(q | 0x4B000000)`` read as float32 is
  ``2**23 + q`` exactly, one integer op instead of a (quarter-rate) int->float convert.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

__all__: list[str] = []  # device code only; used by slimq.kernels.triton.ops


@triton.constexpr_function
def plane_width(bits, p):
    """Width of plane ``p`` of a ``bits``-bit code (0 when the plane does not exist);
    mirrors ``slimq.format.layout.PLANE_WIDTHS``."""
    bits, p = int(bits), int(p)
    w0 = 8 if bits == 8 else (4 if bits >= 4 else (2 if bits >= 2 else 1))
    r0 = bits - w0
    w1 = 2 if r0 >= 2 else r0
    return (w0, w1, r0 - w1)[p]


@triton.constexpr_function
def plane_coef(bits, p):
    """``2 ** (bit position of plane p)``, as a float."""
    return float(1 << sum(plane_width(bits, i) for i in range(int(p))))


@triton.constexpr_function
def plane_rows(bits, p, bk):
    """Word rows ``[KW]`` of plane ``p`` in a ``bk``-column tile (1 for a missing plane)."""
    return max(int(bk) * plane_width(bits, p) // 32, 1)


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """With programmatic dependent launch (``launch_pdl=True``, sm_90+), a kernel may start while the
    launch before it (the activation gather) still runs: wait for it before reading its output."""
    if PDL:
        gdc_wait()


@triton.jit
def pdl_release(PDL: tl.constexpr):
    """Let the next launch (a ``launch_pdl`` matmul) start now; it waits in :func:`pdl_wait`."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def unit_range(segs, i: tl.constexpr, NSEG: tl.constexpr, SEG_UNITS: tl.constexpr, BLK: tl.constexpr, pid_k,
               split_k):
    """Blocks ``[t_lo, t_hi)`` of segment ``i`` (``BLK`` columns each, the last possibly partial) that K-split
    program ``pid_k`` takes in ``KernelConfig.byte_split``'s equal shares: every segment's blocks in storage order,
    block ``t`` of segment ``i`` weighing ``SEG_UNITS[i]`` (``_plan.segment_units``), each program the blocks that
    start in its ``1 / split_k`` of the total weight; empty where it has none there."""
    total = 0
    c = 0  # weight of the segments before i
    for j in tl.static_range(NSEG):
        w = tl.cdiv(segs[j][1], BLK) * SEG_UNITS[j]
        if j < i:
            c += w
        total += w
    u_lo = pid_k * total // split_k
    u_hi = (pid_k + 1) * total // split_k
    n_i = tl.cdiv(segs[i][1], BLK)
    t_lo = tl.minimum(tl.cdiv(tl.maximum(u_lo - c, 0), SEG_UNITS[i]), n_i)
    t_hi = tl.minimum(tl.cdiv(tl.maximum(u_hi - c, 0), SEG_UNITS[i]), n_i)
    return t_lo, t_hi


@triton.jit
def skinny_program(ns, M, BM: tl.constexpr, BN: tl.constexpr):
    """Program ``(pid_n, pid_k)`` of a skinny launch (grid ``(cdiv(ns, BN), split_k)``, ``M <= BM``):
    ``(pid_k, offs_n, mask_n, offs_m, mask_m)``."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    return tl.program_id(1), offs_n, offs_n < ns, offs_m, offs_m < M


@triton.jit
def code_tile(plane_ptr, k0, ks, ns, offs_n, mask_n, W: tl.constexpr, BK: tl.constexpr):
    """float32 codes ``[KW, E, BN]`` of segment columns ``[k0, k0 + BK)`` (``k0 % BK == 0``) of
    one width-``W`` plane; columns past ``ks`` read as 0 (masked words)."""
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    offs_kw = k0 // E + tl.arange(0, KW)
    n_words = (ks + E - 1) // E
    ptrs = plane_ptr + offs_kw[:, None] * ns + offs_n[None, :]
    words = tl.load(ptrs, mask=(offs_kw < n_words)[:, None] & mask_n[None, :], other=0)
    shifts = tl.arange(0, E) * W
    q = (words[:, None, :] >> shifts[None, :, None]) & ((1 << W) - 1)
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def word_tile(plane_ptr, k0, ks, ns, offs_n, mask_n, W: tl.constexpr, BK: tl.constexpr):
    """int32 words ``[KW, BN]`` of one width-``W`` plane holding segment columns ``[k0, k0 + BK)``."""
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    offs_kw = k0 // E + tl.arange(0, KW)
    n_words = (ks + E - 1) // E
    ptrs = plane_ptr + offs_kw[:, None] * ns + offs_n[None, :]
    return tl.load(ptrs, mask=(offs_kw < n_words)[:, None] & mask_n[None, :], other=0)


@triton.constexpr_function
def _pow2f(e):
    return float(2 ** int(e))


@triton.jit
def slot_codes(lo, hi, J: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr):
    """float32 codes of slot ``J`` of every word: ``lo`` = words, ``hi`` = words >> 16.

    The code is masked in place and OR-ed into the mantissa of ``2**(23 - b)`` (``b`` its bit
    position in the half word), so one LOP3 and one FADD give the exact float code."""
    E: tl.constexpr = 32 // W
    HALF: tl.constexpr = E // 2
    B: tl.constexpr = (J % HALF) * W
    MAGIC: tl.constexpr = 0x4B000000 - (B << 23)
    MAGIC_F: tl.constexpr = _pow2f(23 - B)
    MASK: tl.constexpr = ((1 << W) - 1) << B
    src = lo if J < HALF else hi
    if ASM:  # ptxas will not fuse the AND and the OR of two immediates into one LOP3 by itself
        v = tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
                                      [src, tl.full(src.shape, MASK, tl.int32), tl.full(src.shape, MAGIC, tl.int32)],
                                      dtype=tl.int32, is_pure=True, pack=1)
    else:
        v = (src & MASK) | MAGIC
    return v.to(tl.float32, bitcast=True) - MAGIC_F


@triton.jit
def x_tile3(x_ptr, stride_xm, perm_ptr, c0, ks, k0, offs_m, mask_m,
            W: tl.constexpr, BK: tl.constexpr, GATHER: tl.constexpr):
    """float32 activations ``[BM, KW, E]`` for segment columns ``[k0, k0 + BK)``, arranged like
    ``code_tile``; reads ``x[m, col_perm[c0 + k]]`` (GATHER) or ``x[m, c0 + k]``."""
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    cols = k0 + tl.arange(0, KW)[:, None] * E + tl.arange(0, E)[None, :]
    mk = cols < ks
    if GATHER:
        idx = tl.load(perm_ptr + c0 + cols, mask=mk, other=0)
    else:
        idx = c0 + cols
    ptrs = x_ptr + offs_m[:, None, None] * stride_xm + idx[None, :, :]
    x = tl.load(ptrs, mask=mask_m[:, None, None] & mk[None, :, :], other=0.0)
    return x.to(tl.float32)


@triton.jit
def x_tile2(x_ptr, stride_xm, perm_ptr, c0, ks, k0, offs_m, mask_m, BK: tl.constexpr, GATHER: tl.constexpr):
    """Activations ``[BM, BK]`` (input dtype) for segment columns ``[k0, k0 + BK)``."""
    cols = k0 + tl.arange(0, BK)
    mk = cols < ks
    if GATHER:
        idx = tl.load(perm_ptr + c0 + cols, mask=mk, other=0)
    else:
        idx = c0 + cols
    ptrs = x_ptr + offs_m[:, None] * stride_xm + idx[None, :]
    return tl.load(ptrs, mask=mask_m[:, None] & mk[None, :], other=0.0)


@triton.jit
def group_params(sc_ptr, zr_ptr, k0, gs, ns, offs_n, mask_n):
    """float32 ``(scale [BN], zero [BN])`` of the group holding segment column ``k0``."""
    g = k0 // gs
    s = tl.load(sc_ptr + g * ns + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    z = tl.load(zr_ptr + g * ns + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def elem_group_params(sc_ptr, zr_ptr, k0, ks, gs, ns, offs_n, mask_n, W: tl.constexpr, BK: tl.constexpr):
    """Per-element float32 ``(scale, zero)`` ``[KW, E, BN]`` (groups not aligned with tiles)."""
    E: tl.constexpr = 32 // W
    KW: tl.constexpr = BK // E
    cols = k0 + tl.arange(0, KW)[:, None] * E + tl.arange(0, E)[None, :]
    g = cols // gs
    ptrs = g[:, :, None] * ns + offs_n[None, None, :]
    m = (cols < ks)[:, :, None] & mask_n[None, None, :]
    s = tl.load(sc_ptr + ptrs, mask=m, other=0.0).to(tl.float32)
    z = tl.load(zr_ptr + ptrs, mask=m, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def store_rows(y, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC: tl.constexpr, HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr,
               cnt_ptr, split_k, FUSED: tl.constexpr):
    """Write the float32 tile ``y [BM, BN]`` of storage rows ``r0 + offs_n``.

    ATOMIC: add into the float32 workspace (storage row order). Then either ``finalize_kernel``
    converts it (a separate launch), or, FUSED, the program that finishes this output tile last
    does: every program adds its part, then bumps the tile's counter ``cnt[program_id(0)]``
    (one atomic per program, after a CTA barrier, acquire-release at GPU scope); the one that
    sees ``split_k - 1`` reads the sums (from L2), re-zeroes them and the counter and writes
    ``out``.
    Else: ``out[m, row_perm[r]] = y + bias[row_perm[r]]`` in ``out``'s dtype.
    """
    rows = r0 + offs_n
    mask = mask_m[:, None] & mask_n[None, :]
    if ATOMIC:
        ptrs = acc_ptr + offs_m[:, None] * stride_am + rows[None, :]
        tl.atomic_add(ptrs, y, mask=mask, sem="relaxed")
        if FUSED:
            tl.debug_barrier()  # every thread's part is issued before the counter moves
            done = tl.atomic_add(cnt_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
            if done == split_k - 1:
                # the sums live in L2 (atomics): read them past L1, then zero them once every
                # thread has its values (the barrier orders the CTA's loads before its stores)
                tot = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
                tl.debug_barrier()
                tl.store(ptrs, tl.zeros_like(tot), mask=mask)
                tl.store(cnt_ptr + tl.program_id(0), 0)
                _write_out(tot, out_ptr, stride_om, rowperm_ptr, bias_ptr, rows, offs_m, mask_n, mask, HAS_ROWPERM,
                           HAS_BIAS)
    else:
        _write_out(y, out_ptr, stride_om, rowperm_ptr, bias_ptr, rows, offs_m, mask_n, mask, HAS_ROWPERM, HAS_BIAS)


@triton.jit
def _write_out(y, out_ptr, stride_om, rowperm_ptr, bias_ptr, rows, offs_m, mask_n, mask, HAS_ROWPERM: tl.constexpr,
               HAS_BIAS: tl.constexpr):
    """``out[m, row_perm[r]] = y + bias[row_perm[r]]`` in ``out``'s dtype."""
    if HAS_ROWPERM:
        dst = tl.load(rowperm_ptr + rows, mask=mask_n, other=0)
    else:
        dst = rows
    if HAS_BIAS:
        y += tl.load(bias_ptr + dst, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + dst[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
