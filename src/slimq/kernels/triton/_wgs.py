"""Large-``M`` path ``"wgs"``: weights dequantized into shared memory, tensor-core ``wgmma`` with both
operands in shared memory, software-pipelined (layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90).

Written in Gluon (``triton.experimental.gluon``: Triton with explicit layouts, shared memory, TMA and
``wgmma`` control), because plain Triton does not express this schedule: the ``wg`` path (weights as
the *register* operand of ``tl.dot``) waits for every ``wgmma`` before the registers holding its
operand are reused, and dequantize-then-cuBLAS writes and re-reads a float16 copy of the layer. One
CTA computes ``y[t0:t0+BT, n0:n0+BN]`` and walks the band's segments in ``BK``-column tiles; per tile:

1. every thread dequantizes its own output row of the ``[BN, BK]`` weight tile (:func:`_dequant`; the
   words, scales and zeros were loaded into registers two tiles earlier) and stores it into ring slot
   ``i % WSLOTS`` of shared memory (NVMMA-swizzled);
2. it issues the global loads of tile ``i + 2``'s weights, fences the generic-proxy stores for the
   async proxy and meets the other warps at a CTA barrier;
3. one thread starts the TMA of activation tile ``i + XAHEAD`` (ring of ``XAHEAD + 2`` slots, one
   mbarrier each) and all wait for tile ``i``'s;
4. ``acc += X_tile @ W_tile^T`` is issued asynchronously and the warps wait only for the *previous*
   ``wgmma`` (``warpgroup_mma_wait(1)``), so the tensor cores run tile ``i`` while the warps dequantize
   tile ``i + 1``. Slot reuse is safe with one barrier per tile: a slot is rewritten two or more tiles
   after the ``wgmma`` that read it, and every warp passed that tile's wait before the barrier.

Two details matter to ptxas. The first tile is peeled off the loop (:func:`_segment`): with a runtime
trip count the zero-trip path reaches the last ``wgmma`` wait with accumulator registers written by
plain moves, and ptxas then serializes every ``wgmma`` (info C7515; Triton's own ``tl.dot`` loops get
it too). And the loop runs two tiles per trip, so the weights loaded two tiles ahead stay in the
registers they were loaded into instead of being copied from set to set (no time change measured).

Dequantization (:func:`_plane_part`) takes each code in place: ``(half_word & mask) | 0x4B000000``
read as float32 is ``2**23 + q * 2**b`` exactly (``b`` the code's bit position in its 16-bit half),
one FADD leaves ``q * 2**b``, one FFMA with ``scale * coef * 2**-b`` and ``-zero * scale`` gives the
weight (float32, one rounding, then the activation dtype). Activations are ``x[:, col_perm]`` from
``gather_kernel``, read by TMA through one descriptor per segment whose shape ends at the segment's
last column, so TMA fills the columns past a segment with zeros and no weight needs a mask.

Measured on an H200 (benchmarks/KERNEL_NOTES.md, session 7): 256 tokens x 128 rows with 8 warps runs
28672 x 8192 at 256 tokens in 263 us (2-bit; cuBLAS FP16 198 us, dequantize-then-cuBLAS 341 us); the
warps issue ~255 instructions per tile and stall on latency (2 warps per scheduler), so it loses to
dequantize-then-cuBLAS on smaller layers and at 1024 tokens (``ops.wgs_config`` dispatches it only
where it won).

Needs: float16/bfloat16 activations, ``BK`` dividing the group size, ``K`` a multiple of 8 (16-byte TMA
rows), at most ``_plan.WGS_MAX_SEGMENTS`` segments per band. ``ops.wgs_supported`` checks them.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)

from slimq.kernels.triton._tiles import plane_coef, plane_width

# Gluon names that changed after Triton 3.6 (the version measured): the TMA load (async_copy_global_to_shared ->
# async_load) and the CTA barrier (thread_barrier -> barrier)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

__all__ = ["wgs_kernel", "WSLOTS", "smem_layout"]

WSLOTS = gl.constexpr(3)  # dequantized-weight ring slots (module doc: why three)
# XAHEAD (kernel constexpr, KernelConfig.num_stages): activation tiles in flight ahead of the one multiplied
# (TMA); the activation ring has XAHEAD + 2 slots (a slot is rewritten two tiles after its wgmma)


@triton.constexpr_function
def _w_layout(bits, bk, bn, num_warps):
    """Register layout of a ``[BN, KW, E]`` code tile of plane 0 (``E`` codes per word, ``KW`` words per
    row): a thread owns one output row and whole words along K; warps tile the rows, then the words."""
    e = 32 // plane_width(bits, 0)
    kw = bk // e
    wn = min(num_warps, bn // 32)
    wk = num_warps // wn
    if bn % 32 or wn * 32 > bn or kw % wk:
        raise ValueError(f"wgs: BN={bn}, BK={bk}, {num_warps} warps cannot tile {bits}-bit words")
    return gl.BlockedLayout([1, kw // wk, e], [32, 1, 1], [wn, wk, 1], [2, 1, 0])


@triton.constexpr_function
def _acc_layout(bt, bn, num_warps):
    """``wgmma`` accumulator layout for ``[BT, BN]``: warps along the tokens (16 rows each, ``BT >= 16 *
    num_warps``), one instruction as wide as the tile (``BN <= 256``)."""
    if bt < 16 * num_warps or bn > 256 or bn % 8:
        raise ValueError(f"wgs: a [{bt}, {bn}] accumulator does not fit {num_warps} warps")
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, bn, 16])


@triton.constexpr_function
def smem_layout(bk, bitwidth):
    """NVMMA shared layout of a ``[rows, BK]`` operand tile (128-byte swizzle at ``BK = 64``, 16 bits); the host
    builds the activations' TMA descriptors with it too (``_plan.wgs_launches``)."""
    return gl.NVMMASharedLayout(swizzle_byte_width=min(128, bk * bitwidth // 8), element_bitwidth=bitwidth, rank=2)


@gluon.jit
def _lop3(src, mask, magic):
    """``(src & mask) | magic`` in one LOP3 (ptxas does not fuse two immediates into one)."""
    return gl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r", [src, mask, magic],
                                     dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _plane_words(plane, k0, ks, offs_n, mask_n, ns, P: gl.constexpr, BITS: gl.constexpr, BK: gl.constexpr,
                 L3: gl.constexpr):
    """int32 ``[BN, KW0]``: for word column ``r`` of plane 0, the plane-``P`` word holding the same codes
    (plane ``P`` packs ``E_P / E_0`` times more codes per word: neighbouring ``r`` repeat a word)."""
    L2: gl.constexpr = gl.SliceLayout(2, L3)
    E0: gl.constexpr = 32 // plane_width(BITS, 0)
    EP: gl.constexpr = 32 // plane_width(BITS, P)
    KW0: gl.constexpr = BK // E0
    r = gl.arange(0, KW0, layout=gl.SliceLayout(0, L2))
    wrow = k0 // EP + r // (EP // E0)
    ptrs = plane + wrow[None, :] * ns + offs_n[:, None]
    ok = mask_n[:, None] & (wrow < (ks + EP - 1) // EP)[None, :]
    return gl.load(ptrs, mask=ok, other=0)


@gluon.jit
def _w_loads(seg, k0, lim, offs_n, mask_n, ns, GS: gl.constexpr, BITS: gl.constexpr, BK: gl.constexpr,
             L3: gl.constexpr):
    """The weight side of one tile from global memory: plane words (up to three planes) and the group's
    scale and zero per row. ``lim``: the segment's column count, or 0 to load nothing (look-ahead past
    the last tile)."""
    w0 = _plane_words(seg[4], k0, lim, offs_n, mask_n, ns, 0, BITS, BK, L3)
    w1 = w0
    w2 = w0
    if plane_width(BITS, 1) > 0:
        w1 = _plane_words(seg[5], k0, lim, offs_n, mask_n, ns, 1, BITS, BK, L3)
    if plane_width(BITS, 2) > 0:
        w2 = _plane_words(seg[6], k0, lim, offs_n, mask_n, ns, 2, BITS, BK, L3)
    g = k0 // GS
    mg = mask_n & (k0 < lim)
    s = gl.load(seg[2] + g * ns + offs_n, mask=mg, other=0.0)
    z = gl.load(seg[3] + g * ns + offs_n, mask=mg, other=0.0)
    return w0, w1, w2, s, z


@gluon.jit
def _x_issue(xdesc, c0, t0, k0, bars, x_smem, j, pred, BT: gl.constexpr, BK: gl.constexpr, XAHEAD: gl.constexpr):
    """TMA of the activation tile ``x[t0:t0+BT, c0+k0:c0+k0+BK]`` into ring slot ``j % (XAHEAD + 2)``, arriving
    on its barrier (only if ``pred``). The descriptor's shape ends at the segment's last column and at
    ``M``: TMA fills what lies beyond with zeros, so a partial tile needs no weight mask."""
    slot = j % (XAHEAD + 2)
    bar = bars.index(slot)
    mbarrier.expect(bar, BT * BK * xdesc.dtype.primitive_bitwidth // 8, pred=pred)
    _tma_load(xdesc, [t0, c0 + k0], bar, x_smem.index(slot), pred=pred)


@gluon.jit
def _plane_part(words, s3, P: gl.constexpr, BITS: gl.constexpr, BK: gl.constexpr, L3: gl.constexpr):
    """float32 ``[BN, KW0, E0]``: ``q_P * coef_P * scale`` for every code of plane ``P``, ``words`` from
    :func:`_plane_words` and ``s3 = scale[:, None, None]``."""
    W: gl.constexpr = plane_width(BITS, P)
    E0: gl.constexpr = 32 // plane_width(BITS, 0)
    EP: gl.constexpr = 32 // W
    KW0: gl.constexpr = BK // E0
    r = gl.arange(0, KW0, layout=gl.SliceLayout(1, gl.SliceLayout(0, L3)))
    e = gl.arange(0, E0, layout=gl.SliceLayout(0, gl.SliceLayout(0, L3)))
    slot = (r[:, None] % (EP // E0)) * E0 + e[None, :]  # code slot inside the plane-P word, [KW0, E0]
    bit = slot * W  # bit position in the word
    pos = bit % 16  # ... inside its 16-bit half
    hi = gl.expand_dims(bit >= 16, 0)
    w3 = gl.expand_dims(words, 2)
    src = gl.where(hi, w3 >> 16, w3)
    mask = gl.expand_dims(((1 << W) - 1) << pos, 0)
    magic = gl.full(mask.shape, 0x4B000000, gl.int32, layout=mask.type.layout)  # float32 2**23: ulp 1
    src, mask = gl.broadcast(src, mask)
    src, magic = gl.broadcast(src, magic)
    f = _lop3(src, mask, magic).to(gl.float32, bitcast=True)
    f = f - 8388608.0  # the masked bits as an integer: q * 2**pos, exact
    scale = s3 * gl.expand_dims(gl.exp2(-pos.to(gl.float32)), 0) * plane_coef(BITS, P)
    return f * scale


@gluon.jit
def _dequant(w0, w1, w2, s, z, BITS: gl.constexpr, BK: gl.constexpr, L3: gl.constexpr, DT: gl.constexpr):
    """The ``[BN, BK]`` weight tile ``(q - zero) * scale`` in the activation dtype ``DT``."""
    s3 = gl.expand_dims(gl.expand_dims(s.to(gl.float32), 1), 2)
    c3 = -gl.expand_dims(gl.expand_dims(z.to(gl.float32), 1), 2) * s3
    v = _plane_part(w0, s3, 0, BITS, BK, L3) + c3
    if plane_width(BITS, 1) > 0:
        v += _plane_part(w1, s3, 1, BITS, BK, L3)
    if plane_width(BITS, 2) > 0:
        v += _plane_part(w2, s3, 2, BITS, BK, L3)
    return gl.reshape(v, [v.shape[0], BK]).to(DT)


@gluon.jit
def _step(acc, it, t, n_tiles, w0, w1, w2, s, z, v0, v1, v2, vs, vz, seg, xdesc, t0, ks, offs_n, mask_n, ns, bars,
          w_smem, x_smem, GS: gl.constexpr, BITS: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
          DT: gl.constexpr, L3: gl.constexpr, XAHEAD: gl.constexpr):
    """One pipelined K tile ``t`` (global tile number ``it``; module doc, steps 2-4): dequantize its
    weights (``w*, s, z``, loaded two tiles ago) into ring slot ``it % WSLOTS``, load the weights of tile
    ``t + 2``, start the activation TMA of tile ``t + XAHEAD``, wait for this tile's activations,
    multiply asynchronously and wait for the previous ``wgmma``. Returns the new state."""
    w_smem.index(it % WSLOTS).store(_dequant(w0, w1, w2, s, z, BITS, BK, L3, DT))
    lim = gl.where(t + 2 < n_tiles, ks, 0)
    n0, n1, n2, ns_, nz = _w_loads(seg, (t + 2) * BK, lim, offs_n, mask_n, ns, GS, BITS, BK, L3)
    fence_async_shared()
    _cta_barrier()  # every warp's weights are stored and every warp is past the previous wgmma wait
    _x_issue(xdesc, seg[0], t0, (t + XAHEAD) * BK, bars, x_smem, it + XAHEAD, t + XAHEAD < n_tiles, BT, BK, XAHEAD)
    xs = it % (XAHEAD + 2)
    mbarrier.wait(bars.index(xs), (it // (XAHEAD + 2)) & 1)
    acc = warpgroup_mma(x_smem.index(xs), w_smem.index(it % WSLOTS).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
    return acc, it + 1, v0, v1, v2, vs, vz, n0, n1, n2, ns_, nz


@gluon.jit
def _segment(acc, it, seg, xdesc, t0, pid_n, ns, bars, w_smem, x_smem, GS: gl.constexpr, BITS: gl.constexpr,
             BT: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, XAHEAD: gl.constexpr,
             num_warps: gl.constexpr):
    """``acc`` plus this CTA's tile of one segment, pipelined as in the module doc; ``it`` counts the
    tiles so far (ring slots and barrier phases carry on from segment to segment).

    The first tile is peeled off the loop: with a runtime trip count, the loop's zero-trip path would
    reach the final ``wgmma`` wait with accumulator registers written by plain moves, and ptxas then
    serializes every ``wgmma`` of the kernel (info C7515; Triton's own ``tl.dot`` loops have it too).
    After the peeled tile, every path defines the accumulator by a ``wgmma``."""
    L3: gl.constexpr = _w_layout(BITS, BK, BN, num_warps)
    offs_n = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    mask_n = offs_n < ns
    ks = seg[1]
    n_tiles = gl.cdiv(ks, BK)
    for j in gl.static_range(XAHEAD):
        _x_issue(xdesc, seg[0], t0, j * BK, bars, x_smem, it + j, j < n_tiles, BT, BK, XAHEAD)
    w0, w1, w2, s, z = _w_loads(seg, 0, ks, offs_n, mask_n, ns, GS, BITS, BK, L3)
    v0, v1, v2, vs, vz = _w_loads(seg, BK, gl.where(1 < n_tiles, ks, 0), offs_n, mask_n, ns, GS, BITS, BK, L3)
    acc, it, w0, w1, w2, s, z, v0, v1, v2, vs, vz = _step(
        acc, it, 0, n_tiles, w0, w1, w2, s, z, v0, v1, v2, vs, vz, seg, xdesc, t0, ks, offs_n, mask_n, ns, bars,
        w_smem, x_smem, GS, BITS, BT, BK, DT, L3, XAHEAD)
    # two tiles per trip: the weights loaded two tiles ahead then stay in the registers they were loaded
    # into (one trip per tile would copy them from set to set, waiting for the loads a tile early)
    for t in range(1, n_tiles - 1, 2):
        acc, it, w0, w1, w2, s, z, v0, v1, v2, vs, vz = _step(
            acc, it, t, n_tiles, w0, w1, w2, s, z, v0, v1, v2, vs, vz, seg, xdesc, t0, ks, offs_n, mask_n, ns, bars,
            w_smem, x_smem, GS, BITS, BT, BK, DT, L3, XAHEAD)
        acc, it, w0, w1, w2, s, z, v0, v1, v2, vs, vz = _step(
            acc, it, t + 1, n_tiles, w0, w1, w2, s, z, v0, v1, v2, vs, vz, seg, xdesc, t0, ks, offs_n, mask_n, ns,
            bars, w_smem, x_smem, GS, BITS, BT, BK, DT, L3, XAHEAD)
    if n_tiles % 2 == 0:
        acc, it, w0, w1, w2, s, z, v0, v1, v2, vs, vz = _step(
            acc, it, n_tiles - 1, n_tiles, w0, w1, w2, s, z, v0, v1, v2, vs, vz, seg, xdesc, t0, ks, offs_n, mask_n,
            ns, bars, w_smem, x_smem, GS, BITS, BT, BK, DT, L3, XAHEAD)
    return acc, it


@gluon.jit
def wgs_kernel(xd0, xd1, xd2, xd3, xd4, xd5, xd6, xd7, M, out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, ns, segs,
               SEG_BITS: gl.constexpr, NSEG: gl.constexpr, GS: gl.constexpr, BT: gl.constexpr, BN: gl.constexpr,
               BK: gl.constexpr, XAHEAD: gl.constexpr, HAS_ROWPERM: gl.constexpr, HAS_BIAS: gl.constexpr,
               num_warps: gl.constexpr):
    """``out[t, row_perm[r0 + n]] = sum_k x[t, col_perm[k]] W[r0 + n, k] (+ bias)`` for one band (rows
    ``[r0, r0 + ns)``, segments ``segs``); ``xd0..xd7``: per segment (up to ``_plan.WGS_MAX_SEGMENTS``; the rest
    repeat the first) a TMA descriptor of ``x[:, col_perm]`` ``[M, c0 + ks]`` with ``[BT, BK]`` boxes
    (separate arguments: Triton 3.6's launcher cannot take descriptors inside a tuple). Grid: ``cdiv(ns, BN) *
    cdiv(M, BT)`` programs, token tiles of one row tile adjacent (they share its weight words in L2)."""
    xdescs = (xd0, xd1, xd2, xd3, xd4, xd5, xd6, xd7)
    DT: gl.constexpr = xd0.dtype
    n_t = gl.cdiv(M, BT)
    pid = gl.program_id(0)
    pid_t = pid % n_t
    pid_n = pid // n_t
    LACC: gl.constexpr = _acc_layout(BT, BN, num_warps)
    w_smem = gl.allocate_shared_memory(DT, [WSLOTS, BN, BK], smem_layout(BK, DT.primitive_bitwidth))
    x_smem = gl.allocate_shared_memory(DT, [XAHEAD + 2, BT, BK], xd0.layout)
    bars = gl.allocate_shared_memory(gl.int64, [XAHEAD + 2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(XAHEAD + 2):
        mbarrier.init(bars.index(i), count=1)
    acc = gl.zeros([BT, BN], gl.float32, layout=LACC)
    it = 0
    for si in gl.static_range(NSEG):
        acc, it = _segment(acc, it, segs[si], xdescs[si], pid_t * BT, pid_n, ns, bars, w_smem, x_smem, GS,
                           SEG_BITS[si], BT, BN, BK, DT, XAHEAD, num_warps)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    rows = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, LACC))
    toks = pid_t * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, LACC))
    mask_r = rows < ns
    if HAS_ROWPERM:
        dst = gl.load(rowperm_ptr + r0 + rows, mask=mask_r, other=0)
    else:
        dst = r0 + rows
    y = acc
    if HAS_BIAS:
        y = y + gl.load(bias_ptr + dst, mask=mask_r, other=0.0).to(gl.float32)[None, :]
    gl.store(out_ptr + toks[:, None] * stride_om + dst[None, :], y.to(out_ptr.dtype.element_ty),
             mask=(toks < M)[:, None] & mask_r[None, :])
