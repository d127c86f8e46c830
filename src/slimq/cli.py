"""``slimq`` command line: parses arguments, builds a config, calls ``slimq.api``; nothing else.

User mistakes (bad values, missing files, unsupported models) end in one line on
stderr and exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model and save a packed checkpoint")
    p.add_argument("model", help="hub id, local directory, .gguf file, or 'smollm2-local'")
    p.add_argument("--method", default="gptq", help="rtn, gptq or slim (default: gptq)")
    p.add_argument("--bits", type=float, default=4, help="weight bits; for slim the average target (e.g. 2 or 2.5)")
    p.add_argument("--group-size", type=int, default=128, help="columns per group; -1 = per channel")
    p.add_argument("--sym", action="store_true", help="symmetric quantizers")
    p.add_argument("--calib", default="c4", help="calibration dataset name or local file")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--act-order", action="store_true", help="GPTQ act-order")
    p.add_argument("--static-groups", action="store_true", help="GPTQ static groups")
    p.add_argument("--percdamp", type=float, default=0.01)
    p.add_argument("--no-sba", action="store_true", help="slim: no salience-determined bit allocation")
    p.add_argument("--no-sqc", action="store_true", help="slim: no salience-weighted quantizer calibration")
    p.add_argument("--sqc-lambda", type=float, default=None, help="slim: weight of salient elements in SQC")
    p.add_argument("--sqc-threshold", type=float, default=None, help="slim: z-score above which an element is salient")
    p.add_argument("--sqc-grid", default=None, help="slim: LOW,HIGH,POINTS of the range-scale search")
    p.add_argument("--palette", default=None, help="slim: allowed offsets from the target, e.g. -1,0,1,2")
    p.add_argument("--score", choices=["rtn", "gptq"], default=None, help="slim: how SBA candidates are scored")
    p.add_argument("--allocation", default=None, help="slim: reuse a saved bit allocation (JSON)")
    p.add_argument("--data-dir", default=None, help="resolve dataset names to files laid out as in ../shared/data")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model or a slimq checkpoint")
    p.add_argument("model", help="slimq checkpoint dir, hub id, local dir, .gguf file, or 'smollm2-local'")
    p.add_argument("--ppl", default="wikitext2", help="comma-separated dataset names or local files")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first K windows")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="slimq", description=__doc__.splitlines()[0])
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_quantize(sub)
    _add_eval(sub)
    p = sub.add_parser("info", help="bits per weight, sizes and memory of a checkpoint")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("report", help="plots of a checkpoint's bit allocation and salience")
    p.add_argument("path")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the checkpoint dir)")
    p.add_argument("--layer", default=None, help="linear whose group-salience histogram to draw")
    return ap


def _floats(text: str | None, n: int | None = None) -> tuple | None:
    if text is None:
        return None
    vals = tuple(float(v) for v in text.split(","))
    if n is not None and len(vals) != n:
        raise ValueError(f"expected {n} comma-separated numbers, got {text!r}")
    return vals


def _quant_config(a):
    from slimq.config import CalibConfig, GPTQOptions, QuantConfig, SlimOptions

    slim_kw = {"sba": not a.no_sba, "sqc": not a.no_sqc, "allocation_file": a.allocation}
    if a.sqc_lambda is not None:
        slim_kw["sqc_lambda"] = a.sqc_lambda
    if a.sqc_threshold is not None:
        slim_kw["sqc_threshold"] = a.sqc_threshold
    if a.sqc_grid is not None:
        lo, hi, n = _floats(a.sqc_grid, 3)
        slim_kw["sqc_grid"] = (lo, hi, int(n))
    if a.palette is not None:
        slim_kw["palette"] = tuple(int(v) for v in _floats(a.palette))
    if a.score is not None:
        slim_kw["score"] = a.score
    return QuantConfig(
        method=a.method, bits=a.bits, group_size=a.group_size, sym=a.sym,
        calib=CalibConfig(dataset=a.calib, nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed),
        gptq=GPTQOptions(percdamp=a.percdamp, act_order=a.act_order, static_groups=a.static_groups),
        slim=SlimOptions(**slim_kw),
    )


def _cmd_quantize(a) -> int:
    from slimq import api

    config = _quant_config(a)
    out = Path(a.out)
    if out.exists() and not a.force:
        raise ValueError(f"output directory {out} exists; pass --force to replace it")
    res = api.quantize(a.model, config, data_dir=a.data_dir, device=a.device, progress=not a.quiet)
    res.save(out, force=a.force)
    print(_summary(res))
    print(f"saved {out}")
    return 0


def _summary(res) -> str:
    from slimq.report import summarize_result

    return summarize_result(res)


def _cmd_eval(a) -> int:
    from slimq import api

    names = [s for s in a.ppl.split(",") if s]
    if not names:
        raise ValueError("--ppl needs at least one dataset name or file")
    r = api.evaluate(a.model, names, seqlen=a.seqlen, max_windows=a.max_windows, data_dir=a.data_dir,
                     device=a.device, progress=not (a.quiet or a.json))
    if a.json:
        print(json.dumps({"ppl": r["ppl"], "tokens": r["tokens"], "seconds": r["seconds"]}))
    else:
        for k, v in r["ppl"].items():
            print(f"{k:>20s}  ppl {v:10.3f}  ({r['tokens'][k]} tokens, {r['windows'][k]} windows)")
        print(f"{'':>20s}  {r['seconds']:.1f} s")
    return 0


def _cmd_info(a) -> int:
    from slimq.format.info import checkpoint_info, format_info

    info = checkpoint_info(Path(a.path))
    print(json.dumps(info, indent=2) if a.json else format_info(info))
    return 0


def _cmd_report(a) -> int:
    from slimq.report import write_report

    for path in write_report(Path(a.path), Path(a.out) if a.out else None, layer=a.layer):
        print(f"wrote {path}")
    return 0


COMMANDS = {"quantize": _cmd_quantize, "eval": _cmd_eval, "info": _cmd_info, "report": _cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"slimq {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
