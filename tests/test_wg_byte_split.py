"""``wg`` with ``KernelConfig.byte_split``: each K-split program takes a run of blocks across the segments (their
equal shares of the weight, ``_tiles.unit_range``) instead of a share of every segment, against the pure-torch
reference.

Shares ``test_kernels_triton``'s set-up (imported first: it turns the Triton interpreter on when there is no
GPU), layers and checks.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from test_kernels_triton import (  # isort: skip (sets TRITON_INTERPRET before triton is imported)
    DEV, IN_PROCESS, LAYERS, KernelConfig, _check, inproc, random_layer, run_in_interpreter, slt,
)

SPLIT = {
    "m16": KernelConfig("wg", block_m=16, block_n=64, split_k=4, join=True, byte_split=True, tile_units=576,
                        plane_units=576),
    "m16_bytes": KernelConfig("wg", block_m=16, block_n=64, split_k=3, join=True, byte_split=True),
    "m16_pieces": KernelConfig("wg", block_m=16, block_n=64, split_k=2, byte_split=True, tile_units=100),
    "m16_direct": KernelConfig("wg", block_m=16, block_n=64, split_k=5, join=True, direct=True, byte_split=True,
                               tile_units=576, plane_units=288),
    "m64_scaled": KernelConfig("wg", block_m=64, block_n=64, split_k=3, join=True, scaled=True, byte_split=True,
                               tile_units=576, plane_units=576),
}


@pytest.mark.skipif(IN_PROCESS, reason="kernels run in this process")
def test_in_interpreter_subprocess():
    """triton was imported before this module (compiled mode, no GPU): run it in a fresh process."""
    run_in_interpreter(__file__)


def _seg_units(x, p, cfg):
    ws = slt.Workspace(DEV, x.shape[0], p.out_features, p.in_features, x.dtype)
    out = torch.empty(x.shape[0], p.out_features, dtype=x.dtype, device=DEV)
    return [lc.kwargs.get("SEG_UNITS") for lc in slt.plan_launches(x, p, None, out, ws, cfg)
            if lc.kernel == "wg_kernel"]


@inproc
@pytest.mark.parametrize("layer,cfg_name,m", [("mix123_full", "m16", 16), ("mix123_full", "m16", 5),
                                              ("mix123_full", "m16_bytes", 16), ("mix123_full", "m16_pieces", 16),
                                              ("short_last", "m16", 7), ("mv_mix123", "m16_direct", 16),
                                              ("mv_mix123", "m64_scaled", 64), ("mix123_full", "m64_scaled", 70)])
def test_wg_splits_k_into_equal_shares_of_the_weight(layer, cfg_name, m):
    """SliM layers (1/2/3-bit groups of 64 or 128 columns, sorted by width) with more programs than some shares have blocks (empty programs), a short last block, whole and partly filled token tiles, exact
    codes in one operand or in pieces, ``scaled`` operands, the gather or ``x`` read directly: each program's run of
    blocks, the sums finished by the last program."""
    if layer == "short_last":  # seed 2 puts the short last group (K = 360) in the last segment, 3-bit: wg takes it
        p = random_layer(40, 360, 64, [1, 2, 3], seed=2)
        assert [(s.bits, s.c1 - s.c0) for s in p.segments] == [(1, 128), (2, 128), (3, 104)]
    else:
        p = random_layer(*LAYERS[layer], seed=9)
    x = torch.zeros(m, p.in_features, dtype=torch.float16, device=DEV)
    assert all(u is not None and len(u) == len(p.segments) for u in _seg_units(x, p, SPLIT[cfg_name]))
    _check(p, m, torch.float16, SPLIT[cfg_name], bias=True, seed=9)


@inproc
def test_wg_byte_split_is_the_plain_split_on_one_segment():
    """A uniform layer has one segment to share: no weights are passed and the result is the plain split's."""
    p = random_layer(48, 300, 128, 2, seed=2)
    x = torch.randn(16, 300, generator=torch.Generator().manual_seed(2)).to(DEV, torch.float16)
    assert _seg_units(x, p, SPLIT["m16_bytes"]) == [None]
    plain = slt.sbp_matmul(x, p, config=KernelConfig("wg", block_m=16, block_n=64, split_k=3, join=True))
    assert torch.equal(slt.sbp_matmul(x, p, config=SPLIT["m16_bytes"]), plain)


def test_byte_split_refused_where_no_kernel_takes_it():
    """``byte_split`` needs a K split, and path ``wg`` or one-token ``mv`` without ``k_warps``: by name."""
    with pytest.raises(ValueError, match="byte_split applies to path 'wg', and 'mv' with block_m 1"):
        KernelConfig("wg", block_m=16, block_n=64, byte_split=True)
    bases = [slt.select_config(1, 4096, 4096, bits=(2,), mv=False), slt.select_config(4, 28672, 8192, bits=(2,)),
             slt.select_config(512, 28672, 8192, bits=(2,))]  # gv, mv with 4 tokens, wgr
    assert [(c.path, c.split_k > 1) for c in bases] == [("gv", True), ("mv", True), ("wgr", False)]
    for bad in bases:
        with pytest.raises(ValueError, match="byte_split applies to path 'wg'"):
            dataclasses.replace(bad, byte_split=True)
