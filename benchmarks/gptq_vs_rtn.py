"""Why does GPTQ lose to RTN at 4 bits on SmolLM2-135M? Controlled CPU experiments.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF: every linear weight row is, in blocks of
32 consecutive input columns, exactly ``m + d * q`` with ``q`` in 0..15. This script
compares RTN and GPTQ (same CPU protocol as README's table: C4 calibration 16 x 512,
seed 0, first ``--max-windows`` 2048-token windows of WikiText-2 / PTB / held-out C4)

* on the original weights ("orig") and on a de-gridded copy ("degrid": every weight
  plus seeded uniform noise in ``+-amp * d / 2`` of its own Q4_1 block, so the
  weights are off any 4-bit grid; its own FP perplexity is the reference there);
* at g32 (RTN's groups coincide with the Q4_1 blocks) and g128;
* with GPTQ variants (act-order, static groups, percdamp 0.1);
* "swap" rows: the RTN model with one linear type (q, k, v, o, gate, up, down)
  replaced by its weights from the GPTQ run of the same setting, which locates the
  layers where GPTQ loses (GPTQ for that type was computed on GPTQ-quantized inputs,
  so this is a diagnostic, not a method);
* "except" rows: one GPTQ pass in which the linears of the named type(s) are RTN-quantized
  instead (inside the sequential pass, so later layers' GPTQ sees their RTN outputs).

Per row it prints perplexities and the weight-space relative error ``||Q - W|| / ||W||``
over all quantized linears (W: that row's reference weights).

Full run (about 90 min on 2 shared cores; rows are resumable; rows can be split over processes with --only):
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/gptq_vs_rtn.py --data-dir ../shared/data \
        --out benchmarks/results/gptq_vs_rtn.json --resume
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slimq import api
from slimq.config import CalibConfig, GPTQOptions, QuantConfig
from slimq.models import block_linears, get_arch, get_blocks, set_weight_matrix, weight_matrix
from slimq.models.loading import load_model
from slimq.quant.rtn import rtn_quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import _atomic_write  # noqa: E402  (benchmarks/ is not a package)

DATASETS = ("wikitext2", "ptb", "c4")
Q4_1_BLOCK = 32
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Row:
    name: str
    variant: str  # "orig" or "degrid"
    kind: str  # "fp", "rtn", "gptq", "swap" or "except"
    bits: int = 16
    group_size: int = 128
    gptq: GPTQOptions = GPTQOptions()
    swap: str | None = None  # "swap": type taken from GPTQ; "except": comma-separated types given to RTN


def build_rows() -> list[Row]:
    rows = [Row("orig-fp", "orig", "fp")]
    for g in (128, 32):
        rows += [Row(f"orig-rtn-w4g{g}", "orig", "rtn", 4, g), Row(f"orig-gptq-w4g{g}", "orig", "gptq", 4, g)]
    rows += [Row("orig-gptq-w4g128-actorder", "orig", "gptq", 4, 128, GPTQOptions(act_order=True)),
             Row("orig-gptq-w4g128-static", "orig", "gptq", 4, 128, GPTQOptions(static_groups=True)),
             Row("orig-gptq-w4g128-damp0.1", "orig", "gptq", 4, 128, GPTQOptions(percdamp=0.1)),
             Row("orig-gptq-w4g128-actorder-static", "orig", "gptq", 4, 128,
                 GPTQOptions(act_order=True, static_groups=True))]
    rows += [Row(f"orig-swap-{t}-w4g128", "orig", "swap", 4, 128, swap=t) for t in TYPES]
    rows += [Row(f"orig-gptq-rtn_{t.replace(',', '+')}-w4g128", "orig", "except", 4, 128, swap=t)
             for t in ("v_proj", "k_proj,v_proj")]
    rows.append(Row("orig-gptq-w4g128-actorder-rtn_v_proj", "orig", "except", 4, 128, GPTQOptions(act_order=True),
                    swap="v_proj"))
    rows.append(Row("degrid-fp", "degrid", "fp"))
    for b in (4, 3):
        rows += [Row(f"degrid-rtn-w{b}g128", "degrid", "rtn", b, 128),
                 Row(f"degrid-gptq-w{b}g128", "degrid", "gptq", b, 128)]
    return rows


def _linears(model):
    arch = get_arch(model)
    for i, block in enumerate(get_blocks(model, arch)):
        for name, module in block_linears(block, arch).items():
            yield f"{arch.blocks}.{i}.{name}", module, arch


def degrid_(model, amp: float, seed: int) -> dict:
    """Add uniform noise in ``+-amp * d / 2`` of each weight's Q4_1 block (in place) to
    every block linear. Returns the fraction of weights that were on their block's grid."""
    gen = torch.Generator().manual_seed(seed)
    on, total = 0, 0
    for _, module, arch in _linears(model):
        W = weight_matrix(module, arch).float()
        n, k = W.shape
        if k % Q4_1_BLOCK:
            raise ValueError(f"in_features must be a multiple of {Q4_1_BLOCK} to de-grid, got {k}")
        B = W.reshape(n, k // Q4_1_BLOCK, Q4_1_BLOCK)
        lo, hi = B.amin(-1, keepdim=True), B.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        q = (B - lo) / torch.where(d > 0, d, torch.ones_like(d))
        on += int(((q - q.round()).abs() < 1e-3).sum())
        total += B.numel()
        noise = (torch.rand(B.shape, generator=gen) - 0.5) * amp * d
        set_weight_matrix(module, (B + noise).reshape(n, k), arch)
    return {"on_q4_1_grid": on / total}


def reference_model(variant: str, args):
    model, tok = load_model(args.model, dtype=torch.float32)
    info = degrid_(model, args.degrid_amp, args.seed) if variant == "degrid" else {}
    return model, tok, info


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: weight_matrix(m, arch).detach().float().clone() for name, m, arch in _linears(model)}


def _rel_err(ref: dict, model) -> float:
    num = sum(float((weight_matrix(m, a).float() - ref[n]).square().sum()) for n, m, a in _linears(model))
    return (num / sum(float(w.square().sum()) for w in ref.values())) ** 0.5


def _gptq_qtensors(row: Row, args, cache: dict):
    """The GPTQ run a swap row borrows from (computed once per process)."""
    key = (row.variant, row.bits, row.group_size)
    if key not in cache:
        model, tok, _ = reference_model(row.variant, args)
        cfg = QuantConfig(method="gptq", bits=row.bits, group_size=row.group_size, calib=_calib(args))
        cache[key] = api.quantize(model, cfg, tokenizer=tok, data_dir=args.data_dir, device="cpu",
                                  progress=False).qtensors
    return cache[key]


def _gptq_except(model, tok, row: Row, args) -> dict:
    """GPTQ pass (as ``api.quantize``, CPU) with the linears of types ``row.swap`` RTN-quantized."""
    from slimq.data import get_calibration
    from slimq.quant.methods import get_method
    from slimq.quant.sequential import quantize_blocks

    cfg = QuantConfig(method="gptq", bits=row.bits, group_size=row.group_size, gptq=row.gptq, calib=_calib(args))
    rtn_types = tuple(row.swap.split(","))
    calib = get_calibration("c4", tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                            data_dir=args.data_dir)

    def quantize_linear(job):
        return get_method("rtn" if job.name.endswith(rtn_types) else "gptq")(job, cfg, None)

    model.eval()
    return quantize_blocks(model, get_arch(model), calib, quantize_linear, device="cpu",
                           true_sequential=row.gptq.true_sequential, max_sample_rows=0, seed=args.seed,
                           progress=False, batch_size=1)


def _calib(args) -> CalibConfig:
    return CalibConfig(dataset="c4", nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)


def run_row(row: Row, args, cache: dict) -> dict:
    model, tok, info = reference_model(row.variant, args)
    ref = _weights(model)
    qsec = None
    if row.kind in ("rtn", "gptq"):
        cfg = QuantConfig(method=row.kind, bits=row.bits, group_size=row.group_size, gptq=row.gptq, calib=_calib(args))
        res = api.quantize(model, cfg, tokenizer=tok, data_dir=args.data_dir, device="cpu", progress=False)
        qsec = res.seconds
        if row.kind == "gptq" and row.gptq == GPTQOptions():  # what swap rows borrow
            cache[(row.variant, row.bits, row.group_size)] = res.qtensors
    elif row.kind == "swap":
        gq = _gptq_qtensors(row, args, cache)
        for name, module, arch in _linears(model):
            W = gq[name].dequantize() if name.endswith(row.swap) else \
                rtn_quantize(ref[name], bits=row.bits, group_size=row.group_size).dequantize()
            set_weight_matrix(module, W, arch)
    elif row.kind == "except":
        t0 = time.perf_counter()
        _gptq_except(model, tok, row, args)
        qsec = time.perf_counter() - t0
    ev = api.evaluate(model, DATASETS, tokenizer=tok, seqlen=2048, max_windows=args.max_windows,
                      data_dir=args.data_dir, device="cpu", progress=False)
    return {"name": row.name, "variant": row.variant, "kind": row.kind, "bits": row.bits,
            "group_size": None if row.kind == "fp" else row.group_size,
            "gptq": None if row.kind not in ("gptq", "swap", "except") else vars(row.gptq), "swap": row.swap,
            "ppl": ev["ppl"], "tokens": ev["tokens"], "weight_rel_err": _rel_err(ref, model),
            "quant_seconds": qsec, **info}


def format_table(rows: list[dict]) -> str:
    head = f"{'row':<30}{'wikitext2':>10}{'ptb':>10}{'c4':>10}{'|Q-W|/|W|':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["ppl"]
        lines.append(f"{r['name']:<30}" + "".join(f"{p[d]:>10.2f}" for d in DATASETS) + f"{r['weight_rel_err']:>11.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--model", default="smollm2-local")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512, help="calibration sequence length")
    ap.add_argument("--max-windows", type=int, default=1, help="2048-token evaluation windows per dataset")
    ap.add_argument("--seed", type=int, default=0, help="calibration sampling and de-gridding noise seed")
    ap.add_argument("--degrid-amp", type=float, default=1.0, help="noise amplitude in Q4_1 steps d (+-amp*d/2)")
    ap.add_argument("--only", default=None, help="comma-separated row names (default: all; see --list)")
    ap.add_argument("--list", action="store_true", help="list the row names and exit")
    ap.add_argument("--out", default="benchmarks/results/gptq_vs_rtn.json")
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out")
    args = ap.parse_args(argv)
    spec = build_rows()
    if args.list:
        print("\n".join(r.name for r in spec))
        return 0
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {r.name for r in spec}
        if unknown:
            ap.error(f"unknown rows {sorted(unknown)}; see --list")
        spec = [r for r in spec if r.name in keep]
    out = Path(args.out)
    done = json.loads(out.read_text())["rows"] if args.resume and out.exists() else []
    have = {r["name"] for r in done}
    meta = {"model": args.model, "calib": f"c4 {args.nsamples}x{args.seqlen} seed {args.seed}",
            "eval": f"first {args.max_windows} x 2048 tokens", "degrid_amp": args.degrid_amp,
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    cache: dict = {}
    for row in spec:
        if row.name in have:
            continue
        t0 = time.perf_counter()
        done.append(run_row(row, args, cache))
        print(f"[{row.name}] {done[-1]['ppl']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        _atomic_write(out, json.dumps({"meta": meta, "rows": done}, indent=1))
    print(f"calibration {meta['calib']}; evaluation {meta['eval']} per set; de-grid amplitude {args.degrid_amp}")
    print(format_table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
