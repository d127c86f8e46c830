"""Stream-K large-``M`` path (``KernelConfig("wgs", producers=P, stream_k=C)``): the warp-specialised ``wgs``
kernel (``_wgsw``) run by ``C`` persistent programs (the SM count) that share the layer's work evenly, so no
wave of tiles runs part-empty (layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90; Gluon).

Why: ``wgsw_kernel`` gives each program one ``256 x 128`` output tile, so 28672 x 8192 at 256 tokens (224
tiles on 132 SMs) runs two waves, the second 70% full: Nsight Compute (H200, run 86) counted 83% of the
elapsed SM cycles active, the tensor pipe 75% busy while active (cuBLAS FP16: 78%).

Work: the ``T`` tiles' K tiles in one line, ``S = T * KT`` steps (tile ``t``'s K tile ``k`` is step ``t KT + k``;
row tiles of one token tile adjacent, :func:`tile_of`). Program ``c`` takes steps
``[c S / C, (c + 1) S / C)``, i.e. a *unit* (a K range of one tile) per tile it touches, and runs its units
**from its last tile to its first**. A unit that holds its tile's last K tile *finishes* the tile: it adds
the other units' sums and writes ``out``. Every other unit holds a tile's start or middle and is its program's
first unit in that order, so each program leaves at most one partial: it stores its float32 sums into its own
workspace slot (``part[c]``, ``[BT, BN]``) and sets its flag (one release atomic at GPU scope after a barrier
of the MMA warps). The finisher of a tile is the program of higher index, and reaches the tile last in its
own order; it waits on the flags of the lower-indexed programs that hold the rest of the tile (spinning on an
acquire atomic), adds their slots (read from L2) and clears their flags. Waiting only on lower-indexed
programs, which were launched no later and started the awaited unit first, cannot deadlock.

Both partitions walk the same units in the same order (``_wgsw._mma_range`` / ``_wgsw._dq_tiles`` over a K
range), so ring slots and mbarrier phases still follow from one running tile counter on each side; the MMA
partition writes each unit's result itself (registers: the ``[BT, BN]`` sums plus one peer slot being added).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from slimq.kernels.triton._wgs import _acc_layout, _cta_barrier
from slimq.kernels.triton._wgsw import _dq_tiles, _mma_range, _store_out, rings

__all__ = ["wgsk_kernel", "put_partial", "add_partials", "tile_of"]


@gluon.jit
def _share(c, NP, S):
    """Program ``c``'s steps ``[lo, hi)`` of ``S``, shared among ``NP`` programs."""
    return c * S // NP, (c + 1) * S // NP


@gluon.jit
def _units(S, KT):
    """This program's share ``[lo, hi)`` of the ``S`` steps and the last tile it touches ``t_hi``; it has ``n``
    units (one per tile touched), walked from ``t_hi`` down (:func:`_unit`)."""
    lo, hi = _share(gl.program_id(0), gl.num_programs(0), S)
    t_hi = (hi - 1) // KT
    return lo, hi, t_hi, t_hi - lo // KT + 1


@gluon.jit
def _unit(u, lo, hi, t_hi, KT):
    """Unit ``u`` of the program (from :func:`_units`): tile ``t`` and its K tiles ``[kb, ke)``."""
    t = t_hi - u
    return t, gl.maximum(lo, t * KT) - t * KT, gl.minimum(hi, (t + 1) * KT) - t * KT


@gluon.jit
def tile_of(t, n_r):
    """Tile ``t``'s token tile and row tile (``n_r`` row tiles): row tiles run fastest. With ``P`` programs and
    ``n_t`` token tiles, programs ``p`` and ``p + P / n_t`` start ``S / n_t`` steps apart, on the same row and K
    tile of the next token tile, so they read the same weights at the same time (token tiles fastest, each
    program took one row tile's token tiles in turn: stream-K ``wgr`` read 2.4x the DRAM bytes of one program per
    tile on 28672 x 8192 at 1024 tokens, session 16)."""
    return t // n_r, t % n_r


@gluon.jit
def _owner(step, NP, S):
    """The program whose share holds ``step``: the largest ``c`` with ``c S // NP <= step``."""
    return ((step + 1) * NP - 1) // S


@gluon.jit
def _gdc_wait():
    """``griddepcontrol.wait``: with programmatic dependent launch, wait until the launch before this one (the
    activation gather) has finished and its writes are visible."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def put_partial(acc, part_ptr, flag_ptr, offs, SLOT: gl.constexpr):
    """This program's partial sums ``acc`` into its slot (``SLOT`` float32, ``offs`` in ``acc``'s layout), then its
    flag set (module doc)."""
    c = gl.program_id(0)
    gl.store(part_ptr + c * SLOT + offs, acc)
    _cta_barrier()  # every MMA warp's sums are stored before the flag moves
    gl.atomic_xchg(flag_ptr + c, 1, sem="release", scope="gpu")


@gluon.jit
def add_partials(acc, t, KT, S, part_ptr, flag_ptr, offs, SLOT: gl.constexpr):
    """``acc`` plus the partials of tile ``t`` that the lower-indexed programs hold, each awaited on its flag,
    which is then cleared (module doc)."""
    c = gl.program_id(0)
    for j in range(_owner(t * KT, gl.num_programs(0), S), c):  # the lower-indexed holders of the rest of the tile
        while gl.atomic_add(flag_ptr + j, 0, sem="acquire", scope="gpu") == 0:
            pass
        acc += gl.load(part_ptr + j * SLOT + offs, cache_modifier=".cg")
        _cta_barrier()  # every thread has read the slot before its flag is cleared
        gl.store(flag_ptr + j, 0)
    return acc


@gluon.jit
def _sk_mma_partition(xdesc, M, out_ptr, stride_om, part_ptr, flag_ptr, rowperm_ptr, bias_ptr, r0, ns, S, KT, n_r,
                      x_bars, w_ready, w_empty, w_smem, x_smem, BT: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                      XAHEAD: gl.constexpr, WS: gl.constexpr, HAS_ROWPERM: gl.constexpr, HAS_BIAS: gl.constexpr,
                      PDL: gl.constexpr, num_warps: gl.constexpr):
    """The default partition: this program's units, last tile first (module doc), each multiplied, then stored
    as a partial, or finished (peers' partials added) and written to ``out``. ``PDL``: the launch may have
    started during the gather; wait for it before the first activation load (the producers need not)."""
    if PDL:
        _gdc_wait()
    lo, hi, t_hi, n_units = _units(S, KT)
    LACC: gl.constexpr = _acc_layout(BT, BN, num_warps)
    rows_l = gl.arange(0, BN, layout=gl.SliceLayout(0, LACC))
    toks_l = gl.arange(0, BT, layout=gl.SliceLayout(1, LACC))
    offs = toks_l[:, None] * BN + rows_l[None, :]  # a slot's [BT, BN] float32 sums, in this layout's order
    it = gl.to_tensor(0)
    for u in range(0, n_units):
        t, kb, ke = _unit(u, lo, hi, t_hi, KT)
        pid_t, pid_r = tile_of(t, n_r)
        acc, it = _mma_range(xdesc, kb, ke, it, pid_t * BT, x_bars, w_ready, w_empty, w_smem, x_smem, BT, BN, BK,
                             XAHEAD, WS, num_warps)
        if ke < KT:  # the tile's start or middle: a partial for the program that finishes it
            put_partial(acc, part_ptr, flag_ptr, offs, BT * BN)
        else:
            acc = add_partials(acc, t, KT, S, part_ptr, flag_ptr, offs, BT * BN)
            rows = pid_r * BN + rows_l
            toks = pid_t * BT + toks_l
            mask = (toks < M)[:, None] & (rows < ns)[None, :]
            _store_out(acc, out_ptr, stride_om, rowperm_ptr, bias_ptr, r0, rows, toks, ns, mask, HAS_ROWPERM,
                       HAS_BIAS)
    return (it, )  # warp_specialize takes a tuple of results


@gluon.jit
def _sk_dq_partition(segs, ns, S, KT, n_r, w_ready, w_empty, w_smem, SEG_BITS: gl.constexpr, NSEG: gl.constexpr,
                     GS: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, DT: gl.constexpr, WS: gl.constexpr,
                     H2: gl.constexpr, AHEAD: gl.constexpr, P: gl.constexpr):
    """The producer partition: the same units in the same order, each one's K range dequantized into the ring."""
    lo, hi, t_hi, n_units = _units(S, KT)
    it = gl.to_tensor(0)
    for u in range(0, n_units):
        t, kb, ke = _unit(u, lo, hi, t_hi, KT)
        it = _dq_tiles(it, segs, kb, ke, tile_of(t, n_r)[1], ns, w_ready, w_empty, w_smem, SEG_BITS, NSEG, GS, BN, BK, DT, WS,
                       H2, AHEAD, P)


@gluon.jit
def wgsk_kernel(xd, M, out_ptr, stride_om, part_ptr, flag_ptr, rowperm_ptr, bias_ptr, r0, ns, segs,
                SEG_BITS: gl.constexpr, NSEG: gl.constexpr, GS: gl.constexpr, BT: gl.constexpr, BN: gl.constexpr,
                BK: gl.constexpr, XAHEAD: gl.constexpr, HAS_ROWPERM: gl.constexpr, HAS_BIAS: gl.constexpr,
                P: gl.constexpr, PREGS: gl.constexpr, WS: gl.constexpr, H2: gl.constexpr, AHEAD: gl.constexpr,
                PDL: gl.constexpr = False, num_warps: gl.constexpr = 8):
    """``out[t, row_perm[r0 + n]] = sum_k x[t, col_perm[k]] W[r0 + n, k] (+ bias)`` for one band, as
    ``_wgsw.wgsw_kernel`` (same arguments but the workspace), by persistent programs sharing the band's
    ``cdiv(ns, BN) * cdiv(M, BT)`` tiles' K tiles evenly (module doc). ``part_ptr``: float32, ``BT * BN`` per
    program; ``flag_ptr``: int32 per program, zeros (left zeroed). Grid: at most the SM count and at most the
    number of steps. ``PDL``: launched with ``launch_pdl`` after the gather (the MMA warps wait for it)."""
    DT: gl.constexpr = xd.dtype
    n_r = gl.cdiv(ns, BN)
    KT = gl.cdiv(segs[NSEG - 1][0] + segs[NSEG - 1][1], BK)  # K tiles of the layer
    S = n_r * gl.cdiv(M, BT) * KT
    w_smem, x_smem, x_bars, w_ready, w_empty = rings(xd, BT, BN, BK, XAHEAD, WS)
    gl.warp_specialize([
        (_sk_mma_partition, (xd, M, out_ptr, stride_om, part_ptr, flag_ptr, rowperm_ptr, bias_ptr, r0, ns, S, KT, n_r,
                             x_bars, w_ready, w_empty, w_smem, x_smem, BT, BN, BK, XAHEAD, WS, HAS_ROWPERM, HAS_BIAS,
                             PDL, num_warps)),
        (_sk_dq_partition, (segs, ns, S, KT, n_r, w_ready, w_empty, w_smem, SEG_BITS, NSEG, GS, BN, BK, DT, WS, H2,
                            AHEAD, P)),
    ], [P], [PREGS])
