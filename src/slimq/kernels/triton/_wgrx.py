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

Status: an explicit config only, correct on the H200 (GPU tests, session 17) but **slower**, 1.6-3.2x (run 164,
``benchmarks/wgr_probe.py --reorder 0,1``): one warp reordering a 256-token slot takes ~2600 cycles (16 steps of
four ``ldmatrix`` and four ``stmatrix``, each waiting on the last), longer than the MMA warps' K tile, and the
copies wait behind it. Spreading the reordering over more warps (a partition of its own, which 4-MMA-warp tiles
have the registers for) is the next step (benchmarks/KERNEL_NOTES.md, session 17).
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from slimq.kernels.triton._wgs import _cta_barrier

__all__ = ["reorder_slot", "REORDER_ROWS"]

REORDER_ROWS = gl.constexpr(16)  # tokens reordered per step (16 registers of the copy warp)


@triton.constexpr_function
def _chunk_layout(rows):
    """``[rows, 64]`` float16 in one warp as ``ldmatrix.trans`` hands it out: lane ``l`` holds columns
    ``8 (2 (l % 4) + j) + l // 4`` (``j`` in registers) of every row (module doc)."""
    regs = [[0, 8]] + [[1 << i, 0] for i in range(int(rows).bit_length() - 1)]
    return gl.DistributedLinearLayout(regs, [[0, 16], [0, 32], [0, 1], [0, 2], [0, 4]], [], [], [rows, 64])


@gluon.jit
def reorder_slot(t, xland, xready, xs, BT: gl.constexpr, STAGES: gl.constexpr):
    """Ring tile ``t``: wait for its activations (``xland``), reorder the slot's ``[BT, 64]`` tile in place into
    the 2-bit operand order, then release it to the MMA warps (``xready``, after a proxy fence: ``wgmma`` reads
    it through the async proxy)."""
    slot = t % STAGES
    mbarrier.wait(xland.index(slot), (t // STAGES) & 1)
    buf = xs.index(slot)
    for r0 in gl.static_range(0, BT, REORDER_ROWS):
        sub = buf.slice(r0, REORDER_ROWS, dim=0)
        v = sub.load(_chunk_layout(REORDER_ROWS))
        sub.store(gl.reshape(gl.permute(gl.reshape(v, [REORDER_ROWS, 8, 8]), (0, 2, 1)), [REORDER_ROWS, 64]))
    fence_async_shared()
    _cta_barrier()  # every lane's stores fenced before the one arrive
    mbarrier.arrive(xready.index(slot))
