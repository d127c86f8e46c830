"""Warp-specialised large-``M`` path (``KernelConfig("wgs", producers=P)``): ``wgs`` with its two jobs
split between warps (layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90; Gluon).

``wgs`` (``_wgs``) lets every warp dequantize, stage, synchronize and issue the ``wgmma``; measured on
the H200 its 8 warps (2 per scheduler, 195 registers) issue ~255 instructions per K tile at 6.2 cycles
each, about 1.6x the tile's MMA time. Here one CTA runs two partitions (``gl.warp_specialize``):

* the **MMA partition** (the kernel's 8 warps, the default partition): per K tile it starts the
  activation TMA ``XAHEAD`` tiles ahead, waits for the tile's activations (TMA mbarrier) and weights
  (``w_ready``), issues ``warpgroup_mma`` asynchronously, waits for the previous one, meets its own warps
  at a partition barrier and hands the previous tile's weight slot back (``w_empty``);
* the **producer partition** (``P`` warps, ``PREGS`` registers each via ``setmaxnreg``): per tile it
  dequantizes the ``[BN, BK]`` weights (words loaded ``AHEAD`` tiles earlier), waits for a free slot of
  the ``WS``-slot ring, stores, fences for the async proxy, meets its own warps and signals ``w_ready``.
  With float16 activations it dequantizes in half2 (``_dq16``: ~3 instructions per weight pair, the
  activations gathered in the matching pair order), else in float32 (``_wgs._dequant``).

Both walk the CTA's K tiles ``[kb, ke)`` in order (the producer segment by segment, the MMA side through
one TMA descriptor of the whole gathered ``[M, K]``: segments are contiguous and only the last may end
inside a tile), so ring slots and mbarrier phases follow from one running tile counter on each side.
Each mbarrier is signalled by one thread after a partition barrier (``count=1``). With ``SPLIT > 1``
(split-K) a CTA takes ``1 / SPLIT`` of the K tiles and adds its float32 sums into the workspace, and a
``finalize_kernel`` launch writes ``out`` (explicit configs only: the dispatch runs stream-K, ``_wgsk``, there).

Registers: the MMA partition's 256x128 float32 accumulator takes 128 per thread of its 8 warps; the
launch's ``maxnreg`` (``_plan.WGSW_REGS``) makes ``maxnreg * (8 + P) * 32`` fit the SM's 64K registers.
Measured on an H200 (benchmarks/KERNEL_NOTES.md, session 8): the tensor pipe ~74% busy at 1024 tokens
(cuBLAS FP16 ~75% on the same shape); 28672 x 8192 at 256 tokens 214-233 us (2-bit), ``wgs`` 263 us.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait,
)

from slimq.kernels.triton._dq16 import dq16_loads, dq16_tile
from slimq.kernels.triton._wgs import (
    _acc_layout, _cta_barrier, _dequant, _w_layout, _w_loads, _x_issue, smem_layout,
)

__all__ = ["wgsw_kernel", "rings"]

_REINTERPRET_PUBLIC = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))


@gluon.jit
def _mma_step(acc, it, i, ke, xdesc, t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT: gl.constexpr,
              BK: gl.constexpr, XAHEAD: gl.constexpr, WS: gl.constexpr, USE_ACC: gl.constexpr):
    """One K tile (global tile ``i``, ``it``-th of this CTA) on the MMA side: TMA of tile ``i + XAHEAD``'s
    activations (that slot's last reader, the CTA's tile ``it + XAHEAD - (XAHEAD + 2)``, finished before
    the previous step's barrier), wait for this tile's activations and weights, multiply asynchronously,
    wait for the previous ``wgmma``, and hand its weight slot back once every MMA warp is past that wait."""
    _x_issue(xdesc, 0, t0, (i + XAHEAD) * BK, x_bars, x_smem, it + XAHEAD, i + XAHEAD < ke, BT, BK, XAHEAD)
    wslot = it % WS
    mbarrier.wait(w_ready.index(wslot), (it // WS) & 1)
    xs = it % (XAHEAD + 2)
    mbarrier.wait(x_bars.index(xs), (it // (XAHEAD + 2)) & 1)
    acc = warpgroup_mma(x_smem.index(xs), w_smem.index(wslot).permute((1, 0)), acc, use_acc=USE_ACC, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
    _cta_barrier()  # (partition barrier) every MMA warp's wgmma of tile it - 1 has completed
    mbarrier.arrive(w_empty.index((it + WS - 1) % WS), pred=it > 0)
    return acc, it + 1


@gluon.jit
def _mma_range(xdesc, kb, ke, it, t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT: gl.constexpr, BN: gl.constexpr,
               BK: gl.constexpr, XAHEAD: gl.constexpr, WS: gl.constexpr, num_warps: gl.constexpr):
    """``x_tile @ W_tile^T`` over K tiles ``[kb, ke)`` (``ke > kb``; tile ``i`` is columns ``[i BK, (i + 1)
    BK)`` of the gathered activations: segments are contiguous and only the last may end inside a tile,
    where TMA fills zeros past ``K``), the CTA's tiles ``it, it + 1, ...``; returns the finished sums and
    the next ``it``. The first tile is peeled off the loop and starts the sums (``use_acc=False``): with a
    runtime trip count, sums reaching the final wait from plain moves make ptxas serialize every
    ``wgmma`` (info C7515, ``_wgs._segment``)."""
    acc = gl.zeros([BT, BN], gl.float32, layout=_acc_layout(BT, BN, num_warps))
    for j in gl.static_range(XAHEAD):
        _x_issue(xdesc, 0, t0, (kb + j) * BK, x_bars, x_smem, it + j, kb + j < ke, BT, BK, XAHEAD)
    acc, it = _mma_step(acc, it, kb, ke, xdesc, t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT, BK, XAHEAD, WS,
                        False)
    for i in range(kb + 1, ke):
        acc, it = _mma_step(acc, it, i, ke, xdesc, t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT, BK, XAHEAD, WS,
                            True)
    return warpgroup_mma_wait(num_outstanding=0, deps=(acc, )), it


@gluon.jit
def _mma_partition(xdesc, kb, ke, t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT: gl.constexpr, BN: gl.constexpr,
                   BK: gl.constexpr, XAHEAD: gl.constexpr, WS: gl.constexpr, num_warps: gl.constexpr):
    """The default partition of a one-tile program: the sums of its K tiles ``[kb, ke)``."""
    acc, _ = _mma_range(xdesc, kb, ke, gl.to_tensor(0), t0, x_bars, w_ready, w_empty, w_smem, x_smem, BT, BN, BK,
                         XAHEAD, WS, num_warps)
    return (acc, )  # warp_specialize takes a tuple of results


@gluon.jit
def _dq_loads(seg, k0, lim, n0, ns, GS: gl.constexpr, BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
              H2: gl.constexpr, P: gl.constexpr):
    """The words, scales and zeros of one tile, in the layout the chosen dequantization wants."""
    if H2:
        return dq16_loads(seg, k0, lim, n0, ns, GS, BITS, BN, BK, P)
    else:
        L3: gl.constexpr = _w_layout(BITS, BK, BN, P)
        offs_n = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
        return _w_loads(seg, k0, lim, offs_n, offs_n < ns, ns, GS, BITS, BK, L3)


@gluon.jit
def _int32_view(tile, BN: gl.constexpr, BK: gl.constexpr):
    """The ``[BN, BK]`` float16 shared tile as ``[BN, BK / 2]`` int32 (same bytes and 128-byte swizzle)."""
    L: gl.constexpr = smem_layout(BK // 2, 32)
    if _REINTERPRET_PUBLIC:  # renamed after Triton 3.6
        return tile.reinterpret(gl.int32, [BN, BK // 2], L)
    else:
        return tile._reinterpret(gl.int32, [BN, BK // 2], L)


@gluon.jit
def _dq_step(it, t, th, w0, w1, w2, s, z, seg, n0, ns, w_ready, w_empty, w_smem, GS: gl.constexpr,
             BITS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, WS: gl.constexpr,
             H2: gl.constexpr, AHEAD: gl.constexpr, P: gl.constexpr):
    """One K tile on the producer side: dequantize tile ``t`` (words loaded ``AHEAD`` tiles ago), wait for
    a free slot, store, signal ``w_ready``; returns the words of tile ``t + AHEAD``."""
    wslot = it % WS
    if H2:
        v = dq16_tile(w0, w1, w2, s, z, BITS, BN, BK, P)
        mbarrier.wait(w_empty.index(wslot), ((it // WS) & 1) ^ 1)  # a fresh barrier passes phase 1 at once
        _int32_view(w_smem.index(wslot), BN, BK).store(v)
    else:
        v = _dequant(w0, w1, w2, s, z, BITS, BK, _w_layout(BITS, BK, BN, P), DT)
        mbarrier.wait(w_empty.index(wslot), ((it // WS) & 1) ^ 1)
        w_smem.index(wslot).store(v)
    fence_async_shared()
    _cta_barrier()  # (partition barrier) every producer warp's rows are stored
    mbarrier.arrive(w_ready.index(wslot))
    lim = gl.where(t + AHEAD < th, seg[1], 0)
    n0_, n1, n2, ns_, nz = _dq_loads(seg, (t + AHEAD) * BK, lim, n0, ns, GS, BITS, BN, BK, H2, P)
    return it + 1, n0_, n1, n2, ns_, nz


@gluon.jit
def _dq_segment(it, seg, tl, th, pid_n, ns, w_ready, w_empty, w_smem, GS: gl.constexpr, BITS: gl.constexpr,
                BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, WS: gl.constexpr, H2: gl.constexpr,
                AHEAD: gl.constexpr, P: gl.constexpr):
    """The segment's tiles ``[tl, th)`` (its own numbering; none if ``th <= tl``). The words are loaded
    ``AHEAD`` (2 or 3) tiles ahead, and the loop runs ``AHEAD`` tiles per trip so each set stays in the
    registers it was loaded into."""
    n0 = pid_n * BN
    ks = seg[1]
    cnt = gl.maximum(th - tl, 0)
    a0, a1, a2, as_, az = _dq_loads(seg, tl * BK, gl.where(0 < cnt, ks, 0), n0, ns, GS, BITS, BN, BK, H2, P)
    b0, b1, b2, bs, bz = _dq_loads(seg, (tl + 1) * BK, gl.where(1 < cnt, ks, 0), n0, ns, GS, BITS, BN, BK, H2, P)
    if AHEAD == 2:
        for t in range(tl, th - 1, 2):
            it, a0, a1, a2, as_, az = _dq_step(it, t, th, a0, a1, a2, as_, az, seg, n0, ns, w_ready, w_empty,
                                               w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
            it, b0, b1, b2, bs, bz = _dq_step(it, t + 1, th, b0, b1, b2, bs, bz, seg, n0, ns, w_ready, w_empty,
                                              w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
        if cnt % 2 == 1:
            it, a0, a1, a2, as_, az = _dq_step(it, th - 1, th, a0, a1, a2, as_, az, seg, n0, ns, w_ready, w_empty,
                                               w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
    else:
        c0, c1, c2, cs, cz = _dq_loads(seg, (tl + 2) * BK, gl.where(2 < cnt, ks, 0), n0, ns, GS, BITS, BN, BK, H2,
                                       P)
        for t in range(tl, th - 2, 3):
            it, a0, a1, a2, as_, az = _dq_step(it, t, th, a0, a1, a2, as_, az, seg, n0, ns, w_ready, w_empty,
                                               w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
            it, b0, b1, b2, bs, bz = _dq_step(it, t + 1, th, b0, b1, b2, bs, bz, seg, n0, ns, w_ready, w_empty,
                                              w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
            it, c0, c1, c2, cs, cz = _dq_step(it, t + 2, th, c0, c1, c2, cs, cz, seg, n0, ns, w_ready, w_empty,
                                              w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
        rem = cnt % 3
        if rem >= 1:
            it, a0, a1, a2, as_, az = _dq_step(it, th - rem, th, a0, a1, a2, as_, az, seg, n0, ns, w_ready,
                                               w_empty, w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
        if rem == 2:
            it, b0, b1, b2, bs, bz = _dq_step(it, th - 1, th, b0, b1, b2, bs, bz, seg, n0, ns, w_ready, w_empty,
                                              w_smem, GS, BITS, BN, BK, DT, WS, H2, AHEAD, P)
    return it


@gluon.jit
def _dq_tiles(it, segs, kb, ke, pid_n, ns, w_ready, w_empty, w_smem, SEG_BITS: gl.constexpr, NSEG: gl.constexpr,
              GS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, WS: gl.constexpr,
              H2: gl.constexpr, AHEAD: gl.constexpr, P: gl.constexpr):
    """K tiles ``[kb, ke)`` of row tile ``pid_n`` dequantized into the weight ring, segment by segment
    (segment ``s`` holds global tiles ``[c0 / BK, c0 / BK + cdiv(ks, BK))``); returns the next ``it``."""
    for si in gl.static_range(NSEG):
        s0 = segs[si][0] // BK
        it = _dq_segment(it, segs[si], gl.maximum(kb - s0, 0), gl.minimum(ke - s0, gl.cdiv(segs[si][1], BK)),
                         pid_n, ns, w_ready, w_empty, w_smem, GS, SEG_BITS[si], BN, BK, DT, WS, H2, AHEAD, P)
    return it


@gluon.jit
def _dq_partition(segs, kb, ke, pid_n, ns, w_ready, w_empty, w_smem, SEG_BITS: gl.constexpr, NSEG: gl.constexpr,
                  GS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, WS: gl.constexpr,
                  H2: gl.constexpr, AHEAD: gl.constexpr, P: gl.constexpr):
    """The producer partition of a one-tile program."""
    _dq_tiles(gl.to_tensor(0), segs, kb, ke, pid_n, ns, w_ready, w_empty, w_smem, SEG_BITS, NSEG, GS, BN, BK, DT, WS,
              H2, AHEAD, P)


@gluon.jit
def rings(xd, BT: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, XAHEAD: gl.constexpr, WS: gl.constexpr):
    """Shared memory of a warp-specialised ``wgs`` CTA: the ``WS``-slot ring of dequantized ``[BN, BK]`` weight
    tiles, the ``XAHEAD + 2``-slot ring of ``[BT, BK]`` activation tiles (TMA through ``xd``), and their
    mbarriers (one per activation slot; ``w_ready`` / ``w_empty`` per weight slot), initialised."""
    DT: gl.constexpr = xd.dtype
    w_smem = gl.allocate_shared_memory(DT, [WS, BN, BK], smem_layout(BK, DT.primitive_bitwidth))
    x_smem = gl.allocate_shared_memory(DT, [XAHEAD + 2, BT, BK], xd.layout)
    x_bars = gl.allocate_shared_memory(gl.int64, [XAHEAD + 2, 1], mbarrier.MBarrierLayout())
    w_ready = gl.allocate_shared_memory(gl.int64, [WS, 1], mbarrier.MBarrierLayout())
    w_empty = gl.allocate_shared_memory(gl.int64, [WS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(XAHEAD + 2):
        mbarrier.init(x_bars.index(i), count=1)
    for i in gl.static_range(WS):
        mbarrier.init(w_ready.index(i), count=1)
        mbarrier.init(w_empty.index(i), count=1)
    return w_smem, x_smem, x_bars, w_ready, w_empty


@gluon.jit
def wgsw_kernel(xd, M, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, ns, segs,
                SEG_BITS: gl.constexpr, NSEG: gl.constexpr, GS: gl.constexpr, BT: gl.constexpr, BN: gl.constexpr,
                BK: gl.constexpr, XAHEAD: gl.constexpr, HAS_ROWPERM: gl.constexpr, HAS_BIAS: gl.constexpr,
                P: gl.constexpr, PREGS: gl.constexpr, WS: gl.constexpr, H2: gl.constexpr, AHEAD: gl.constexpr,
                SPLIT: gl.constexpr, num_warps: gl.constexpr):
    """``out[t, row_perm[r0 + n]] = sum_k x[t, col_perm[k]] W[r0 + n, k] (+ bias)`` for one band (rows
    ``[r0, r0 + ns)``, segments ``segs`` covering ``[0, K)`` in order, every boundary but ``K`` on a
    ``BK`` multiple); ``xd``: TMA descriptor of the gathered ``x[:, col_perm]`` (``[M, K]``, ``[BT, BK]``
    boxes; in ``_dq16``'s pair order with ``H2``). Grid ``cdiv(ns, BN) * SPLIT * cdiv(M, BT)``: with
    ``SPLIT > 1`` each program takes ``1 / SPLIT`` of the K tiles and adds its float32 sums into the
    workspace ``acc_ptr`` (``[M, N]``, row ``r0 + n``) for a ``finalize_kernel`` launch. (Finishing each tile in
    its last program instead, as the ``_tiles.store_rows`` paths do, measured slower on the H200, run 88:
    8192 x 8192 at 256 tokens 83.4 against 77.7 us, the tiles' last programs all reading and re-zeroing their
    sums in the kernel's tail.)"""
    DT: gl.constexpr = xd.dtype
    n_t = gl.cdiv(M, BT)
    pid = gl.program_id(0)
    pid_t = pid % n_t
    pid_s = (pid // n_t) % SPLIT
    pid_n = pid // (n_t * SPLIT)
    kt = gl.cdiv(segs[NSEG - 1][0] + segs[NSEG - 1][1], BK)  # K tiles of the layer
    kb = pid_s * kt // SPLIT
    ke = (pid_s + 1) * kt // SPLIT
    w_smem, x_smem, x_bars, w_ready, w_empty = rings(xd, BT, BN, BK, XAHEAD, WS)
    acc = gl.warp_specialize([
        (_mma_partition, (xd, kb, ke, pid_t * BT, x_bars, w_ready, w_empty, w_smem, x_smem, BT, BN, BK, XAHEAD, WS,
                          num_warps)),
        (_dq_partition, (segs, kb, ke, pid_n, ns, w_ready, w_empty, w_smem, SEG_BITS, NSEG, GS, BN, BK, DT, WS, H2,
                         AHEAD, P)),
    ], [P], [PREGS])[0]
    LACC: gl.constexpr = _acc_layout(BT, BN, num_warps)
    rows = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, LACC))
    toks = pid_t * BT + gl.arange(0, BT, layout=gl.SliceLayout(1, LACC))
    mask = (toks < M)[:, None] & (rows < ns)[None, :]
    if SPLIT > 1:
        gl.atomic_add(acc_ptr + toks[:, None] * stride_am + (r0 + rows)[None, :], acc, mask=mask, sem="relaxed")
    else:
        _store_out(acc, out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, rows, toks, ns, mask, HAS_ROWPERM, HAS_BIAS)


@gluon.jit
def _store_out(y, out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, rows, toks, ns, mask, HAS_ROWPERM: gl.constexpr,
               HAS_BIAS: gl.constexpr):
    """``out[t, row_perm[r0 + n]] = y + bias`` in ``out``'s dtype."""
    if HAS_ROWPERM:
        dst = gl.load(rowperm_ptr + r0 + rows, mask=rows < ns, other=0)
    else:
        dst = r0 + rows
    if HAS_BIAS:
        y = y + gl.load(bias_ptr + dst, mask=rows < ns, other=0.0).to(gl.float32)[None, :]
    gl.store(out_ptr + toks[:, None] * stride_om + dst[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
