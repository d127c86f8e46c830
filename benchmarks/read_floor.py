"""How fast one Triton launch reads a packed layer's codes in ``mv``'s access pattern, and nothing else.

The floor under the ``M = 1`` kernels (benchmarks/KERNEL_NOTES.md, session 9): a kernel that only loads the
2-bit words of an ``N x K`` layer (``[K / 16, N]`` int32, as ``mv_kernel`` reads them: lane ``(g, t)`` takes rows
``4g ..`` of its own word rows, 16 bytes per load) and XORs them, over warps, rows per lane and K splits; then a
contiguous read of the same bytes and ``torch`` copy (read + write) of them. Times are CUDA-graph replays (the
launch included, as in ``kernels.py``), under each L2 flush of ``--flush`` (``timing.py``: ``zero`` leaves dirty
lines the read writes back, ``clean`` does not). Prints a table and writes ``read_floor.json``.

    PYTHONPATH=src python3 benchmarks/read_floor.py --shape 28672x8192
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
from timing import FLUSHES, time_graph

from slimq.kernels.triton._mv import _ld4


@triton.jit
def pattern_kernel(ptr, out, NS: tl.constexpr, TILES, NT: tl.constexpr, W: tl.constexpr, RB: tl.constexpr):
    """Grid ``(NS / (NT * RB), split)``: each program reads ``TILES`` 128-column tiles of its rows."""
    tid = tl.arange(0, NT)
    t = tid % 4
    pid_k = tl.program_id(1)
    row4 = tl.program_id(0) * NT * RB + (tid - t) * RB
    acc = tl.zeros([NT], tl.int32)
    kr0 = pid_k * TILES * 4 * W
    for tile in range(TILES):
        for i in tl.static_range(W):
            for r in tl.static_range(RB):
                a, b, c, d = _ld4(ptr + (kr0 + tile * 4 * W + t * W + i) * NS + row4 + 4 * r, True)
                acc = acc ^ a ^ b ^ c ^ d
    tl.store(out + (pid_k * tl.num_programs(0) + tl.program_id(0)) * NT + tid, acc)


@triton.jit
def contiguous_kernel(ptr, out, BLOCK: tl.constexpr, ITERS):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.int32)
    for i in range(ITERS):
        acc = acc ^ tl.load(ptr + (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK))
    tl.store(out + pid * BLOCK + tl.arange(0, BLOCK), acc)




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="28672x8192", help="N x K of a 2-bit layer")
    ap.add_argument("--flush", default="zero,clean",
                    help=f"comma-separated L2 flushes to time each read under (benchmarks/timing.py: {', '.join(FLUSHES)})")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    n, k = (int(v) for v in args.shape.split("x"))
    flushes = args.flush.split(",")
    if not set(flushes) <= set(FLUSHES):
        raise SystemExit(f"--flush takes {', '.join(FLUSHES)}, got {args.flush}")

    def _time(fn) -> dict:
        return {f: time_graph(fn, 30, f) for f in flushes}

    if k % 128 or n % 512:
        raise SystemExit(f"--shape needs K % 128 == 0 and N % 512 == 0, got {args.shape}")
    kw = k // 16  # 2-bit word rows
    w = torch.randint(0, 1 << 30, (kw, n), dtype=torch.int32, device="cuda")
    out = torch.zeros(n * 16 + 2 ** 21, dtype=torch.int32, device="cuda")
    nbytes = w.numel() * 4
    rows = []
    for nw in (4, 8):
        for rb in (1, 2, 4):
            for split in (2, 4, 8, 16):
                nt, per = 32 * nw, 32 * nw * rb
                if n % per or (k // 128) % split:
                    continue
                tiles = k // 128 // split
                us = _time(lambda: pattern_kernel[(n // per, split)](w, out, n, tiles, NT=nt, W=2, RB=rb, num_warps=nw))
                rows.append({"read": f"mv pattern, {nw} warps, {4 * rb} rows per lane, K split {split}", **us})
    block, progs = 2048, 1024
    if w.numel() % (block * progs) == 0:
        iters = w.numel() // (block * progs)
        rows.append({"read": "contiguous", **_time(lambda: contiguous_kernel[(progs,)](w, out, block, iters,
                                                                                     num_warps=8))})
    src = w.view(-1)
    dst = torch.empty_like(src)
    rows.append({"read": "torch copy (reads and writes the bytes)", **_time(lambda: dst.copy_(src))})
    print(f"{torch.cuda.get_device_name()}: {args.shape} 2-bit words, {nbytes / 1e6:.1f} MB read per call; "
          f"us (GB/s of the read) per L2 flush")
    print("".join(f"{f:>16}" for f in flushes) + "  read")
    for r in sorted(rows, key=lambda r: r[flushes[0]]):
        print("".join(f"{r[f]:8.1f} ({nbytes / r[f] / 1e3:4.0f})" for f in flushes) + f"  {r['read']}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "read_floor.json").write_text(json.dumps({"shape": args.shape, "bytes": nbytes, "flushes": flushes, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
