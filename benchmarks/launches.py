"""Per-launch times of one slimq matmul call, and a split-K stress check (run on a GPU).

For a few layer shapes (``--shapes``) at M = 1 and 16 (``--ms``) it times cuBLAS FP16, the whole call and each
of its Triton launches alone (median of CUDA-graph replays, L2 flushed, like benchmarks/kernels.py; the
dequant path's cuBLAS step is no launch of its own: the whole call less its launches), next to one and
three empty kernels: the fixed cost a launch adds inside a graph. Then it replays each of a few
calls 300 times in a CUDA graph (cycling through three inputs copied into the captured one) and
checks every 10th output against the pure-torch reference and that the split-K workspace (sums and tile counters) is left zeroed: the split-K finish runs
in whichever program of a tile arrives last, so races would show here.

    PYTHONPATH=src python benchmarks/launches.py [--shapes 4096x4096,...] [--ms 1,16] [--variant 2b] [--no-stress]
        [--out DIR]    # writes DIR/launches.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import Case, build_layer, rel_err, time_graph  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (28672, 8192)]
STRESS = [(4096, 4096, "2b", 1), (28672, 8192, "slim", 1), (8192, 28672, "3b", 16), (11008, 4096, "4b", 4),
          (4096, 11008, "2b", 16), (4096, 4096, "slim", 1)]


def launch_times(dev, shapes=SHAPES, ms=(1, 16), variant="2b") -> dict:
    import triton

    from slimq.kernels.triton import Workspace, resolve_config

    @triton.jit
    def _empty(p):
        pass

    z = torch.zeros(1, device=dev)
    res = {"1 empty kernel": time_graph(lambda: _empty[(1,)](z)),
           "3 empty kernels": time_graph(lambda: [_empty[(1,)](z) for _ in range(3)])}
    for n, k in shapes:
        p = build_layer(n, k, variant, dev)
        ws = Workspace(dev, max(ms), n, k, torch.float16, dequant=True)
        w16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        for m in ms:
            c = Case(p, m, dev, ws)
            cfg = resolve_config(c.x, p)
            x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
            y16 = torch.empty(m, n, device=dev, dtype=torch.float16)
            res[f"{n}x{k} M={m}: cuBLAS FP16"] = time_graph(lambda: torch.mm(x16, w16.t(), out=y16))
            res[f"{n}x{k} M={m} {variant}: whole call ({cfg.path}, split {cfg.split_k})"] = time_graph(c.fn(cfg))
            for lc in c.launches(cfg):
                res[f"{n}x{k} M={m} {variant}:   {lc.kernel} grid {lc.grid}"] = time_graph(lc)
    return res


def stress(dev) -> list[dict]:
    from slimq.kernels.reference import packed_matmul_reference
    from slimq.kernels.triton import Workspace, resolve_config
    out = []
    for n, k, v, m in STRESS:
        p = build_layer(n, k, v, dev)
        ws = Workspace(dev, 16, n, k, torch.float16)
        c = Case(p, m, dev, ws)
        cfg = resolve_config(c.x, p)
        xs = [torch.randn_like(c.x) for _ in range(3)]  # a new input per replay: stale activations would show
        refs = [packed_matmul_reference(x, p).float() for x in xs]
        fn = c.fn(cfg)
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        worst = 0.0
        for it in range(300):
            c.out.fill_(float("nan"))
            c.x.copy_(xs[it % 3])
            g.replay()
            if it % 10 == 0:
                torch.cuda.synchronize()
                ref = refs[it % 3]
                worst = max(worst, rel_err(c.out, ref))
        torch.cuda.synchronize()
        clean = not bool(ws.acc.any()) and not bool(ws.cnt.any())
        ok = worst < 3e-3 and clean and bool(torch.isfinite(c.out).all())
        out.append({"shape": f"{n}x{k}", "variant": v, "M": m, "path": cfg.path, "split_k": cfg.split_k,
                    "launches": [lc.kernel for lc in c.launches(cfg)], "worst_rel_err": worst,
                    "workspace_clean": clean, "ok": ok})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--ms", default="1,16")
    ap.add_argument("--variant", default="2b", choices=("2b", "3b", "4b", "slim"))
    ap.add_argument("--no-stress", action="store_true", help="skip the split-K stress check")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        ms = [int(v) for v in args.ms.split(",")]
    except ValueError:
        ap.error(f"--shapes takes NxK,... and --ms M,...; got {args.shapes!r} and {args.ms!r}")
    if any(len(s) != 2 or min(s) < 1 for s in shapes) or min(ms) < 1:
        ap.error(f"--shapes takes NxK,... and --ms M,... (all >= 1); got {args.shapes!r} and {args.ms!r}")
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    times = launch_times(dev, shapes, ms, args.variant)
    for name, us in times.items():
        print(f"{name:64s} {us:8.1f} us")
    checks = [] if args.no_stress else stress(dev)
    for r in checks:
        print(f"stress {r['shape']} {r['variant']} M={r['M']} {r['path']} split {r['split_k']} {r['launches']}: "
              f"worst rel err {r['worst_rel_err']:.2e}, workspace clean {r['workspace_clean']} -> "
              f"{'OK' if r['ok'] else 'FAIL'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    tmp = out / "launches.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "times_us": times, "stress": checks}, indent=1))
    tmp.replace(out / "launches.json")
    return 0 if all(r["ok"] for r in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
