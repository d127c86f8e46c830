"""The tensor-core GEMV ``mv`` compiles for sm_90 without a GPU, and its inner loop is what it claims.

CI has no GPU, and the Triton interpreter runs ``mv_kernel``'s lane-by-lane emulation, not its PTX
(``mma.sync``, LOP3 with register constants). So a fresh process whose Triton driver reports an sm_90
target compiles the kernel and reads the SASS: per 128-column tile and lane, 16 ``HMMA.16816.F32`` per
2-bit plane and one LOP3 per code pair (half a LOP3 per weight: both constants in registers), no local
memory (spills), the next tile's loads issued before this tile's MMAs (``maxnreg``; with too few
registers ptxas sinks them to the end of the loop, where they no longer run ahead), and the L2 prefetch
(``l2_ahead``) as ``CCTL.E.PF2`` in the loop.
"""
from __future__ import annotations

from _sm90 import compile_sm90

_BODY = """
    from test_kernels_triton import random_layer
    from slimq.kernels.triton import KernelConfig, Workspace
    from slimq.kernels.triton._plan import mv_launches

    fields = json.loads(sys.argv[1])
    n, k, m = 256, 1024, fields.pop("m", 1)
    p = random_layer(n, k, 128, fields.pop("bits"))  # mixed: groups moved whole (direct reads x through col_perm)
    x = torch.zeros(m, k, dtype=torch.float16)
    out = torch.empty(m, n, dtype=torch.float16)
    ws = Workspace("cpu", m, n, k, torch.float16)
    cfg = KernelConfig("mv", block_m=1 if m == 1 else 16, block_n=128, block_k=128, num_warps=4, num_stages=1,
                       **fields)
    lc = next(lc for lc in mv_launches(x, p, None, out, ws, cfg) if lc.kernel in ("mv_kernel", "mvt_kernel"))
    kw = dict(lc.kwargs, ASM=True)
    kw.pop("launch_pdl", None)
    kern = lc.fn.warmup(*lc.args, grid=(1,), **kw)
    sass = sass_of(kern)
    ops = re.findall(r"/\\*([0-9a-f]{4,})\\*/\\s+(?:@!?P\\d\\s+)?([A-Z][A-Z0-9_.]*)", sass)
    back = [(int(t, 16), int(a, 16)) for a, t in re.findall(r"/\\*([0-9a-f]{4,})\\*/\\s+@P\\d\\s+BRA\\s+0x([0-9a-f]+)", sass)
            if int(t, 16) < int(a, 16)]
    lo, hi = back[0]  # the first segment's tile loop
    body = [op for a, op in ops if lo <= int(a, 16) <= hi]
    hmma = [i for i, op in enumerate(body) if op.startswith("HMMA")]
    ldg128 = [i for i, op in enumerate(body) if op.startswith("LDG.E.128")]
    print(json.dumps({"kernel": lc.kernel, "hmma": len(hmma), "lop3": sum(op.startswith("LOP3") for op in body),
                      "prefetch": sum(op.startswith("CCTL.E.PF2") for op in body),
                      "loads_before_first_hmma": sum(i < hmma[0] for i in ldg128), "ldg128": len(ldg128),
                      "local": sass.count("STL") + sass.count("LDL"),
                      "ld_policy": len(re.findall(r"ld\\.global[.a-zA-Z0-9:_]*L2::cache_hint", kern.asm["ptx"])),
                      "ld_plain_v4": len(re.findall(r"ld\\.global\\.nc\\.v4", kern.asm["ptx"])),
                      "evict_first_policy": "createpolicy.fractional.L2::evict_first" in kern.asm["ptx"]}))
"""


def _compile(fields: dict) -> dict:
    return compile_sm90(_BODY, fields)


def test_mv_compiles_for_sm90_with_one_lop3_per_code_pair():
    got = _compile({"bits": 2})
    assert got["kernel"] == "mv_kernel" and got["local"] == 0, got
    # a lane's tile: 4 rows x 32 columns of 2-bit codes = 64 code pairs, two MMA blocks x 8 k-steps
    assert got["hmma"] == 16, got
    assert 64 <= got["lop3"] <= 64 + 8, got
    # words (2 x 16 bytes) and activation pairs (4 x 16 bytes) of one tile
    assert got["ldg128"] == 6, got


def test_mv_keeps_the_next_tile_loads_ahead_with_maxnreg():
    got = _compile({"bits": 4, "maxnreg": 128})
    assert got["hmma"] == 16 and got["local"] == 0, got
    assert got["loads_before_first_hmma"] == got["ldg128"], got


def test_mv_compiles_3bit_and_token_blocks():
    """3-bit codes (both planes on one set of activation pairs: 32 HMMA per tile), and the 2-16 token kernel
    with one and two token blocks (16 and 32 HMMA per 2-bit tile), all without spills."""
    got = _compile({"bits": 3})
    assert got["kernel"] == "mv_kernel" and got["hmma"] == 32 and got["local"] == 0, got
    assert got["ldg128"] == 2 + 1 + 4, got  # 2-bit words, 1-bit words, one set of pairs
    for m, hmma in ((5, 16), (16, 32)):
        got = _compile({"bits": 2, "m": m, "split_k": 2})
        assert got["kernel"] == "mvt_kernel" and got["hmma"] == hmma and got["local"] == 0, got
    got = _compile({"bits": 3, "m": 8})
    assert got["kernel"] == "mvt_kernel" and got["hmma"] == 32 and got["local"] == 0, got


def test_mv_prefetches_into_l2_in_the_loop_without_spills():
    """``l2_ahead``: per tile and warp one prefetch per word row pair of lanes (2 at 2 bits) and the scale and
    zero lines, inside the tile loop; under the dispatch's tightest register cap (64) nothing spills."""
    got = _compile({"bits": 2, "l2_ahead": 1, "maxnreg": 64})
    assert got["kernel"] == "mv_kernel" and got["local"] == 0 and got["hmma"] == 16, got
    assert got["prefetch"] == 2 + 2, got
    got = _compile({"bits": 3, "l2_ahead": 1, "maxnreg": 96})
    assert got["local"] == 0 and got["prefetch"] == 2 + 1 + 2, got
    assert _compile({"bits": 2})["prefetch"] == 0


def test_mv_weights_load_evict_first_and_activations_do_not():
    """The weight words (``_mv._ld4_stream``) and the rows' scales and zeros load under an L2 evict-first cache
    policy (a call reads them once; after the zeroing flush the lines they replace would otherwise be dirty
    ones); the activations, which every program reads, keep the default policy."""
    got = _compile({"bits": 2})
    assert got["evict_first_policy"] and got["ld_policy"] >= 2 + 2 and got["ld_plain_v4"] >= 4, got
    got = _compile({"bits": 3, "direct": True})
    assert got["evict_first_policy"] and got["ld_policy"] >= 3 + 2 and got["ld_plain_v4"] >= 4, got


def test_mv_byte_split_compiles_without_spills():
    """``byte_split`` on a SliM layer (a loop per segment, entered only where the program has tiles) under the
    dispatch's 128-, 96- and 72-register caps with the L2 prefetch: no spills at 128 (with ``tile_units``) and 96
    (72 spills as the plain split does)."""
    got = _compile({"bits": [1, 2, 3], "split_k": 8, "maxnreg": 128, "l2_ahead": 1, "byte_split": True,
                    "tile_units": 576})
    assert got["kernel"] == "mv_kernel" and got["local"] == 0, got
    got = _compile({"bits": [1, 2, 3], "split_k": 4, "maxnreg": 96, "l2_ahead": 1, "byte_split": True})
    assert got["kernel"] == "mv_kernel" and got["local"] == 0, got
    plain = _compile({"bits": [1, 2, 3], "split_k": 4, "maxnreg": 72, "l2_ahead": 1})
    got = _compile({"bits": [1, 2, 3], "split_k": 4, "maxnreg": 72, "l2_ahead": 1, "byte_split": True})
    assert got["local"] <= plain["local"], (got, plain)


_MVS_BODY = """
    from test_kernels_triton import random_layer
    from slimq.kernels.triton import KernelConfig, Workspace
    from slimq.kernels.triton._plan import mv_launches

    fields = json.loads(sys.argv[1])
    n, k, kw = 256, 4096, fields["k_warps"]
    p = random_layer(n, k, 128, fields["bits"])  # uniform: identity col_perm; mixed: groups moved whole
    dt = getattr(torch, fields.get("dtype", "float16"))
    x = torch.zeros(1, k, dtype=dt)
    out = torch.empty(1, n, dtype=dt)
    ws = Workspace("cpu", 1, n, k, dt)
    cfg = KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=kw, num_stages=1, k_warps=kw,
                       maxnreg=fields.get("maxnreg", 0), direct=fields.get("direct", False))
    lcs = mv_launches(x, p, None, out, ws, cfg)
    lc = lcs[-1]
    kwargs = dict(lc.kwargs, ASM=True, PDL=len(lcs) > 1)  # after the gather: PDL, as on a GPU
    kwargs.pop("launch_pdl", None)
    kern = lc.fn.warmup(*lc.args, grid=(1,), **kwargs)
    sass = sass_of(kern)
    ops = [op for _, op in re.findall(r"/\\*([0-9a-f]{4,})\\*/\\s+(?:@!?P\\d\\s+)?([A-Z][A-Z0-9_.]*)", sass)]
    hmma = [i for i, op in enumerate(ops) if op.startswith("HMMA")]
    ldg = [i for i, op in enumerate(ops) if op.startswith("LDG")]
    wait = [i for i, op in enumerate(ops) if op.startswith("ACQBULK")]
    print(json.dumps({"launches": [l.kernel for l in lcs], "hmma": len(hmma), "ldg": len(ldg),
                      "f2fp": sum(op.startswith("F2FP") for op in ops), "ops": len(ops),
                      "ldg_before_hmma": sum(i < hmma[0] for i in ldg),
                      "ldg_before_wait": sum(i < wait[0] for i in ldg) if wait else None,
                      "local": sass.count("STL") + sass.count("LDL")}))
"""


def test_mvs_issues_every_load_before_the_first_mma():
    """``k_warps``: each warp's tiles are loaded up front and the compute waits for all of them (ptxas would
    otherwise sink loads next to their use: one memory round trip per tile). Reading ``x`` itself (uniform
    3-bit, 16 warps, 2 tiles per warp): 2 x (2-bit words, 1-bit words, 4 x activations, scale, zero) loads, 2 x
    (16 + 16 code MMAs + 8 correction MMAs), no spills under the dispatch's cap of 128 registers. After the
    gather (SliM, 8 warps): the weight-side loads stay ahead of the wait for it (PDL); SliM reading ``x`` itself
    through its whole-group ``col_perm``: every load, the sources' included, before the first MMA."""
    got = compile_sm90(_MVS_BODY, {"bits": 3, "k_warps": 16, "maxnreg": 128, "direct": True})
    assert got["launches"] == ["mvs_kernel"] and got["local"] == 0, got
    assert got["hmma"] == 2 * 40 and got["ldg"] == 2 * 8 + 2 and got["ldg_before_hmma"] == got["ldg"], got
    got = compile_sm90(_MVS_BODY, {"bits": [1, 2, 2, 3], "k_warps": 8})
    assert got["launches"] == ["mv_gather_kernel", "mvs_kernel"] and got["local"] == 0, got
    assert got["ldg_before_hmma"] == got["ldg"], got
    # tiles per warp 1, 2, 1 of the 1-, 2- and 3-bit segments: their words, scales and zeros (3 + 2 x 4 + 5
    # loads) before the wait for the gather, the activations' pairs and sums (6 + 2 x 6 + 7) after it
    assert got["ldg"] == 16 + 25 and got["ldg_before_wait"] == 16, got
    # the same SliM layer reading x itself (col_perm moves whole groups): per tile its source column, then x
    got = compile_sm90(_MVS_BODY, {"bits": [1, 2, 2, 3], "k_warps": 8, "direct": True})
    assert got["launches"] == ["mvs_kernel"] and got["local"] == 0, got
    assert got["ldg"] == 16 + 4 + 4 * 4 and got["ldg_before_hmma"] == got["ldg"], got


def test_mvs_reads_bfloat16_x_as_bfloat16():
    """A bfloat16 token read directly (uniform 2- and 3-bit, 16 warps, 2 tiles per warp): bfloat16 MMAs on the raw
    words of ``x`` (no conversion instruction), the same loads, all before the first MMA, as many MMAs as for
    float16, at most 10% more instructions (the extra shifted copies of the words), no spills."""
    for bits in (2, 3):
        f16 = compile_sm90(_MVS_BODY, {"bits": bits, "k_warps": 16, "maxnreg": 128, "direct": True})
        got = compile_sm90(_MVS_BODY, {"bits": bits, "k_warps": 16, "maxnreg": 128, "direct": True,
                                       "dtype": "bfloat16"})
        assert got["launches"] == ["mvs_kernel"] and got["local"] == 0, got
        assert got["ldg"] == f16["ldg"] and got["ldg_before_hmma"] == got["ldg"] and got["hmma"] == f16["hmma"], got
        assert got["f2fp"] == f16["f2fp"] and got["ops"] <= 1.1 * f16["ops"], (got, f16)
