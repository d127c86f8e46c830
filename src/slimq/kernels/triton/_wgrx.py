"""Activations put into ``wgr``'s operand order in shared memory (``KernelConfig("wgr", producers=1,
gather=True)``): the copy warp loads ``x`` in its natural column order by TMA and reorders each ring slot in
place, so no gather launch runs before ``wgr_kernel`` (layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90;
Gluon).

Why: on the smaller layers the gather launch costs 5-10% of a call at 256-512 tokens (H200 run 161:
``wgr_kernel`` alone 56.3 us, cuBLAS 54.2, the whole call 60.6 on 8192 x 8192 at 256 tokens;
benchmarks/KERNEL_NOTES.md, session 17).

The 2-bit operand order (``_wgr.wgr_src``, ``w = 2``) puts column ``c = 8 a + b`` of a 64-column tile at
position ``8 b + a``: per token, the tile's eight 16-byte chunks ``a`` form an 8 x 8 matrix of 16-bit elements
``M[a][b]`` and the operand order is its transpose. ``ldmatrix.trans`` reads four such matrices (four tokens) in
one instruction, handing lane ``l`` elements ``M[2 (l % 4) + {0, 1}][l // 4]`` (positions ``2 l, 2 l + 1`` of
the reordered row), which is what ``stmatrix`` stores back as rows ``l // 4`` of four matrices: two
instructions per four tokens (offline sm_90 SASS: ``LDSM.16.MT88.4`` and ``STSM.16.M88.4``, no shuffles). The
layer's ``col_perm`` must be the identity (uniform layers), and its codes use the 2-bit operand order (1- to
3-bit codes; 4-bit codes keep the gather).

Status: an explicit config only, correct on the H200 (GPU tests, session 17) but **slower**: with one warp
reordering (the copy warp, two tiles behind its copies) 1.6-3.2x (run 164), with a partition of 4 warps (64-row
tiles) or 2 (128-row tiles) 1.1-1.8x (run 165: 8192 x 8192 at 256 tokens, 64 x 256 tiles 60.2 -> 99.3 us;
4096 x 4096 at 256, 64 x 128 tiles 28.7 -> 32.4). Shared memory sets the pace: the reordering reads and writes
each slot once more, doubling the slot traffic that ``wgmma`` and TMA make.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from slimq.kernels.triton._wgs import _cta_barrier

__all__ = ["reorder_slot", "reorder_tiles", "REORDER_ROWS"]

REORDER_ROWS = gl.constexpr(16)  # tokens each warp reorders per step (16 registers)


@triton.constexpr_function
def _chunk_layout(rows, num_warps):
    """``[rows, 64]`` float16 over ``num_warps`` warps (``rows / num_warps`` tokens each) as ``ldmatrix.trans``
    hands it out: lane ``l`` holds columns ``8 (2 (l % 4) + j) + l // 4`` (``j`` in registers) of its tokens
    (module doc)."""
    per = int(rows) // int(num_warps)
    regs = [[0, 8]] + [[1 << i, 0] for i in range(per.bit_length() - 1)]
    warps = [[per << i, 0] for i in range(int(num_warps).bit_length() - 1)]
    return gl.DistributedLinearLayout(regs, [[0, 16], [0, 32], [0, 1], [0, 2], [0, 4]], warps, [], [rows, 64])


@gluon.jit
def reorder_slot(t, xland, xready, xs, BT: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Ring tile ``t``: wait for its activations (``xland``), reorder the slot's ``[BT, 64]`` tile in place into
    the 2-bit operand order (``num_warps`` warps, ``REORDER_ROWS`` tokens each per step), then release it to the
    MMA warps (``xready``, after a proxy fence: ``wgmma`` reads it through the async proxy)."""
    STEP: gl.constexpr = REORDER_ROWS * num_warps
    slot = t % STAGES
    mbarrier.wait(xland.index(slot), (t // STAGES) & 1)
    buf = xs.index(slot)
    for r0 in gl.static_range(0, BT, STEP):
        sub = buf.slice(r0, STEP, dim=0)
        v = sub.load(_chunk_layout(STEP, num_warps))
        sub.store(gl.reshape(gl.permute(gl.reshape(v, [STEP, 8, 8]), (0, 2, 1)), [STEP, 64]))
    fence_async_shared()
    _cta_barrier()  # every warp's stores fenced before the one arrive
    mbarrier.arrive(xready.index(slot))


@gluon.jit
def reorder_tiles(kt, xland, xready, xs, BT: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """The reorder partition (``REORDER_WARPS`` warps): every ring tile of the program, as it lands."""
    for t in range(kt):
        reorder_slot(t, xland, xready, xs, BT, STAGES, num_warps)
