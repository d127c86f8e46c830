"""Run one layer's call a few times, for a profiler to attach to (run on a GPU, e.g. under Nsight Compute).

    PYTHONPATH=src ncu --clock-control none --kernel-name regex:"gv_kernel|h2_kernel" --launch-skip 2 \\
        --launch-count 2 --section SpeedOfLight --section WarpStateStats --section Occupancy \\
        python3 benchmarks/profile_m1.py --shape 28672x8192 --variant 2b

Each config (the dispatch's, then any ``--also`` ones) runs ``--reps`` times on one packed random layer
(``kernels.build_layer``), then cuBLAS FP16 on the same shape, so a profile can compare them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _fields(spec: str) -> dict:
    """``"path=h2,block_n=64,prefetch=True"`` -> KernelConfig keyword arguments (ints, booleans, strings)."""
    out = {}
    for item in filter(None, spec.split(",")):
        key, sep, val = item.partition("=")
        if not sep:
            raise SystemExit(f"--also wants name=value pairs, got {item!r}")
        val = val.strip()
        out[key.strip()] = int(val) if val.lstrip("-").isdigit() else {"True": True, "False": False}.get(val, val)
    return out


def main(argv=None) -> int:
    from kernels import build_layer

    from slimq.kernels.triton import KernelConfig, Workspace, resolve_config, sbp_matmul
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="28672x8192", help="N x K (out_features x in_features)")
    ap.add_argument("--variant", default="2b", choices=["2b", "3b", "4b", "slim"])
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--also", action="append", default=[],
                    help="an extra config as KernelConfig fields, e.g. path=h2,block_m=1,block_n=64,split_k=8")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_m1.py needs a CUDA GPU")
    n, k = (int(v) for v in args.shape.split("x"))
    dev = torch.device("cuda")
    p = build_layer(n, k, args.variant, dev, seed=1)
    x = torch.randn(args.m, k, device=dev, dtype=torch.float16)
    out = torch.empty(args.m, n, device=dev, dtype=torch.float16)
    ws = Workspace(dev, args.m, n, k, torch.float16, dequant=True)
    cfgs = [resolve_config(x, p)] + [KernelConfig(**_fields(a)) for a in args.also]
    for cfg in cfgs:
        print(cfg, flush=True)
        for _ in range(args.reps):
            sbp_matmul(x, p, out=out, workspace=ws, config=cfg)
    w = torch.randn(n, k, device=dev, dtype=torch.float16)
    for _ in range(args.reps):
        torch.mm(x, w.t())
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
