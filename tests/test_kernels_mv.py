"""The tensor-core GEMV ``mv`` (``_mv``: one token, ``_mvt``: 2-16) against the pure-torch reference.

Shares ``test_kernels_triton``'s set-up (imported first: it turns the Triton interpreter on when there is no
GPU), layers, configs and checks; without a GPU the kernels run in the interpreter, whose lane-by-lane
emulation of ``mma.sync`` stands in for the PTX (``test_mv_compile`` compiles that for sm_90).
"""
from __future__ import annotations

import pytest
import torch

from test_kernels_triton import (  # isort: skip (sets TRITON_INTERPRET before triton is imported)
    CFGS, DEV, IN_PROCESS, LAYERS, M_OF, KernelConfig, Workspace, _check, _replays_match_reference, gpu, inproc,
    planned_kernels, random_layer, run_in_interpreter, sbp_matmul, slt,
)


@pytest.mark.skipif(IN_PROCESS, reason="kernels run in this process")
def test_in_interpreter_subprocess():
    """triton was imported before this module (compiled mode, no GPU): run it in a fresh process."""
    run_in_interpreter(__file__)


@inproc
@pytest.mark.parametrize("layer,cfg_name", [("mv_wide", "mv"), ("mv_wide", "mv_split"), ("mv_u2_g256", "mv"),
                                            ("mv_u2_g256", "mv_split"), ("mv_mix123", "mv"), ("mv_wide", "mv_m5"),
                                            ("mv_wide", "mv_m16_split"), ("mv_u2_g256", "mv_m16_split"),
                                            ("mv_mix123", "mv_l2"), ("mv_u2_g256", "mv_l2"), ("mv_mix123", "mv_m5_l2"),
                                            ("mv_wide", "mv_kw4"), ("mv_u2_g256", "mv_kw1"), ("mv_u2_g256", "mv_kw4"),
                                            ("mv_mix123", "mv_kw4")])
def test_mv_bit_widths_and_groupings(layer, cfg_name):
    """The tensor-core GEMV over 1-8 bits (not 7), group sizes 128 and 256, K split 3 (uneven shares), one
    token, 5 (one token block, lanes past M) and 16 (two blocks); the warps splitting K (``k_warps``: 1-2 tiles
    per warp and segment, warps past a segment's end; one warp with 4 tiles); with the L2 prefetch (its addresses stay
    inside the segment's planes, scales and zeros: on a GPU a stray one could fault)."""
    _check(random_layer(*LAYERS[layer], seed=3), M_OF[cfg_name], torch.float16, CFGS[cfg_name], bias=True)


@inproc
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("cfg_name", ["mv_kw4_dx", "mv_split_dx"])
def test_mv_reads_x_itself_on_identity_permutations(bits, cfg_name):
    """``direct`` on a uniform layer (identity ``col_perm``, float16 or bfloat16 token), with the warps splitting K
    (``mvs_kernel``) or programs splitting it (``mv_kernel``): no gather launch, the pairs built from ``x`` (a
    bfloat16 token multiplied as bfloat16, the codes read with bfloat16 magic) and ``corr``/``sum x`` from the
    correction MMA (``_mvx``), every plane width and the 3-bit virtual plane; a bfloat16 token on 8-bit codes
    (one 8-bit plane: wider than bfloat16's mantissa) keeps the gather."""
    from slimq.kernels.triton._plan import mv_direct
    cfg = CFGS[cfg_name]
    p = random_layer(64, 640, 128, bits, seed=bits)
    x = torch.zeros(1, p.in_features, dtype=torch.float16, device=DEV)
    assert mv_direct(x, p, cfg) and mv_direct(x.bfloat16(), p, cfg) == (bits != 8)  # 8-bit planes: the gather
    want = ["mvs_kernel"] if cfg.k_warps else ["mv_kernel"]
    assert [k for k in planned_kernels(x, p, cfg) if k != "finalize_kernel"] == want
    if bits != 8:
        assert [k for k in planned_kernels(x.bfloat16(), p, cfg) if k != "finalize_kernel"] == want
    _check(p, 1, torch.float16, cfg, bias=True)
    _check(p, 1, torch.bfloat16, cfg, bias=True)


@inproc
@pytest.mark.parametrize("layer,cfg_name", [("mv_mix123", "mv_kw4_dx"), ("mv_mix123", "mv_split_dx"),
                                            ("mv_mix123", "mv_l2_dx")])
def test_mv_reads_x_itself_through_whole_tile_permutations(layer, cfg_name):
    """SliM layers (1/2/3-bit groups sorted by width: ``col_perm`` moves whole 128-column groups) read each tile of
    ``x`` from ``col_perm`` at its first storage column (``DIRECT_PERM``), split-K with the sources two tiles
    ahead and the L2 prefetch: no gather launch."""
    from slimq.kernels.triton._plan import identity_perm, mv_direct, perm_run
    p = random_layer(*LAYERS[layer], seed=6)
    assert not identity_perm(p) and perm_run(p) >= 128
    x = torch.zeros(1, p.in_features, dtype=torch.float16, device=DEV)
    assert mv_direct(x, p, CFGS[cfg_name]) and "mv_gather_kernel" not in planned_kernels(x, p, CFGS[cfg_name])
    _check(p, 1, torch.float16, CFGS[cfg_name], bias=True, seed=6)
    _check(p, 1, torch.bfloat16, CFGS[cfg_name], seed=6)


def test_mv_reads_x_itself_only_where_it_can():
    """``x`` is read directly only with ``direct``, for a ``col_perm`` that moves whole 128-column tiles (checked once
    per layer and kept) and one float16 or bfloat16 token that is contiguous and 16-byte aligned; otherwise the
    gather runs first."""
    from slimq.kernels.triton._plan import identity_perm, mv_direct
    p = random_layer(32, 256, 128, 2)
    assert p.perm_identity is None and identity_perm(p) and p.perm_identity is True
    p.col_perm = p.col_perm.flip(0)  # the cached answer stands until the view is rebuilt (QuantLinear does)
    assert identity_perm(p)
    p.perm_identity = None
    assert not identity_perm(p) and p.perm_identity is False
    dx, cfg = CFGS["mv_kw4_dx"], CFGS["mv_kw4"]
    q = random_layer(32, 256, 128, 2)
    x = torch.zeros(2, 264, dtype=torch.float16, device=DEV)
    assert mv_direct(x[:1, :256], q, dx) and not mv_direct(x[:1, :256], q, cfg)
    assert not mv_direct(x[:1, 1:257], q, dx)  # 2-byte offset
    assert not mv_direct(x[:, :256], q, dx)  # two tokens
    assert not mv_direct(x[:1, :256].float(), q, dx)
    assert not mv_direct(torch.zeros(1, 512, dtype=torch.float16, device=DEV)[:, ::2], q, dx)  # strided columns
    scrambled = random_layer(32, 256, 128, 2, seed=2)  # 64-column runs only: the gather
    scrambled.col_perm = torch.arange(256, dtype=torch.int32, device=DEV).view(4, 64).flip(0).reshape(-1)
    assert not mv_direct(x[:1, :256], scrambled, dx)
    assert "mv_gather_kernel" in planned_kernels(x[:1, :256], scrambled, dx)
    _check(scrambled, 1, torch.float16, dx, bias=True)


def test_dispatch_takes_mv_on_mid_layers_only_where_it_reads_x(monkeypatch):
    """``resolve_config`` tells the rule whether one-token ``mv`` can read ``x`` itself: on layers of 2^24 up to
    2^26 weights (here any size) it takes ``mv`` with ``direct`` for a float16 or bfloat16 token and a
    whole-tile ``col_perm``, ``gv`` for a float32 one or a permutation of 64-column runs."""
    import slimq.kernels.triton._dispatch as dispatch
    monkeypatch.setattr(dispatch, "_MV_DIRECT_MIN_WEIGHTS", 0)
    monkeypatch.setattr(dispatch, "_mvs_wins", lambda n, k, bits, num_sms: False)
    p = random_layer(64, 640, 128, 3)
    x = torch.zeros(1, p.in_features, dtype=torch.float16, device=DEV)
    cfg = slt.resolve_config(x, p)
    assert (cfg.path, cfg.direct) == ("mv", True)
    assert slt.resolve_config(x.bfloat16(), p).path == "mv" and slt.resolve_config(x.float(), p).path == "gv"
    q = random_layer(64, 256, 128, 2, seed=2)
    q.col_perm = torch.arange(256, dtype=torch.int32, device=DEV).view(4, 64).flip(0).reshape(-1)
    assert slt.resolve_config(torch.zeros(1, 256, dtype=torch.float16, device=DEV), q).path == "gv"


@inproc
@pytest.mark.parametrize("cfg_name", ["mv_bytes", "mv_tiles", "mv_planes", "mv_bytes_l2_dx"])
@pytest.mark.parametrize("bits", [[1, 2, 3], [3, 1], 2])
def test_mv_splits_k_into_equal_bytes(cfg_name, bits):
    """``byte_split``: each K-split program takes the tiles that start in its equal share of the band's bytes
    across the segment ends (4 or 5 programs over SliM's three segments of two tiles: programs entering one or two
    segments, none empty), with the gather or reading ``x`` itself; nearly by tiles (``tile_units``: 3
    programs over six tiles); with 3-bit tiles weighing most (``plane_units``: of 4 programs over SliM's six tiles
    one takes the four 1- and 2-bit tiles, two a 3-bit tile each and one none); two segments; and a uniform layer
    (one segment: the plain split)."""
    p = random_layer(64, 768, 128, bits, seed=8)
    _check(p, 1, torch.float16, CFGS[cfg_name], bias=True, seed=8)


def test_segment_units_weigh_a_tile_by_its_bytes():
    """A tile's bytes per row, in 1/16ths: 128 codes of ``bits`` bits plus a float16 scale and zero per group,
    plus ``tile_units`` and, per bit plane past the first (3-bit codes: two planes), ``plane_units`` (either refused
    below 0, or without ``byte_split``); ``byte_split`` is refused without a K split or on another path, by name."""
    from types import SimpleNamespace
    from slimq.kernels.triton._plan import segment_units
    segs = [SimpleNamespace(bits=b, group_size=g) for b, g in ((1, 128), (2, 128), (3, 128), (2, 256))]
    assert segment_units(segs) == tuple(16 * (128 * b // 8 + 4 * 128 // g) for b, g in ((1, 128), (2, 128), (3, 128),
                                                                                        (2, 256)))
    assert segment_units(segs, 100) == tuple(u + 100 for u in segment_units(segs))
    assert segment_units(segs, 100, 7) == tuple(u + 100 + 7 * (s.bits == 3) for u, s in zip(segment_units(segs), segs))
    for bad in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match="tile_units and plane_units must be >= 0"):
            segment_units(segs, *bad)
    with pytest.raises(ValueError, match="tile_units must be 0, or > 0 with byte_split"):
        KernelConfig("mv", block_m=1, block_n=64, num_warps=2, split_k=4, tile_units=64)
    with pytest.raises(ValueError, match="plane_units must be 0, or > 0 with byte_split"):
        KernelConfig("mv", block_m=1, block_n=64, num_warps=2, split_k=4, plane_units=64)
    with pytest.raises(ValueError, match="byte_split applies to path 'wg', and 'mv' with block_m 1 and no k_warps, "
                       "with split_k >= 2"):
        KernelConfig("mv", block_m=1, block_n=64, num_warps=2, byte_split=True)
    with pytest.raises(ValueError, match="byte_split applies to path 'wg', and 'mv'"):
        KernelConfig("gv", block_m=1, split_k=4, byte_split=True)


@inproc
@pytest.mark.parametrize("cfg_name", ["mv", "mv_split", "mv_m5", "mv_m16_split", "mv_kw4", "mv_split_dx", "mv_kw4_dx"])
def test_mv_row_permuted_layers(cfg_name):
    """MixLLM-style bands (rows of 2, 4 and 3 bits, 16 each) and a row_perm; also reading ``x`` itself."""
    p = random_layer(48, 384, 128, None, row_bits=[2, 4, 3], seed=7)
    assert p.row_perm is not None and len({(s.r0, s.r1) for s in p.segments}) == 3
    _check(p, M_OF[cfg_name], torch.float16, CFGS[cfg_name], bias=True)


def test_mv_selected_falls_back_where_it_cannot_run(monkeypatch):
    """A dispatched ``mv`` config becomes the rule's choice without ``mv`` on layers it cannot run."""
    import slimq.kernels.triton._dispatch as dispatch
    import slimq.kernels.triton.ops as ops
    monkeypatch.setattr(dispatch, "_mvt_wins", lambda n, k, bits: True)
    monkeypatch.setattr(dispatch, "_mv_wins", lambda n, k, bits: True)
    good, bad = random_layer(32, 256, 128, 2), random_layer(32, 256, 64, 2)
    for m, other in ((1, "gv"), (4, "wg")):
        x = torch.zeros(m, 256, dtype=torch.float16, device=DEV)
        assert ops.resolve_config(x, good).path == "mv"
        assert ops.resolve_config(x, bad).path == other


def test_mv_needs_whole_tiles_and_says_why():
    """``mv`` runs whole 128-column tiles of rows in fours: other layers are refused by name when asked
    for explicitly."""
    cases = {"group size 64 is not a multiple of 128": random_layer(32, 256, 64, 2),
             "not on 128-column boundaries": random_layer(32, 300, 128, 2),
             "not a multiple of 4": random_layer(30, 256, 128, 2),
             "7-bit codes": random_layer(32, 256, 128, 7)}
    for why, p in cases.items():
        assert why in slt.mv_supported(p)
        x = torch.zeros(1, p.in_features, dtype=torch.float16, device=DEV)
        with pytest.raises(ValueError, match="path 'mv' cannot run this layer"):
            sbp_matmul(x, p, config=CFGS["mv"])
    assert slt.mv_supported(random_layer(32, 256, 128, [1, 2, 3])) is None
    with pytest.raises(ValueError, match=r"path 'mv' takes block_m 1 or 16, block_k == 128, block_n == 32 \* num_warps"):
        KernelConfig("mv", block_m=1, block_n=64, num_warps=1)


@inproc
@gpu
@pytest.mark.parametrize("cfg_name,m,bits", [("mv_split", 1, [1, 2, 3]), ("mv_l2", 1, [1, 2, 3]),
                                             ("mv_m16_split", 5, [1, 2, 3]), ("mv_kw4", 1, [1, 2, 3]),
                                             ("mv_kw4_dx", 1, 3), ("mv_kw4_dx", 1, [1, 2, 3]),
                                             ("mv_split_dx", 1, 3), ("mv_l2_dx", 1, [1, 2, 3]),
                                             ("mv_bytes", 1, [1, 2, 3]), ("mv_tiles", 1, [1, 2, 3]),
                                             ("mv_bytes_l2_dx", 1, [1, 2, 3])])
def test_mv_split_k_replays_under_cuda_graph(cfg_name, m, bits):
    """``mv`` with split-K (one token: the last program finishes the tile; 5 tokens: finalize launch) replays
    under a CUDA graph with new activations and leaves the workspace and counters zeroed; so do ``k_warps``
    after the gather and both reading ``x`` itself (``direct``: uniform layers, SliM's whole-tile permutations)."""
    p = random_layer(96, 768, 128, bits, seed=4)
    x = torch.randn(m, p.in_features, device=DEV, dtype=torch.float16)
    out = torch.empty(m, p.out_features, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, p.out_features, p.in_features, torch.float16)
    sbp_matmul(x, p, out=out, workspace=ws, config=CFGS[cfg_name])  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        sbp_matmul(x, p, out=out, workspace=ws, config=CFGS[cfg_name])
    _replays_match_reference(g, x, p, out, ws)
    assert not bool(ws.cnt.any())
