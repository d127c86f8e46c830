"""Accuracy benchmark: perplexity of FP, RTN, GPTQ and SliM-LLM (+ ablations) on one model.

Prints a table and writes JSON (and a PNG plot) after every row, so an interrupted
run resumes where it stopped (``--resume``).

CPU (quick, a fixed subset of windows):
    python benchmarks/accuracy.py --data-dir ../shared/data --nsamples 32 --seqlen 512 --max-windows 8
GPU (full protocol: 128 x 2048 calibration on C4, full test sets):
    python benchmarks/accuracy.py --data-dir ../shared/data --nsamples 128 --seqlen 2048
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

from slimq import api
from slimq.config import GPTQOptions, CalibConfig, QuantConfig, SlimOptions

DATASETS = ("wikitext2", "ptb", "c4")


def build_rows(bits_list, group_sizes, include):
    """(name, QuantConfig | None) rows in table order; None is the unquantized model."""
    rows = [("fp", None)]
    for g in group_sizes:
        for b in bits_list:
            if "rtn" in include:
                rows.append((f"rtn-w{b}g{g}", QuantConfig(method="rtn", bits=b, group_size=g)))
            if "gptq" in include:
                rows.append((f"gptq-w{b}g{g}", QuantConfig(method="gptq", bits=b, group_size=g)))
            if "gptq-ao" in include:  # act-order + static groups (contiguous groups: no g_idx at inference)
                rows.append((f"gptq-ao-w{b}g{g}", QuantConfig(method="gptq", bits=b, group_size=g,
                                                               gptq=GPTQOptions(act_order=True, static_groups=True))))
            if "slim" in include and b <= 3:
                rows.append((f"slim-w{b}g{g}", QuantConfig(method="slim", bits=b, group_size=g)))
            if "slim-ao" in include and b <= 3:
                rows.append((f"slim-ao-w{b}g{g}", QuantConfig(method="slim", bits=b, group_size=g,
                                                               gptq=GPTQOptions(act_order=True, static_groups=True))))
            if "ablation" in include and b <= 3:
                rows.append((f"slim-sba-only-w{b}g{g}",
                             QuantConfig(method="slim", bits=b, group_size=g, slim=SlimOptions(sqc=False))))
                rows.append((f"slim-sqc-only-w{b}g{g}",
                             QuantConfig(method="slim", bits=b, group_size=g, slim=SlimOptions(sba=False))))
                # lambda = 1 turns SQC's salience weighting off (a plain range search).
                rows.append((f"slim-lambda1-w{b}g{g}",
                             QuantConfig(method="slim", bits=b, group_size=g, slim=SlimOptions(sqc_lambda=1.0))))
    return rows


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_row(name, config, args):
    calib = CalibConfig(dataset="c4", nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    qsec = None
    if config is None:
        model = args.model
    else:
        res = api.quantize(args.model, replace(config, calib=calib), data_dir=args.data_dir, device=args.device,
                           progress=not args.quiet)
        model, qsec = res.model, res.seconds
        tok = res.tokenizer
    ev = api.evaluate(model, DATASETS, tokenizer=None if config is None else tok, seqlen=args.eval_seqlen,
                      max_windows=args.max_windows, data_dir=args.data_dir, device=args.device,
                      progress=not args.quiet)
    row = {"name": name, "method": "fp" if config is None else config.method,
           "bits": 16 if config is None else config.bits, "group_size": None if config is None else config.group_size,
           "ppl": ev["ppl"], "tokens": ev["tokens"], "quant_seconds": qsec, "eval_seconds": ev["seconds"]}
    if config is not None:
        row["config"] = config.to_dict()
        row["avg_bits"] = res.avg_bits()
    return row


def format_table(rows: list[dict]) -> str:
    head = f"{'row':<26}{'bits':>6}{'wikitext2':>11}{'ptb':>11}{'c4':>11}{'quant s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["ppl"]
        qs = "" if r["quant_seconds"] is None else f"{r['quant_seconds']:.0f}"
        bits = r.get("avg_bits", r["bits"])
        lines.append(f"{r['name']:<26}{bits:>6.2f}" + "".join(f"{p.get(d, float('nan')):>11.4g}" for d in DATASETS)
                     + f"{qs:>9}")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """SliM/GPTQ perplexity ratios at the same bits and group size."""
    by = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        if r["method"] == "slim" and r["name"].startswith("slim-w"):
            g = by.get(r["name"].replace("slim-", "gptq-"))
            if g:
                rr = ", ".join(f"{d} {r['ppl'][d] / g['ppl'][d]:.3f}" for d in DATASETS)
                out.append(f"SliM/GPTQ {r['name'][5:]}: {rr}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    fp = next((r["ppl"]["wikitext2"] for r in rows if r["method"] == "fp"), None)
    for method, marker in (("rtn", "s"), ("gptq", "o"), ("slim", "^")):
        for g in sorted({r["group_size"] for r in rows if r["method"] == method and r["name"].startswith(method + "-w")}):
            pts = sorted((r["bits"], r["ppl"]["wikitext2"]) for r in rows
                         if r["method"] == method and r["group_size"] == g and r["name"].startswith(method + "-w"))
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"{method} g{g}")
    if fp:
        ax.axhline(fp, color="k", ls="--", lw=1, label="FP")
    ax.set_yscale("log")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-local")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("--group-sizes", default="128,64")
    ap.add_argument("--include", default="rtn,gptq,slim,ablation")
    ap.add_argument("--only", default=None, help="comma-separated row names to run")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048, help="calibration sequence length")
    ap.add_argument("--eval-seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/results/accuracy.json")
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    groups = [int(g) for g in args.group_sizes.split(",")]
    rows_spec = build_rows(bits, groups, set(args.include.split(",")))
    if args.only:
        keep = set(args.only.split(","))
        rows_spec = [r for r in rows_spec if r[0] in keep]
    out = Path(args.out)
    done = json.loads(out.read_text())["rows"] if args.resume and out.exists() else []
    have = {r["name"] for r in done}
    meta = {"model": args.model, "nsamples": args.nsamples, "calib_seqlen": args.seqlen,
            "eval_seqlen": args.eval_seqlen, "max_windows": args.max_windows, "seed": args.seed,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__}
    for name, config in rows_spec:
        if name in have:
            continue
        t0 = time.perf_counter()
        done.append(run_row(name, config, args))
        print(f"[{name}] {done[-1]['ppl']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        _atomic_write(out, json.dumps({"meta": meta, "rows": done}, indent=1))
    print(f"model {args.model}; calib c4 {args.nsamples}x{args.seqlen}; eval seqlen {args.eval_seqlen}, "
          f"max windows {args.max_windows or 'all'}; device {meta['device']}")
    print(format_table(done))
    for line in ratios(done):
        print(line)
    try:
        plot(done, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    except ImportError:  # the GPU image may lack matplotlib; the JSON is the record
        print(f"wrote {out} (no matplotlib: no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
