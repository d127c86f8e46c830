"""Compile slimq kernels for an sm_90 target without a GPU and read their SASS (for the ``*_compile`` tests).

``compile_sm90(body, fields)`` runs ``body`` in a fresh Python process (no ``TRITON_INTERPRET``) after a
prelude that makes Triton's active driver a stand-in reporting sm_90, puts ``tests/`` on ``sys.path`` and
defines ``sass_of(kernel)`` (the kernel's SASS via ``cuobjdump``); ``body`` reads the JSON ``fields`` from
``sys.argv[1]`` and prints one JSON line, which is returned.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

__all__ = ["compile_sm90"]

_PRELUDE = textwrap.dedent("""
    import json, os, re, subprocess, sys, tempfile
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

    def sass_of(kern):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(kern.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        try:
            return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
""")


def compile_sm90(body: str, fields: dict) -> dict:
    """The JSON line ``body`` prints, run after the sm_90 prelude with ``fields`` as ``sys.argv[1]``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = f"TESTS = {os.path.dirname(os.path.abspath(__file__))!r}\n" + _PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", script, json.dumps(fields)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
