"""Stream-K ``wgr`` (``KernelConfig("wgr", producers=1, stream_k=C)``): the register-operand kernel of ``_wgr``
run by ``C`` persistent programs (the SM count) that share the layer's tiles' K tiles evenly, so that no wave of
output tiles runs part-empty and small grids need no K split with a finalize launch (layout
``slimq.segmented-bitplane.v1``; Hopper, sm_90; Gluon).

Why: one ``wgr`` program per ``[128 rows, 256 tokens]`` tile leaves the last wave part-empty where the tiles do
not fill whole waves (28672 x 8192 at 512 tokens: 448 tiles, 3.4 waves on 132 SMs; 11008 x 4096 at 512: 1.3
waves), and small grids take a K split whose float32 sums need a second launch.

Work and protocol as ``_wgsk`` (its module doc; its ``_units``, ``_unit`` and ``_owner``): ``S = T * KT`` steps
(tile ``t``'s K tile ``k`` is step ``t KT + k``, token tiles of one row tile adjacent), program ``c`` takes steps
``[c S / C, (c + 1) S / C)`` as one *unit* per tile it touches, walked from its last tile to its first; a unit
holding its tile's last K tile finishes the tile (adds the lower-indexed programs' partial sums, waiting on their
flags, and writes ``out``), every other unit stores its float32 sums into the program's slot and sets its flag.
The copy warp walks the same units in the same order, so the ring's slots and phases follow one running count
of K tiles on each side (``_wgr._consumer``'s ``it``); the MMA warps release every slot, the last ones of each
unit included (``TAIL``), since the copy warp goes on into the next unit.

Compiled for sm_90 and checked in CI (``tests/test_wgr.py``: no A-register hazard, the copies in the copy warp,
one release per tile); on the H200 its GPU tests pass (``tests/test_kernels_triton.py``: reference, bias,
CUDA-graph replay, flags left zeroed; session 16, run 141) and the dispatch takes it where one program per tile
leaves the last of several waves short (``_dispatch.wgr_config``, runs 142-143). The MMA warps hold the unit
loop's state on top of ``wgr``'s 240 registers; the epilogue's addresses are made per unit
(:func:`_slot_offsets`), so the two-tile K loop spills at most once (3-bit and SliM; it spilled 6 and 20 times
when LLVM hoisted them, session 17: 28672 x 8192 at 512 tokens 3-bit 0.86 -> 0.89x of FP16, SliM 0.84 -> 0.88,
run 155).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from slimq.kernels.triton._trace import stamp, stamp_unit
from slimq.kernels.triton._wgr import WGR_BK, _consumer, _empty_done, _empty_ring, _issue, _ring, _ring_done, _store
from slimq.kernels.triton._wgs import _acc_layout
from slimq.kernels.triton._wgsk import _gdc_wait, _unit, _units, add_partials, put_partial, tile_of

__all__ = ["wgrk_kernel"]


@gluon.jit
def _unit_tile(u, lo, hi, t_hi, KT, n_r, BN: gl.constexpr, BT: gl.constexpr):
    """Unit ``u`` of the program (``_wgsk._unit``): its tile ``t``, K tiles ``[kb, ke)``, and the tile's first
    token ``t0`` and row ``n0`` (``_wgsk.tile_of``: row tiles fastest, ``n_r`` of them)."""
    t, kb, ke = _unit(u, lo, hi, t_hi, KT)
    pid_t, pid_r = tile_of(t, n_r)
    return t, kb, ke, pid_t * BT, pid_r * BN


@gluon.jit
def _sk_copies(xd, segs, tb, S, KT, n_r, bars, empty, smem, SEG_BITS: gl.constexpr, GS: gl.constexpr,
               BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr, perm=0,
               PERM_X: gl.constexpr = False):
    """The copy warp: this program's units, last tile first, each unit's K tiles into the ring as its slots are
    released (``PDL``: after the gather launched before has finished)."""
    if PDL:
        _gdc_wait()
    lo, hi, t_hi, n_units = _units(S, KT)
    it = gl.to_tensor(0)
    for u in range(0, n_units):
        t, kb, ke, t0, n0 = _unit_tile(u, lo, hi, t_hi, KT, n_r, BN, BT)
        for c in range(it, it + ke - kb):  # ring tile c holds K tile kb - it + c
            mbarrier.wait(empty.index(c % STAGES), ((c // STAGES) & 1) ^ 1)
            _issue(xd, segs, tb, t0, n0, kb - it, c, bars, smem, True, SEG_BITS, GS, BN, BT, STAGES, perm, PERM_X)
        it += ke - kb


@gluon.jit
def _opaque_zero(u):
    """Zero, computed from the unit index ``u`` by an instruction the compiler may not move or fold (``and.b32 u,
    0`` in non-pure inline PTX), declared a multiple of 1024 so that offsets it is added to keep their alignment."""
    z = gl.inline_asm_elementwise("and.b32 $0, $1, 0;", "=r,r", [u], dtype=gl.int32, is_pure=False, pack=1)
    return gl.multiple_of(z, 1024)


@gluon.jit
def _slot_offsets(u, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """Offsets (int64) of a partial slot's ``[BN, BT]`` float32 sums, in the accumulator's layout, for unit ``u``.
    They do not depend on ``u``, yet are made from it (:func:`_opaque_zero`): as loop invariants LLVM hoisted them
    out of the unit loop, so that they stayed live (or spilled) across every K loop; made per unit, and as int64
    so that each store's address is one base register plus an immediate (offline sm_90 SASS, 256-token tiles, the
    two-tile K loop: 2-bit 258 -> 238 instructions and 2 -> 0 spills, 3-bit 344 -> 315 and 6 -> 1, 4-bit 272 ->
    246 and 4 -> 0, SliM 677 -> 601 and 20 -> 1).

    The slot is in 8 x 8 blocks (row block, token block), each row-major: element ``(n, t)`` at ``((n // 8)
    (BT / 8) + t // 8) 64 + (n % 8) 8 + t % 8``. One store (or load) of the accumulator's column pairs by a warp
    (rows ``8 a + l // 4``, tokens ``8 j + 2 (l % 4) + {0, 1}``) then covers 256 contiguous bytes, two whole
    128-byte lines; row-major ``[BN, BT]`` it touched 32 bytes of each of 8 lines, and a 128 x 256 partial took
    ~4 us to store and as long to add (H200, run 270, ``benchmarks/wgr_timeline.py``)."""
    LACC: gl.constexpr = _acc_layout(BN, BT, num_warps)
    rows = gl.arange(0, BN, layout=gl.SliceLayout(1, LACC)).to(gl.int64)
    toks = gl.arange(0, BT, layout=gl.SliceLayout(0, LACC)).to(gl.int64)
    blk = (rows // 8)[:, None] * (BT // 8) + (toks // 8)[None, :]
    return blk * 64 + ((rows % 8) * 8)[:, None] + (toks % 8)[None, :] + _opaque_zero(u).to(gl.int64)


@gluon.jit
def _sk_sums(xd, segs, tb, S, KT, n_r, M, out_ptr, stride_om, part_ptr, flag_ptr, bias_ptr, ns, bars, empty, smem,
             SEG_BITS: gl.constexpr, GS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr,
             HAS_BIAS: gl.constexpr, num_warps: gl.constexpr, NAT: gl.constexpr = False, trace_ptr=None,
             TRACE: gl.constexpr = False):
    """The MMA warps: this program's units, last tile first (module doc), each multiplied (``_consumer``), then
    stored as a partial, or finished (the lower-indexed programs' partials added) and written to ``out``
    (``TRACE``: timestamps into ``trace_ptr``, ``_trace``)."""
    stamp(trace_ptr, 0, TRACE)
    lo, hi, t_hi, n_units = _units(S, KT)
    it = gl.to_tensor(0)
    for u in range(0, n_units):
        t, kb, ke, t0, n0 = _unit_tile(u, lo, hi, t_hi, KT, n_r, BN, BT)
        acc = _consumer(xd, segs, tb, t0, n0, kb, ke - kb, it, bars, empty, smem, SEG_BITS, GS, BN, BT, STAGES,
                        num_warps, True, True, NAT)[0]
        stamp_unit(trace_ptr, u, 0, TRACE)
        it += ke - kb
        offs = _slot_offsets(u, BN, BT, num_warps)  # made per unit, not live across the K loops
        if ke < KT:  # the tile's start or middle: a partial for the program that finishes it
            put_partial(acc, part_ptr, flag_ptr, offs, BN * BT)
            stamp_unit(trace_ptr, u, 1, TRACE)
        else:
            acc = add_partials(acc, t, KT, S, part_ptr, flag_ptr, offs, BN * BT)
            stamp_unit(trace_ptr, u, 1, TRACE)
            _store(acc, n0, t0, ns, M, out_ptr, stride_om, out_ptr, 0, bias_ptr, BN, BT, 1, HAS_BIAS, num_warps)
        stamp_unit(trace_ptr, u, 2, TRACE)
    return (it,)  # warp_specialize takes a tuple of results


@gluon.jit
def wgrk_kernel(xd, pd0, vd0, sd0, zd0, pd1, vd1, sd1, zd1, pd2, vd2, sd2, zd2, T1, T2, M, out_ptr, stride_om,
                part_ptr, flag_ptr, bias_ptr, ns, K, perm_ptr, SEG_BITS: gl.constexpr, GS: gl.constexpr,
                BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
                HAS_BIAS: gl.constexpr = False, PDL: gl.constexpr = False, NAT: gl.constexpr = False,
                PERM_X: gl.constexpr = False, trace_ptr=None, TRACE: gl.constexpr = False):
    """``out[t, n] = sum_k x[t, k] W[n, k] (+ bias[n])`` as ``_wgr.wgr_kernel`` (the same descriptors and
    segments; ``NAT``: ``x`` itself, ``_wgrn``, at ``col_perm``'s columns with ``PERM_X``) by persistent programs
    sharing the ``cdiv(ns, BN) * cdiv(M, BT)`` tiles' K tiles evenly (module doc). ``part_ptr``: float32, ``BN * BT`` per program; ``flag_ptr``: int32 per program, zeros (left zeroed).
    Grid: at most the SM count and at most the number of steps. ``PDL``: launched with ``launch_pdl`` after the
    gather (the copy warp waits for it). ``TRACE``: timestamps into ``trace_ptr`` (``_trace``)."""
    segs = ((pd0, vd0, sd0, zd0), (pd1, vd1, sd1, zd1), (pd2, vd2, sd2, zd2))
    tb = (T1, T2)
    n_r = gl.cdiv(ns, BN)
    KT = K // WGR_BK
    S = n_r * gl.cdiv(M, BT) * KT
    smem, bars = _ring(xd, pd0, vd0, sd0, zd0, SEG_BITS, BN, BT, STAGES)
    empty = _empty_ring(STAGES)
    gl.warp_specialize(
        [(_sk_sums, (xd, segs, tb, S, KT, n_r, M, out_ptr, stride_om, part_ptr, flag_ptr, bias_ptr, ns, bars, empty,
                     smem, SEG_BITS, GS, BN, BT, STAGES, HAS_BIAS, num_warps, NAT, trace_ptr, TRACE)),
         (_sk_copies, (xd, segs, tb, S, KT, n_r, bars, empty, smem, SEG_BITS, GS, BN, BT, STAGES, PDL, perm_ptr,
                       PERM_X))],
        [1], [48])
    _empty_done(empty, STAGES)
    _ring_done(bars, SEG_BITS, STAGES)
