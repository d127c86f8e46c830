"""``wg`` reading ``x`` itself (``KernelConfig.direct``, ``_wg._direct_x``) against the pure-torch reference: uniform
layers (identity ``col_perm``) and SliM layers (whole groups moved).

Shares ``test_kernels_triton``'s set-up (imported first: it turns the Triton interpreter on when there is no
GPU), layers and checks.
"""
from __future__ import annotations

import pytest
import torch

from test_kernels_triton import (  # isort: skip (sets TRITON_INTERPRET before triton is imported)
    DEV, IN_PROCESS, LAYERS, KernelConfig, _check, inproc, planned_kernels, random_layer, run_in_interpreter, slt,
)

DIRECT = {
    "m16": KernelConfig("wg", block_m=16, block_n=64, split_k=2, join=True, direct=True),
    "m16_wide": KernelConfig("wg", block_m=16, block_n=128, split_k=3, join=True, direct=True),
    "m64_scaled": KernelConfig("wg", block_m=64, block_n=64, split_k=2, join=True, scaled=True, direct=True),
}


@pytest.mark.skipif(IN_PROCESS, reason="kernels run in this process")
def test_in_interpreter_subprocess():
    """triton was imported before this module (compiled mode, no GPU): run it in a fresh process."""
    run_in_interpreter(__file__)


@inproc
@pytest.mark.parametrize("bits,gs,cfg_name,m", [(1, 128, "m16", 16), (2, 128, "m16", 5), (3, 128, "m16", 16),
                                                (4, 128, "m16", 13), (8, 128, "m16", 16), (2, 64, "m16_wide", 9),
                                                (3, 32, "m16", 3), (4, 128, "m64_scaled", 70),
                                                (3, 128, "m64_scaled", 64)])
def test_wg_reads_x_itself_on_identity_permutations(bits, gs, cfg_name, m):
    """Uniform layers (identity ``col_perm``) of every one-operand width (1, 2, 4, 8 bits and merged 3-bit codes),
    128-, 64- and 32-column blocks, a short last block (K = 300), token tiles partly filled (5, 9, 13, 3, 70) and
    whole (16, 64), exact codes and ``scaled`` operands: one launch per band, no gather (a finalize only where
    split-K cannot finish in its last program)."""
    p = random_layer(72, 300 if gs == 128 else 320, gs, bits, seed=bits)
    x = torch.zeros(m, p.in_features, dtype=torch.float16, device=DEV)
    assert "operand_gather_kernel" not in planned_kernels(x, p, DIRECT[cfg_name])
    _check(p, m, torch.float16, DIRECT[cfg_name], bias=True, seed=bits)


@inproc
def test_wg_direct_handles_strided_token_rows():
    """Tokens whose rows are further apart than K (a slice of a wider tensor) are read at their stride."""
    p = random_layer(64, 256, 128, 2, seed=4)
    gen = torch.Generator().manual_seed(4)
    wide = torch.randn(16, 320, generator=gen).to(DEV, torch.float16)
    x = wide[:, 32:288]
    assert x.stride(0) == 320 and "operand_gather_kernel" not in planned_kernels(x, p, DIRECT["m16"])
    ref = slt.sbp_matmul(x.contiguous(), p, config=KernelConfig("wg", block_m=16, block_n=64, join=True))
    y = slt.sbp_matmul(x, p, config=DIRECT["m16"])
    assert float((y.float() - ref.float()).norm() / ref.float().norm()) < 1e-3


@inproc
@pytest.mark.parametrize("layer,cfg_name,m", [("mix123_full", "m16", 16), ("mv_mix123", "m16", 11),
                                              ("mv_mix123", "m16_wide", 16), ("mv_mix123", "m64_scaled", 64)])
def test_wg_reads_x_itself_through_whole_group_permutations(layer, cfg_name, m):
    """SliM layers (1/2/3-bit groups sorted by width: ``col_perm`` moves whole 64- or 128-column groups) read each
    block of ``x`` from its group's first column (``DIRECT_PERM``): no gather launch."""
    from slimq.kernels.triton._plan import identity_perm, perm_run
    p = random_layer(*LAYERS[layer], seed=6)
    assert not identity_perm(p) and perm_run(p) >= p.segments[0].group_size
    x = torch.zeros(m, p.in_features, dtype=torch.float16, device=DEV)
    assert "operand_gather_kernel" not in planned_kernels(x, p, DIRECT[cfg_name])
    _check(p, m, torch.float16, DIRECT[cfg_name], bias=True, seed=6)


def test_perm_run_finds_blocks_moved_whole():
    """``perm_run``: the identity runs as far as it is long (at most 1024), group-sorted permutations as far as
    their groups, others 1; the answer is kept on the layer."""
    from slimq.kernels.triton._plan import perm_run
    u2 = random_layer(64, 256, 128, 2)
    assert perm_run(u2) == 256 and u2.perm_run == 256
    assert perm_run(random_layer(32, 4096, 128, 2)) == 1024
    assert perm_run(random_layer(*LAYERS["mix123_full"], seed=1)) == 64
    q = random_layer(64, 256, 128, 2)
    q.col_perm = torch.cat([q.col_perm[128:], q.col_perm[:128]])  # two whole 128-column groups swapped
    assert perm_run(q) == 128
    q.col_perm, q.perm_run = q.col_perm[torch.arange(256).view(2, 128).flip(1).flatten()], None  # reversed within
    assert perm_run(q) == 1
    s = random_layer(64, 256, 128, 2)
    s.col_perm, s.perm_run = torch.cat([s.col_perm[3:], s.col_perm[:3]]), None  # runs from odd starts
    assert perm_run(s) == 1


@inproc
def test_wg_direct_keeps_the_gather_where_it_cannot_read_x():
    """A ``col_perm`` that does not move whole blocks (act-order), codes of two planes (5-8-bit mixes but 8),
    float32 activations, and a config without ``direct`` keep the gather launch; the results stay right."""
    scrambled = random_layer(64, 256, 128, 2, seed=2)
    scrambled.col_perm = torch.randperm(256, generator=torch.Generator().manual_seed(2)).to(DEV, torch.int32)
    wide = random_layer(*LAYERS["mix_wide"], seed=2)
    u2 = random_layer(64, 256, 128, 2)
    x16 = torch.zeros(16, 256, dtype=torch.float16, device=DEV)
    assert "operand_gather_kernel" in planned_kernels(x16, scrambled, DIRECT["m16"])
    x_wide = torch.zeros(16, wide.in_features, dtype=torch.float16, device=DEV)
    assert "operand_gather_kernel" in planned_kernels(x_wide, wide, DIRECT["m16"])
    assert "operand_gather_kernel" in planned_kernels(x16.float(), u2, DIRECT["m16"])
    assert "operand_gather_kernel" in planned_kernels(x16, u2, KernelConfig("wg", block_m=16, block_n=64, join=True))
    _check(scrambled, 16, torch.float16, DIRECT["m16"], bias=True)
    _check(wide, 16, torch.float16, DIRECT["m16"])
    _check(u2, 16, torch.float32, DIRECT["m16"])


@inproc
@pytest.mark.parametrize("layer,cfg_name,m", [("u2_g128_short", "m16", 16), ("mv_mix123", "m16_wide", 11),
                                              ("u3_odd", "m16", 5), ("u2_g128_short", "m64_scaled", 70),
                                              ("mv_mix123", "m64_scaled", 64)])
def test_wg_reads_bfloat16_x_itself(layer, cfg_name, m):
    """bfloat16 tokens are read directly too and multiplied as bfloat16 (bfloat16 operands: codes read with a
    bfloat16 magic, merged 3-bit codes, SCALED weights rounded to bfloat16; in the interpreter the dots run in
    float32): a uniform layer with a short last block, a SliM layer moved in whole groups, merged 3-bit codes,
    scaled operands at 64-70 tokens. 8-bit codes (wider than bfloat16's mantissa) keep the gather."""
    p = random_layer(*LAYERS[layer], seed=5)
    x = torch.zeros(m, p.in_features, dtype=torch.bfloat16, device=DEV)
    launches = slt.plan_launches(x, p, None, torch.empty(m, p.out_features, dtype=x.dtype, device=DEV),
                                 slt.Workspace(DEV, m, p.out_features, p.in_features, x.dtype), DIRECT[cfg_name])
    assert [lc.kernel for lc in launches if lc.kernel != "finalize_kernel"] == ["wg_kernel"]
    assert launches[0].kwargs["XBF16"] is True
    _check(p, m, torch.bfloat16, DIRECT[cfg_name], bias=True, seed=5)
    p8 = random_layer(64, 256, 128, 8, seed=5)
    assert "operand_gather_kernel" in planned_kernels(torch.zeros(16, 256, dtype=torch.bfloat16, device=DEV), p8,
                                                      DIRECT["m16"])


def test_direct_needs_wg_with_join_or_one_token_mv():
    with pytest.raises(ValueError, match="direct applies to path 'wg' with join, to path 'mv' with block_m 1, and to "
                                         "'wgr', only"):
        KernelConfig("wg", block_m=16, block_n=64, direct=True)
    with pytest.raises(ValueError, match="direct applies to path 'wg' with join"):
        KernelConfig("tc", block_m=16, block_n=64, join=True, direct=True)
    with pytest.raises(ValueError, match="direct applies to path 'wg' with join"):
        KernelConfig("mv", block_m=16, block_n=128, direct=True)
    assert KernelConfig("mv", block_m=1, block_n=128, split_k=4, direct=True).direct
    assert KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, direct=True).direct


def test_dispatch_reads_x_directly_where_it_measured_faster():
    """16-token ``wg`` tiles read ``x`` themselves on layers of up to 2^24 weights, and with 9-16 tokens and 3-4-bit
    codes up to 2^26 (H200 runs 179-183); never on the big layers, with 17+ tokens or with 2-bit codes beyond
    2^24 weights."""
    from slimq.kernels.triton import select_config
    direct = {(m, n, k, b): select_config(m, n, k, bits=b).direct for m in (2, 4, 16, 17, 64)
              for n, k in ((4096, 4096), (11008, 4096), (4096, 11008), (8192, 8192), (28672, 8192))
              for b in ((2,), (3,), (4,), (1, 2, 3), None)}
    assert all(direct[(m, 4096, 4096, b)] for m in (2, 4, 16) for b in ((2,), (3,), (4,), (1, 2, 3), None))
    assert all(direct[(16, n, k, b)] for n, k in ((11008, 4096), (4096, 11008), (8192, 8192)) for b in ((3,), (4,)))
    on = {key for key, v in direct.items() if v}
    assert all(m <= 16 and (n * k <= 1 << 24 or (m == 16 and min(b) >= 3)) for m, n, k, b in on), on
