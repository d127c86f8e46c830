"""The dispatched ``wg`` kernel (Triton, weights as ``wgmma``'s register operand) compiled for sm_90 without a
GPU: no register an in-flight ``wgmma`` reads as its A operand is written before the wait that retires it
(``_sass.wgmma_register_hazards``). ptxas does not guard those registers; Triton 3.6 (the GPU runs') left such a
window at 128 tokens on 3-bit and at 64-128 tokens on SliM layers (up to seven groups pending, benchmarks/
KERNEL_NOTES.md, session 14); the Triton CI installs did not, and this keeps it that way.
"""
from __future__ import annotations

import pytest
from _sm90 import compile_sm90

_BODY = """
    from test_kernels_triton import random_layer
    from _sass import wgmma_register_hazards
    from slimq.kernels.triton import Workspace, plan_launches, select_config
    f = json.loads(sys.argv[1])
    m, n, k = f["m"], 256, 1024
    p = random_layer(n, k, 128, f["bits"])
    x = torch.zeros(m, k, dtype=torch.float16)
    out = torch.empty(m, n, dtype=torch.float16)
    ws = Workspace("cpu", m, n, k, torch.float16, stream_k_programs=0)
    cfg = select_config(m, 28672, 8192, bits=tuple(sorted({s.bits for s in p.segments})))
    (lc,) = [lc for lc in plan_launches(x, p, None, out, ws, cfg) if lc.kernel == "wg_kernel"]
    sass = sass_of(lc.fn.warmup(*lc.args, **lc.kwargs, grid=(1,)))
    print(json.dumps({"path": cfg.path, "rs_hgmma": len(re.findall(r"HGMMA\\.\\S+ R\\d+, R\\d+, gdesc", sass)),
                      "hazards": wgmma_register_hazards(sass)}))
"""


@pytest.mark.parametrize("m,bits", [(16, 2), (128, 2), (128, 3), (64, [1, 2, 3, 2]), (128, [1, 2, 3, 2])])
def test_wg_register_operand_is_not_rewritten_while_read(m, bits):
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")  # (not at collection: see test_wgr)
    got = compile_sm90(_BODY, {"m": m, "bits": bits})
    assert got["path"] == "wg" and got["rs_hgmma"] > 0, got
    assert got["hazards"] == [], got["hazards"]


_DIRECT_BODY = """
    from test_kernels_triton import random_layer
    from slimq.kernels.triton import KernelConfig, Workspace, plan_launches
    f = json.loads(sys.argv[1])
    m, n, k = 16, 256, 4096
    p = random_layer(n, k, 128, f["bits"])  # mixed: SliM's groups moved whole (col_perm read per block)
    dt = getattr(torch, f.get("dtype", "float16"))
    x = torch.zeros(m, k, dtype=dt)
    out = torch.empty(m, n, dtype=dt)
    ws = Workspace("cpu", m, n, k, dt, stream_k_programs=0)
    cfg = KernelConfig("wg", block_m=f.get("m", 16), block_n=64, split_k=2, join=True, direct=f["direct"],
                       scaled=f.get("scaled", False))
    (lc,) = [lc for lc in plan_launches(x, p, None, out, ws, cfg) if lc.kernel == "wg_kernel"]
    kw = dict(lc.kwargs, ASM=True) if f.get("asm") else lc.kwargs  # the PTX path, as on a GPU
    sass = sass_of(lc.fn.warmup(*lc.args, **kw, grid=(1,)))
    print(json.dumps({"cp_async_16": len(re.findall(r"LDGSTS\\.E\\.BYPASS\\.128", sass)),
                      "ldg_u16": len(re.findall(r"LDG\\.E\\.U16", sass)),
                      "hgmma_bf16": len(re.findall(r"HGMMA\\.\\S+\\.BF16 R\\d+, R\\d+, gdesc", sass)),
                      "hgmma": len(re.findall(r"HGMMA\\.\\S+ R\\d+, R\\d+, gdesc", sass)),
                      "local": sass.count("STL") + sass.count("LDL"), "xbf16": lc.kwargs.get("XBF16")}))
"""


def test_wg_direct_pipelines_slim_x_through_col_perm():
    """``wg`` reading ``x`` of a SliM layer itself: each block's source column is loaded a block ahead and carried
    as a block index (a loop-carried column would lose its multiple-of-BLK hint), so every segment's ``x`` tiles
    still come by 16-byte ``cp.async`` (``LDGSTS.128``, pipelined), as many as the gather's operand copies, and
    no 2-byte loads appear beyond the scales' and zeros' (a scalarized ``x``: 84 against 36)."""
    direct = compile_sm90(_DIRECT_BODY, {"bits": [1, 2, 2, 3], "direct": True})
    gather = compile_sm90(_DIRECT_BODY, {"bits": [1, 2, 2, 3], "direct": False})
    assert direct["cp_async_16"] >= gather["cp_async_16"] > 0, (direct, gather)
    assert direct["ldg_u16"] == gather["ldg_u16"], (direct, gather)


@pytest.mark.parametrize("bits,m,scaled", [(2, 16, False), ([1, 2, 2, 3], 16, False), (4, 64, True)])
def test_wg_direct_multiplies_bfloat16_x_as_bfloat16(bits, m, scaled):
    """``wg`` reading bfloat16 ``x`` itself: every register-operand ``HGMMA`` is a bfloat16 one (codes, merged 3-bit
    codes and SCALED weights built as bfloat16), as many as for float16, ``x`` still by 16-byte ``cp.async``, no
    spills."""
    f = {"bits": bits, "direct": True, "m": m, "scaled": scaled, "asm": True}
    f16 = compile_sm90(_DIRECT_BODY, f)
    got = compile_sm90(_DIRECT_BODY, {**f, "dtype": "bfloat16"})
    assert got["xbf16"] is True and got["hgmma_bf16"] == got["hgmma"] == f16["hgmma"] > 0, (got, f16)
    assert got["cp_async_16"] == f16["cp_async_16"] and got["local"] == 0, (got, f16)
