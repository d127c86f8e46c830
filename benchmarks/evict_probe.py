"""Whether an L2 evict-first hint on a read keeps it from writing back the zeroing flush's dirty lines.

The issue's protocol (``timing.py``, ``--flush zero``) leaves the L2 full of dirty lines, so a timed call's reads
evict them and write them back: up to ~50 MB of extra DRAM traffic (benchmarks/KERNEL_NOTES.md, session 8). A
line loaded with an evict-first cache policy is the first candidate when the next miss in its set needs room, so
a stream of such loads should mostly replace its own clean lines instead. This times one Triton read of a
contiguous buffer (16-byte loads, XOR-reduced) per load flavour, in alternating rounds, under each flush:

* ``normal``: ``ld.global.nc.v4`` (``_mv._ld4``, what the activations use);
* ``evict_first``: the same with an ``L2::evict_first`` cache policy (``_mv._ld4_stream``, what ``mv``'s weight
  words use since session 24);
* ``evict_unchanged``: a cache policy that changes nothing (a control for the policy operand itself;
  ``_mv._ld4`` with that policy).

    PYTHONPATH=src python3 benchmarks/evict_probe.py [--mb 58.7,8.4,4.2] [--out DIR]

Prints one row per size and flush (us per read) and writes ``evict_probe.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import time_graphs  # noqa: E402

from slimq.kernels.triton._mv import _ld4  # noqa: E402

MODES = ("normal", "evict_first", "evict_unchanged")


@triton.jit
def read_kernel(ptr, out, BLOCK: tl.constexpr, ITERS, MODE: tl.constexpr):
    """Program ``p`` reads ``ITERS`` blocks of ``BLOCK`` 16-byte vectors, contiguous, and stores their XOR."""
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.int32)
    for i in range(ITERS):
        p = ptr + ((pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)) * 4
        if MODE == 0:
            a, b, c, d = _ld4(p, True)
        elif MODE == 1:
            a, b, c, d = _ld4(p, True, "evict_first")  # _mv._ld4_stream
        else:
            a, b, c, d = _ld4(p, True, "evict_unchanged")
        acc = acc ^ a ^ b ^ c ^ d
    tl.store(out + pid * BLOCK + tl.arange(0, BLOCK), acc)


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", default="58.7,8.4,4.2",
                    help="comma-separated buffer sizes in MB (58.7: 28672 x 8192 2-bit codes; 8.4: 4096 x 4096 4-bit)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    try:
        args.sizes = [float(v) for v in args.mb.split(",")]
    except ValueError:
        ap.error(f"--mb takes comma-separated numbers, got {args.mb!r}")
    if not all(0 < s <= 4096 for s in args.sizes):
        ap.error(f"--mb takes sizes in (0, 4096], got {args.mb}")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        raise SystemExit("evict_probe.py times a GPU read: no CUDA device here")
    rows = []
    out = torch.zeros(1 << 24, dtype=torch.int32, device="cuda")
    block, iters = 512, 4
    print(f"{torch.cuda.get_device_name()}: us per read" + "".join(f"{m:>17}" for m in MODES))
    for mb in args.sizes:
        progs = -(-int(mb * 1e6) // (16 * block * iters))
        buf = torch.randint(0, 1 << 30, (progs * block * iters * 4,), dtype=torch.int32, device="cuda")
        fns = {m: (lambda i=i: read_kernel[(progs,)](buf, out, block, iters, i, num_warps=4))
               for i, m in enumerate(MODES)}
        for flush in ("zero", "clean"):
            us = time_graphs(fns, 60, flush, rounds=args.rounds)
            rows.append({"MB": mb, "flush": flush, **us})
            print(f"{mb:8.1f} MB, {flush:>5} flush " + "".join(f"{us[m]:17.1f}" for m in MODES), flush=True)
    path = Path(args.out) / "evict_probe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
