"""Triton kernels for layout slimq.segmented-bitplane.v1 against the pure-torch reference.

Without a GPU the same kernels run under the Triton interpreter (TRITON_INTERPRET=1, set
below before the kernels are defined) on small shapes; with a GPU they are compiled and the
CUDA-graph / larger-shape tests run too.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import types

import pytest
import torch

GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if GPU else "cpu")
# Without a GPU the kernels must be defined under the Triton interpreter, which triton decides
# when it is imported. If something imported triton earlier in this process, the whole module
# re-runs in a fresh interpreter-mode process (test_in_interpreter_subprocess) instead.
_CHILD_FLAG = "SLIMQ_TEST_TRITON_INTERPRETER_CHILD"
IN_PROCESS = GPU or "triton" not in sys.modules or os.environ.get(_CHILD_FLAG) == "1"
if not GPU and IN_PROCESS:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
inproc = pytest.mark.skipif(not IN_PROCESS, reason="ran in test_in_interpreter_subprocess")


def run_in_interpreter(path: str) -> None:
    """Run the test file ``path`` in a fresh process with the Triton interpreter on."""
    env = dict(os.environ, TRITON_INTERPRET="1", **{_CHILD_FLAG: "1"})
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


@pytest.mark.skipif(IN_PROCESS, reason="kernels run in this process")
def test_in_interpreter_subprocess():
    """triton was imported before this module (compiled mode, no GPU): run it in a fresh process."""
    run_in_interpreter(__file__)


import slimq.kernels.triton as slt  # noqa: E402
from slimq.format.packing import pack  # noqa: E402
from slimq.kernels import BackendUnavailableError, get_backend  # noqa: E402
from slimq.kernels.reference import packed_matmul_reference  # noqa: E402
from slimq.quant.result import QuantizedTensor  # noqa: E402

KernelConfig, Workspace, sbp_matmul, select_config = slt.KernelConfig, slt.Workspace, slt.sbp_matmul, slt.select_config


def random_layer(n, k, gs, bits, *, seed=0, row_bits=None):
    """Packed random layer ``[n, k]``. ``bits``: int, or a list of per-group widths (cycled);
    ``row_bits``: per-row widths (MixLLM-style rows, gives a row_perm)."""
    gen = torch.Generator().manual_seed(seed)
    size = k if gs == -1 else gs
    g = math.ceil(k / size)
    g_idx = (torch.arange(k) // size).to(torch.int32)
    if row_bits is not None:
        b = torch.tensor([row_bits[i % len(row_bits)] for i in range(n)])[:, None].expand(n, g)
    elif isinstance(bits, int):
        b = torch.full((n, g), bits)
    else:
        order = torch.randperm(g, generator=gen)
        b = torch.tensor([bits[int(order[i]) % len(bits)] for i in range(g)])[None].expand(n, g)
    b = b.to(torch.int8).contiguous()
    maxq = (1 << b.long()[:, g_idx.long()]) - 1
    codes = torch.minimum((torch.rand(n, k, generator=gen) * (maxq + 1)).floor(), maxq.float()).to(torch.uint8)
    scales = (torch.rand(n, g, generator=gen) * 0.02 + 2e-3).half()
    zeros = (torch.rand(n, g, generator=gen) * (1 << b.long()).float()).half()
    return pack(QuantizedTensor(codes.to(DEV), scales.to(DEV), zeros.to(DEV), g_idx.to(DEV), b.to(DEV), gs))


def _rel_err(y, ref):
    return float((y.float() - ref.float()).norm() / ref.float().norm())


TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2, torch.float32: 2e-3}


def planned_kernels(x, p, cfg):
    """The kernel names ``cfg``'s plan launches for ``x @ p`` (a fresh workspace and output)."""
    ws = Workspace(DEV, x.shape[0], p.out_features, p.in_features, x.dtype)
    out = torch.empty(x.shape[0], p.out_features, dtype=x.dtype, device=DEV)
    return [lc.kernel for lc in slt.plan_launches(x, p, None, out, ws, cfg)]


def _check(p, m, dtype, cfg, *, bias=False, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, p.in_features, generator=gen).to(DEV, dtype)
    b = torch.randn(p.out_features, generator=gen).to(DEV, dtype) if bias else None
    ref = packed_matmul_reference(x, p, b)
    out = torch.full((m, p.out_features), float("nan"), dtype=dtype, device=DEV)  # poison: all must be written
    path = slt.resolve_config(x, p, cfg).path
    ws = Workspace(DEV, m, p.out_features, p.in_features, dtype, dequant=path == "dequant",
                   stream_k_programs=cfg.stream_k if cfg and cfg.stream_k else None)
    y = sbp_matmul(x, p, b, out=out, workspace=ws, config=cfg)
    assert y is out
    assert bool(torch.isfinite(y).all()), "unwritten (NaN) outputs"
    err = _rel_err(y, ref)
    assert err < TOL[dtype], f"relative error {err:.2e} (path {cfg.path if cfg else 'auto'})"
    assert not bool(ws.acc.any()), "the split-K workspace must be left zeroed"
    assert not bool(ws.cnt.any()), "the split-K tile counters must be left zeroed"
    assert not bool(ws.skf.any()), "the stream-K flags must be left zeroed"
    rc = cfg or slt.resolve_config(x, p)
    if rc.split_k > 1 and rc.path in ("gv", "mv", "h2", "h2dot", "tc", "wg") and not (rc.path == "mv" and m > 1):
        launches = slt.plan_launches(x, p, b, out, ws, cfg or slt.resolve_config(x, p))
        assert "finalize_kernel" not in [lc.kernel for lc in launches], "split-K finishes in its last program"


# (n, k, gs, bits): odd sizes, short last groups, 1..8 bits, SliM-style 1/2/3-bit mixes
LAYERS = {
    "mix123_short": (40, 200, 64, [1, 2, 3]),
    "u3_odd": (33, 96, 32, 3),
    "mix_wide": (24, 320, 64, [4, 5, 6, 7, 8]),
    "u2_g128_short": (48, 300, 128, 2),
    "unaligned_g20": (40, 100, 20, [2, 5]),
    "mix123_full": (40, 384, 64, [1, 2, 3]),  # whole groups: segments on 64-column boundaries ("tc")
    "mv_mix123": (64, 768, 128, [1, 2, 3]),  # segments on 128-column boundaries ("mv")
    "mv_wide": (32, 1024, 128, [4, 5, 6, 8]),
    "mv_u2_g256": (96, 512, 256, 2),
}
CFGS = {
    "fma1": KernelConfig("fma", block_m=1, block_n=32, block_k=64),
    "fma1_split_perseg": KernelConfig("fma", block_m=1, block_n=32, block_k=32, split_k=3, walk=False),
    "fma1_prefetch": KernelConfig("fma", block_m=1, block_n=32, block_k=32, split_k=2, prefetch=True),
    "fma_gather_m2": KernelConfig("fma", block_m=2, block_n=32, block_k=64, gather=True),
    "dot": KernelConfig("dot", block_m=16, block_n=32, block_k=64),
    "dot_split_gather": KernelConfig("dot", block_m=16, block_n=16, block_k=32, split_k=2, gather=True),
    "gemm": KernelConfig("gemm", block_m=16, block_n=32, block_k=32),
    "gemm_split_perseg": KernelConfig("gemm", block_m=16, block_n=16, block_k=64, split_k=2, walk=False),
    "dequant": KernelConfig("dequant", block_n=32, block_k=64),
    "dequant_chunked": KernelConfig("dequant", block_n=16, block_k=64, chunk_n=16),
    "gv": KernelConfig("gv", block_m=1, block_n=32, block_k=64, num_warps=1),
    "gv_split": KernelConfig("gv", block_m=1, block_n=64, block_k=32, split_k=3, num_warps=2),
    "gv_nopdl": KernelConfig("gv", block_m=1, block_n=32, block_k=128, split_k=2, num_warps=1, pdl=False),
    "gv_depth2": KernelConfig("gv", block_m=1, block_n=32, block_k=32, split_k=2, num_warps=1, depth=2),
    "gv_gather": KernelConfig("gv", block_m=1, block_n=32, block_k=64, split_k=3, num_warps=1, gather=True),
    "gv_gather_d2": KernelConfig("gv", block_m=1, block_n=64, block_k=32, split_k=2, num_warps=2, depth=2,
                                 gather=True),
    "gv_maxnreg": KernelConfig("gv", block_m=1, block_n=32, block_k=64, split_k=2, num_warps=1, depth=2, maxnreg=96),
    "mv": KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=1),
    "mv_split": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=3, num_warps=2),
    "mv_l2": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=2, num_warps=2, l2_ahead=2),
    "mv_m5": KernelConfig("mv", block_m=16, block_n=32, block_k=128, num_warps=1),
    "mv_kw1": KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=1, k_warps=1),
    "mv_kw4": KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=4, k_warps=4),
    "mv_kw4_dx": KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=4, k_warps=4, direct=True),
    "mv_split_dx": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=3, num_warps=2, direct=True),
    "mv_l2_dx": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=2, num_warps=2, l2_ahead=2,
                             direct=True),
    "mv_m16_split": KernelConfig("mv", block_m=16, block_n=64, block_k=128, split_k=3, num_warps=2),
    "mv_bytes": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=4, num_warps=2, byte_split=True),
    "mv_tiles": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=3, num_warps=2, byte_split=True,
                             tile_units=4000),
    "mv_planes": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=4, num_warps=2, byte_split=True,
                              tile_units=576, plane_units=4000),
    "mv_bytes_l2_dx": KernelConfig("mv", block_m=1, block_n=64, block_k=128, split_k=5, num_warps=2, l2_ahead=1,
                                   byte_split=True, direct=True),
    "mv_m5_l2": KernelConfig("mv", block_m=16, block_n=64, block_k=128, split_k=2, num_warps=2, l2_ahead=2),
    "h2_m1": KernelConfig("h2", block_m=1, block_n=32, block_k=64),
    "h2_m1_split": KernelConfig("h2", block_m=1, block_n=16, block_k=32, split_k=3),
    "h2_m1_prefetch": KernelConfig("h2", block_m=1, block_n=32, block_k=32, split_k=2, prefetch=True),
    "h2_m4": KernelConfig("h2", block_m=4, block_n=32, block_k=64, split_k=2),
    "h2_m16": KernelConfig("h2", block_m=16, block_n=16, block_k=64),
    "h2dot": KernelConfig("h2dot", block_m=16, block_n=16, split_k=2),
    "h2dot_join": KernelConfig("h2dot", block_m=16, block_n=32, join=True),
    "h2dot_join_split": KernelConfig("h2dot", block_m=32, block_n=16, split_k=3, join=True),
    "tc": KernelConfig("tc", block_m=16, block_n=32, split_k=2),
    "tc_m32": KernelConfig("tc", block_m=32, block_n=16, split_k=3, num_warps=2),
    "wg": KernelConfig("wg", block_m=16, block_n=64, split_k=2, join=True),
    "wg_pieces": KernelConfig("wg", block_m=16, block_n=64, split_k=3),
    "wg_scaled": KernelConfig("wg", block_m=64, block_n=64, split_k=2, join=True, scaled=True),
    "wg_scaled_pieces": KernelConfig("wg", block_m=32, block_n=64, scaled=True),
    "wg_nopdl": KernelConfig("wg", block_m=16, block_n=64, split_k=4, join=True, pdl=False),
    "wg_wide": KernelConfig("wg", block_m=16, block_n=128, split_k=3, join=True),
}
M_OF = {"gv": 1, "gv_split": 1, "gv_nopdl": 1, "gv_depth2": 1, "gv_gather": 1, "gv_gather_d2": 1, "gv_maxnreg": 1, "mv": 1, "mv_split": 1, "mv_l2": 1, "mv_kw1": 1, "mv_kw4": 1, "mv_kw4_dx": 1, "mv_split_dx": 1, "mv_l2_dx": 1, "mv_bytes": 1, "mv_tiles": 1, "mv_planes": 1, "mv_bytes_l2_dx": 1, "mv_m5": 5, "mv_m16_split": 16, "mv_m5_l2": 5, "fma1": 1, "fma1_split_perseg": 1, "fma1_prefetch": 1, "fma_gather_m2": 2, "dot": 5, "dot_split_gather": 16,
        "gemm": 19, "gemm_split_perseg": 7, "dequant": 3, "dequant_chunked": 5, "h2_m1": 1, "h2_m1_split": 1, "h2_m1_prefetch": 1,
        "h2_m4": 3, "h2_m16": 16, "h2dot": 7, "h2dot_join": 16, "h2dot_join_split": 20, "tc": 5, "tc_m32": 33,
        "wg": 5, "wg_pieces": 16, "wg_scaled": 70, "wg_scaled_pieces": 20, "wg_nopdl": 9, "wg_wide": 4}
BLOCKED = ("tc", "wg")  # paths that need segments on 64/128-column blocks (ops.tc_supported)


def _layer_for(c):
    """The SliM-style test layer a config's path can run."""
    return {"mv": "mv_mix123"}.get(CFGS[c].path, "mix123_full" if CFGS[c].path in BLOCKED else "mix123_short")


PATH_CASES = ([(_layer_for(c), c) for c in CFGS]
              + [("u3_odd", c) for c in ("fma1", "dot_split_gather", "gemm", "gv_split", "h2_m1", "h2_m4", "dequant_chunked",
                                         "h2dot_join", "tc", "wg", "wg_pieces", "wg_scaled")])


@inproc
@pytest.mark.parametrize("layer,cfg_name", PATH_CASES)
def test_paths_match_reference(layer, cfg_name):
    _check(random_layer(*LAYERS[layer]), M_OF[cfg_name], torch.float16, CFGS[cfg_name], bias=cfg_name != "dot")


@inproc
@pytest.mark.parametrize("layer,cfg_name", [("mix_wide", "fma1"), ("mix_wide", "gemm"), ("u2_g128_short", "dot"),
                                            ("mix_wide", "gv"), ("mix_wide", "gv_split"), ("u2_g128_short", "gv_nopdl"),
                                            ("mix_wide", "gv_depth2"), ("u2_g128_short", "gv_depth2"),
                                            ("mix_wide", "gv_gather"), ("u2_g128_short", "gv_gather"),
                                            ("u2_g128_short", "gv_gather_d2"),
                                            ("u2_g128_short", "fma1_prefetch"), ("mix_wide", "h2_m1_split"), ("mix_wide", "h2_m1_prefetch"),
                                            ("u2_g128_short", "h2_m1_prefetch"),
                                            ("mix_wide", "h2_m4"), ("u2_g128_short", "h2_m16"),
                                            ("mix_wide", "h2dot"), ("mix_wide", "h2dot_join_split"),
                                            ("u2_g128_short", "h2dot_join"), ("unaligned_g20", "gemm"),
                                            ("unaligned_g20", "fma1"), ("unaligned_g20", "dot"),
                                            ("mix_wide", "tc"), ("mix_wide", "tc_m32"), ("u2_g128_short", "tc"),
                                            ("mix_wide", "wg"), ("mix_wide", "wg_pieces"), ("mix_wide", "wg_scaled"),
                                            ("mix_wide", "wg_scaled_pieces"), ("u2_g128_short", "wg"),
                                            ("u2_g128_short", "wg_scaled"), ("mix_wide", "wg_wide"),
                                            ("mix123_full", "wg_wide")])
def test_bit_widths_and_groupings(layer, cfg_name):
    _check(random_layer(*LAYERS[layer], seed=3), M_OF[cfg_name], torch.float16, CFGS[cfg_name])


@inproc
@pytest.mark.parametrize("dtype,cfg_name", [(torch.bfloat16, "fma1"), (torch.bfloat16, "dot"),
                                            (torch.bfloat16, "h2_m4"), (torch.float32, "h2_m1"),
                                            (torch.bfloat16, "gv"), (torch.float32, "gv_split"),
                                            (torch.bfloat16, "gv_gather"), (torch.bfloat16, "mv"), (torch.float32, "mv_split"),
                                            (torch.bfloat16, "h2dot"), (torch.bfloat16, "h2dot_join"),
                                            (torch.bfloat16, "tc"), (torch.float32, "tc"),
                                            (torch.bfloat16, "gemm_split_perseg"), (torch.float32, "fma1"),
                                            (torch.float32, "gemm_split_perseg"), (torch.bfloat16, "wg"),
                                            (torch.float32, "wg"), (torch.bfloat16, "wg_scaled")])
def test_dtypes(dtype, cfg_name):
    if not GPU and dtype == torch.bfloat16 and CFGS[cfg_name].path not in ("fma", "gv", "mv", "h2", "h2dot", "tc", "wg"):
        pytest.skip("the Triton interpreter computes bf16 tl.dot wrongly (numpy has no bf16); runs on GPU")
    _check(random_layer(*LAYERS[_layer_for(cfg_name)], seed=5), M_OF[cfg_name], dtype, CFGS[cfg_name], bias=True)


@inproc
@pytest.mark.parametrize("cfg_name", ["fma1_split_perseg", "dot", "dequant", "dequant_chunked", "gv_split", "gv_gather",
                                      "h2_m1_split",
                                      "h2_m4", "h2dot", "h2dot_join_split", "tc", "wg", "wg_scaled"])
def test_row_permuted_layers(cfg_name):
    """Bit-widths varying along rows (MixLLM): several bands and a row_perm."""
    p = random_layer(37, 128, 32, None, row_bits=[2, 4, 3], seed=7)
    assert p.row_perm is not None and len({(s.r0, s.r1) for s in p.segments}) == 3
    _check(p, M_OF[cfg_name], torch.float16, CFGS[cfg_name], bias=True)


@inproc
@pytest.mark.parametrize("m,layer", [(1, "mix123_short"), (3, "mix123_short"), (17, "mix123_short"),
                                     (3, "mix123_full"), (40, "mix123_full"), (129, "mix123_full")])
def test_auto_dispatch_and_registry(m, layer):
    p = random_layer(*LAYERS[layer], seed=11)
    _check(p, m, torch.float16, None, bias=True)
    x = torch.randn(2, m, p.in_features).to(DEV, torch.float16)
    if GPU:
        y = get_backend("triton", DEV).matmul(x, p, None)
        assert y.shape == (2, m, p.out_features)
        assert _rel_err(y, packed_matmul_reference(x, p)) < TOL[torch.float16]


@inproc
def test_h2_needs_32_column_segments_and_falls_back():
    """gs=20 puts segment boundaries off 32-column multiples: explicit h2 refuses, auto falls back."""
    p = random_layer(*LAYERS["unaligned_g20"], seed=4)
    assert slt.h2_supported(p) is not None and slt.h2_supported(random_layer(*LAYERS["u3_odd"])) is None
    x = torch.randn(1, p.in_features).to(DEV, torch.float16)
    with pytest.raises(ValueError, match="path 'h2' cannot run this layer"):
        sbp_matmul(x, p, config=CFGS["h2_m1"])
    with pytest.raises(ValueError, match="path 'h2dot' cannot run this layer"):
        sbp_matmul(x, p, config=CFGS["h2dot"])
    _check(p, 1, torch.float16, None)
    _check(p, 4, torch.float16, None)


@inproc
def test_tc_needs_block_aligned_segments_and_falls_back():
    """A short group inside the columns puts later segments off the 64-column blocks: explicit
    "tc" refuses; auto dispatch takes h2dot (or the float32 path) and stays exact."""
    p = random_layer(*LAYERS["mix123_short"], seed=4)
    assert slt.tc_supported(p) is not None and slt.tc_supported(random_layer(*LAYERS["mix123_full"])) is None
    assert slt.tc_block(128) == 128 and slt.tc_block(64) == 64 and slt.tc_block(96) == 32 and slt.tc_block(20) == 0
    x = torch.randn(4, p.in_features).to(DEV, torch.float16)
    with pytest.raises(ValueError, match="path 'tc' cannot run this layer"):
        sbp_matmul(x, p, config=CFGS["tc"])
    assert slt.resolve_config(x, p).path == "h2dot"
    assert slt.resolve_config(x, random_layer(*LAYERS["unaligned_g20"])).path == "dot"
    with pytest.raises(ValueError, match="path 'wg' cannot run this layer"):
        sbp_matmul(x, p, config=CFGS["wg"])
    x16 = torch.randn(16, p.in_features).to(DEV, torch.float16)
    assert slt.resolve_config(x16, random_layer(*LAYERS["mix123_full"])).path == "wg"
    assert slt.resolve_config(x16, p).path == "h2dot"
    x40 = torch.randn(40, p.in_features).to(DEV, torch.float16)
    assert slt.resolve_config(x40, random_layer(*LAYERS["mix123_full"])).path == "wg"
    assert slt.resolve_config(x40, p).path == "gemm"
    _check(p, 4, torch.float16, None)
    _check(p, 40, torch.float16, None)


@inproc
def test_tc_handles_large_activations():
    """Codes times fp16 activations accumulate in float32: activations near the fp16 limit stay finite."""
    p = random_layer(64, 256, 128, 3, seed=9)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 256, generator=gen) * 2e4).clamp(-6e4, 6e4).to(DEV, torch.float16)
    y = sbp_matmul(x, p, config=CFGS["tc"])
    assert bool(torch.isfinite(y).all())
    assert _rel_err(y, packed_matmul_reference(x, p)) < TOL[torch.float16]


@inproc
@pytest.mark.parametrize("cfg_name", ["wg", "wg_scaled"])
def test_wg_handles_large_activations(cfg_name):
    """Codes (or fp16 weights) times fp16 activations accumulate in float32 on the tensor cores."""
    p = random_layer(64, 256, 128, [3, 2], seed=9)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 256, generator=gen) * 2e4).clamp(-6e4, 6e4).to(DEV, torch.float16)
    y = sbp_matmul(x, p, config=CFGS[cfg_name])
    assert bool(torch.isfinite(y).all())
    assert _rel_err(y, packed_matmul_reference(x, p)) < TOL[torch.float16]


@inproc
@pytest.mark.parametrize("cfg_name,m,bits", [("h2_m4", 2, 4), ("gv", 1, [3, 2, 1]), ("gv_split", 1, 3),
                                             ("gv_gather", 1, [1, 2])])
def test_h2_handles_large_activations(cfg_name, m, bits):
    """Half2 partial sums must not overflow for activations in the thousands (x is pre-scaled); ``gv``
    sums 3-bit codes (up to 7) as one code."""
    p = random_layer(64, 256, 128, bits, seed=9)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(m, 256, generator=gen) * 3000).to(DEV, torch.float16)
    y = sbp_matmul(x, p, config=CFGS[cfg_name])
    assert bool(torch.isfinite(y).all())
    assert _rel_err(y, packed_matmul_reference(x, p)) < TOL[torch.float16]


@inproc
def test_gv_gather_is_one_launch():
    """With ``gather`` the ``gv`` programs pair their own activations: no separate gather launch."""
    p = random_layer(*LAYERS["mix123_short"])
    x = torch.randn(1, p.in_features).to(DEV, torch.float16)
    ws = Workspace(DEV, 1, p.out_features, p.in_features, torch.float16)
    out = torch.empty(1, p.out_features, device=DEV, dtype=torch.float16)
    assert [lc.kernel for lc in slt.plan_launches(x, p, None, out, ws, CFGS["gv_gather"])] == ["gv_kernel"]
    assert [lc.kernel for lc in slt.plan_launches(x, p, None, out, ws, CFGS["gv_split"])] == \
        ["pair_gather_kernel", "gv_kernel"]


@inproc
def test_balanced_split_fills_the_last_wave():
    from slimq.kernels.triton._dispatch import _balanced_split
    for tiles in range(1, 600, 7):
        for sms in (66, 114, 132):
            split = _balanced_split(tiles, 64, 3.9, sms)
            assert 1 <= split <= 16
            u = tiles * split / sms
            if tiles * 16 >= 3.9 * sms:  # enough work for the target: at least 0.95 of it
                assert u >= 0.95 * 3.9
            if split > 1 and u >= 0.95 * 3.9:  # no smaller split reaching the target fills its last wave to 95%
                for s in range(1, split):
                    us = tiles * s / sms
                    assert us < 0.95 * 3.9 or us / math.ceil(us) < 0.95
    assert _balanced_split(448, 64, 3.9, 132) == 2 and _balanced_split(86, 32, 2, 132) == 3
    assert _balanced_split(8, 4, 3.9, 132) == 4  # too little work for the target: the largest split K allows
    assert _balanced_split(1050, 64, 3.9, 132) == 1  # 7.95 per SM at split 1: a full last wave


@inproc
def test_select_config_is_explicit():
    assert [select_config(m, 4096, 4096).path for m in (1, 2, 4, 16, 17, 64, 128)] == ["gv"] + ["wg"] * 6
    assert [select_config(m, 4096, 4096, bits=b).path for m in (2, 16) for b in ((2, 4), (3,), (4, 5))] == ["wg"] * 6
    assert [select_config(m, 4096, 4096).block_m for m in (1, 3, 16, 17, 32, 33, 64, 65, 128)] == \
        [1, 16, 16, 32, 32, 64, 64, 128, 128]
    assert [select_config(m, 4096, 4096).scaled for m in (16, 32, 33, 128)] == [False, False, True, True]
    assert all(select_config(m, 4096, 4096).join and select_config(m, 4096, 4096).block_n == 64 for m in (2, 100))
    # K split towards ~4 (token tiles <= 32) or ~3 (larger) programs per SM, as measured on the H200; 9-16 tokens
    # with a full last wave (28672 x 8192: 448 tiles take split 2, 6.8 per SM, not 1: 3.4; run 97)
    assert [select_config(16, n, k).split_k for n, k in ((28672, 8192), (8192, 28672), (4096, 4096), (11008, 4096))] \
        == [2, 4, 8, 3]
    assert [select_config(4, n, k).split_k for n, k in ((28672, 8192), (11008, 4096))] == [1, 2]  # masked: as before
    assert [select_config(64, n, k).split_k for n, k in ((28672, 8192), (8192, 28672), (4096, 4096))] == [1, 2, 4]
    assert select_config(16, 4096, 4096, num_sms=66).split_k == 4  # half the SMs, half the programs
    assert slt.fallback_config(1, 4096, 4096).path == "fma" and slt.fallback_config(5, 4096, 4096).path == "dot"
    assert [select_config(m, 4096, 4096).path for m in (129, 256, 1024)] == ["dequant"] * 3
    assert slt.DEQUANT_MIN_M == slt.WG_MAX_M + 1
    # wgs (warp-specialised, 256 x 128 tiles) on layers of 2^26+ weights up to 1024 tokens, of 2^25+ up to 512;
    # stream-K over the SMs unless the tiles make one full wave over a short K (run 89); dequantize-then-cuBLAS
    # elsewhere (runs 51-53, 89)
    assert [select_config(m, 28672, 8192).path for m in (129, 256, 257, 512, 1024, 1025)] == \
        ["wgs"] * 5 + ["dequant"]
    cases = ((256, 8192, 28672), (512, 8192, 28672), (256, 8192, 8192), (512, 8192, 8192), (1024, 8192, 8192),
             (256, 4096, 11008), (512, 11008, 4096), (1024, 28672, 8192))
    assert [select_config(m, n, k).stream_k for m, n, k in cases] == [132, 132, 132, 0, 132, 132, 132, 132]
    assert all(select_config(m, n, k).split_k == 1 for m, n, k in cases)
    assert select_config(512, 8192, 8192, num_sms=100).stream_k == 100  # 128 tiles: more than one wave of 100
    assert [select_config(m, n, k).path for m, n, k in ((1024, 11008, 4096), (1024, 4096, 11008), (256, 4096, 4096))] \
        == ["dequant"] * 3
    c = select_config(200, 28672, 8192)
    assert (c.block_m, c.block_n, c.num_warps, c.num_stages, c.split_k, c.producers, c.depth, c.stream_k) == \
        (256, 128, 8, 2, 1, 4, 2, 132)
    assert select_config(256, 28672, 8192).chunk_n == 0 and select_config(256, 4096, 4096).chunk_n == 0
    assert [select_config(1, n, k).split_k for n, k in ((28672, 8192), (8192, 28672), (4096, 4096), (4096, 11008),
                                                         (11008, 4096))] == [4, 16, 16, 32, 8]
    # M = 1: mv on layers of 8192+ columns with codes of 4+ bits (run 63), on every layer of 2^26+ weights (run 76,
    # with the L2 prefetch; SliM there since it reads x itself, run 186); h2 for other big layers of 4 bits and
    # more (runs 19 and 27); gv elsewhere
    assert [select_config(1, 28672, 8192, bits=b).path for b in ((2,), (1, 2, 3), (2, 4), (4,), (4, 8), (3,), (7,))] \
        == ["mv", "mv", "mv", "mv", "mv", "mv", "h2"]
    assert [select_config(1, n, k, bits=(2,), direct=False).path
            for n, k in ((8192, 28672), (8192, 8192), (4096, 11008))] == ["mv", "mv", "gv"]
    assert [select_config(1, 8192, 8192, bits=b).path for b in ((3,), (1, 2, 3))] == ["mv", "mv"]
    assert select_config(1, 8192, 8192, bits=(1, 2, 3), direct=False).path == "gv"  # SliM after the gather
    # reading x itself: mv on the other layers of 2^24 up to 2^27 weights too (K split at <= 7 programs per SM, the
    # highest cap of 128/96/80/72 that keeps one wave, no prefetch; runs 187, 190); gv where x cannot be read
    got = {(n, k, b): select_config(1, n, k, bits=b) for n, k in ((4096, 11008), (11008, 4096), (2048, 8192))
           for b in ((2,), (3,), (1, 2, 3))}
    assert {(c.path, c.split_k, c.maxnreg, c.l2_ahead, c.direct)
            for c in (select_config(1, 22016, 4096, bits=b) for b in ((2,), (4,), (1, 2, 3)))} == \
        {("mv", 4, 80, 0, True)}
    # SliM wherever K is split: tiles shared out by bytes plus 576 per tile and, per bit plane past the first (3-bit
    # tiles), 576 more on layers of 2^27+ weights, 288 below (runs 245-247); 128 registers where one wave still fits
    # (runs 232-235); not where the mixed widths are MixLLM's 4/8-bit row bands
    c = select_config(1, 22016, 4096, bits=(1, 2, 3))
    assert (c.path, c.split_k, c.maxnreg, c.l2_ahead, c.direct, c.byte_split, c.tile_units, c.plane_units) == \
        ("mv", 4, 80, 0, True, True, 576, 288)
    assert [(c.byte_split, c.tile_units, c.plane_units) for c in (select_config(1, n, k, bits=(1, 2, 3)) for n, k in (
        (28672, 8192), (8192, 28672), (11008, 4096), (12288, 4096), (8192, 8192), (4096, 11008)))] == \
        [(True, 576, 576)] * 2 + [(True, 576, 288)] * 4
    c = select_config(1, 8192, 28672, bits=(1, 2, 3))
    assert (c.split_k, c.maxnreg, c.l2_ahead, c.direct) == (8, 128, 1, False)
    assert select_config(1, 28672, 8192, bits=(1, 2, 3)).maxnreg == 72
    assert not select_config(1, 28672, 8192, bits=(4, 8)).byte_split
    assert not any(select_config(1, 28672, 8192, bits=b).byte_split for b in ((2,), (3,), (4,)))
    assert select_config(1, 22016, 4096, bits=(2,), direct=False).path == "gv"
    assert {(c.path, c.split_k, c.maxnreg, c.l2_ahead, c.direct) for key, c in got.items() if key[0] == 4096} == \
        {("mv", 16, 128, 0, True)}
    assert {(c.path, c.split_k, c.maxnreg, c.l2_ahead, c.direct) for key, c in got.items() if key[0] == 11008} == \
        {("mv", 8, 80, 0, True)}
    assert select_config(1, 8192, 1024, bits=(2,)).path == "gv"  # under 2^24 weights, more than one wave of mvs
    assert [select_config(1, n, k, bits=(2,), direct=False).path for n, k in ((11008, 4096), (2048, 8192))] == \
        ["gv", "gv"]
    # on 2^26+ weights: prefetch into L2 one tile past the next, K split at <= 7 programs per SM, the highest
    # register cap of 96/80/72 that keeps the grid in one wave (3-bit: 96 always; 4+ bits: 96 or none); reading x
    # itself (direct) under 2^27 weights and with 3-4-bit codes (128 registers where one wave holds them and for
    # 3-bit codes; no prefetch for mixed widths), after the gather for 2-bit and SliM on the big layers (run 186);
    # since the weights load evict-first, the prefetch only where a program takes more than 16 K tiles (run 243) of
    # codes under 4 bits (runs 245, 248)
    got = {(n, k, b): select_config(1, n, k, bits=b) for n, k in ((28672, 8192), (8192, 28672), (8192, 8192))
           for b in ((2,), (3,), (4,), (1, 2, 3))}
    assert {key: (c.split_k, c.maxnreg, c.l2_ahead, c.direct) for key, c in got.items()} == {
        (28672, 8192, (2,)): (4, 72, 0, False), (28672, 8192, (3,)): (4, 128, 0, True),
        (28672, 8192, (4,)): (4, 0, 0, True), (28672, 8192, (1, 2, 3)): (4, 72, 0, False),
        (8192, 28672, (2,)): (8, 96, 1, False), (8192, 28672, (3,)): (8, 128, 1, True),
        (8192, 28672, (4,)): (8, 128, 0, True), (8192, 28672, (1, 2, 3)): (8, 128, 1, False),
        (8192, 8192, (2,)): (8, 128, 0, True), (8192, 8192, (3,)): (8, 128, 0, True),
        (8192, 8192, (4,)): (8, 128, 0, True), (8192, 8192, (1, 2, 3)): (8, 128, 0, True)}
    assert select_config(1, 24576, 8192, bits=(2,)).maxnreg == 80  # 4 x 192 programs: 6 per SM fit, 5 do not
    assert [select_config(1, n, k, bits=(4,), direct=False).path
            for n, k in ((4096, 11008), (8192, 8192), (11008, 4096), (40960, 4096))] == ["mv", "mv", "gv", "h2"]
    # mv with the warps splitting K (k_warps) on layers of <= 4096 columns whose 32-row programs make one wave
    # (run 170), reading x itself (direct): 16 warps for uniform widths, 8 for mixed ones
    got = [select_config(1, n, k, bits=b) for n, k, b in ((4096, 4096, (4,)), (4096, 4096, (4, 8)),
                                                           (4096, 4096, (1, 2, 3)), (4096, 4096, (7,)),
                                                           (11008, 4096, (2,)), (4096, 11008, (2,)), (2048, 2048, (3,)))]
    assert [(c.path, c.k_warps) for c in got] == [("mv", 16), ("mv", 8), ("mv", 8), ("gv", 0), ("mv", 0), ("mv", 0),
                                                  ("mv", 16)]
    assert all(c.direct for c in got if c.k_warps)
    assert select_config(1, 4096, 4096, bits=(2,), mv=False).path == "gv"
    assert [select_config(1, n, k, bits=(4,)).split_k for n, k in ((28672, 8192), (8192, 28672), (4096, 11008))] == \
        [4, 8, 16]
    assert select_config(1, 4096, 11008, bits=(4,), direct=False).l2_ahead == 0  # below 2^26: no prefetch, no cap
    assert select_config(1, 28672, 8192, bits=(4,), num_sms=66).split_k == 2
    # 2-8 tokens: mv on layers of 2^26+ weights (one block of 8 token columns; run 65), wg elsewhere and beyond
    assert [select_config(m, n, k, bits=b).path for m, n, k, b in (
        (2, 28672, 8192, (2,)), (8, 8192, 8192, (1, 2, 3)), (9, 28672, 8192, (2,)), (4, 4096, 11008, (2,)),
        (4, 28672, 8192, (7,)), (4, 28672, 8192, None))] == ["mv", "mv", "wg", "wg", "wg", "wg"]
    c = select_config(4, 28672, 8192, bits=(3,))
    assert (c.block_m, c.block_n, c.num_warps, c.maxnreg, c.split_k) == (16, 128, 4, 128, 2)
    assert select_config(4, 8192, 28672, bits=(3,)).split_k == 8
    assert [select_config(4, 28672, 8192, bits=b).l2_ahead for b in ((2,), (3,), (4,), (1, 2, 3))] == [1, 0, 1, 1]
    assert select_config(4, 28672, 8192, bits=(2,), mv=False).path == "wg"
    # gv pairs its own activations on small layers (K split <= 16 then), 3-bit ones only up to 4096 x 4096;
    # layers of 1- and 2-bit codes only load two tiles ahead (the rule without mv: 8192 x 8192 takes mv now)
    cfgs = [select_config(1, n, k, bits=b, mv=False) for n, k, b in ((4096, 4096, (3,)), (8192, 8192, (3,)),
                                                            (8192, 8192, (2,)), (28672, 4096, (2,)),
                                                            (4096, 4096, (1, 2, 3)), (22016, 4096, (4,)))]
    assert [(c.gather, c.depth, c.split_k) for c in cfgs] == \
        [(True, 1, 16), (False, 1, 16), (True, 2, 16), (True, 2, 4), (True, 1, 16), (True, 1, 4)]
    assert select_config(1, 4096, 4096, bits=(2,), mv=False).depth == 2
    assert select_config(1, 4096, 200, bits=(2,), mv=False).depth == 1
    # wg launches during its gather (PDL) with <= 32-token tiles on layers under 2^27 weights (runs 14, 80)
    assert [select_config(m, n, k).pdl for m, n, k in ((16, 4096, 4096), (32, 8192, 8192), (16, 28672, 8192),
                                                        (64, 4096, 4096))] == [True, True, False, False]
    assert select_config(1, 4096, 4096).pdl
    # 9-16 tokens: tiles of 128 rows (K split to ~2 programs per SM) under 2^27 weights where K >= 8192 or the codes
    # are uniform 1/2/4-bit; 64 rows otherwise and with fewer tokens (runs 82, 83)
    got = [(c.block_n, c.split_k) for c in (select_config(m, n, k, bits=b) for m, n, k, b in (
        (16, 4096, 11008, (1, 2, 3)), (16, 8192, 8192, (3,)), (16, 11008, 4096, (2,)), (16, 11008, 4096, (3,)),
        (16, 11008, 4096, (1, 2, 3)), (4, 4096, 4096, (4,)), (16, 28672, 8192, (2,)), (32, 4096, 11008, (2,))))]
    assert got == [(128, 8), (128, 4), (128, 3), (64, 3), (64, 3), (64, 8), (64, 2), (64, 8)]  # K splits: run 97
    # SliM at 9-16 tokens with K split: each program a run of blocks across the segments, 576 units per block
    # (runs 256-257); not at 2-8 tokens (run 257: mixed), with wider token tiles, on uniform or 4/8-bit layers
    got = [select_config(m, n, k, bits=b) for m, n, k, b in (
        (16, 4096, 4096, (1, 2, 3)), (9, 11008, 4096, (1, 2, 3)), (16, 28672, 8192, (1, 2)),
        (4, 4096, 11008, (1, 2, 3)), (32, 4096, 4096, (1, 2, 3)), (16, 4096, 4096, (2,)), (16, 4096, 4096, (4, 8)))]
    assert [(c.path, c.byte_split, c.tile_units, c.plane_units) for c in got] == \
        [("wg", True, 576, 0)] * 3 + [("wg", False, 0, 0)] * 4
    assert select_config(1, 4096, 200).split_k == 2 and select_config(4, 64, 200).split_k == 2  # <= K-tiles
    for m in (1, 16, 64, 1024):
        for n, k in ((4096, 4096), (28672, 8192), (8192, 28672), (576, 576)):
            cfg = select_config(m, n, k)
            assert cfg.split_k >= 1 and cfg.block_k >= 32
    with pytest.raises(ValueError, match="m, n, k must be >= 1"):
        select_config(0, 8, 8)


@inproc
def test_config_and_input_errors():
    with pytest.raises(ValueError, match="path must be one of"):
        KernelConfig("cutlass")
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig("gemm", block_n=48)
    with pytest.raises(ValueError, match="block_k must be >= 32"):
        KernelConfig("fma", block_k=16)
    with pytest.raises(ValueError, match="scaled applies to path 'wg' only"):
        KernelConfig("tc", scaled=True)
    with pytest.raises(ValueError, match="tensor-core paths need block_m, block_n >= 16"):
        KernelConfig("wg", block_m=8)
    with pytest.raises(ValueError, match="maxnreg must be 0, or a multiple of 8"):
        KernelConfig("h2", block_m=1, maxnreg=96)
    with pytest.raises(ValueError, match="maxnreg must be 0, or a multiple of 8"):
        KernelConfig("gv", block_m=1, maxnreg=100)
    with pytest.raises(ValueError, match="path 'gv' takes block_m == 1"):
        KernelConfig("gv", block_m=2)
    with pytest.raises(ValueError, match="l2_ahead must be 0, or 1..16 with path 'mv'"):
        KernelConfig("gv", block_m=1, l2_ahead=1)
    with pytest.raises(ValueError, match="l2_ahead must be 0, or 1..16 with path 'mv'"):
        KernelConfig("mv", block_m=1, block_n=128, l2_ahead=17)
    with pytest.raises(ValueError, match="depth must be 1, or 2 with path 'gv'"):
        KernelConfig("h2", depth=2)
    with pytest.raises(ValueError, match="depth must be 1, or 2 with path 'gv'"):
        KernelConfig("gv", block_m=1, depth=3)
    with pytest.raises(ValueError, match="path 'gv' with block_m=1 takes M <= 1"):
        sbp_matmul(torch.zeros(2, 96, device=DEV, dtype=torch.float16), random_layer(*LAYERS["u3_odd"]),
                   config=KernelConfig("gv", block_m=1))
    p = random_layer(*LAYERS["u3_odd"])
    with pytest.raises(ValueError, match="x must be"):
        sbp_matmul(torch.zeros(2, 5, device=DEV, dtype=torch.float16), p)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        sbp_matmul(torch.zeros(2, p.in_features, device=DEV, dtype=torch.int32), p)
    ws = Workspace(DEV, 1, p.out_features, p.in_features, torch.float16)
    with pytest.raises(ValueError, match="workspace holds"):
        sbp_matmul(torch.zeros(2, p.in_features, device=DEV, dtype=torch.float16), p, workspace=ws)
    with pytest.raises(ValueError, match="dequant path needs"):
        sbp_matmul(torch.zeros(1, p.in_features, device=DEV, dtype=torch.float16), p, workspace=ws,
                   config=KernelConfig("dequant"))
    with pytest.raises(ValueError, match=r"path 'wgs' splits K \(split_k 2..8\) only with producers"):
        KernelConfig("wgs", block_m=128, num_warps=8, split_k=2)
    with pytest.raises(ValueError, match="producers 0, or 4 or 8 with num_warps 8"):
        KernelConfig("wgs", block_m=64, num_warps=4, producers=4)
    with pytest.raises(ValueError, match="producers applies to paths 'wgs' and 'wgr' only"):
        KernelConfig("wg", block_m=64, producers=4)
    with pytest.raises(ValueError, match="path 'wgr' takes producers 0 or 1"):
        KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, producers=4)
    with pytest.raises(ValueError, match="depth must be 1, or 2 with path 'gv', 'mv' or 'wgs' with producers"):
        KernelConfig("wgs", block_m=128, num_warps=8, depth=2)
    assert KernelConfig("wgs", block_m=128, num_warps=8, producers=8, split_k=4, depth=2).split_k == 4
    with pytest.raises(ValueError, match="block_n >= 16 \\* producers"):
        KernelConfig("wgs", block_m=128, block_n=64, num_warps=8, producers=8)
    with pytest.raises(ValueError, match="path 'wgs' takes num_warps 4 or 8"):
        KernelConfig("wgs", block_m=64, num_warps=8)
    with pytest.raises(ValueError, match="path 'wgs' takes 32 <= block_n"):
        KernelConfig("wgs", block_m=64, block_n=256, num_warps=4)
    if not GPU:  # Gluon has no interpreter: an explicit wgs config says why it cannot run, the dispatch falls back
        x = torch.zeros(200, p.in_features, dtype=torch.float16)
        with pytest.raises(ValueError, match="path 'wgs' cannot run this layer: needs a CUDA device"):
            sbp_matmul(x, p, config=KernelConfig("wgs", block_m=128, num_warps=8))
        assert select_config(200, 28672, 8192).path == "wgs"
        big = types.SimpleNamespace(out_features=28672, in_features=8192, segments=p.segments, row_perm=None)
        assert slt.resolve_config(torch.zeros(200, 8192, dtype=torch.float16), big).path == "dequant"


@inproc
def test_workspace_sizes_split_buffers_for_the_split_paths_only():
    """A workspace for long prompts keeps the operand-order buffers at WG_MAX_M token rows (more tokens go to
    wgs or dequantize-then-cuBLAS, which need none of them) and the float32 sums at up to WGS_SPLIT_MAX_M
    rows (wgs splits K up to there)."""
    p = random_layer(*LAYERS["mix123_full"], seed=12)
    m_big = slt.WG_MAX_M + 3
    ws = Workspace(DEV, m_big, p.out_features, p.in_features, torch.float16, dequant=True)
    assert ws.split_rows == slt.WG_MAX_M and ws.acc.numel() == m_big * p.out_features
    assert Workspace(DEV, 4096, 8, 64).acc.numel() == slt.WGS_SPLIT_MAX_M * 8
    assert ws.pair_stride == slt.WG_MAX_M * ws.kp // 2
    for m in (1, 5, slt.WG_MAX_M, m_big):  # h2, wg, wg with a full tile, dequant: all served by one workspace
        gen = torch.Generator().manual_seed(m)
        x = torch.randn(m, p.in_features, generator=gen).to(DEV, torch.float16)
        out = torch.full((m, p.out_features), float("nan"), dtype=torch.float16, device=DEV)
        sbp_matmul(x, p, out=out, workspace=ws)
        assert _rel_err(out, packed_matmul_reference(x, p)) < TOL[torch.float16]
    assert slt.resolve_config(torch.empty(m_big, p.in_features), p).path == "dequant"
    with pytest.raises(ValueError, match="split_rows >= 131"):
        sbp_matmul(torch.zeros(m_big, p.in_features, device=DEV, dtype=torch.float16), p, workspace=ws,
                   config=KernelConfig("wg", block_m=128, block_n=64))
    with pytest.raises(ValueError, match="max_m, max_n, max_k must be >= 1"):
        Workspace(DEV, 0, 4, 4)


@inproc
def test_backend_registration():
    backend = get_backend("triton")
    assert backend.priority > get_backend("reference").priority
    assert "CUDA" in (backend.unavailable(torch.device("cpu")) or "")
    with pytest.raises(BackendUnavailableError):
        get_backend("triton", "cpu")


# --- GPU only -------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@inproc
@gpu
@pytest.mark.parametrize("m", [1, 4, 16, 33, 64, 128, 300])
@pytest.mark.parametrize("bits", [2, 3, 4, [1, 2, 3]])
def test_gpu_shapes(m, bits):
    p = random_layer(1000, 1100, 128, bits, seed=m)
    _check(p, m, torch.float16, None, bias=True)
    _check(p, m, torch.bfloat16, None)


WGS_CFGS = {
    "wgs": KernelConfig("wgs", block_m=128, block_n=256, num_warps=8, num_stages=2),
    "wgs_n128": KernelConfig("wgs", block_m=128, block_n=128, num_warps=8, num_stages=3),  # two warps per word row
    "wgs_t256": KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2),
    "wgs_4w": KernelConfig("wgs", block_m=64, block_n=128, num_warps=4, num_stages=1),
    "wgs_4w_n64": KernelConfig("wgs", block_m=64, block_n=64, num_warps=4, num_stages=4),
    "wgsw_p4": KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, producers=4),
    "wgsw_p8_t128": KernelConfig("wgs", block_m=128, block_n=128, num_warps=8, num_stages=1, producers=8),
    "wgsw_p4_n64": KernelConfig("wgs", block_m=128, block_n=64, num_warps=8, num_stages=3, producers=4),
    "wgsw_p4_k2_d2": KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, producers=4, split_k=2,
                                  depth=2),
    "wgsw_p8_k3": KernelConfig("wgs", block_m=128, block_n=128, num_warps=8, num_stages=2, producers=8, split_k=3),
    # stream-K: 7 programs (tiles shared by two or three), one program per step (every tile in K-tile pieces),
    # 128-token tiles with 8 producers over 5 programs
    "wgsk_p4_7": KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, producers=4, depth=2,
                              stream_k=7),
    "wgsk_p4_all": KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, producers=4, depth=2,
                                stream_k=132),
    "wgsk_p8_t128": KernelConfig("wgs", block_m=128, block_n=128, num_warps=8, num_stages=1, producers=8, stream_k=5),
}


@inproc
def test_wgs_plan_one_launch_per_band_with_segment_descriptors():
    """The wgs plan (host side, no GPU): a gather into xperm, then per band one launch whose TMA descriptors
    end at each segment's last column (the kernel relies on TMA's zero fill there); precompile specs of it
    are hashable."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    from slimq.kernels.triton.warmup import launch_spec
    p = random_layer(40, 192, 64, 2, row_bits=[2, 4, 3])  # three bands, one segment each
    q = random_layer(*LAYERS["mix123_full"])  # one band, three segments
    for layer, bands in ((p, 3), (q, 1)):
        m = 150
        x = torch.zeros(m, layer.in_features, device=DEV, dtype=torch.float16)
        out = torch.empty(m, layer.out_features, device=DEV, dtype=torch.float16)
        ws = Workspace(DEV, m, layer.out_features, layer.in_features, torch.float16)
        cfg = WGS_CFGS["wgs_t256"]
        launches = slt.plan_launches(x, layer, None, out, ws, cfg)
        assert [lc.kernel for lc in launches] == ["gather_kernel"] + ["wgs_kernel"] * bands
        for lc in launches[1:]:
            descs, segs = lc.args[:8], lc.args[-1]
            assert lc.kwargs["NSEG"] == len(segs) and lc.kwargs["BK"] == 64 and lc.kwargs["XAHEAD"] == 2
            assert [list(d.shape) for d in descs[:len(segs)]] == [[m, c0 + ks] for c0, ks, *_ in segs]
            assert all(d is descs[0] for d in descs[len(segs):]) and list(descs[0].block_shape) == [256, 64]
            assert lc.grid == (triton.cdiv(m, 256) * triton.cdiv(lc.args[14], 128),)
        assert len({launch_spec(lc) for lc in launches}) >= 2


@inproc
def test_wgs_producers_plan_one_descriptor_split_k_and_pair_order():
    """The warp-specialised wgs plan (host side, no GPU): one TMA descriptor of the whole gathered ``[M, K]``
    per band, segments in column order, ``SPLIT`` programs per tile adding into the workspace and one
    finalize launch; float16 layers with ``K % 16 == 0`` gather in ``_dq16``'s pair order (H2), bfloat16 not."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    q = random_layer(*LAYERS["mix123_full"])  # one band, three segments
    m, n, k = 150, q.out_features, q.in_features
    for dtype, split, h2 in ((torch.float16, 3, k % 16 == 0), (torch.bfloat16, 1, False)):
        x = torch.zeros(m, k, device=DEV, dtype=dtype)
        out = torch.empty(m, n, device=DEV, dtype=dtype)
        ws = Workspace(DEV, m, n, k, dtype)
        cfg = KernelConfig("wgs", block_m=128, block_n=64, num_warps=8, producers=4, split_k=split)
        launches = slt.plan_launches(x, q, None, out, ws, cfg)
        names = [lc.kernel for lc in launches]
        assert names == ["gather_kernel", "wgsw_kernel"] + ["finalize_kernel"] * (split > 1)
        assert launches[0].kwargs.get("PAIR16", False) == h2
        w = launches[1]
        assert list(w.args[0].shape) == [m, k] and list(w.args[0].block_shape) == [128, 64]
        assert w.kwargs["SPLIT"] == split and w.kwargs["H2"] == h2 and w.kwargs["P"] == 4
        assert w.grid == (triton.cdiv(m, 128) * triton.cdiv(n, 64) * split,)
        assert [c0 for c0, *_ in w.args[-1]] == sorted(c0 for c0, *_ in w.args[-1])
        assert w.args[2] is out and (w.args[4] is ws.acc or w.args[4].data_ptr() == ws.acc.data_ptr())
        from slimq.kernels.triton._plan import uses_acc
        assert uses_acc(q, cfg) == (split > 1)


def test_wgs_stream_k_plan_and_errors(monkeypatch):
    """Stream-K wgs (host side, no GPU): per band one ``wgsk_kernel`` launch of ``min(stream_k, tiles x K tiles)``
    programs taking the workspace's partial slots and flags, no finalize, the first launched during the gather
    where PDL applies; a workspace without room for them, and stream_k without producers or with split_k, are
    refused by name."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    q = random_layer(*LAYERS["mix123_full"])  # one band, three segments
    m, n, k = 300, q.out_features, q.in_features
    x = torch.zeros(m, k, device=DEV, dtype=torch.float16)
    out = torch.empty(m, n, device=DEV, dtype=torch.float16)
    steps = triton.cdiv(m, 256) * triton.cdiv(n, 128) * triton.cdiv(k, 64)
    for programs in (3, 10_000):
        cfg = KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, producers=4, depth=2, stream_k=programs)
        ws = Workspace(DEV, m, n, k, torch.float16, stream_k_programs=min(programs, steps))
        launches = slt.plan_launches(x, q, None, out, ws, cfg)
        assert [lc.kernel for lc in launches] == ["gather_kernel", "wgsk_kernel"]
        w = launches[1]
        assert w.grid == (min(programs, steps),) and w.args[4] is ws.skp and w.args[5] is ws.skf and w.args[2] is out
        assert "SPLIT" not in w.kwargs and w.kwargs["P"] == 4
    # on sm_90 the first stream-K launch starts during the gather (PDL); later bands follow a wgsk launch
    rb = random_layer(96, 192, 64, None, row_bits=[2, 4, 3])  # three bands
    xb = torch.zeros(m, 192, device=DEV, dtype=torch.float16)
    ob = torch.empty(m, 96, device=DEV, dtype=torch.float16)
    cfg = KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, producers=4, depth=2, stream_k=3)
    ws = Workspace(DEV, m, 96, 192, torch.float16, stream_k_programs=3)
    monkeypatch.setattr(slt._plan, "_pdl", lambda x, c: True)
    launches = slt.plan_launches(xb, rb, None, ob, ws, cfg)
    assert [lc.kernel for lc in launches] == ["gather_kernel"] + ["wgsk_kernel"] * 3
    assert launches[0].kwargs.get("PDL") is True
    assert [lc.kwargs.get("launch_pdl", False) for lc in launches[1:]] == [True, False, False]
    assert [lc.kwargs.get("PDL", False) for lc in launches[1:]] == [True, False, False]
    monkeypatch.undo()
    small = Workspace(DEV, m, n, k, torch.float16, stream_k_programs=2)
    with pytest.raises(ValueError, match="needs a workspace with room for 3 partial tiles"):
        slt.plan_launches(x, q, None, out, small, KernelConfig("wgs", block_m=256, num_warps=8, producers=4,
                                                                stream_k=3))
    assert Workspace(DEV, 128, n, k).skf.numel() == 0  # the dispatch takes wgs beyond WG_MAX_M tokens only
    assert Workspace(DEV, 129, n, k).skf.numel() == slt.ops._num_sms(torch.device(DEV))
    with pytest.raises(ValueError, match="stream_k must be 0, or > 0 with path 'wgs' or 'wgr', producers and split_k"):
        KernelConfig("wgs", block_m=256, num_warps=8, stream_k=4)
    with pytest.raises(ValueError, match="stream_k must be 0, or > 0 with path 'wgs' or 'wgr', producers and split_k"):
        KernelConfig("wgs", block_m=256, num_warps=8, producers=4, split_k=2, stream_k=4)
    with pytest.raises(ValueError, match="stream_k must be 0, or > 0 with path 'wgs' or 'wgr', producers and split_k"):
        KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, stream_k=4)  # no copy warp
    with pytest.raises(ValueError, match="stream_k must be 0"):
        KernelConfig("wg", stream_k=4)


@inproc
def test_gather_pair16_order():
    """``gather_kernel`` with PAIR16: column ``16 b + c`` takes ``col_perm[16 b + c // 2 + 8 (c % 2)]``, the
    pair order of the half2 dequantization (runs under the interpreter without a GPU)."""
    from slimq.kernels.triton._plan import gather_launch
    p = random_layer(24, 96, 32, [1, 2, 3])
    x = torch.randn(3, 96, device=DEV, dtype=torch.float16)
    buf = torch.empty(3 * 96, device=DEV, dtype=torch.float16)
    lc, xin = gather_launch(x, p, buf, pair16=True)
    lc()
    c = torch.arange(96)
    src = (c // 16) * 16 + (c % 16) // 2 + 8 * (c % 2)
    assert torch.equal(xin.cpu(), x.cpu()[:, p.col_perm.cpu().long()[src]])


@inproc
@gpu
@pytest.mark.parametrize("cfg_name", list(WGS_CFGS))
@pytest.mark.parametrize("layer", ["mix123_short", "u3_odd", "mix_wide", "u2_g128_short", "mix123_full"])
def test_wgs_matches_reference(layer, cfg_name):
    """The Gluon large-M path over short last groups, 1..8 bits, 1/2/3-bit mixes and group size 32 (K tile
    32), partial token tiles and several tiles of each (M = 300)."""
    p = random_layer(*LAYERS[layer])
    if p.in_features % 8:  # TMA needs 16-byte activation rows: such layers go to dequantize-then-cuBLAS
        with pytest.raises(ValueError, match="is not a multiple of 8"):
            sbp_matmul(torch.zeros(70, p.in_features, device=DEV, dtype=torch.float16), p, config=WGS_CFGS[cfg_name])
        assert slt.resolve_config(torch.zeros(200, p.in_features, device=DEV, dtype=torch.float16), p).path == "dequant"
        return
    for m in (70, 300):
        _check(p, m, torch.float16, WGS_CFGS[cfg_name], bias=m == 70)
    _check(p, 130, torch.bfloat16, WGS_CFGS[cfg_name])


@inproc
@gpu
def test_wgs_row_permuted_layers_and_fallback():
    p = random_layer(40, 192, 64, 2, row_bits=[2, 4, 3])  # MixLLM-style rows: three bands, a row_perm
    _check(p, 150, torch.float16, WGS_CFGS["wgs_4w"], bias=True)
    _check(p, 150, torch.float16, None, bias=True)  # a small layer: the dispatch dequantizes
    q = random_layer(*LAYERS["unaligned_g20"])  # group size 20: no K tile fits; the dispatch dequantizes
    x = torch.zeros(150, q.in_features, device=DEV, dtype=torch.float16)
    assert slt.resolve_config(x, q).path == "dequant"
    assert slt.resolve_config(x.float(), p).path == "dequant"  # float32 activations
    with pytest.raises(ValueError, match="group size 20 is not a multiple of 32"):
        sbp_matmul(x, q, config=WGS_CFGS["wgs"])


def _replays_match_reference(g, x, p, out, ws, bias=None, replays=2):
    """Replay ``g`` (a captured call ``out = x @ p (+ bias)``) on fresh activations ``replays`` times: each result
    matches the reference and the split-K workspace is left zeroed."""
    for _ in range(replays):
        x.copy_(torch.randn_like(x))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert _rel_err(out, packed_matmul_reference(x, p, bias)) < TOL[torch.float16]
    assert not bool(ws.acc.any()) and not bool(ws.skf.any())  # split-K sums, stream-K flags


@inproc
@gpu
@pytest.mark.parametrize("cfg_name", ["wgsw_p4_k2_d2", "wgsw_p8_k3", "wgsk_p4_7"])
def test_wgs_producers_split_k_replays_under_cuda_graph(cfg_name):
    """The warp-specialised wgs with split-K (float32 sums, then finalize) or stream-K (partials and flags per
    program) replays under a CUDA graph with new activations, a bias and a row permutation (three bands: one
    launch each), and leaves the workspace (sums, flags) zeroed."""
    if slt.wgs_unavailable(DEV, torch.float16):
        pytest.skip(slt.wgs_unavailable(DEV, torch.float16))
    p = random_layer(512, 640, 64, None, seed=2, row_bits=[2, 4, 3])  # three bands, a row permutation
    m, cfg = 200, WGS_CFGS[cfg_name]
    x = torch.randn(m, p.in_features, device=DEV, dtype=torch.float16)
    bias = torch.randn(p.out_features, device=DEV, dtype=torch.float16)
    out = torch.empty(m, p.out_features, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, p.out_features, p.in_features, torch.float16, stream_k_programs=cfg.stream_k)
    launches = slt.plan_launches(x, p, bias, out, ws, cfg)
    assert ("finalize_kernel" in [lc.kernel for lc in launches]) == (not cfg.stream_k)
    sbp_matmul(x, p, bias, out=out, workspace=ws, config=cfg)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        sbp_matmul(x, p, bias, out=out, workspace=ws, config=cfg)
    _replays_match_reference(g, x, p, out, ws, bias, replays=3)
    assert not bool(ws.cnt.any()) and not bool(ws.skf.any())


@inproc
@gpu
@pytest.mark.parametrize("m", [1, 8, 128, 200])
def test_cuda_graph_capture(m):
    """With preallocated out/workspace a call allocates nothing and replays under a CUDA graph."""
    p = random_layer(512, 640, 64, [1, 2, 3], seed=2)
    x = torch.randn(m, p.in_features, device=DEV, dtype=torch.float16)
    out = torch.empty(m, p.out_features, device=DEV, dtype=torch.float16)
    cfg = slt.resolve_config(x, p)
    ws = Workspace(DEV, m, p.out_features, p.in_features, torch.float16, dequant=cfg.path == "dequant")
    cfg = KernelConfig(cfg.path, block_m=cfg.block_m, block_n=cfg.block_n, block_k=cfg.block_k,
                       split_k=1 if cfg.path == "wgs" else 2, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                       walk=False)
    sbp_matmul(x, p, out=out, workspace=ws, config=cfg)  # compile outside the capture
    torch.cuda.synchronize()
    # torch's first capture allocates a little bookkeeping (1 KiB with torch 2.11, even for out.zero_()), and a
    # capture that calls cuBLAS gets a cuBLAS workspace: the kernels themselves must add nothing beyond that
    graphs = []

    def capture_delta(fn):
        before = torch.cuda.memory_allocated()
        graphs.append(torch.cuda.CUDAGraph())
        with torch.cuda.graph(graphs[-1]):
            fn()
        return torch.cuda.memory_allocated() - before

    capture_delta(lambda: out.zero_())
    expected = 0
    if cfg.path == "dequant":
        w16 = torch.zeros(p.out_features, p.in_features, device=DEV, dtype=torch.float16)
        expected = capture_delta(lambda: torch.mm(x, w16.t(), out=out))
    assert capture_delta(lambda: sbp_matmul(x, p, out=out, workspace=ws, config=cfg)) <= expected
    _replays_match_reference(graphs[-1], x, p, out, ws)


# --- wgr (weights as wgmma's register operand; dispatched for 2-/4-bit layers at 256-1024 tokens) ------------

WGR_CFGS = {
    "wgr_t256": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=3),
    "wgr_t128_split3": KernelConfig("wgr", block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, split_k=3),
    "wgr_t64_4w_s4": KernelConfig("wgr", block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=4),
    "wgr_t256_s5": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=5),
    "wgr_t256_ws": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4, producers=1),
    "wgr_t128_ws": KernelConfig("wgr", block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4, producers=1),
    "wgr_t64_4w_split2_ws": KernelConfig("wgr", block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3,
                                         split_k=2, producers=1),
    "wgr_t256_4w_ws": KernelConfig("wgr", block_m=256, block_n=64, block_k=64, num_warps=4, num_stages=4,
                                   producers=1),  # the dispatch's one-warpgroup tiles
}
WGRK_CFGS = {  # stream-K wgr (_wgrk): few programs, so that units cross tiles and partials meet
    "wgrk_t256_sk5": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4,
                                  producers=1, stream_k=5),
    "wgrk_t64_4w_sk7": KernelConfig("wgr", block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3,
                                    producers=1, stream_k=7),
}


@inproc
@pytest.mark.parametrize("bits", [2, 4])
def test_gather_in_wgr_operand_order(bits):
    """``gather_kernel(WGR=w)`` writes ``x[:, col_perm]`` in ``_wgr``'s operand order (``_wgr.wgr_src`` per
    64-column tile)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    from slimq.kernels.triton._plan import Launch
    from slimq.kernels.triton._wgr import wgr_src
    k, m = 192, 3
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(bits)).to(torch.int32).to(DEV)
    x = torch.randn(m, k, device=DEV, dtype=torch.float16)
    xp = torch.empty(m, k, device=DEV, dtype=torch.float16)
    Launch("gather_kernel", (triton.cdiv(k, 128), m), (x, x.stride(0), perm, xp, xp.stride(0), k),
           {"BLOCK": 128, "WGR": bits})()
    src = torch.tensor([t + wgr_src(i, bits) for t in range(0, k, 64) for i in range(64)], device=DEV)
    assert torch.equal(xp, x[:, perm.long()[src]])


@inproc
@gpu
@pytest.mark.parametrize("cfg_name,bits", [("wgr_t256", 2), ("wgr_t128_split3", 3), ("wgr_t256", [1, 2, 3]),
                                          ("wgrk_t256_sk5", 2), ("wgrk_t256_sk5", [1, 2, 3])])
def test_wgr_replays_under_cuda_graph(cfg_name, bits):
    """``wgr`` (TMA descriptors built per call on the host) captures without allocating, replays under a CUDA graph
    with new activations and a bias, and with split-K or stream-K leaves the workspace's sums or flags zeroed."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgr is Gluon for sm_90")
    p = random_layer(256, 640, 64, bits, seed=4)
    m, cfg = 300, {**WGR_CFGS, **WGRK_CFGS}[cfg_name]
    x = torch.randn(m, p.in_features, device=DEV, dtype=torch.float16)
    bias = torch.randn(p.out_features, device=DEV, dtype=torch.float16)
    out = torch.empty(m, p.out_features, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, p.out_features, p.in_features, torch.float16, split_rows=m)
    sbp_matmul(x, p, bias, out=out, workspace=ws, config=cfg)  # compile outside the capture
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        sbp_matmul(x, p, bias, out=out, workspace=ws, config=cfg)
    assert torch.cuda.memory_allocated() - before <= 1024  # torch's own capture bookkeeping (see above)
    _replays_match_reference(g, x, p, out, ws, bias, replays=3)


@inproc
def test_wgrk_plan():
    """Stream-K ``wgr`` (host side): the gather, then one ``wgrk_kernel`` of ``min(stream_k, steps)`` programs with
    the workspace's partial slots and flags; the bias in the kernel (no finalize); a workspace without room for
    the programs' partials is refused."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    p = random_layer(200, 512, 128, [1, 2, 3])
    m = 300
    x = torch.zeros(m, 512, device=DEV, dtype=torch.float16)
    out = torch.empty(m, 200, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, 200, 512, torch.float16, stream_k_programs=8)
    for name, cfg in WGRK_CFGS.items():
        launches = slt.plan_launches(x, p, torch.zeros(200, device=DEV), out, ws, cfg)
        assert [lc.kernel for lc in launches] == ["gather_kernel", "wgrk_kernel"], name
        k = launches[1]
        steps = triton.cdiv(200, cfg.block_n) * triton.cdiv(m, cfg.block_m) * (512 // 64)
        assert k.grid == (min(cfg.stream_k, steps),) and k.args[18] is ws.skp and k.args[19] is ws.skf, name
        assert k.kwargs["HAS_BIAS"] and "SPLIT" not in k.kwargs and k.kwargs["SEG_BITS"] == (1, 2, 3), name
    tiny = random_layer(64, 64, 64, 2)  # one tile of one K tile: a single program however many are asked for
    k = slt.plan_launches(x[:, :64], tiny, None, out[:, :64], ws, WGRK_CFGS["wgrk_t256_sk5"])[1]
    assert k.grid == (2,)  # 2 token tiles x 1 row tile x 1 K tile
    small = Workspace(DEV, m, 200, 512, torch.float16, stream_k_programs=4)
    with pytest.raises(ValueError, match="wgr with stream_k=5 needs a workspace with room for 5 partial tiles"):
        slt.plan_launches(x, p, None, out, small, WGRK_CFGS["wgrk_t256_sk5"])


@inproc
@gpu
@pytest.mark.parametrize("cfg_name", list(WGRK_CFGS))
@pytest.mark.parametrize("bits,gs", [(2, 128), (3, 128), (4, 64), ([1, 2, 3], 128)])
def test_wgrk_matches_reference(bits, gs, cfg_name):
    """Stream-K ``wgr`` on sm_90 (passed on the H200, session 16): partial row and token tiles, bias, units
    crossing tiles; the flags left zeroed (``_check``)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgr is Gluon for sm_90")
    p = random_layer(200, 512, gs, bits)
    for m in (70, 300):
        _check(p, m, torch.float16, WGRK_CFGS[cfg_name], bias=m == 70)


@inproc
def test_wgr_plan_config_and_support():
    """The ``wgr`` plan (host side, no GPU): the operand-order gather into ``xperm``, one ``wgr_kernel`` (grid
    row tiles x split x token tiles), a finalize launch when K is split; which configs and layers it takes."""
    pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    from slimq.kernels.triton._support import wgr_layer_unsupported
    p = random_layer(200, 512, 128, 4)
    m = 300
    x = torch.zeros(m, 512, device=DEV, dtype=torch.float16)
    out = torch.empty(m, 200, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, 200, 512, torch.float16)
    for name, cfg in WGR_CFGS.items():
        launches = slt.plan_launches(x, p, torch.zeros(200, device=DEV), out, ws, cfg)
        want = ["gather_kernel", "wgr_kernel"] + (["finalize_kernel"] if cfg.split_k > 1 else [])
        assert [lc.kernel for lc in launches] == want, name
        g, k = launches[0], launches[1]
        assert g.kwargs["WGR"] == 4 and k.kwargs["SEG_BITS"] == (4,) and k.kwargs["SPLIT"] == cfg.split_k, name
        assert k.kwargs["HAS_BIAS"] == (cfg.split_k == 1) and k.kwargs["STAGES"] == cfg.num_stages, name
        kp = 64 * 4 // 32  # TMA boxes: the words [KP, BN] of a K tile, partners [2, BN], scales and zeros [1, BN]
        assert [list(d.block_shape) for d in k.args[1:5]] == [[kp, cfg.block_n], [2, cfg.block_n], [1, cfg.block_n],
                                                              [1, cfg.block_n]]
        assert k.grid == (triton.cdiv(200, cfg.block_n) * cfg.split_k * triton.cdiv(m, cfg.block_m),), name
    with pytest.raises(ValueError, match="exceeds the K tiles"):
        slt.plan_launches(x[:, :128], random_layer(200, 128, 64, 2), None, out, ws,
                          KernelConfig("wgr", block_m=128, block_n=128, block_k=64, num_warps=8, split_k=3))
    assert wgr_layer_unsupported(p) is None and wgr_layer_unsupported(random_layer(200, 512, 64, 2)) is None
    assert "one segment of 1-4 bits" in wgr_layer_unsupported(random_layer(200, 512, 128, 5))
    assert wgr_layer_unsupported(random_layer(200, 512, 128, 3)) is None
    assert wgr_layer_unsupported(random_layer(40, 384, 64, [1, 2, 3])) is None  # SliM: three segments
    assert "up to three of 1-3 bits" in wgr_layer_unsupported(random_layer(40, 384, 64, [2, 4]))
    assert "spanning every row" in wgr_layer_unsupported(random_layer(40, 192, 64, 2, row_bits=[2, 4]))
    assert "segment bounds multiples of 64" in wgr_layer_unsupported(random_layer(40, 384, 32, [1, 2, 3]))
    q = random_layer(200, 512, 128, [3, 1, 2, 1])  # SliM: segments of 2, 1 and 1 groups in 1-, 2-, 3-bit order
    k = slt.plan_launches(x, q, None, out, ws, WGR_CFGS["wgr_t256"])[1]
    assert k.kwargs["SEG_BITS"] == (1, 2, 3) and k.args[13:15] == (4, 6), k.args[13:15]  # K tiles where 2, 3 start
    assert [list(d.block_shape) for d in k.args[1:5]] == [[4, 128], [2, 128], [1, 128], [1, 128]]
    segs = sorted(q.segments, key=lambda t: t.c0)  # per segment: its wide plane, 1-bit plane, scales, zeros
    want = [t for sg in segs for t in (sg.planes[0], sg.planes[-1], sg.scales, sg.zeros)]
    assert all(d.base is t for d, t in zip(k.args[1:13], want))
    assert "multiples of 64" in wgr_layer_unsupported(random_layer(40, 96, 32, 2))
    if not GPU:  # Gluon has no interpreter: an explicit wgr config says why it cannot run here
        with pytest.raises(ValueError, match="path 'wgr' cannot run this layer: needs a CUDA device"):
            slt.resolve_config(x, p, WGR_CFGS["wgr_t256"])
    assert select_config(1024, 28672, 8192).path != "wgr"  # bits unknown
    for bad in (dict(block_n=64), dict(block_k=128), dict(block_m=512), dict(num_stages=1), dict(split_k=9)):
        with pytest.raises(ValueError, match="path 'wgr' takes"):
            KernelConfig("wgr", **{**dict(block_m=128, block_n=128, block_k=64, num_warps=8), **bad})
    with pytest.raises(ValueError, match="depth must be 1, or 2"):
        KernelConfig("wgr", block_m=128, block_n=128, block_k=64, num_warps=8, depth=2)
    assert "multiple of 8" in wgr_layer_unsupported(random_layer(44, 128, 64, 2))
    q = random_layer(40, 128, 64, 2)
    q.segments[0].scales = q.segments[0].scales.float()
    assert "16-bit elements" in wgr_layer_unsupported(q)


def test_wgr_dispatch_rule():
    """Where the dispatch picks ``wgr`` (runs 131 and 143's layers, 132 SMs), its K split or stream-K ("sk": the
    last of several waves under 90% full, at 3 bits and SliM 85% from 3 waves; one wave 50-90% full; in place of
    a K split of 2 at 512+ tokens: session 27), 128-token
    tiles ("t128": one wave, where 256-token tiles fall short or need a K split) or, where either would be taken
    with ``K <= 8192``, one unsplit wave of 64-row tiles ("w4": one warpgroup, 256 tokens; "w4t128": 128 tokens,
    in place of a split leaving 16 K tiles or fewer per program; run 157); the rest stay on ``wgs``."""
    from slimq.kernels.triton._dispatch import wgr_config
    want = {(256, 28672, 8192): "sk", (512, 28672, 8192): "sk", (1024, 28672, 8192): 1, (256, 8192, 28672): 2,
            (512, 8192, 28672): 1, (256, 8192, 8192): "w4", (1024, 8192, 8192): 1, (256, 4096, 4096): "w4t128",
            (512, 4096, 4096): "w4", (1024, 4096, 4096): 1, (256, 4096, 11008 // 64 * 64): 4,
            (512, 4096, 11008 // 64 * 64): "sk", (256, 11008, 4096): "sk", (512, 11008, 4096): "sk",
            (1024, 11008, 4096): "sk", (1024, 4096, 11008 // 64 * 64): 1, (1024, 14720, 4096): "sk24"}
    for bits in ((2,), (3,), (4,), (1, 2, 3), (2, 3), (3, 1)):  # uniform 2-4 bits, SliM's 1-3-bit segments
        for (m, n, k), split in want.items():
            if split == "sk24":  # 3.5 waves, the last 87% full: stream-K for 2 and 4 bits only
                split = "sk" if bits in ((2,), (4,)) else 1
            cfg = wgr_config(m, n, k, bits)
            got = None if cfg is None else "sk" if cfg.stream_k else (
                ("w4" if cfg.num_warps == 4 else "") + ("t128" if cfg.block_m == 128 else "")) or cfg.split_k
            assert cfg is None or cfg.block_m in (128, 256) and (cfg.block_m == 256 or cfg.split_k == 1)
            assert cfg is None or cfg.block_n == 16 * cfg.num_warps and cfg.num_warps in (4, 8)
            five = got == "w4t128" and bits in ((2,), (4,))  # 64 x 128 tiles at 2 and 4 bits: 5 K tiles in flight
            assert cfg is None or cfg.num_stages == (5 if five else 4), (bits, m, n, k, cfg)
            assert got == split, (bits, m, n, k, cfg)
            assert cfg is None or cfg.producers == 1  # the copy warp
            assert cfg is None or cfg.direct == (bits in ((2,), (4,)) and n <= 16384)  # natural-order x (_wgrn)
            assert cfg is None or cfg.stream_k in (0, 132)  # one persistent program per SM
            assert (select_config(m, n, k, bits=bits).path == "wgr") == (split is not None), (bits, m, n, k)
            assert select_config(m, n, k, bits=bits, wgr=False).path != "wgr"
    for bits in ((2, 4), (2, 3, 4), (1, 2, 3, 2), (1,), (8,)):  # a 4-bit segment, four segments, 1 or 8 bits
        assert wgr_config(256, 4096, 4096, bits) is None and wgr_config(1024, 28672, 8192, bits) is None
        assert select_config(1024, 28672, 8192, bits=bits).path != "wgr"
    assert wgr_config(128, 28672, 8192, (2,)) is None and wgr_config(2048, 28672, 8192, (2,)) is None
    assert wgr_config(1024, 28672, 8200, (2,)) is None  # K not a multiple of 64
    cfg = wgr_config(256, 8192, 28672, (2,))
    assert (cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (256, 128, 64, 8, 4)
    if not GPU:  # resolve_config falls back where wgr cannot run (here: no CUDA device), as for wgs
        p = random_layer(256, 512, 128, 2)
        assert slt.resolve_config(torch.zeros(256, 512, dtype=torch.float16), p).path == "dequant"


@inproc
@gpu
@pytest.mark.parametrize("cfg_name", list(WGR_CFGS))
@pytest.mark.parametrize("bits,gs", [(2, 128), (3, 128), (4, 64), (1, 64), ([1, 2, 3], 128), ([3, 2], 64)])
def test_wgr_matches_reference(bits, gs, cfg_name):
    """The ``wgr`` path on sm_90: partial row and token tiles, bias, split-K through the workspace; uniform 1-4
    bits and SliM's segments."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgr is Gluon for sm_90")
    p = random_layer(200, 512, gs, bits)
    for m in (70, 300):
        _check(p, m, torch.float16, WGR_CFGS[cfg_name], bias=m == 70)


@inproc
@gpu
@pytest.mark.parametrize("cfg_name", ["wgr_t256_ws", "wgr_t128_split3", "wgr_t64_4w_s4", "wgrk_t256_sk5"])
@pytest.mark.parametrize("bits,gs", [(2, 128), (3, 128), (4, 64), (1, 64), ([1, 2, 3], 128)])
def test_wgr_matches_reference_bfloat16(bits, gs, cfg_name):
    """``wgr`` with bfloat16 activations builds bfloat16 weights (``_wgr._code_at``: the codes below bfloat16's 7
    mantissa bits) and multiplies in bfloat16: every width, SliM's segments, split-K and stream-K."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("wgr is Gluon for sm_90")
    p = random_layer(200, 512, gs, bits)
    for m in (70, 300):
        _check(p, m, torch.bfloat16, {**WGR_CFGS, **WGRK_CFGS}[cfg_name], bias=m == 70)
