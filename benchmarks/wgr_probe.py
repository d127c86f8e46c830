"""Probe of the large-M ``wgr`` path (weights as ``wgmma``'s register operand, ``_wgr.py``): checks it against the
pure-torch reference and times it against cuBLAS FP16 and the dispatch in alternating rounds (CUDA-graph replays,
L2 flushed as ``do_bench`` does). Uniform 2-, 3-, 4-bit and SliM (1/2/3-bit) layers. Each ``wgr`` config (``--bt``
x ``--stages`` x ``--split``) runs as an explicit ``KernelConfig("wgr", ...)`` through ``sbp_matmul`` (the
operand-order gather kernel, ``wgr_kernel``, a finalize when K is split; with ``--sk`` stream-K's
``_wgrk.wgrk_kernel`` on one persistent program per SM); ``wgr_call`` runs the kernel alone
after a torch gather (runs 108-112 timed that form).

    PYTHONPATH=src python3 benchmarks/wgr_probe.py [--shapes 28672x8192,...] [--ms 256,1024] [--variants 2b,3b,4b,slim]
        [--bt 128,256] [--stages 3,4] [--split 1,2] [--ws 0,1] [--pdl 0,1] [--sk 0,1] [--rounds 3] [--out DIR]
        # writes DIR/wgr_probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import SHAPES, TOL, Case, build_layer, rel_err


def operand_index(k: int, w: int, device) -> torch.Tensor:
    """Column of ``x`` (after ``col_perm``) at each operand position of the ``wgr`` gather, ``[K]`` int64."""
    from slimq.kernels.triton._wgr import WGR_BK, wgr_src
    bk = int(WGR_BK)
    tile = torch.tensor([wgr_src(i, w) for i in range(bk)], dtype=torch.int64)
    return (torch.arange(0, k, bk)[:, None] + tile[None, :]).reshape(-1).to(device)


def wgr_call(x: torch.Tensor, p, out: torch.Tensor, bt: int, stages: int):
    """A closure running ``wgr_kernel`` for layer ``p`` on ``x`` into ``out`` after a torch gather (``x[:, idx]``)
    in place of the path's gather kernel: the kernel launch of ``_wgr_plan.wgr_launches``, as runs 108-112 timed it."""
    from slimq.kernels.triton import KernelConfig, Workspace
    from slimq.kernels.triton._wgr_plan import wgr_launches
    from slimq.kernels.triton._support import wgr_layer_unsupported
    why = wgr_layer_unsupported(p)
    if why is not None:
        raise ValueError(f"wgr: {why}")
    m, k = x.shape
    cfg = KernelConfig("wgr", block_m=bt, block_n=128, block_k=64, num_warps=8, num_stages=stages)
    ws = Workspace(x.device, m, p.out_features, k, x.dtype)
    _, kernel = wgr_launches(x, p, None, out, ws, cfg)
    xg = ws.xperm[: m * k].view(m, k)  # what the kernel's TMA descriptor reads
    from slimq.kernels.triton._wgr import seg_planes
    idx = p.col_perm.long()[operand_index(k, seg_planes(tuple(s.bits for s in p.segments))[2], x.device)]

    def run():
        torch.index_select(x, 1, idx, out=xg)
        kernel()
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--ms", default="256,1024")
    ap.add_argument("--variants", default="2b,4b")
    ap.add_argument("--bt", default="128,256")
    ap.add_argument("--stages", default="4", help="K tiles in flight (2-5)")
    ap.add_argument("--warps", default="8", help="MMA warps: 8 ([128 rows, bt] tiles) or 4 (64 rows; 4,8: both)")
    ap.add_argument("--split", default="1", help="K splits (1-8)")
    ap.add_argument("--ws", default="0", help="0: the MMA warps issue the copies; 1: a producer warp does (0,1: both)")
    ap.add_argument("--pdl", default="1", help="1: with the copy warp, launch during the gather (0,1: both)")
    ap.add_argument("--sk", default="0", help="1: stream-K (_wgrk: one persistent program per SM, the copy warp; "
                    "0,1: both)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if any(a not in ("2", "3", "4", "5") for a in args.stages.split(",")):
        ap.error(f"--stages takes 2-5, got {args.stages!r}")
    if any(a not in ("4", "8") for a in args.warps.split(",")):
        ap.error(f"--warps takes 4 and 8, got {args.warps!r}")
    if any(a not in "12345678" or len(a) != 1 for a in args.split.split(",")):
        ap.error(f"--split takes 1-8, got {args.split!r}")
    for flag in ("pdl", "sk", "ws"):
        if any(a not in ("0", "1") for a in getattr(args, flag).split(",")):
            ap.error(f"--{flag} takes 0 and 1, got {getattr(args, flag)!r}")
    if any(v not in ("2b", "3b", "4b", "slim") for v in args.variants.split(",")):
        ap.error(f"wgr_probe takes the variants 2b, 3b, 4b and slim, got {args.variants!r}")
    if not torch.cuda.is_available():
        raise SystemExit("wgr_probe.py needs a CUDA GPU (Hopper)")
    from timing import time_graphs

    from slimq.kernels.reference import packed_matmul_reference
    from slimq.kernels.triton import KernelConfig, Workspace, resolve_config
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count  # stream-K: one program per SM
    rows, bad = [], []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        w16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        for m in (int(v) for v in args.ms.split(",")):
            x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
            y16 = torch.empty(m, n, device=dev, dtype=torch.float16)
            fns, keep = {"fp16": lambda x=x16, w=w16, y=y16: torch.mm(x, w.t(), out=y)}, []
            for v in args.variants.split(","):
                p = build_layer(n, k, v, dev, seed=n + k)
                split_rows = m if args.split != "1" else None  # wgr splits K at any token count
                case = Case(p, m, dev, Workspace(dev, m, n, k, torch.float16, dequant=True, split_rows=split_rows))
                ref = packed_matmul_reference(case.x, p).float()
                fns[f"{v}:dispatch"] = case.fn(resolve_config(case.x, p))
                for bt, st, sp, ws, pdl, sk, nw in ((int(b), int(a), int(c), int(w), d == "1", e == "1", int(f))
                                                    for b in args.bt.split(",") for a in args.stages.split(",")
                                                    for c in args.split.split(",") for w in args.ws.split(",")
                                                    for d in args.pdl.split(",") for e in args.sk.split(",")
                                                    for f in args.warps.split(",")):
                    if (pdl and not ws and "0" in args.pdl.split(",")) or (sk and (not ws or sp > 1)):
                        continue  # no PDL without the copy warp; stream-K needs the copy warp and no K split
                    cfg = KernelConfig("wgr", block_m=bt, block_n=16 * nw, block_k=64, num_warps=nw, num_stages=st,
                                       split_k=sp, producers=ws, pdl=pdl, stream_k=sms if sk else 0)
                    run = case.fn(cfg)
                    run()
                    err = rel_err(case.out, ref)
                    name = (f"{v}:wgr{bt}" + ("/w4" if nw == 4 else "") + f"/s{st}" + (f"/k{sp}" if sp != 1 else "")
                            + ("/ws" if ws else "") + ("/nopdl" if ws and not pdl else "") + ("/sk" if sk else ""))
                    print(f"{n}x{k} M={m} {name}: relative error {err:.2e}", flush=True)
                    if err < TOL[torch.float16]:
                        fns[name] = run
                    else:
                        bad.append((n, k, m, v, bt, st, sp, err))
                keep.append(case)
            t = time_graphs(fns, flush="zero", rounds=args.rounds)
            rows.append({"N": n, "K": k, "M": m, "us": t})
            print(f"{n}x{k} M={m}: " + "  ".join(f"{a} {u:.1f} ({t['fp16'] / u:.3f}x)" for a, u in t.items()),
                  flush=True)
            del keep, fns
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "wgr_probe.json").write_text(json.dumps({"rows": rows, "bad": bad}, indent=1))
    for b in bad:
        print("ERROR: wgr differs from the reference:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
