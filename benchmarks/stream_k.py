"""Large-M ``wgs`` with and without stream-K, against cuBLAS FP16 and the dispatch, timed in alternating rounds.

Per (shape, M): FP16 ``torch.mm``; per variant the config the dispatch picks (``resolve_config``), ``wgs``
with stream-K over the SM count (256 x 128 tiles, 4 producer warps) and the same without programmatic dependent
launch (``pdl=False``: it starts after the gather instead of during it) and each ``--extra`` variant of the stream-K
config (``num_stages=3``: that field changed); each checked against the reference, then
all timed together in ``--rounds`` alternating rounds (``timing.time_graphs``: CUDA-graph replays, L2 flushed
as ``do_bench`` does, one clock for all). Prints one line per (shape, M) and writes ``OUT/stream_k.json``.

    PYTHONPATH=src python3 benchmarks/stream_k.py [--ms 256,512,1024] [--variants 2b,3b,4b,slim] [--out DIR]
        [--extra num_stages=3 --extra depth=1] [--no-nopdl]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import SHAPES, TOL, VARIANTS, Case, build_layer, parse_extras, rel_err  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--ms", default="256,512,1024")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", action="append", default=[], metavar="FIELD=N,...",
                    help="also time the stream-K config with these fields changed (repeatable)")
    ap.add_argument("--no-nopdl", action="store_true", help="leave out the stream-K config without PDL")
    ap.add_argument("--procs", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    from slimq.kernels.triton import KernelConfig
    stream = KernelConfig("wgs", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=2, producers=4,
                          depth=2, stream_k=132)
    try:
        extras = {e: dataclasses.replace(stream, **f) for e, f in zip(args.extra, parse_extras(args.extra, stream))}
    except ValueError as e:
        ap.error(str(e))
    if not torch.cuda.is_available():
        raise SystemExit("stream_k.py needs a CUDA GPU (Hopper: wgs is Gluon for sm_90)")
    from timing import time_graphs

    from slimq.kernels.reference import packed_matmul_reference
    from slimq.kernels.triton import Workspace, resolve_config
    from slimq.kernels.triton.warmup import precompile
    from triton.runtime.errors import OutOfResources
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    stream = dataclasses.replace(stream, stream_k=sms)
    extras = {e: dataclasses.replace(c, stream_k=sms) for e, c in extras.items()}
    named = [("stream_k", stream)]
    if not args.no_nopdl:
        named.append(("stream_k_nopdl", dataclasses.replace(stream, pdl=False)))
    named += [(f"stream_k+{e}", c) for e, c in extras.items()]
    rows = []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        for m in (int(v) for v in args.ms.split(",")):
            w16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
            x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
            y16 = torch.empty(m, n, device=dev, dtype=torch.float16)
            fns, keep, cfgs = {"fp16": lambda: torch.mm(x16, w16.t(), out=y16)}, [], {}
            for v in args.variants.split(","):
                p = build_layer(n, k, v, dev)
                case = Case(p, m, dev, Workspace(dev, m, n, k, torch.float16, dequant=True))
                auto = resolve_config(case.x, p)
                ref = packed_matmul_reference(case.x, p).float()
                precompile([lc for _, c in [("dispatch", auto)] + named for lc in case.launches(c)],
                           processes=args.procs)
                for name, cfg in [("dispatch", auto)] + named:
                    try:
                        case.fn(cfg)()
                    except OutOfResources as e:  # e.g. a deeper ring than shared memory holds
                        print(f"{n}x{k} M={m} {v} {name}: skipped ({e})", flush=True)
                        continue
                    err = rel_err(case.out, ref)
                    if err >= TOL[torch.float16]:
                        raise SystemExit(f"{n}x{k} M={m} {v} {name}: relative error {err:.2e}")
                    fns[f"{v}:{name}"] = case.fn(cfg)
                cfgs[v] = f"{auto.path}/k{auto.split_k}/sk{auto.stream_k}"
                keep.append(case)
            t = time_graphs(fns, flush="zero", rounds=args.rounds)
            rows.append({"N": n, "K": k, "M": m, "us": t, "dispatch": cfgs})
            print(f"{n}x{k} M={m}: " + "  ".join(f"{a} {u:.1f} ({t['fp16'] / u:.3f}x)" for a, u in t.items()),
                  flush=True)
            del keep, fns
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(dev), "sms": sms, "torch": torch.__version__, "rounds": args.rounds}
    (out / "stream_k.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
