"""Greedy-decoding speed of a LLaMA-2-7B-shaped model with random weights: FP16 vs slimq.

A small self-written llama decode loop (not transformers' generate): fused QKV and gate/up
projections, a static KV cache, rotary embeddings, and one CUDA graph per decode step (the
greedy argmax and the position counter update inside the graph, so generation is graph
replays only). Linears are cuBLAS FP16 (``F.linear``) or slimq ``QuantLinear`` layers built
from packed random codes (group 128) running the Triton backend with a shared
:class:`~slimq.kernels.triton.Workspace`. The LM head stays FP16 in every variant. Weights are
random and built on the GPU (no download); each packed layer's ``col_perm`` is what slimq's quantizers write
by default (identity for uniform widths, whole groups moved for SliM), or with ``--act-order`` a random
column permutation. Prefill is fed token by token through the same graph and not timed; tokens/s = batch *
generated tokens / generation time.

    PYTHONPATH=src python benchmarks/decode.py [--variants fp16,2b,3b,4b,slim] [--batches 1,16] [--out DIR]
        [--profile STEPS]    # also: GPU time per step by kernel (PyTorch profiler over STEPS replays)
        [--gv-gather on|off] # force the M = 1 path's in-kernel gather (default: the dispatch rule)
        [--act-order]        # random column permutations (GPTQ act-order) instead of slimq's default
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

LLAMA2_7B = dict(hidden=4096, inter=11008, layers=32, heads=32, vocab=32000, eps=1e-5, theta=10000.0)
GS = 128


# --- small fused helpers (Triton) --------------------------------------------------------

@triton.jit
def _add_rmsnorm(h_ptr, d_ptr, w_ptr, out_ptr, H, eps, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    """Row b: ``h += d`` (if HAS_D), ``out = h / rms(h) * w``."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    h = tl.load(h_ptr + b * H + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_D:
        h += tl.load(d_ptr + b * H + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + b * H + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    r = tl.rsqrt(tl.sum(h * h, axis=0) / H + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * H + offs, (h * r * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_cache(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, kc_ptr, vc_ptr, NH, L,
                HD: tl.constexpr):
    """Program (b, head): rotate q, k at position ``pos`` (rotate-half convention); write q to
    ``q [B, NH, HD]`` and k, v into the caches ``[B, NH, L, HD]`` at ``pos``."""
    b = tl.program_id(0)
    hh = tl.program_id(1)
    pos = tl.load(pos_ptr)
    half = tl.arange(0, HD // 2)
    row = qkv_ptr + b * 3 * NH * HD + hh * HD
    c = tl.load(cos_ptr + pos * (HD // 2) + half)
    s = tl.load(sin_ptr + pos * (HD // 2) + half)
    q1 = tl.load(row + half).to(tl.float32)
    q2 = tl.load(row + HD // 2 + half).to(tl.float32)
    k1 = tl.load(row + NH * HD + half).to(tl.float32)
    k2 = tl.load(row + NH * HD + HD // 2 + half).to(tl.float32)
    dt = q_ptr.dtype.element_ty
    qo = q_ptr + (b * NH + hh) * HD
    tl.store(qo + half, (q1 * c - q2 * s).to(dt))
    tl.store(qo + HD // 2 + half, (q2 * c + q1 * s).to(dt))
    cache = ((b * NH + hh) * L + pos) * HD
    tl.store(kc_ptr + cache + half, (k1 * c - k2 * s).to(dt))
    tl.store(kc_ptr + cache + HD // 2 + half, (k2 * c + k1 * s).to(dt))
    full = tl.arange(0, HD)
    tl.store(vc_ptr + cache + full, tl.load(row + 2 * NH * HD + full))


@triton.jit
def _silu_mul(gu_ptr, out_ptr, INTER, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    g = tl.load(gu_ptr + b * 2 * INTER + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + b * 2 * INTER + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * INTER + offs, (g / (1 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=mask)


# --- weights -----------------------------------------------------------------------------

def random_packed(n: int, k: int, variant: str, device, gen, act_order: bool = False):
    """A ``PackedLinear [n, k]`` with random codes written straight into its bit planes:
    uniform ``"2b"/"3b"/"4b"`` or ``"slim"`` (1/2/3-bit groups in proportions 1:2:1). ``col_perm`` as slimq's
    quantizers write it without act-order (their default): the identity for uniform widths, whole groups moved
    for SliM (its groups sorted by bit-width; here at random); ``act_order``: a random permutation of the columns
    (what GPTQ's act-order writes), which the one-token kernels gather before the matmul."""
    from slimq.format.layout import PackedLinear, Segment, plane_widths
    g = math.ceil(k / GS)
    if variant == "slim":
        counts = {1: g // 4, 3: g // 4}
        counts[2] = g - counts[1] - counts[3]
    else:
        counts = {int(variant[0]): g}
    segs, c0 = [], 0
    for bits, ng in sorted((b, c) for b, c in counts.items() if c > 0):
        ks = min(ng * GS, k - c0)
        planes = [torch.randint(-2 ** 31, 2 ** 31 - 1, (math.ceil(ks * w / 32), n), device=device,
                                dtype=torch.int32, generator=gen) for w in plane_widths(bits)]
        gk = math.ceil(ks / GS)
        scales = (torch.rand(gk, n, device=device, generator=gen) * 2e-3 + 1e-3).half()
        zeros = (torch.rand(gk, n, device=device, generator=gen) * (1 << bits)).half()
        segs.append(Segment(0, n, c0, c0 + ks, bits, GS, planes, scales, zeros))
        c0 += ks
    if act_order:
        col_perm = torch.randperm(k, device=device, generator=gen)
    elif variant == "slim":
        groups = torch.randperm(g, device=device, generator=gen)
        col_perm = (groups[:, None] * GS + torch.arange(GS, device=device)).flatten()
        col_perm = col_perm[col_perm < k]  # a short last group: its columns only
    else:
        col_perm = torch.arange(k, device=device)
    return PackedLinear(k, n, col_perm.to(torch.int32), None, segs)


def call_config(x, packed, gv_gather: str = "auto"):
    """The dispatched config for ``x @ packed``; ``gv_gather`` "on"/"off" forces the M = 1 ``gv``
    path's in-kernel activation gather (an A/B of the dispatch rule inside the decode graph)."""
    import dataclasses

    from slimq.kernels.triton import resolve_config
    cfg = resolve_config(x, packed)
    if cfg.path == "gv" and gv_gather != "auto":
        cfg = dataclasses.replace(cfg, gather=gv_gather == "on")
    return cfg


class SharedWorkspaceLinear(torch.nn.Module):
    """A slimq ``QuantLinear`` whose forward passes a preallocated, shared workspace (and a fixed
    config, when one is given)."""

    def __init__(self, qlinear, workspace, config=None):
        super().__init__()
        self.q, self.ws, self.cfg = qlinear, workspace, config

    def forward(self, x):
        from slimq.kernels.triton import sbp_matmul
        return sbp_matmul(x, self.q.packed, self.q.bias, workspace=self.ws, config=self.cfg)


def build_model(cfg: dict, variant: str, batch: int, max_len: int, device, gv_gather: str = "auto",
                act_order: bool = False):
    """Random weights (FP16 or packed; ``act_order``: :func:`random_packed`'s) plus the static KV cache and step
    buffers."""
    from slimq.kernels.triton import Workspace
    from slimq.nn import QuantLinear
    H, inter, nl, nh = cfg["hidden"], cfg["inter"], cfg["layers"], cfg["heads"]
    gen = torch.Generator(device=device).manual_seed(0)
    dt = torch.float16

    def rnd(*shape, scale=0.02):
        return (torch.randn(*shape, device=device, dtype=dt, generator=gen) * scale)

    ws = None if variant == "fp16" else Workspace(device, batch, 2 * inter, inter, dt)

    def linear(n, k):
        if variant == "fp16":
            w = rnd(n, k)
            return lambda x: F.linear(x, w)
        q = QuantLinear.from_packed(random_packed(n, k, variant, device, gen, act_order), backend="triton")
        x = torch.empty(batch, k, device=device, dtype=dt)
        return SharedWorkspaceLinear(q, ws, call_config(x, q.packed, gv_gather) if gv_gather != "auto" else None)

    layers = [dict(qkv=linear(3 * H, H), o=linear(H, H), gu=linear(2 * inter, H), down=linear(H, inter),
                   n1=1 + rnd(H), n2=1 + rnd(H)) for _ in range(nl)]
    hd = H // nh
    inv = 1.0 / (cfg["theta"] ** (torch.arange(0, hd, 2, device=device).float() / hd))
    ang = torch.arange(max_len, device=device).float()[:, None] * inv[None]
    return dict(
        layers=layers, emb=rnd(cfg["vocab"], H, scale=1.0), head=rnd(cfg["vocab"], H), norm=1 + rnd(H),
        cos=ang.cos().contiguous(), sin=ang.sin().contiguous(),
        kc=[torch.zeros(batch, nh, max_len, hd, device=device, dtype=dt) for _ in range(nl)],
        vc=[torch.zeros(batch, nh, max_len, hd, device=device, dtype=dt) for _ in range(nl)],
        tok=torch.zeros(batch, dtype=torch.long, device=device), pos=torch.zeros(1, dtype=torch.long, device=device),
        ar=torch.arange(max_len, device=device), batch=batch, max_len=max_len, cfg=cfg,
    )


def step(m: dict) -> None:
    """One greedy decode step for every sequence: reads ``tok``/``pos``, writes the next token
    into ``tok`` and advances ``pos``."""
    cfg, B, L = m["cfg"], m["batch"], m["max_len"]
    H, nh, inter = cfg["hidden"], cfg["heads"], cfg["inter"]
    hd = H // nh
    h = m["emb"][m["tok"]]  # [B, H]
    xn = torch.empty_like(h)
    mask = (m["ar"] <= m["pos"])[None, None, None, :]
    blk = triton.next_power_of_2(H)
    d = None
    for li, lay in enumerate(m["layers"]):
        _add_rmsnorm[(B,)](h, d if d is not None else h, lay["n1"], xn, H, cfg["eps"], HAS_D=d is not None, BLOCK=blk)
        qkv = lay["qkv"](xn)
        q = torch.empty(B, nh, hd, device=h.device, dtype=h.dtype)
        _rope_cache[(B, nh)](qkv, m["cos"], m["sin"], m["pos"], q, m["kc"][li], m["vc"][li], nh, L, HD=hd)
        att = F.scaled_dot_product_attention(q[:, :, None], m["kc"][li], m["vc"][li], attn_mask=mask)
        o = lay["o"](att.reshape(B, H))
        _add_rmsnorm[(B,)](h, o, lay["n2"], xn, H, cfg["eps"], HAS_D=True, BLOCK=blk)
        gu = lay["gu"](xn)
        act = torch.empty(B, inter, device=h.device, dtype=h.dtype)
        _silu_mul[(B, triton.cdiv(inter, 1024))](gu, act, inter, BLOCK=1024)
        d = lay["down"](act)
    _add_rmsnorm[(B,)](h, d, m["norm"], xn, H, cfg["eps"], HAS_D=True, BLOCK=blk)
    logits = F.linear(xn, m["head"])
    m["tok"].copy_(logits.argmax(-1))
    m["pos"].add_(1)


def run_variant(cfg: dict, variant: str, batch: int, prompt: int, gen_tokens: int, device,
                profile_steps: int = 0, gv_gather: str = "auto", act_order: bool = False) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    m = build_model(cfg, variant, batch, prompt + gen_tokens, device, gv_gather, act_order)
    build_s = time.time() - t0
    prompt_ids = torch.randint(0, cfg["vocab"], (prompt, batch), device=device)
    m["tok"].copy_(prompt_ids[0])
    step(m)  # compiles / loads every kernel outside the capture
    torch.cuda.synchronize()
    m["pos"].zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(m)
    torch.cuda.synchronize()
    m["pos"].zero_()
    for i in range(prompt):  # prefill, token by token (not timed)
        m["tok"].copy_(prompt_ids[i])
        graph.replay()
    out = torch.empty(gen_tokens, batch, dtype=torch.long, device=device)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(gen_tokens):
        graph.replay()
        out[i].copy_(m["tok"])
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end)
    res = {"variant": variant, "batch": batch, "tokens_per_s": batch * gen_tokens / (ms / 1e3),
           "ms_per_step": ms / gen_tokens, "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2 ** 30,
           "build_s": build_s, "distinct_tokens": int(out.unique().numel()), "pos_end": int(m["pos"])}
    if profile_steps:
        m["pos"].fill_(m["max_len"] - profile_steps)  # replay the sequence's last positions again
        res["profile"] = kernel_profile(graph, profile_steps)
    del graph, m
    return res


def kernel_profile(graph, steps: int) -> dict:
    """GPU time per decode step by kernel name, from ``steps`` graph replays under the PyTorch
    profiler (CUPTI kernel records; the caller rewinds the position to the sequence's last steps).
    ``busy_us`` sums the kernels' durations; the step time minus it is time with no kernel running
    (launch gaps inside the graph)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = {}
    spans = []
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA or e.time_range.elapsed_us() <= 0:
            continue
        if "memcpy" in e.name.lower() or "memset" in e.name.lower():
            continue
        kernels.setdefault(e.name, []).append(e.time_range.elapsed_us())
        spans.append((e.time_range.start, e.time_range.end))
    wall = (max(b for _, b in spans) - min(a for a, _ in spans)) / steps if spans else 0.0
    rows = sorted(({"kernel": k, "calls_per_step": len(v) / steps, "us_per_step": sum(v) / steps}
                   for k, v in kernels.items()), key=lambda r: -r["us_per_step"])
    return {"steps": steps, "wall_us_per_step": wall, "busy_us_per_step": sum(r["us_per_step"] for r in rows),
            "kernels": rows}


def _print_profile(r: dict, top: int = 12) -> None:
    p = r["profile"]
    print(f"\n{r['variant']} batch {r['batch']}: {p['wall_us_per_step']:.0f} us per step (profiled), kernels busy "
          f"{p['busy_us_per_step']:.0f} us, idle {p['wall_us_per_step'] - p['busy_us_per_step']:.0f} us")
    for k in p["kernels"][:top]:
        print(f"  {k['us_per_step']:8.1f} us  {k['calls_per_step']:6.1f} calls  {k['kernel'][:90]}")


def precompile_variants(cfg: dict, variants: list[str], batches: list[int], device, gv_gather: str = "auto",
                        act_order: bool = False) -> int:
    """Compile every slimq kernel variant the runs will launch, in parallel processes."""
    from slimq.kernels.triton import Workspace, plan_launches
    from slimq.kernels.triton.warmup import precompile
    H, inter = cfg["hidden"], cfg["inter"]
    gen = torch.Generator(device=device).manual_seed(1)
    launches = []
    for batch in batches:
        ws = Workspace(device, batch, 2 * inter, inter, torch.float16)
        for v in variants:
            if v == "fp16":
                continue
            for n, k in ((3 * H, H), (H, H), (2 * inter, H), (H, inter)):
                p = random_packed(n, k, v, device, gen, act_order)
                x = torch.empty(batch, k, device=device, dtype=torch.float16)
                out = torch.empty(batch, n, device=device, dtype=torch.float16)
                launches += plan_launches(x, p, None, out, ws, call_config(x, p, gv_gather))
    return precompile(launches, processes=min(16, os.cpu_count() or 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="fp16,2b,3b,4b,slim")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--layers", type=int, default=LLAMA2_7B["layers"])
    ap.add_argument("--gv-gather", choices=("auto", "on", "off"), default="auto",
                    help="force the M = 1 gv path's in-kernel gather on/off (default: the dispatch rule)")
    ap.add_argument("--act-order", action="store_true",
                    help="every layer's col_perm a random permutation of its columns (GPTQ's act-order), not slimq's "
                         "default (the identity for uniform widths, whole groups moved for SliM)")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile STEPS more graph replays per variant: GPU time by kernel")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if not 0 <= args.profile <= args.prompt + args.gen:
        ap.error("--profile takes 0 .. prompt + gen steps")
    dev = torch.device("cuda")
    cfg = dict(LLAMA2_7B, layers=args.layers)
    t0 = time.time()
    try:
        n_var = precompile_variants(cfg, args.variants.split(","), [int(b) for b in args.batches.split(",")], dev,
                                    args.gv_gather, args.act_order)
    except Exception as e:  # noqa: BLE001 - fall back to compiling on first launch
        n_var = -1
        print(f"precompile failed ({type(e).__name__}: {e}); compiling lazily", flush=True)
    print(f"precompiled {n_var} kernel variants in {time.time() - t0:.0f}s", flush=True)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        base = None
        for v in args.variants.split(","):
            r = run_variant(cfg, v, batch, args.prompt, args.gen, dev, args.profile, args.gv_gather, args.act_order)
            base = r["tokens_per_s"] if v == "fp16" else base
            r["speedup_vs_fp16"] = r["tokens_per_s"] / base if base else None
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{torch.cuda.get_device_name(dev)}: LLaMA-2-7B shape ({cfg['layers']} layers), random weights, "
          f"prompt {args.prompt} + {args.gen} greedy tokens, CUDA graph per step")
    print(f"{'variant':>8} {'batch':>5} {'tok/s':>9} {'ms/step':>8} {'vs fp16':>8} {'peak GiB':>9}")
    for r in results:
        sp = f"{r['speedup_vs_fp16']:.2f}x" if r["speedup_vs_fp16"] else "-"
        print(f"{r['variant']:>8} {r['batch']:>5} {r['tokens_per_s']:>9.1f} {r['ms_per_step']:>8.2f} {sp:>8} "
              f"{r['peak_mem_GiB']:>9.2f}")
    for r in results:
        if "profile" in r:
            _print_profile(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps({"gpu": torch.cuda.get_device_name(dev), "gv_gather": args.gv_gather,
                                                 "act_order": args.act_order, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
