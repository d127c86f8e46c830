"""How fast one Triton launch reads a packed layer's codes in ``mv``'s access pattern, and nothing else.

The floor under the ``M = 1`` kernels (benchmarks/KERNEL_NOTES.md, session 9): a kernel that only loads the
``b``-bit words of an ``N x K`` layer (``[K b / 32, N]`` int32, as ``mv_kernel`` reads them: lane ``(g, t)`` takes
rows ``4g ..`` of its own word rows, 16 bytes per load) and XORs them, over warps, rows per lane and K splits; then a
contiguous read of the same bytes, a contiguous read of the whole layer (codes plus float16 scales and zeros per
128-column group: what any one-token kernel must move), ``torch`` copy (read + write) of the codes, and cuBLAS FP16
(``F.linear`` of one token): its time over the fastest read of the codes alone bounds what a one-token kernel of
that width could gain over FP16 under this flush (scales and zeros left out: a bound above), its time over the
contiguous read of the whole layer about what such a kernel could reach. Times are CUDA-graph replays (the launch included, as in ``kernels.py``),
under each L2 flush of ``--flush`` (``timing.py``: ``zero`` leaves dirty lines the read writes back, ``clean`` does
not). Prints a table per width and writes ``read_floor.json``.

    PYTHONPATH=src python3 benchmarks/read_floor.py --shape 28672x8192 [--bits 2,3,4]
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




def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="28672x8192", help="N x K of the layer")
    ap.add_argument("--bits", default="2", help="comma-separated code widths (1-8 bits)")
    ap.add_argument("--flush", default="zero,clean",
                    help=f"comma-separated L2 flushes to time each read under (benchmarks/timing.py: {', '.join(FLUSHES)})")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    try:
        args.n, args.k = (int(v) for v in args.shape.split("x"))
        args.bit_list = [int(b) for b in args.bits.split(",")]
    except ValueError:
        ap.error(f"--shape takes NxK and --bits comma-separated integers, got {args.shape!r} / {args.bits!r}")
    args.flushes = args.flush.split(",")
    if not set(args.flushes) <= set(FLUSHES):
        raise SystemExit(f"--flush takes {', '.join(FLUSHES)}, got {args.flush}")
    if args.k % 128 or args.n % 512:
        ap.error(f"--shape needs K % 128 == 0 and N % 512 == 0, got {args.shape}")
    if not all(1 <= b <= 8 for b in args.bit_list):
        ap.error(f"--bits takes widths 1-8, got {args.bits}")
    return args


def _contiguous(nbytes: int, out: torch.Tensor, block: int = 2048, iters: int = 4):
    """A buffer of at least ``nbytes`` (rounded up to whole programs of ``block * iters`` int32: 32 KB) and the
    launch that reads it once."""
    progs = -(-nbytes // (4 * block * iters))
    buf = torch.randint(0, 1 << 30, (progs * block * iters,), dtype=torch.int32, device="cuda")
    return buf, lambda: contiguous_kernel[(progs,)](buf, out, block, iters, num_warps=8)


def main(argv=None) -> int:
    args = _parse(argv)
    n, k, flushes = args.n, args.k, args.flushes

    def _time(fn) -> dict:
        return {f: time_graph(fn, 30, f) for f in flushes}

    out = torch.zeros(n * 16 + 2 ** 24, dtype=torch.int32, device="cuda")
    w16 = torch.randn(n, k, dtype=torch.float16, device="cuda")
    x16 = torch.randn(1, k, dtype=torch.float16, device="cuda")
    fp16 = _time(lambda: torch.nn.functional.linear(x16, w16))
    rows = [{"bits": 16, "read": "cuBLAS FP16, one token", "bytes": n * k * 2, **fp16}]
    for bits in args.bit_list:
        w = torch.randint(0, 1 << 30, (k * bits // 32, n), dtype=torch.int32, device="cuda")
        nbytes = w.numel() * 4
        layer = nbytes + 2 * (k // 128) * n * 2  # plus float16 scales and zeros per 128-column group
        for nw in (4, 8):
            for rb in (1, 2, 4):
                for split in (2, 4, 8, 16):
                    nt, per = 32 * nw, 32 * nw * rb
                    if n % per or (k // 128) % split:
                        continue
                    tiles = k // 128 // split
                    us = _time(lambda w=w, g=(n // per, split), a=(tiles, nt, bits, rb, nw): pattern_kernel[g](
                        w, out, n, a[0], NT=a[1], W=a[2], RB=a[3], num_warps=a[4]))
                    rows.append({"bits": bits, "read": f"mv pattern, {nw} warps, {4 * rb} rows per lane, K split "
                                 f"{split}", "bytes": nbytes, **us})
        buf, fn = _contiguous(nbytes, out)
        rows.append({"bits": bits, "read": "contiguous, the codes", "bytes": buf.numel() * 4, **_time(fn)})
        buf, fn = _contiguous(layer, out)
        rows.append({"bits": bits, "read": "contiguous, the whole layer (codes, scales, zeros)",
                     "bytes": buf.numel() * 4, **_time(fn)})
        src = w.view(-1)
        dst = torch.empty_like(src)
        rows.append({"bits": bits, "read": "torch copy of the codes (reads and writes them)", "bytes": nbytes,
                     **_time(lambda src=src, dst=dst: dst.copy_(src))})
    print(f"{torch.cuda.get_device_name()}: {args.shape}; us (GB/s of the bytes read) per L2 flush; FP16's time over "
          f"a read's: about the most a one-token kernel moving those bytes could gain")
    for bits in [16] + args.bit_list:
        sel = sorted((r for r in rows if r["bits"] == bits), key=lambda r: r[flushes[0]])
        print(f"\n{bits}-bit" + "".join(f"{f:>16}" for f in flushes) + "  read")
        for r in sel:
            print(" " * (len(str(bits)) + 4) + "".join(f"{r[f]:8.1f} ({r['bytes'] / r[f] / 1e3:4.0f})"
                                                       for f in flushes) + f"  {r['read']}")
        if bits == 16:
            continue
        codes = [r for r in sel if r["read"].startswith(("mv pattern", "contiguous, the codes"))]
        whole = next(r for r in sel if r["read"].startswith("contiguous, the whole"))
        for f in flushes:
            best = min(r[f] for r in codes)
            print(f"{'':>{len(str(bits)) + 4}}{f}: FP16 / fastest read of the codes alone {fp16[f] / best:.2f}x, "
                  f"/ contiguous read of the whole layer {fp16[f] / whole[f]:.2f}x")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "read_floor.json").write_text(json.dumps({"shape": args.shape, "flushes": flushes, "rows": rows},
                                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
