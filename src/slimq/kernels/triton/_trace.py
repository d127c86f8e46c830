"""In-kernel timestamps for the large-``M`` Gluon kernels (``wgr_kernel``, ``wgrk_kernel``), read by
``benchmarks/wgr_timeline.py``: where a program's time goes (its K loops, partial sums, waits, stores).

Layout ``slimq.trace.v1``: an int64 buffer of ``TRACE_SLOTS`` entries per program (program ``p`` at ``p *
TRACE_SLOTS``): entry 0 the ``%globaltimer`` (ns) at which the MMA warps started, entries ``1 + 3 u``, ``2 + 3
u``, ``3 + 3 u`` for the program's unit ``u`` (one tile's K range; one unit per program in ``wgr_kernel``) the
times its K loop ended, its partial sums were stored or its peers' partials added, and its tile was written (the
last two equal for a unit that stores a partial), and the last entry the SM (``%smid``) that ran the program.
With ``TRACE`` off (the default) the kernels hold no trace code at all."""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

__all__ = ["stamp", "stamp_unit", "TRACE_SLOTS", "TRACE_UNITS", "unit_slot"]

TRACE_SLOTS = 32
_SLOTS = gl.constexpr(TRACE_SLOTS)
TRACE_UNITS = (TRACE_SLOTS - 2) // 3  # units per program with room for their stamps (more are not recorded)


def unit_slot(u: int, which: int) -> int:
    """Entry of unit ``u``'s stamp ``which`` (0: K loop ended, 1: partials stored or added, 2: tile written)."""
    if not 0 <= which < 3:
        raise ValueError(f"a unit has stamps 0, 1 and 2, not {which}")
    return 1 + 3 * u + which


@gluon.jit
def _globaltimer():
    return gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)


@gluon.jit
def _smid():
    return gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def stamp(trace_ptr, slot, TRACE: gl.constexpr):
    """With ``TRACE``: the global timer into this program's entry ``slot`` (entries past the last unit's are
    dropped), and the SM into its last entry."""
    if TRACE:
        base = trace_ptr + gl.program_id(0) * _SLOTS
        gl.store(base + slot, _globaltimer(), mask=slot < _SLOTS - 1)
        gl.store(base + (_SLOTS - 1), _smid().to(gl.int64))


@gluon.jit
def stamp_unit(trace_ptr, u, which: gl.constexpr, TRACE: gl.constexpr):
    """:func:`stamp` into unit ``u``'s entry ``which`` (:func:`unit_slot`: 0 K loop ended, 1 partials stored or
    added, 2 tile written)."""
    stamp(trace_ptr, 1 + 3 * u + which, TRACE)
