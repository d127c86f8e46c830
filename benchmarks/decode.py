"""Greedy-decoding speed of a LLaMA-2-7B-shaped model with random weights: FP16 vs slimq.

A small self-written llama decode loop (not transformers' generate): fused QKV and gate/up projections, a static
KV cache, rotary embeddings, the decoded position's attention in one kernel per layer (``decode_kernels.rope_attend``;
``--attention sdpa``: torch's SDPA over the masked cache, as before session 21), and one CUDA graph per decode step
(the greedy argmax and the position counter update inside the graph, so generation is graph replays only). The
non-matmul kernels are the same in every variant. Linears are cuBLAS FP16 (``F.linear``) or slimq ``QuantLinear``
layers built from packed random codes (group 128) running the Triton backend with a shared
:class:`~slimq.kernels.triton.Workspace`. The LM head stays FP16 in every variant. Weights are
random and built on the GPU (no download); each packed layer's ``col_perm`` is what slimq's quantizers write
by default (identity for uniform widths, whole groups moved for SliM), or with ``--act-order`` a random
column permutation. Prefill is fed token by token through the same graph and not timed; tokens/s = batch *
generated tokens / generation time; ``tokens_sha1`` fingerprints the generated tokens (seeded prompts and weights:
equal across runs of one build and path).

    PYTHONPATH=src python benchmarks/decode.py [--variants fp16,2b,3b,4b,slim] [--batches 1,16] [--out DIR]
        [--profile STEPS]    # also: GPU time per step by kernel (PyTorch profiler over STEPS replays)
        [--gv-gather on|off] # force the M = 1 path's in-kernel gather (default: the dispatch rule)
        [--act-order]        # random column permutations (GPTQ act-order) instead of slimq's default
        [--attention fused|sdpa]
        [--dtype bfloat16]   # bfloat16 activations and dense weights: the baseline is cuBLAS BF16 (variant "fp16")
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from decode_kernels import (
    add_rmsnorm,
    attend_workspace,
    rope_attend,
    rope_cache,
    rope_tables,
    silu_mul,
)

LLAMA2_7B = dict(hidden=4096, inter=11008, layers=32, heads=32, vocab=32000, eps=1e-5, theta=10000.0)
GS = 128


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
                act_order: bool = False, dt: torch.dtype = torch.float16):
    """Random weights (dense in ``dt``, or packed; ``act_order``: :func:`random_packed`'s) plus the static KV cache and
    step buffers; activations in ``dt`` (float16 or bfloat16)."""
    from slimq.kernels.triton import Workspace
    from slimq.nn import QuantLinear
    H, inter, nl, nh = cfg["hidden"], cfg["inter"], cfg["layers"], cfg["heads"]
    gen = torch.Generator(device=device).manual_seed(0)

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
    cos, sin = rope_tables(max_len, hd, device, cfg["theta"])
    return dict(
        layers=layers, emb=rnd(cfg["vocab"], H, scale=1.0), head=rnd(cfg["vocab"], H), norm=1 + rnd(H),
        cos=cos, sin=sin,
        kc=[torch.zeros(batch, nh, max_len, hd, device=device, dtype=dt) for _ in range(nl)],
        vc=[torch.zeros(batch, nh, max_len, hd, device=device, dtype=dt) for _ in range(nl)],
        att_work=attend_workspace(batch, nh, max_len, hd, device),
        tok=torch.zeros(batch, dtype=torch.long, device=device), pos=torch.zeros(1, dtype=torch.long, device=device),
        ar=torch.arange(max_len, device=device), batch=batch, max_len=max_len, cfg=cfg,
    )


def step(m: dict, attention: str = "fused") -> None:
    """One greedy decode step for every sequence: reads ``tok``/``pos``, writes the next token
    into ``tok`` and advances ``pos``. ``attention``: ``"fused"`` (:func:`decode_kernels.rope_attend`, one launch
    over positions ``0 .. pos``) or ``"sdpa"`` (rotation and cache write, then SDPA over the whole cache with a
    mask)."""
    cfg, B = m["cfg"], m["batch"]
    eps = cfg["eps"]
    h = m["emb"][m["tok"]]  # [B, H]
    xn = torch.empty_like(h)
    mask = (m["ar"] <= m["pos"])[None, None, None, :] if attention == "sdpa" else None
    d = None
    for li, lay in enumerate(m["layers"]):
        add_rmsnorm(h, d, lay["n1"], xn, eps)
        qkv = lay["qkv"](xn)
        if attention == "fused":
            att = rope_attend(qkv, m["cos"], m["sin"], m["pos"], m["kc"][li], m["vc"][li], m["att_work"])
        else:
            q = rope_cache(qkv, m["cos"], m["sin"], m["pos"], m["kc"][li], m["vc"][li])
            att = F.scaled_dot_product_attention(q[:, :, None], m["kc"][li], m["vc"][li], attn_mask=mask)
            att = att.reshape(B, -1)
        o = lay["o"](att)
        add_rmsnorm(h, o, lay["n2"], xn, eps)
        d = lay["down"](silu_mul(lay["gu"](xn)))
    add_rmsnorm(h, d, m["norm"], xn, eps)
    logits = F.linear(xn, m["head"])
    m["tok"].copy_(logits.argmax(-1))
    m["pos"].add_(1)


def run_variant(cfg: dict, variant: str, batch: int, prompt: int, gen_tokens: int, device,
                profile_steps: int = 0, gv_gather: str = "auto", act_order: bool = False,
                attention: str = "fused", dt: torch.dtype = torch.float16) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    m = build_model(cfg, variant, batch, prompt + gen_tokens, device, gv_gather, act_order, dt)
    build_s = time.time() - t0
    prompt_ids = torch.randint(0, cfg["vocab"], (prompt, batch), device=device,
                               generator=torch.Generator(device=device).manual_seed(1))  # the same in every run
    m["tok"].copy_(prompt_ids[0])
    step(m, attention)  # compiles / loads every kernel outside the capture
    torch.cuda.synchronize()
    m["pos"].zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(m, attention)
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
           "build_s": build_s, "distinct_tokens": int(out.unique().numel()), "pos_end": int(m["pos"]),
           "tokens_sha1": hashlib.sha1(out.cpu().numpy().tobytes()).hexdigest()[:12]}
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
                        act_order: bool = False, dt: torch.dtype = torch.float16) -> int:
    """Compile every slimq kernel variant the runs will launch, in parallel processes."""
    from slimq.kernels.triton import Workspace, plan_launches
    from slimq.kernels.triton.warmup import precompile
    H, inter = cfg["hidden"], cfg["inter"]
    gen = torch.Generator(device=device).manual_seed(1)
    launches = []
    for batch in batches:
        ws = Workspace(device, batch, 2 * inter, inter, dt)
        for v in variants:
            if v == "fp16":
                continue
            for n, k in ((3 * H, H), (H, H), (2 * inter, H), (H, inter)):
                p = random_packed(n, k, v, device, gen, act_order)
                x = torch.empty(batch, k, device=device, dtype=dt)
                out = torch.empty(batch, n, device=device, dtype=dt)
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
    ap.add_argument("--attention", choices=("fused", "sdpa"), default="fused",
                    help="fused: rotation, cache write and attention over positions 0..pos in one kernel per layer "
                         "(decode_kernels.rope_attend); sdpa: rotation and cache write, then torch's SDPA over the "
                         "whole cache with a mask (before session 21)")
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16",
                    help="activations and dense weights; with bfloat16 the baseline (variant fp16) is cuBLAS BF16")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile STEPS more graph replays per variant: GPU time by kernel")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    args = ap.parse_args(argv)
    if not 0 <= args.profile <= args.prompt + args.gen:
        ap.error("--profile takes 0 .. prompt + gen steps")
    dev = torch.device("cuda")
    dt = getattr(torch, args.dtype)
    cfg = dict(LLAMA2_7B, layers=args.layers)
    t0 = time.time()
    try:
        n_var = precompile_variants(cfg, args.variants.split(","), [int(b) for b in args.batches.split(",")], dev,
                                    args.gv_gather, args.act_order, dt)
    except Exception as e:  # noqa: BLE001 - fall back to compiling on first launch
        n_var = -1
        print(f"precompile failed ({type(e).__name__}: {e}); compiling lazily", flush=True)
    print(f"precompiled {n_var} kernel variants in {time.time() - t0:.0f}s", flush=True)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        base = None
        for v in args.variants.split(","):
            r = run_variant(cfg, v, batch, args.prompt, args.gen, dev, args.profile, args.gv_gather, args.act_order,
                            args.attention, dt)
            base = r["tokens_per_s"] if v == "fp16" else base
            r["speedup_vs_fp16"] = r["tokens_per_s"] / base if base else None
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{torch.cuda.get_device_name(dev)}: LLaMA-2-7B shape ({cfg['layers']} layers), random weights, "
          f"prompt {args.prompt} + {args.gen} greedy tokens, CUDA graph per step, {args.attention} attention, "
          f"{args.dtype} (variant fp16: the dense {args.dtype} model)")
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
                                                 "act_order": args.act_order, "attention": args.attention,
                                                 "dtype": args.dtype,
                                                 "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
