"""Speed of slimq's Triton kernels against cuBLAS FP16 and torch's int4 kernel (run on a GPU).

Convention: a shape ``N x K`` is ``out_features x in_features``; ``x [M, K]``, ``y = x W^T [M, N]``.

Per shape and M it times cuBLAS FP16 (``torch.mm``), slimq at 2, 3, 4 bits uniform and
SliM-mixed (groups of 1/2/3 bits in proportions 1:2:1, 2 bits on average), all with group size
128, and ``torch._weight_int4pack_mm`` (group 128, bf16 activations) as a peer. Each time is the
median of ``triton.testing.do_bench`` (L2 flushed before every run) over CUDA-graph replays of
one call, on random non-zero data (``--flush clean``: the L2 flushed by a read instead of
``do_bench``'s zeroing, whose dirty lines the timed call writes back; see ``timing.py``). Bandwidth counts packed weights + scales/zeros + x + y once,
against the card's device-to-device copy bandwidth measured in the same run. Every timed
slimq output is first checked against the pure-torch reference. FP16 and each variant's dispatch are
timed in ``--rounds`` (5) alternating rounds, so their ratio compares calls that met the same clock
(``timing.time_graphs``; ``--rounds 1``: one 40 ms window each, in turn, as up to session 10).

    PYTHONPATH=src python benchmarks/kernels.py [--tune] [--shapes 4096x4096,...] [--ms 1,16] [--out DIR]

``--tune`` also times candidate configs per (shape, M, variant) and reports the best; the
JSON then holds every candidate's time (used to set ``select_config``). ``--from-json PATH``
re-reads such a JSON for the configs ``select_config`` picks now (no GPU), ``--write OUT`` saves
that selection as a kernels.py JSON for ``plot_kernels.py`` and ``kernel_targets.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
MS = [1, 4, 16, 64, 256, 1024]
VARIANTS = ["2b", "3b", "4b", "slim"]
VARIANT_BITS = {"2b": (2,), "3b": (3,), "4b": (4,), "slim": (1, 2, 3)}  # segment bit-widths of each variant
GS = 128


def build_layer(n: int, k: int, variant: str, device, seed: int = 0):
    """A packed random layer: uniform ``"2b"/"3b"/"4b"`` or ``"slim"`` (1/2/3-bit groups 1:2:1)."""
    from slimq.format.packing import pack
    from slimq.quant.result import QuantizedTensor
    gen = torch.Generator(device=device).manual_seed(seed)
    g = math.ceil(k / GS)
    if variant == "slim":
        pattern = torch.tensor([1, 2, 2, 3], device=device).repeat(math.ceil(g / 4))[:g]
        gbits = pattern[torch.randperm(g, generator=gen, device=device)]
    else:
        gbits = torch.full((g,), int(variant[0]), device=device)
    g_idx = (torch.arange(k, device=device) // GS).to(torch.int32)
    maxq = ((1 << gbits.long()) - 1)[g_idx.long()]
    codes = (torch.rand(n, k, generator=gen, device=device) * (maxq + 1).float()).floor().clamp_max(maxq.float())
    scales = (torch.rand(n, g, generator=gen, device=device) * 2e-3 + 1e-3).half()
    zeros = (torch.rand(n, g, generator=gen, device=device) * (1 << gbits.long()).float()).half()
    bits = gbits.to(torch.int8)[None].expand(n, g).contiguous()
    return pack(QuantizedTensor(codes.to(torch.uint8), scales, zeros, g_idx, bits, GS))


def packed_bytes(p) -> int:
    t = [p.col_perm] + [x for s in p.segments for x in (*s.planes, s.scales, s.zeros)]
    return sum(x.numel() * x.element_size() for x in t)


TOL = {torch.float16: 3e-3, torch.bfloat16: 1.2e-2}  # relative error against the reference that counts as correct


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error ``|out - ref| / |ref|`` (Frobenius norms, float32) of a call's output against the reference."""
    return float((out.float() - ref).norm() / ref.norm())


def time_graph(fn, rep_ms: int = 40, flush: str = "zero") -> float:
    """Median microseconds of CUDA-graph replays of ``fn``, the L2 flushed before each replay as ``flush``
    (``timing.FLUSHES``; ``"zero"``, ``do_bench``'s own, is the issue's protocol)."""
    from timing import time_graph as timed
    return timed(fn, rep_ms, flush)


def time_graphs(fns: dict, flush: str = "zero", rounds: int = 5) -> dict:
    """Microseconds of each call in ``fns``, timed in alternating rounds (``timing.time_graphs``)."""
    from timing import time_graphs as timed
    return timed(fns, 40, flush, rounds)


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    import triton
    src = torch.randn(2 ** 28, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def int4_peer(n: int, k: int, m: int, device):
    """``torch._weight_int4pack_mm`` (group 128, bf16): returns a zero-arg callable."""
    w = torch.randint(0, 16, (n, k), dtype=torch.int32, device=device)
    w8 = ((w[:, ::2] << 4) | w[:, 1::2]).to(torch.uint8)
    wp = torch._convert_weight_to_int4pack(w8, 8)
    sz = (torch.rand(k // GS, n, 2, device=device) * 1e-2 + 1e-3).to(torch.bfloat16)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    return lambda: torch._weight_int4pack_mm(x, wp, GS, sz)


def wg_candidates(m: int, n: int, k: int) -> list:
    """``wg`` configs tried by ``--tune`` (runs 12-14 on the H200 swept these): the token tile the
    dispatch picks for M (128 beyond ``WG_MAX_M``), 64- or 128-row tiles, the dispatch's K split
    halved and doubled, one dot per block (``join``) or per piece (16-token tiles), codes or
    dequantized weights as operands (32 tokens and up), and the dispatch's tiling with programmatic
    dependent launch switched; every joined candidate also reading ``x`` itself (``direct``: the plan keeps the
    gather where the layer or the activations cannot take that)."""
    from slimq.kernels.triton import WG_MAX_M, select_config
    from slimq.kernels.triton import KernelConfig as C
    base = select_config(min(max(m, 2), WG_MAX_M), n, k)
    blocks = math.ceil(k / 128)
    out = [dataclasses.replace(base, pdl=not base.pdl)]
    for bn in (64, 128):
        splits = sorted({s for s in (base.split_k // 2, base.split_k, base.split_k * 2) if 1 <= s <= min(16, blocks)})
        joins = (True, False) if base.block_m == 16 else (True,)
        scaled = (False, True) if 32 <= base.block_m <= 64 else (base.scaled,)
        out += [C("wg", block_m=base.block_m, block_n=bn, split_k=sp, num_warps=4, num_stages=3, join=j, scaled=sc,
                  pdl=base.pdl, direct=dx) for sp in splits for j in joins for sc in scaled
                for dx in ((False, True) if j else (False,))]
    out.append(dataclasses.replace(base, direct=not base.direct))
    same = base if m > 1 else None  # at M = 1 the dispatch runs h2, so base is a candidate too
    return [c for c in dict.fromkeys(out) if c != same]


def candidates(m: int, n: int = 0, k: int = 0) -> list:
    """Configs tried by ``--tune`` (besides the dispatch default); ``n``/``k`` size the ``wg`` splits."""
    from slimq.kernels.triton import KernelConfig as C
    from slimq.kernels.triton import select_config
    from slimq.kernels.triton.ops import WGS_SPLIT_MAX_M
    wg = wg_candidates(m, n, k) if n and k else []

    def h2dot(bm, bns, splits, joins=(True,), stages=(1, 3), warps=(4,)):
        return [C("h2dot", block_m=bm, block_n=bn, split_k=s, join=j, num_stages=st, num_warps=w)
                for bn in bns for s in splits for j in joins for st in stages for w in warps]

    def tc(bm, bns, splits, stages=(2,), warps=(4,)):
        return [C("tc", block_m=bm, block_n=bn, split_k=sp, num_stages=st, num_warps=w)
                for bn in bns for sp in splits for st in stages for w in warps]

    if m == 1:  # h2 as dispatched up to session 4, gv tilings (tc/h2dot/wg were 1.25-1.9x slower: runs 7, 10-11)
        h2 = [select_config(1, n or 4096, k or 4096, bits=(4,))]  # the h2 config the dispatch gives >= 4-bit layers
        gv = [C("gv", block_m=1, block_n=bn, block_k=128, split_k=s, num_warps=w, num_stages=1, depth=dp, gather=g)
              for bn, w in ((128, 2), (256, 4)) for s in (4, 8, 16, 32) for dp in (1, 2) for g in (False, True)
              if s <= math.ceil(k / 128) and (dp == 1 or s <= 16)]
        gv += [C("gv", block_m=1, block_n=128, block_k=128, split_k=s, num_warps=2, num_stages=1, depth=2, maxnreg=r)
               for s in (4, 8, 16) for r in (96, 104) if s <= math.ceil(k / 128)]
        mv = [C("mv", block_m=1, block_n=32 * w, block_k=128, split_k=s, num_warps=w, num_stages=1, depth=d,
                maxnreg=r) for w in (4,) for s in (2, 4, 8, 16) for d in (1, 2) for r in (0, 96, 128)
              if s <= math.ceil(k / 128)]
        mv += [C("mv", block_m=1, block_n=128, block_k=128, split_k=s, num_warps=4, num_stages=1, maxnreg=r,
                 l2_ahead=a) for s in (2, 4, 8, 16) for a in (1, 2, 3) for r in (0, 64, 72, 80, 96)
               if s <= math.ceil(k / 128)]
        mv += [C("mv", block_m=1, block_n=32, block_k=128, num_warps=w, num_stages=1, k_warps=w, maxnreg=r,
                 direct=dx) for w, r in ((4, 0), (8, 0), (16, 128)) for dx in (False, True)]  # warps splitting K
        # (_mvs), where the tiles fit; reading x itself where the layer and x allow (else the plan keeps the gather)
        mv += [C("mv", block_m=1, block_n=128, block_k=128, split_k=s, num_warps=4, num_stages=1, maxnreg=r,
                 l2_ahead=a, direct=True) for s in (4, 8, 16) for a in (0, 1) for r in (0, 72, 80, 96, 128)
               if s <= math.ceil(k / 128)]  # K split over programs, reading x itself ("mvdx")
        return h2 + gv + mv
    if m <= 16:
        bm = 1 << max(0, (m - 1).bit_length())
        h2 = [C("h2", block_m=bm, block_n=bn, block_k=128, split_k=8, num_warps=4, num_stages=1)
              for bn in (128, 256)] if bm <= 4 else []
        mv = [C("mv", block_m=16, block_n=128, block_k=128, split_k=sp, num_warps=4, num_stages=1, maxnreg=r,
                l2_ahead=a) for sp in (2, 4, 8, 16) for r in (0, 128) for a in (0, 1)
              if sp <= math.ceil(k / 128)]
        return (h2 + mv + [C("dot", block_m=16, block_n=128, block_k=128, split_k=4)]
                + h2dot(16, (64, 128), (4, 8), joins=(True, False), stages=(3,)) + h2dot(16, (128,), (8,), stages=(1, 4))
                + tc(16, (128, 256), (4, 8, 16), warps=(4, 8)) + wg)
    if m <= 64:
        base = [C("gemm", block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=4, split_k=s) for s in (1, 2)]
        return (base + h2dot(32, (64, 128), (1, 2), joins=(True, False), stages=(3,))
                + h2dot(64, (64, 128), (1, 2), joins=(True, False), stages=(2,)) + [C("dequant")]
                + tc(1 << max(4, (m - 1).bit_length()), (128, 256), (1, 2, 4), warps=(4, 8)) + wg)
    wgs = [C("wgs", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=2)]
    wgs += [C("wgs", block_m=bt, block_n=128, block_k=64, num_warps=8, num_stages=2, producers=p, depth=d, split_k=s)
            for bt, p, d, s in ((256, 4, 2, 1), (256, 4, 2, 2), (256, 4, 2, 4), (256, 8, 1, 1), (128, 8, 2, 1))
            if s == 1 or m <= WGS_SPLIT_MAX_M]  # the workspace holds split-K sums up to WGS_SPLIT_MAX_M tokens
    sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132
    wgs += [C("wgs", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=2, producers=4, depth=2,
              stream_k=sk) for sk in (0, sms)]  # one program per tile, stream-K over the SMs
    return (wgs + [C("dequant", block_n=64, block_k=128, num_warps=4, chunk_n=c) for c in (0, 512, 1024, 2048, 4096)]
            + h2dot(64, (128,), (1,), joins=(True, False), stages=(2,), warps=(4, 8))
            + h2dot(128, (128,), (1,), joins=(True, False), stages=(2,), warps=(8,))
            + tc(64, (128, 256), (1,), stages=(2, 3), warps=(4, 8)) + tc(128, (128, 256), (1,), stages=(2, 3), warps=(8,))
            + wg)


class Case:
    """One (shape, M, variant) with its static buffers."""

    def __init__(self, p, m: int, device, ws, dtype=torch.float16):
        self.p, self.m, self.ws = p, m, ws
        self.x = torch.randn(m, p.in_features, device=device, dtype=dtype)
        self.out = torch.empty(m, p.out_features, device=device, dtype=dtype)

    def launches(self, cfg):
        from slimq.kernels.triton import plan_launches
        return plan_launches(self.x, self.p, None, self.out, self.ws, cfg)

    def fn(self, cfg):
        from slimq.kernels.triton import sbp_matmul
        return lambda: sbp_matmul(self.x, self.p, out=self.out, workspace=self.ws, config=cfg)


def parse_extra(spec: str) -> dict:
    """``"num_stages=3,pdl=0"`` -> ``{"num_stages": 3, "pdl": False}``: integer or boolean (0/1) fields
    of ``KernelConfig`` to change in a config (the ``--extra`` option of ``wg_split.py`` and ``stream_k.py``)."""
    from slimq.kernels.triton import KernelConfig
    fields = {f.name: f.type for f in dataclasses.fields(KernelConfig)}
    out = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        if not sep or name not in fields or fields[name] not in ("int", int, "bool", bool):
            raise ValueError(f"--extra takes name=integer pairs of KernelConfig's integer or boolean fields, got "
                             f"{item!r}")
        if fields[name] in ("bool", bool):
            if value not in ("0", "1"):
                raise ValueError(f"--extra: {name} takes 0 or 1, got {value!r}")
            out[name] = value == "1"
            continue
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"--extra: {name} takes an integer, got {value!r}") from None
    return out


def parse_extras(specs: list[str], base, *more) -> list[dict]:
    """Every ``--extra`` spec parsed (:func:`parse_extra`) and checked by ``KernelConfig`` on ``base`` (or on any
    of ``more`` bases: refused only where none takes it) with those fields changed, before any GPU work; raises
    ValueError (the first base's)."""
    out = [parse_extra(e) for e in specs]
    for fields in out:
        errs = []
        for b in (base, *more):
            try:
                dataclasses.replace(b, **fields)
                break
            except ValueError as err:
                errs.append(err)
        else:
            raise errs[0]
    return out


def cfg_name(c) -> str:
    if c.path == "dequant":
        return f"dequant/c{c.chunk_n}" if c.chunk_n else "dequant"
    walk = (("" if c.walk else "/seg") + ("/pf" if c.prefetch else "") + (f"/d{c.depth}" if c.depth > 1 else "")
            + ("/g" if c.gather else "") + (f"/r{c.maxnreg}" if c.maxnreg else "") + ("/j" if c.join else "") + ("/sc" if c.scaled else "") + ("" if c.pdl else "/nopdl")
            + (f"/p{c.producers}" if c.producers else "") + (f"/l2a{c.l2_ahead}" if c.l2_ahead else "")
            + (f"/sk{c.stream_k}" if c.stream_k else "") + (f"/kw{c.k_warps}" if c.k_warps else "") + ("/dx" if c.direct else "")
            + ("/bs" if c.byte_split else "") + (f"{c.tile_units}" if c.tile_units else "")
            + (f"p{c.plane_units}" if c.plane_units else ""))
    return f"{c.path}:{c.block_m}x{c.block_n}x{c.block_k}/w{c.num_warps}s{c.num_stages}/k{c.split_k}{walk}"


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--paths", default="",
                    help="with --tune: only candidates of these paths (comma-separated; \"mvs\": mv with k_warps, "
                         "\"mvdx\": mv with split_k reading x itself; the dispatch default is always timed)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"],
                    help="activation dtype; the baseline is cuBLAS in that dtype (JSON keys keep the name fp16)")
    ap.add_argument("--flush", default="zero", choices=["zero", "clean", "none"],
                    help="how the L2 is flushed before each timed replay (benchmarks/timing.py): zero = "
                         "do_bench's own, the issue's protocol (leaves dirty lines the timed call writes back); "
                         "clean = a 256 MB read (a cold, clean L2); none")
    ap.add_argument("--rounds", type=int, default=5,
                    help="time FP16 and each variant's dispatch in this many alternating rounds (timing.time_graphs: "
                         "they then meet the same clock; the README's tables); 1: one 40 ms window each, one after "
                         "the other (sessions 1-10)")
    ap.add_argument("--procs", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    ap.add_argument("--from-json", metavar="PATH",
                    help="no GPU: re-read a --tune JSON and print the table for the current select_config")
    ap.add_argument("--write", metavar="PATH",
                    help="with --from-json: also write that table as a kernels.py JSON (for plot_kernels.py and "
                         "kernel_targets.py)")
    ap.add_argument("--dry-run", action="store_true",
                    help="smoke test on the CPU (Triton interpreter, wall-clock 'times'; needs TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def _prepare(args, dev, shapes, ms, variants):
    """Packed layers, static buffers and config lists for every (N, K, M, variant); precompiles."""
    from slimq.kernels.triton import Workspace
    from slimq.kernels.triton.ops import resolve_config
    from slimq.kernels.triton.warmup import precompile
    t0 = time.time()
    layers = {(n, k, v): build_layer(n, k, v, dev, seed=n + k) for n, k in shapes for v in variants}
    max_n, max_k = max(n for n, _ in shapes), max(k for _, k in shapes)
    dtype = getattr(torch, args.dtype)
    ws = Workspace(dev, max(ms), max_n, max_k, dtype, dequant=True)
    cases = {(n, k, m, v): Case(layers[n, k, v], m, dev, ws, dtype) for n, k in shapes for m in ms for v in variants}
    paths = set(filter(None, args.paths.split(",")))
    cfgs = {key: [resolve_config(case.x, case.p)]
            + ([c for c in candidates(key[2], key[0], key[1]) if (not paths or path_tag(c) in paths)
                and _plans(case, c)] if args.tune else [])
            for key, case in cases.items()}
    launches = [lc for key, c in cases.items() for cfg in cfgs[key] for lc in c.launches(cfg)]
    try:
        n_var = 0 if args.dry_run else precompile(launches, processes=args.procs)
    except Exception as e:  # noqa: BLE001 - fall back to compiling on first launch
        n_var = -1
        print(f"precompile failed ({type(e).__name__}: {e}); compiling lazily", flush=True)
    print(f"built {len(layers)} layers, precompiled {n_var} kernel variants in {time.time() - t0:.0f}s", flush=True)
    return cases, cfgs


def path_tag(c) -> str:
    """A config's path for ``--paths``: ``"mvs"`` for ``mv`` with the warps splitting K (``k_warps``), ``"mvdx"``
    for ``mv`` with K split over programs reading ``x`` itself (``direct``)."""
    if c.path == "mv" and c.k_warps:
        return "mvs"
    return "mvdx" if c.path == "mv" and c.direct else c.path


def _plans(case, cfg) -> bool:
    """Whether ``cfg`` can be planned for ``case`` (a candidate the plan refuses, e.g. ``mv`` with ``k_warps``
    and too many K tiles per warp, is left out of ``--tune``)."""
    try:
        case.launches(cfg)
    except ValueError:
        return False
    return True


def _measure_variant(case, cfgs, tune: bool, keep_all: bool, flush: str = "zero", auto_us: float | None = None) -> dict:
    """Check every config's output against the reference, then time it (the dispatch's ``cfgs[0]`` not again
    where ``auto_us`` gives its time, taken in rounds alternating with FP16: ``--rounds``)."""
    from slimq.kernels.reference import packed_matmul_reference
    ref = packed_matmul_reference(case.x, case.p).float()
    results = []
    import triton
    for cfg in cfgs:
        case.out.fill_(float("nan"))
        try:
            case.fn(cfg)()
        except triton.runtime.errors.OutOfResources as e:  # e.g. too much shared memory for this tiling
            results.append({"cfg": cfg_name(cfg), "us": float("inf"), "err": float("nan"), "ok": False,
                            "error": str(e)[:120]})
            continue
        err = rel_err(case.out, ref)
        if cfg is cfgs[0] and auto_us is not None:
            t = auto_us
        else:
            t = time_graph(case.fn(cfg), rep_ms=40 if cfg is cfgs[0] else 15, flush=flush)
        results.append({"cfg": cfg_name(cfg), "us": t, "err": err, "ok": err < TOL[case.x.dtype]})
    auto = results[0]
    ok = [r for r in results if r["ok"]]
    best = min(ok, key=lambda r: r["us"]) if ok else auto
    m, k = case.x.shape
    nbytes = packed_bytes(case.p) + (m * k + m * case.p.out_features) * 2
    return {"us": auto["us"], "cfg": auto["cfg"], "err": auto["err"], "ok": auto["ok"],
            "GBps": nbytes / auto["us"] / 1e3, "best_us": best["us"], "best_cfg": best["cfg"],
            "all": results if keep_all else None}


def main(argv=None) -> int:
    args = _parse(argv)
    if args.from_json:
        return _table_from_json(Path(args.from_json), Path(args.write) if args.write else None)
    if args.dry_run:
        _make_dry()
    import triton
    dev = torch.device("cpu" if args.dry_run else "cuda")
    torch.manual_seed(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    variants = args.variants.split(",")
    props = torch.cuda.get_device_properties(dev) if dev.type == "cuda" else argparse.Namespace(
        name="cpu (dry run)", multi_processor_count=0)
    meta = {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(), "group_size": GS,
            "convention": "shape N x K = out_features x in_features; y[M, N] = x[M, K] W^T", "dtype": args.dtype,
            "flush": args.flush}
    print(json.dumps(meta), flush=True)
    bw = meta["copy_GBps"] = copy_bandwidth(dev)
    print(f"copy bandwidth (read+write): {bw:.0f} GB/s", flush=True)
    cases, cfgs = _prepare(args, dev, shapes, ms, variants)
    dtype = getattr(torch, args.dtype)
    rows = []
    for n, k in shapes:
        w16 = torch.randn(n, k, device=dev, dtype=dtype) * 0.02  # the baseline: cuBLAS in the activation dtype
        for m in ms:
            x16 = torch.randn(m, k, device=dev, dtype=dtype)
            y16 = torch.empty(m, n, device=dev, dtype=dtype)
            fp16 = lambda: torch.mm(x16, w16.t(), out=y16)  # noqa: E731
            autos = {}
            if args.rounds > 1:  # FP16 and each variant's dispatch, in alternating rounds (timing.time_graphs)
                fns = {"fp16": fp16} | {v: cases[n, k, m, v].fn(cfgs[n, k, m, v][0]) for v in variants}
                autos = time_graphs(fns, flush=args.flush, rounds=args.rounds)
            row = {"N": n, "K": k, "M": m, "fp16_us": autos.pop("fp16", None) or time_graph(fp16, flush=args.flush),
                   "rounds": args.rounds}
            row["fp16_GBps"] = (n * k + m * k + m * n) * 2 / row["fp16_us"] / 1e3
            if not args.no_peer:
                try:
                    row["int4_us"] = time_graph(int4_peer(n, k, m, dev), flush=args.flush)
                except RuntimeError as e:  # the peer kernel is missing on some builds
                    row["int4_us"], row["int4_error"] = None, str(e)[:200]
            for v in variants:
                row[v] = _measure_variant(cases[n, k, m, v], cfgs[n, k, m, v], args.tune, args.tune or v == "slim",
                                          args.flush, autos.get(v))
            rows.append(row)
            print(_fmt_row(row, variants, bw), flush=True)
        del w16
    print(_table(rows, variants, bw, meta))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    bad = [(r["N"], r["K"], r["M"], v) for r in rows for v in variants if not r[v]["ok"]]
    if bad:
        print(f"ERROR: outputs differ from the reference for {bad}")
    return 1 if bad else 0


def _table_from_json(path: Path, write: Path | None = None) -> int:
    """Print, from a ``--tune`` run's JSON, the times of the configs ``select_config`` picks now (the mean
    where the run timed a config twice, as the dispatch default and as a candidate); with ``write``,
    also save them as a kernels.py JSON whose meta names the source run.

    A cell whose config was not among those timed is marked ``n/t``; ``!`` marks a config
    whose output differed from the reference in that run."""
    from slimq.kernels.triton import select_config
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["rows"]
    variants = [v for v in VARIANTS if v in rows[0]]
    out_rows, notes = [], []
    for r in rows:
        row = {k: r.get(k) for k in ("N", "K", "M", "fp16_us", "int4_us")}
        for v in variants:
            cfg = cfg_name(select_config(r["M"], r["N"], r["K"], num_sms=meta["sms"], bits=VARIANT_BITS[v]))
            hit = [a for a in (r[v]["all"] or []) if a["cfg"] == cfg]
            if not hit:
                notes.append(f"{r['N']}x{r['K']} M={r['M']} {v}: {cfg} not timed")
                row[v] = {"us": float("nan"), "GBps": float("nan"), "ok": False}
                continue
            us = sum(h["us"] for h in hit) / len(hit)
            nbytes = r[v]["GBps"] * r[v]["us"] * 1e3  # bytes moved, as recorded for the run's own config
            row[v] = {"us": us, "GBps": nbytes / us / 1e3, "ok": all(h["ok"] for h in hit), "cfg": cfg,
                      "err": max(h["err"] for h in hit)}
        out_rows.append(row)
    print(f"times of the configs select_config picks now, from {path}")
    print(_table(out_rows, variants, meta["copy_GBps"], meta, mark_bad=True))
    for n in notes:
        print("  " + n)
    if write is not None:
        meta = dict(meta, reselected_from=path.name,
                    note="each cell: the config select_config picks now, as timed in that run")
        write.parent.mkdir(parents=True, exist_ok=True)
        tmp = write.with_suffix(write.suffix + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=1))
        tmp.replace(write)
    return 0


def _make_dry() -> None:
    """Replace the GPU timers by wall-clock ones (for --dry-run)."""
    global time_graph, time_graphs, copy_bandwidth, int4_peer

    def time_graph(fn, rep_ms=0, flush="zero"):  # noqa: F811
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6

    def time_graphs(fns, flush="zero", rounds=5):  # noqa: F811
        return {name: min(time_graph(fn) for _ in range(rounds)) for name, fn in fns.items()}

    def copy_bandwidth(device):  # noqa: F811
        return 1.0

    def int4_peer(n, k, m, device):  # noqa: F811
        raise RuntimeError("no int4 peer in a dry run")


def _fmt_row(r, variants, bw) -> str:
    parts = [f"{r['N']}x{r['K']} M={r['M']}: fp16 {r['fp16_us']:.1f}us"]
    if r.get("int4_us"):
        parts.append(f"int4 {r['int4_us']:.1f}us ({r['fp16_us'] / r['int4_us']:.2f}x)")
    for v in variants:
        d = r[v]
        parts.append(f"{v} {d['us']:.1f}us ({r['fp16_us'] / d['us']:.2f}x, best {d['best_us']:.1f} {d['best_cfg']})")
    return " | ".join(parts)


def _table(rows, variants, bw, meta, mark_bad: bool = False) -> str:
    head = (f"\n{meta['gpu']} ({meta['sms']} SMs), torch {meta['torch']}, triton {meta['triton']}; "
            f"copy {bw:.0f} GB/s; times in us (speedup over FP16); BW% = achieved/copy bandwidth\n")
    cols = ["N x K", "M", "fp16", "int4"] + [f"{v}" for v in variants] + [f"BW%{v}" for v in variants]
    lines = [head, " ".join(f"{c:>17}" if i >= 4 else f"{c:>11}" for i, c in enumerate(cols))]
    for r in rows:
        cells = [f"{r['N']}x{r['K']:<5}", f"{r['M']}", f"{r['fp16_us']:.1f}",
                 f"{r['int4_us']:.1f}({r['fp16_us'] / r['int4_us']:.2f}x)" if r.get("int4_us") else "-"]
        cells += [f"{r[v]['us']:.1f}({r['fp16_us'] / r[v]['us']:.2f}x){'!' if mark_bad and not r[v]['ok'] else ''}"
                  for v in variants]
        cells += [f"{100 * r[v]['GBps'] / bw:.0f}%" for v in variants]
        lines.append(" ".join(f"{c:>17}" if i >= 4 else f"{c:>11}" for i, c in enumerate(cells)))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
