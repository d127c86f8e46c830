"""``wgr`` reading the activations in their natural column order (``KernelConfig("wgr", direct=True)``,
``_wgrn.py``): no gather launch (dispatched for uniform 2- and 4-bit layers; 1- and 3-bit codes and SliM as an
explicit config, SliM's K tiles read through ``col_perm``).

Without a GPU (Gluon has no interpreter): where the fragment takes each column's code from (``nat_code_source``)
against real packed words, the pair arithmetic on those bytes replayed on integers, the launch plan (no gather, the
kernel's descriptor on ``x`` itself; the gather kept where ``col_perm`` or ``x`` does not qualify), and the sm_90
build (A operand from registers with no hazard, one PRMT per fragment register, no spills in the K loop). On an
sm_90 GPU (passed on the H200, session 26, run 264: 36): against the pure-torch reference at every width and SliM,
one program per tile, split-K and stream-K, and under CUDA-graph replay.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from _sm90 import compile_sm90

from test_kernels_triton import (  # isort: skip (sets TRITON_INTERPRET before triton is imported)
    DEV, GPU, KernelConfig, TOL, Workspace, _check, _rel_err, inproc, random_layer, sbp_matmul, slt,
)
from slimq.format.packing import pack  # noqa: E402
from slimq.kernels.reference import packed_matmul_reference  # noqa: E402
from slimq.quant.result import QuantizedTensor  # noqa: E402

CFGS = {
    "t256_ws": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4, producers=1,
                            direct=True),
    "t128_4w_split3_ws": KernelConfig("wgr", block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=5,
                                      split_k=3, producers=1, direct=True),
    "t64_nows": KernelConfig("wgr", block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3, direct=True),
    "sk5": KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4, producers=1,
                        stream_k=5, direct=True),
}


def _gluon():
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")


def _f16(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int16).view(torch.float16).float()


def _packed_planes(codes: torch.Tensor, w: int) -> list[torch.Tensor]:
    """The planes (int64 words ``[word rows, n]``) of ``codes [n, k]`` packed as one ``w``-bit segment."""
    n, k = codes.shape
    qt = QuantizedTensor(codes, torch.ones(n, k // 64, dtype=torch.float16), torch.zeros(n, k // 64,
                         dtype=torch.float16), (torch.arange(k) // 64).to(torch.int32),
                         torch.full((n, k // 64), w, dtype=torch.int8), 64)
    return [pl.long() & 0xFFFFFFFF for pl in pack(qt).segments[0].planes]


def _code(words, w, c):
    """The ``w``-bit plane's code of tile column ``c`` at ``nat_code_source``."""
    from slimq.kernels.triton._wgrn import nat_code_source
    r, byte, bit = nat_code_source(c, w)
    return (words[r] >> (8 * byte + bit)) & ((1 << w) - 1)


@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_code_sources_and_pair_math_give_natural_columns(w):
    """Each column ``c`` of a 64-column tile: the code at ``nat_code_source(c)`` (word row, byte, bit) of each plane
    of a packed word is that column's code (3-bit: ``q2 + 4 q1`` from the 2- and 1-bit planes); and the kernel's
    arithmetic on lane ``t``'s register ``(s, h)`` (PRMT of the byte into both halves, LOP3 of the two codes under
    a magic with a different exponent per half, for 3-bit codes the 1-bit pair shifted down, masked, spread 17
    places apart by one multiply and merged in a second LOP3; less the magic) gives columns ``16 s + 8 h + 2 t``
    and ``+ 1`` exactly."""
    _gluon()
    from slimq.kernels.triton._wgrn import nat_code_source
    n, k = 8, 192
    g = torch.Generator().manual_seed(w)
    codes = torch.randint(0, 1 << w, (n, k), generator=g, dtype=torch.uint8)
    planes = _packed_planes(codes, w)
    pw = {1: [1], 2: [2], 3: [2, 1], 4: [4]}[w]
    for tile in range(k // 64):
        tw = [pl[tile * 64 * b // 32:(tile + 1) * 64 * b // 32] for pl, b in zip(planes, pw)]
        for c in range(64):
            got = _code(tw[0], pw[0], c) + (4 * _code(tw[1], 1, c) if w == 3 else 0)
            assert torch.equal(got, codes[:, tile * 64 + c].long()), (tile, c)
        for t in range(4):
            for s in range(4):
                for h in range(2):
                    c = 16 * s + 8 * h + 2 * t
                    r, byte, p_lo = nat_code_source(c, pw[0])
                    p_hi = nat_code_source(c + 1, pw[0])[2]
                    assert nat_code_source(c + 1, pw[0])[:2] == (r, byte)  # one byte holds both codes
                    b = (tw[0][r] >> (8 * byte)) & 0xFF
                    src = b | (b << 8) | (b << 16) | (b << 24)  # prmt.b32 src, w, 0, byte * 0x1111
                    m = (1 << pw[0]) - 1
                    magic = ((25 - p_lo) << 10) | ((25 - p_hi) << 26)
                    v = (src & ((m << p_lo) | (m << (p_hi + 16)))) | magic
                    if w == 3:  # bits 16 (s % 2) + 8 h + 2 t and + 1 of 1-bit word s // 2, to p_lo + 2, 16 + p_hi + 2
                        q1 = (tw[1][s // 2] >> (16 * (s % 2) + 8 * h + 2 * t)) & 3
                        sv = q1 * ((1 << (p_lo + 2)) + (1 << (p_lo + 19)))
                        assert p_hi == p_lo + 2
                        v = (sv & ((1 << (p_lo + 2)) | (1 << (p_lo + 20)))) | v
                    lo = _f16(v & 0xFFFF) - _f16(torch.tensor((25 - p_lo) << 10))
                    hi = _f16((v >> 16) & 0xFFFF) - _f16(torch.tensor((25 - p_hi) << 10))
                    assert p_lo + w <= 10 and p_hi + w <= 10  # the codes stay below float16's exponent
                    assert torch.equal(lo, codes[:, tile * 64 + c].float()), (t, s, h)
                    assert torch.equal(hi, codes[:, tile * 64 + c + 1].float()), (t, s, h)
    with pytest.raises(ValueError, match="1, 2 or 4 bits wide"):
        nat_code_source(0, 3)
    with pytest.raises(ValueError, match="outside a 64-column tile"):
        nat_code_source(64, 2)


@inproc
def test_direct_plan_reads_x_itself_where_it_qualifies():
    """The plan (host side): with ``direct`` a layer whose ``col_perm`` moves whole 64-column runs and float16
    ``x`` launch ``wgr_kernel``/``wgrk_kernel`` alone (``NAT``; its descriptor on ``x``, whose row stride may
    exceed K; ``PERM_X`` where ``col_perm`` is not the identity: SliM's grouping of its widths); a scrambled
    ``col_perm``, bfloat16 ``x`` or rows not 16-byte aligned keep the operand-order gather. ``direct`` is refused
    on other paths than ``wg``, ``mv`` and ``wgr``."""
    _gluon()
    m, n, k = 300, 200, 512
    base = torch.zeros(m, k + 8, device=DEV, dtype=torch.float16)
    x = base[:, :k]  # row stride k + 8: 16-byte aligned rows, not contiguous
    out = torch.empty(m, n, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, n, k, torch.float16, stream_k_programs=8)

    def kernels(p, xx, cfg):
        p.perm_identity, p.perm_run = None, None
        return slt.plan_launches(xx, p, None, out, ws, cfg)

    for bits in (2, 4, 3, 1, [1, 2, 3]):
        p = random_layer(n, k, 128, bits)
        for name, cfg in CFGS.items():
            launches = kernels(p, x, cfg)
            names = [lc.kernel for lc in launches]
            want = ["wgrk_kernel" if cfg.stream_k else "wgr_kernel"] + (["finalize_kernel"] if cfg.split_k > 1 else [])
            assert names == want, (bits, name, names)
            kern = launches[0]
            assert kern.kwargs["NAT"] is True and kern.kwargs["PERM_X"] == isinstance(bits, list), (bits, name)
            assert kern.args[0].base.data_ptr() == x.data_ptr() and kern.args[-1] is p.col_perm, name
            assert list(kern.args[0].strides) == [k + 8, 1] and list(kern.args[0].block_shape) == [cfg.block_m, 64]
            plain = kernels(p, x, dataclasses.replace(cfg, direct=False))
            assert plain[0].kernel == "gather_kernel" and "NAT" not in plain[1].kwargs, name
    cfg = CFGS["t256_ws"]
    p = random_layer(n, k, 128, 2)
    unaligned = torch.zeros(m, k + 1, device=DEV, dtype=torch.float16)[:, :k]
    assert [lc.kernel for lc in kernels(p, unaligned, cfg)] == ["gather_kernel", "wgr_kernel"]
    ws_b = Workspace(DEV, m, n, k, torch.bfloat16)
    bf = slt.plan_launches(x.to(torch.bfloat16), p, None, out.to(torch.bfloat16), ws_b, cfg)
    assert [lc.kernel for lc in bf] == ["gather_kernel", "wgr_kernel"]
    p.col_perm = torch.flip(p.col_perm, [0]).contiguous()  # no aligned run of 64 columns
    assert [lc.kernel for lc in kernels(p, x, cfg)] == ["gather_kernel", "wgr_kernel"]
    with pytest.raises(ValueError, match="direct applies to path 'wg' with join"):
        KernelConfig("wgs", block_m=256, block_n=128, direct=True)


_BODY = """
    from test_kernels_triton import random_layer
    from slimq.kernels.triton import KernelConfig, Workspace
    import slimq.kernels.triton._wgr_plan as wgr_plan
    from slimq.kernels.triton._wgr import wgr_kernel
    from slimq.kernels.triton._wgrk import wgrk_kernel
    from _sass import backward_loops, wgmma_register_hazards
    f = json.loads(sys.argv[1])
    wgr_plan._pdl = lambda x, cfg: cfg.pdl  # as on an sm_90 device
    n, k, m = 256, 1024, 256
    p = random_layer(n, k, 128, f["w"])
    x = torch.zeros(m, k, dtype=torch.float16)
    out = torch.empty(m, n, dtype=torch.float16)
    ws = Workspace("cpu", m, n, k, torch.float16, split_rows=m, stream_k_programs=f["sk"])
    cfg = KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=4, producers=1,
                       stream_k=f["sk"], direct=True)
    launches = wgr_plan.wgr_launches(x, p, None, out, ws, cfg)
    lc = launches[0]
    kw = {key: v for key, v in lc.kwargs.items() if key != "launch_pdl"}
    kern = (wgrk_kernel if f["sk"] else wgr_kernel).warmup(*lc.args, **kw, grid=(1,))
    sass = sass_of(kern)
    loops = backward_loops(sass)
    k_loops = [lp for lp in loops if sum(op.startswith("HGMMA") for op in lp) == 8]
    loop = min(k_loops, key=len) if k_loops else []
    print(json.dumps({"launches": [l.kernel for l in launches], "nat": lc.kwargs.get("NAT"),
                      "perm_x": lc.kwargs.get("PERM_X"), "loop_len": len(loop),
                      "rs_hgmma": len(re.findall(r"HGMMA\\.64x256x16\\.F32 R\\d+, R\\d+, gdesc", sass)),
                      "loop_hgmma": sum(op.startswith("HGMMA") for op in loop),
                      "loop_spills": sum(op.startswith(("STL", "LDL")) for op in loop),
                      "loop_prmt": sum(op.startswith("PRMT") for op in loop),
                      "loop_hfma2": sum(op.startswith("HFMA2") for op in loop),
                      "loop_sts": sum(op.startswith("STS") for op in loop),
                      "loop_ldg": sum(op.startswith("LDG") for op in loop),
                      "hazards": wgmma_register_hazards(sass)}))
"""


@pytest.mark.parametrize("w,sk", [(2, 0), (4, 8), ([1, 2, 3], 8)])  # SliM: 1-, 2- and 3-bit fragments
def test_direct_wgr_compiles_for_sm90(w, sk):
    """The natural-order fragment compiled for sm_90 (``wgr`` with the copy warp, and stream-K): the plan launches
    the kernel alone; every ``HGMMA`` takes its A operand from registers and none is rewritten while its ``wgmma``
    may still read it; in the two-tile K loop one PRMT and one HFMA2 per fragment register (16 per tile, thread
    and width; the operand order's loop has the two to four other PRMTs too; the layout changes are register
    renaming, checked when compiling), no shared stores or global loads, no spills (stream-K: at most one, as
    ``test_wgr.test_wgrk_compiles_for_sm90`` allows; Triton 3.6 leaves one at 2 bits)."""
    _gluon()
    got = compile_sm90(_BODY, {"w": w, "sk": sk})
    assert got["launches"] == ["wgrk_kernel" if sk else "wgr_kernel"] and got["nat"] is True, got
    assert got["hazards"] == [], got["hazards"]
    assert got["rs_hgmma"] == 16 and got["loop_hgmma"] == 8, got
    widths = len(w) if isinstance(w, list) else 1  # SliM: a branch per segment in each of the two tiles
    assert got["perm_x"] == isinstance(w, list), got  # SliM: each K tile's x from col_perm
    assert 32 * widths + 2 <= got["loop_prmt"] <= 32 * widths + 4 and got["loop_hfma2"] == 32 * widths, got
    assert got["loop_sts"] == 0 and got["loop_ldg"] == 0 and got["loop_spills"] <= (1 if sk else 0), got


sm90 = pytest.mark.skipif(not GPU or torch.cuda.get_device_capability()[0] != 9, reason="wgr is Gluon for sm_90")


@inproc
@sm90
@pytest.mark.parametrize("cfg_name", list(CFGS))
@pytest.mark.parametrize("bits,gs", [(2, 128), (4, 64), (2, 64), (3, 128), (1, 64), ([1, 2, 3], 128), ([3, 2], 64)])
def test_direct_wgr_matches_reference(cfg_name, bits, gs):
    """Every width and SliM's segments (their x read through ``col_perm``); partial row and token tiles, a bias,
    split-K's and stream-K's workspaces left zeroed (``_check``)."""
    p = random_layer(200, 512, gs, bits)
    for m in (70, 300):
        _check(p, m, torch.float16, CFGS[cfg_name], bias=m == 70)


@inproc
@sm90
@pytest.mark.parametrize("cfg_name,bits", [("t256_ws", 2), ("sk5", 2), ("t256_ws", [1, 2, 3])])
def test_direct_wgr_strided_x_and_graph_replays(cfg_name, bits):
    """``x`` a view with rows further apart than K, read by TMA as it is; captured without allocating, replayed
    under a CUDA graph on new activations."""
    p = random_layer(256, 640, 128, bits, seed=4)
    m, cfg = 300, CFGS[cfg_name]
    base = torch.randn(m, 640 + 64, device=DEV, dtype=torch.float16)
    x = base[:, 32:32 + 640]
    out = torch.empty(m, 256, device=DEV, dtype=torch.float16)
    ws = Workspace(DEV, m, 256, 640, torch.float16, split_rows=m, stream_k_programs=cfg.stream_k or None)
    sbp_matmul(x, p, out=out, workspace=ws, config=cfg)
    torch.cuda.synchronize()
    assert _rel_err(out, packed_matmul_reference(x, p)) < TOL[torch.float16]
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        sbp_matmul(x, p, out=out, workspace=ws, config=cfg)
    for _ in range(2):
        base.copy_(torch.randn_like(base))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert _rel_err(out, packed_matmul_reference(x, p)) < TOL[torch.float16]
