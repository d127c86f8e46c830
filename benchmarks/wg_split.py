"""``wg`` with 9-16 tokens: every K split 1-16 (not only powers of two) on 64- and 128-row tiles, against the
dispatch and cuBLAS FP16, timed in alternating rounds.

Per (shape, variant): the dispatch's config (``resolve_config``), each ``(block_n, split_k)`` whose grid holds
0.75-8 programs per SM and each ``--extra`` variant of the dispatch's config (``num_stages=4``: that field changed),
every one checked against the reference first, then all timed together with FP16
(``timing.time_graphs``: CUDA-graph replays, L2 flushed as ``do_bench`` does, ``--rounds`` alternating rounds).
Prints the dispatch, the best and every candidate per line (``block_n/k<split>[/options]: us``) and writes
``OUT/wg_split.json``. Run 97 (``kernels_h200_run97_m16_split_tune.json``) set ``_dispatch._balanced_split``.

With ``--no-splits`` any path is timed (``--m 1``: one-token ``mv`` against ``--extra byte_split=1,split_k=8``;
``--m 256``: ``wgr`` against ``--extra stream_k=132``).

    PYTHONPATH=src python3 benchmarks/wg_split.py [--m 16] [--shapes 28672x8192,...] [--variants 2b,3b,4b,slim]
        [--extra num_stages=2 --extra num_stages=4,num_warps=8] [--no-splits]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels import SHAPES, TOL, VARIANTS, Case, build_layer, cfg_name, parse_extras, rel_err

SPLITS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16)


def candidates(auto, n: int, k: int, sms: int) -> list:
    """``auto`` with 64 or 128 rows and each split of ``SPLITS`` that K allows and that puts 0.75-8 programs
    on each SM; the dispatch's own config left out."""
    blocks = math.ceil(k / 128)
    out = [dataclasses.replace(auto, block_n=bn, split_k=sp) for bn in (64, 128) for sp in SPLITS
           if sp <= blocks and 0.75 * sms <= math.ceil(n / bn) * sp <= 8 * sms]
    return [c for c in dict.fromkeys(out) if c != auto]


def short(name: str) -> str:
    """``wg:16x64x128/w4s3/k2/j/nopdl`` -> ``64/k2/nopdl``: rows, split and any options but ``/j`` (then the
    warps and stages where they differ from ``w4s3``)."""
    parts = name.split("/")
    return "/".join([parts[0].split("x")[1], parts[2]] + [p for p in parts[3:] if p != "j"]
                    + ([parts[1]] if parts[1] != "w4s3" else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=16, help="tokens (9-16: the rule this sweep tunes; 1-1024 with "
                    "--no-splits: the dispatch of any path against its --extra variants)")
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--extra", action="append", default=[], metavar="FIELD=N,...",
                    help="also time the dispatch's config with these fields changed (repeatable)")
    ap.add_argument("--no-splits", action="store_true",
                    help="time only the dispatch's config and its --extra variants, no other splits or tiles")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if not (1 <= args.m <= 16 or (args.no_splits and 16 < args.m <= 1024)):
        ap.error(f"--m must be 1-16, or up to 1024 with --no-splits; got {args.m}")
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    from slimq.kernels.triton import KernelConfig
    try:  # refused here if no wg, one-token mv or wgr config takes it (each case checks its own again)
        extras = parse_extras(args.extra, KernelConfig("wg"),
                              KernelConfig("mv", block_m=1, block_n=128, num_warps=4, split_k=4),
                              KernelConfig("wgr", block_m=256, block_n=128, block_k=64, num_warps=8, producers=1))
    except ValueError as e:
        ap.error(str(e))
    if not torch.cuda.is_available():
        raise SystemExit("wg_split.py needs a CUDA GPU")
    from timing import time_graphs

    from slimq.kernels.reference import packed_matmul_reference
    from slimq.kernels.triton import Workspace, resolve_config
    from slimq.kernels.triton.warmup import precompile
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ws = Workspace(dev, args.m, max(n for n, _ in shapes), max(k for _, k in shapes), torch.float16, dequant=True)
    rows, bad = [], []
    for n, k in shapes:
        w16 = torch.randn(n, k, device=dev, dtype=torch.float16) * 0.02
        x16 = torch.randn(args.m, k, device=dev, dtype=torch.float16)
        y16 = torch.empty(args.m, n, device=dev, dtype=torch.float16)
        for v in args.variants.split(","):
            p = build_layer(n, k, v, dev, seed=n + k)
            case = Case(p, args.m, dev, ws)
            auto = resolve_config(case.x, p)
            if auto.path != "wg" and not args.no_splits:  # e.g. mv for 2-8 tokens on the big layers
                print(f"{n}x{k} {v}: the dispatch runs {auto.path!r}, not wg; skipped (--no-splits times the "
                      f"--extra variants of any path)", flush=True)
                continue
            cfgs = [auto] + ([] if args.no_splits else candidates(auto, n, k, sms))
            for e in extras:
                try:
                    c = dataclasses.replace(auto, **e)
                except ValueError as err:  # the field does not apply to this case's config
                    print(f"{n}x{k} {v}: --extra {e} on {cfg_name(auto)}: {err}; skipped", flush=True)
                    continue
                cfgs += [] if c in cfgs else [c]
            precompile([lc for c in cfgs for lc in case.launches(c)], processes=args.procs)
            ref = packed_matmul_reference(case.x, p).float()
            fns, errs = {"fp16": lambda x=x16, w=w16, y=y16: torch.mm(x, w.t(), out=y)}, {}
            for c in cfgs:
                case.fn(c)()
                errs[cfg_name(c)] = err = rel_err(case.out, ref)
                if err < TOL[torch.float16]:
                    fns[cfg_name(c)] = case.fn(c)
                else:
                    bad.append((n, k, v, cfg_name(c), err))
            t = time_graphs(fns, rep_ms=15, rounds=args.rounds)
            an = cfg_name(auto)
            best = min((name for name in t if name != "fp16"), key=t.get)
            print(f"{n}x{k} {v} fp16 {t['fp16']:.1f} dispatch {an} {t.get(an, float('nan')):.1f} "
                  f"({t['fp16'] / t.get(an, float('nan')):.2f}x) best {best} {t[best]:.1f} "
                  f"({t['fp16'] / t[best]:.2f}x)", flush=True)
            print("   " + "  ".join(f"{short(name)}:{us:.1f}"
                                    for name, us in sorted(t.items(), key=lambda a: a[1]) if name != "fp16"), flush=True)
            rows.append({"N": n, "K": k, "M": args.m, "variant": v, "auto": an, "us": t, "err": errs})
            del case, p
        del w16
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "wg_split.json").write_text(json.dumps({"sms": sms, "rounds": args.rounds, "rows": rows}, indent=1))
    for b in bad:
        print("ERROR: output differs from the reference:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
