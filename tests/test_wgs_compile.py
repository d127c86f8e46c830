"""The Gluon ``wgs`` kernels compile for sm_90 without a GPU, and their ``wgmma`` stay asynchronous.

Gluon kernels cannot run in the Triton interpreter, so CI (no GPU) compiles ``wgs_kernel`` for an sm_90
target in a fresh process whose Triton driver is a stand-in reporting that target, then reads the SASS:
ptxas must not have serialized the ``wgmma`` (the kernel peels each segment's first K tile for that,
``_wgs._segment``; a serialized kernel waits for zero outstanding groups after every ``HGMMA``). This also
catches Gluon API changes in the installed Triton (the GPU measurements used Triton 3.6).
"""
from __future__ import annotations

import pytest
from _sm90 import compile_sm90

pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")

_BODY = """
    from test_kernels_triton import random_layer  # triton is imported already: no interpreter mode there
    from slimq.kernels.triton import KernelConfig, Workspace
    from slimq.kernels.triton._plan import wgs_launches

    n, k, m = 256, 640, 256
    p = random_layer(n, k, 128, [1, 2, 3, 2, 1])  # three segments
    x = torch.zeros(m, k, dtype=torch.float16)
    out = torch.empty(m, n, dtype=torch.float16)
    ws = Workspace("cpu", m, n, k, torch.float16)
    fields = json.loads(sys.argv[1])
    pdl = fields.pop("PDL", False)  # as the launch plan sets it on a GPU (programmatic dependent launch)
    cfg = KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, **fields)
    lc = wgs_launches(x, p, None, out, ws, cfg)[1]
    kern = lc.fn.warmup(*lc.args, grid=(1,), **lc.kwargs, **({"PDL": True} if pdl else {}))
    sass = sass_of(kern)
    print(json.dumps({"segments": lc.kwargs["NSEG"], "hgmma": sass.count("HGMMA"), "kernel": lc.kernel,
                      "wait0": sass.count("DEPBAR.LE gsb0, 0x0"), "wait1": sass.count("DEPBAR.LE gsb0, 0x1"),
                      "hfma2": sass.count("HFMA2"), "setmaxreg": sass.count("USETMAXREG"),
                      "red": sass.count("REDG.E.ADD.F32"), "gdc_wait": sass.count("ACQBULK"),
                      "xchg_release": sass.count("ATOMG.E.EXCH.STRONG.GPU"), "membar_gpu": sass.count("MEMBAR.ALL.GPU"),
                      "acquire_load": sass.count("LDG.E.STRONG.GPU"), "spills": sass.count("STL") + sass.count("LDL")}))
"""


def _compile(fields: dict) -> dict:
    return compile_sm90(_BODY, fields)


def test_wgs_compiles_for_sm90_with_async_wgmma():
    got = _compile({})
    assert got["kernel"] == "wgs_kernel" and got["segments"] == 3
    # 256 x 128 tiles, 8 warps: each warpgroup issues two m64 blocks x four k16 steps per K tile, in the peeled
    # first tile, the two tiles of the loop body and the tail of every segment
    assert got["hgmma"] >= 8 * 3 * 3
    # one wait for zero outstanding groups (after the last tile); every other wait leaves one wgmma in flight
    assert got["wait0"] == 1, got
    assert got["wait1"] >= 3 * 3, got


def test_wgs_with_producers_compiles_warp_specialised():
    """``_wgsw``: register reallocation between the partitions (setmaxnreg), the MMA loop's wgmma kept
    asynchronous (peeled first tile; one loop for every segment), float16 weights made in half2 (``_dq16``:
    HFMA2, no float32 FFMA path), and with split-K the float32 sums added by vector reductions."""
    got = _compile({"producers": 4, "split_k": 2, "depth": 2})
    assert got["kernel"] == "wgsw_kernel" and got["segments"] == 3
    assert got["setmaxreg"] >= 2, got
    assert got["hgmma"] >= 8 * 2 and got["wait0"] == 1 and got["wait1"] >= 2, got
    # three segments (1, 2 and 3 bits), each pair of weights one HFMA2, in three unrolled tiles per loop trip
    assert got["hfma2"] >= 3 * 3 * 8, got
    assert got["red"] > 0, got


def test_wgs_stream_k_compiles_with_flags_and_pdl():
    """``_wgsk`` (stream-K): warp-specialised like ``_wgsw`` (setmaxnreg, asynchronous ``wgmma``), no spills; a
    partial's flag is raised by a GPU-scope release exchange (a GPU fence before it), awaited with an acquire
    load; with programmatic dependent launch the MMA warps wait for the gather once (``griddepcontrol.wait``)."""
    got = _compile({"producers": 4, "depth": 2, "stream_k": 132, "PDL": True})
    assert got["kernel"] == "wgsk_kernel" and got["segments"] == 3
    assert got["setmaxreg"] >= 2 and got["hgmma"] >= 8 * 2 and got["wait0"] == 1 and got["wait1"] >= 2, got
    assert got["hfma2"] >= 3 * 3 * 8 and got["spills"] == 0, got
    assert got["xchg_release"] == 1 and got["membar_gpu"] >= 1 and got["acquire_load"] >= 1, got
    assert got["gdc_wait"] == 1, got
