"""The decode step's attention for one token per sequence: ``decode_kernels.rope_attend`` (rotation, cache write and
attention over positions 0..pos in one launch) against what ``decode.py --attention sdpa`` runs (``rope_cache``, the
mask, torch's SDPA over the whole cache), LLaMA-2-7B-shaped (32 heads of 128), one call per layer of 32 in a CUDA
graph (each layer its own caches), timed in alternating rounds with the L2 flushed.

    PYTHONPATH=src python benchmarks/decode_attention.py [--batches 1,16] [--pos 143] [--len 144]
        [--tiles 16:2,32:2,32:4,64:4] [--out DIR]    # BLOCK_L:WARPS, cached positions per program

Prints microseconds per layer and the ratio to the SDPA path; writes ``decode_attention.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import timing
import torch
import torch.nn.functional as F
from decode_kernels import (
    attend_workspace,
    rope_attend,
    rope_attend_reference,
    rope_cache,
    rope_tables,
)

NH, HD, LAYERS = 32, 128, 32


def _tiles(s: str) -> list[tuple[int, int]]:
    out = []
    for part in s.split(","):
        try:
            bl, nw = (int(v) for v in part.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--tiles takes BLOCK_L:WARPS pairs, got {part!r}") from None
        if bl < 16 or bl & (bl - 1) or nw not in (1, 2, 4, 8, 16):
            raise argparse.ArgumentTypeError(f"--tiles: BLOCK_L a power of two >= 16, WARPS 1-16, got {part!r}")
        out.append((bl, nw))
    return out


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--len", type=int, default=144, help="cache length L (decode.py: prompt + generated tokens)")
    ap.add_argument("--pos", type=int, default=143, help="the position decoded (0 .. len - 1)")
    ap.add_argument("--tiles", type=_tiles, default=_tiles("16:2,32:2,32:4,64:4"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if not 0 <= args.pos < args.len:
        ap.error(f"--pos takes 0 .. len - 1 = {args.len - 1}, got {args.pos}")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    dev, dt = torch.device("cuda"), torch.float16
    cos, sin = rope_tables(args.len, HD, dev)
    pos = torch.tensor([args.pos], device=dev)
    ar = torch.arange(args.len, device=dev)
    rows = []
    for B in (int(b) for b in args.batches.split(",")):
        qkv = [torch.randn(B, 3 * NH * HD, device=dev, dtype=dt) for _ in range(LAYERS)]
        kc = [torch.randn(B, NH, args.len, HD, device=dev, dtype=dt) for _ in range(LAYERS)]
        vc = [torch.randn_like(k) for k in kc]
        want = rope_attend_reference(qkv[0], cos, sin, pos, kc[0].clone(), vc[0].clone())

        def sdpa(qkv=qkv, kc=kc, vc=vc):
            mask = (ar <= pos)[None, None, None, :]
            for i in range(LAYERS):
                q = rope_cache(qkv[i], cos, sin, pos, kc[i], vc[i])
                F.scaled_dot_product_attention(q[:, :, None], kc[i], vc[i], attn_mask=mask)

        fns = {"sdpa": sdpa}
        for bl, nw in args.tiles:
            work = attend_workspace(B, NH, args.len, HD, dev, block_l=bl)
            got = rope_attend(qkv[0], cos, sin, pos, kc[0].clone(), vc[0].clone(), work, num_warps=nw)
            err = (got.float() - want.float()).abs().max().item()
            if err > 1e-2:
                raise SystemExit(f"rope_attend BLOCK_L={bl} warps={nw} differs from the reference by {err:.3g}")
            fns[f"fused {bl}:{nw}"] = (lambda work=work, nw=nw, qkv=qkv, kc=kc, vc=vc:
                                       [rope_attend(qkv[i], cos, sin, pos, kc[i], vc[i], work, num_warps=nw)
                                        for i in range(LAYERS)])
        us = timing.time_graphs(fns, rounds=args.rounds)
        for name, t in us.items():
            rows.append({"batch": B, "len": args.len, "pos": args.pos, "call": name, "us_per_layer": t / LAYERS,
                         "vs_sdpa": us["sdpa"] / t})
    print(f"{torch.cuda.get_device_name(dev)}: one token's attention, {NH} heads of {HD}, cache {args.len}, "
          f"position {args.pos}; us per layer ({LAYERS} layers in one graph)")
    print(f"{'batch':>5} {'call':>14} {'us':>7} {'vs sdpa':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['call']:>14} {r['us_per_layer']:>7.2f} {r['vs_sdpa']:>7.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_attention.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(dev), "rows": rows},
                                                          indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
