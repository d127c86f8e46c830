"""The Gluon ``wgs`` kernels compile for sm_90 without a GPU, and their ``wgmma`` stay asynchronous.

Gluon kernels cannot run in the Triton interpreter, so CI (no GPU) compiles ``wgs_kernel`` for an sm_90
target in a fresh process whose Triton driver is a stand-in reporting that target, then reads the SASS:
ptxas must not have serialized the ``wgmma`` (the kernel peels each segment's first K tile for that,
``_wgs._segment``; a serialized kernel waits for zero outstanding groups after every ``HGMMA``). This also
catches Gluon API changes in the installed Triton (the GPU measurements used Triton 3.6).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")

_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys, tempfile
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    class Sm90:  # what JITFunction.warmup asks of the active driver
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0
        def get_active_torch_device(self): return torch.device("cpu")
        def get_device_interface(self): return torch.cuda
        def get_benchmarker(self): raise RuntimeError("no GPU")
        def is_active(self): return True

    driver.set_active(Sm90())
    sys.path.insert(0, TESTS)
    from test_kernels_triton import random_layer  # triton is imported already: no interpreter mode there
    from slimq.kernels.triton import KernelConfig, Workspace
    from slimq.kernels.triton._plan import wgs_launches

    n, k, m = 256, 640, 256
    p = random_layer(n, k, 128, [1, 2, 3, 2, 1])  # three segments
    x = torch.zeros(m, k, dtype=torch.float16)
    out = torch.empty(m, n, dtype=torch.float16)
    ws = Workspace("cpu", m, n, k, torch.float16)
    cfg = KernelConfig("wgs", block_m=256, block_n=128, num_warps=8, num_stages=2, **json.loads(sys.argv[1]))
    lc = wgs_launches(x, p, None, out, ws, cfg)[1]
    kern = lc.fn.warmup(*lc.args, grid=(1,), **lc.kwargs)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kern.asm["cubin"])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    print(json.dumps({"segments": lc.kwargs["NSEG"], "hgmma": sass.count("HGMMA"), "kernel": lc.kernel,
                      "wait0": sass.count("DEPBAR.LE gsb0, 0x0"), "wait1": sass.count("DEPBAR.LE gsb0, 0x1"),
                      "hfma2": sass.count("HFMA2"), "setmaxreg": sass.count("USETMAXREG"),
                      "red": sass.count("REDG.E.ADD.F32")}))
""")


def _compile(fields: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = f"TESTS = {os.path.dirname(os.path.abspath(__file__))!r}\n" + _SCRIPT
    r = subprocess.run([sys.executable, "-c", script, json.dumps(fields)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


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
