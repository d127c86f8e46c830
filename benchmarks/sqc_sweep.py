"""SQC parameter sweep: held-out layer output error of SliM-LLM over (lambda, threshold).

For real SmolLM2-135M linear layers (WikiText-2 inputs captured by
``tests/_real_activations.py``), quantizes each weight with ``slim_quantize`` (SBA on,
default palette) for every ``SlimOptions.sqc_lambda`` x ``sqc_threshold`` and reports the
relative output error on held-out sequences

    err = ||Xe (W - Wq)^T||^2 / ||Xe W^T||^2,

averaged over layers, its mean ratio to lambda = 1 (a plain MSE range search) and on
how many layers a setting beats the current default (or ``--versus``). The SBA
allocation does not depend on SQC (candidates are scored with min/max RTN), so it is
searched once per layer and bit-width and then given to every SQC setting; lambda = 1
ignores the threshold, so it is run once. A row ``sqc off`` (min/max quantizer) is added for scale.

Captured activations are cached in a temporary file (``--cache``), so reruns skip the
model. Run from the repository root (CPU, ~1 thread):

    OMP_NUM_THREADS=1 python benchmarks/sqc_sweep.py [--versus 2/2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from slimq.config import SlimOptions
from slimq.quant.slim.slim import slim_quantize

ROOT = Path(__file__).resolve().parents[1]
LINEARS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 10, 20])
    p.add_argument("--linears", nargs="+", default=list(LINEARS))
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--n-calib", type=int, default=16, help="calibration sequences (Hessian, SBA samples)")
    p.add_argument("--n-eval", type=int, default=4, help="held-out sequences (the metric)")
    p.add_argument("--n-sample", type=int, default=256, help="random calibration rows given to SBA as X_sample")
    p.add_argument("--bits", type=float, nargs="+", default=[2, 3])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--lambdas", type=float, nargs="+", default=[1, 1.5, 2, 3, 5, 10])
    p.add_argument("--thresholds", type=float, nargs="+", default=[1, 2, 3])
    p.add_argument("--versus", default=None,
                   help="setting the 'vs' column compares with, e.g. 2/2 (default: SlimOptions' default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "slimq_sqc_sweep")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sqc_sweep.json")
    return p.parse_args(argv)


def load_acts(layer: int, args) -> dict[str, torch.Tensor]:
    """``{name}.W`` / ``{name}.X`` of one decoder layer, from the cache or captured."""
    n = args.n_calib + args.n_eval
    path = args.cache / f"layer{layer}_seq{args.seq}x{n}_{'+'.join(args.linears)}.pt"
    if path.is_file():
        return torch.load(path)
    sys.path.insert(0, str(ROOT / "tests"))
    from _real_activations import capture_linear_inputs  # test helper: loads SmolLM2, runs WikiText-2

    acts = capture_linear_inputs(layer, tuple(args.linears), args.seq, n)
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(acts, tmp)
    tmp.replace(path)
    return acts


def label(lam: float, thr: float) -> str:
    """``"lambda/threshold"``; ``"1/*"`` for lambda = 1, where the threshold has no effect."""
    return "1/*" if lam == 1 else f"{lam:g}/{thr:g}"


def settings(args) -> list[tuple[str, SlimOptions]]:
    """(label, options) of every swept setting; lambda = 1 once (threshold unused)."""
    out = [("sqc off", SlimOptions(sqc=False))]
    for lam in args.lambdas:
        for thr in ([args.thresholds[0]] if lam == 1 else args.thresholds):
            out.append((label(lam, thr), SlimOptions(sqc_lambda=lam, sqc_threshold=thr)))
    return out


def rel_error(Xe: torch.Tensor, W: torch.Tensor, Wq: torch.Tensor) -> float:
    ref = Xe.double() @ W.double().T
    return float((Xe.double() @ (W.double() - Wq.double()).T).square().sum() / ref.square().sum())


def sweep_linear(W, X, bits, args, setts, gen) -> dict[str, float]:
    """Held-out relative error of every setting for one weight ``W [N, K]`` and its inputs ``X [n, K]``."""
    nc = args.n_calib * args.seq
    Xc, Xe = X[:nc].float(), X[nc:].float()
    H = (2.0 / nc) * (Xc.double().T @ Xc.double())
    X_sample = Xc[torch.randperm(nc, generator=gen)[: args.n_sample]]
    first = slim_quantize(W, H.float(), X_sample, bits=bits, group_size=args.group_size, options=setts[0][1])
    alloc = torch.tensor(first.info["allocation"])
    errs = {setts[0][0]: rel_error(Xe, W, first.dequantize())}
    for label, opt in setts[1:]:
        qt = slim_quantize(W, H.float(), None, bits=bits, group_size=args.group_size,
                           options=replace(opt, sba=False), allocation=alloc)
        errs[label] = rel_error(Xe, W, qt.dequantize())
    return errs


def summarise(per: dict, labels: list[str], lam1: str, versus: str) -> dict[str, dict]:
    """Per setting: mean error, mean per-layer ratio to lambda = 1 (with min/max), and
    layers better / worse than the compared setting ``versus``."""
    out = {}
    keys = list(per)
    for lab in labels:
        e = torch.tensor([per[k][lab] for k in keys], dtype=torch.float64)
        r = e / torch.tensor([per[k][lam1] for k in keys], dtype=torch.float64)
        d = torch.tensor([per[k][versus] for k in keys], dtype=torch.float64)
        out[lab] = {"mean_err": float(e.mean()), "mean_ratio_lam1": float(r.mean()),
                    "min_ratio_lam1": float(r.min()), "max_ratio_lam1": float(r.max()),
                    "better_than_versus": int((e < d * (1 - 1e-9)).sum()),
                    "worse_than_versus": int((e > d * (1 + 1e-9)).sum())}
    return out


def print_table(summary: dict, bits_list, labels, n_layers: int, versus: str) -> None:
    head = f"{'lambda/thr':>10}" + "".join(
        f" | w{b:g}: {'mean err':>9} {'/lam1':>7} {'[min,max]':>15} {'vs ' + versus:>7}" for b in bits_list)
    print(head)
    print("-" * len(head))
    for lab in labels:
        row = f"{lab:>10}"
        for b in bits_list:
            s = summary[f"{b:g}"][lab]
            row += (f" | {'':4}{s['mean_err']:9.5f} {s['mean_ratio_lam1']:7.4f} "
                    f"[{s['min_ratio_lam1']:.3f},{s['max_ratio_lam1']:.3f}] "
                    f"{s['better_than_versus']:>2}+/{s['worse_than_versus']:>2}-")
        print(row)
    print(f"(mean over {n_layers} layers; '/lam1': mean per-layer ratio to lambda=1; "
          f"'vs {versus}': layers better/worse than {versus})")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    setts = settings(args)
    labels = [lab for lab, _ in setts]
    d = SlimOptions()
    versus, lam1 = args.versus or label(d.sqc_lambda, d.sqc_threshold), label(1, 0)
    for need in (versus, lam1):
        if need not in labels:
            raise ValueError(f"the sweep must contain lambda=1 and the compared setting {versus}, got {labels}")
    gen = torch.Generator().manual_seed(args.seed)
    per = {f"{b:g}": {} for b in args.bits}
    t0 = time.perf_counter()
    for layer in args.layers:
        acts = load_acts(layer, args)
        for name in args.linears:
            W, X = acts[f"{name}.W"], acts[f"{name}.X"]
            for b in args.bits:
                t1 = time.perf_counter()
                per[f"{b:g}"][f"L{layer}.{name}"] = errs = sweep_linear(W, X, b, args, setts, gen)
                print(f"L{layer:<2} {name:<17} w{b:g}: {versus} {errs[versus]:.5f} "
                      f"lam1 {errs[lam1]:.5f} ({time.perf_counter() - t1:.1f}s)", flush=True)
    summary = {bk: summarise(p, labels, lam1, versus) for bk, p in per.items()}
    print()
    print_table(summary, args.bits, labels, len(per[f"{args.bits[0]:g}"]), versus)
    result = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "versus": versus, "lambda1": lam1, "seconds": time.perf_counter() - t0,
              "summary": summary, "per_layer": per}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
