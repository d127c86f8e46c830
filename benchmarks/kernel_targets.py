"""The kernels' speed targets, checked against ``benchmarks/kernels.py`` JSONs (no GPU needed).

The targets (each a ratio to cuBLAS FP16 measured in the same run; set for an H100):

* M = 1 on 28672x8192 and 8192x28672: >= 5x at 2 bits, 4x at 3 bits, 3x at 4 bits;
* M = 1: SliM-mixed 2-bit (1/2/3-bit groups) within 10% of uniform 2-bit (time);
* M = 1 on 4096x4096: >= 2x (checked per bit-width);
* M = 16: >= 1.5x at every bit-width <= 4, every shape;
* M >= 256: >= 0.9x, every shape and bit-width.

JSONs merge as in ``plot_kernels.py`` (a later file's cell replaces an earlier one's; ratios stay
inside their run). Prints one line per check with the measured value, the run it came from and
whether it passes, then a count; exits 0 either way (a report, not a gate).

    python benchmarks/kernel_targets.py benchmarks/reference/kernels_h200.json [more.json ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_kernels import KernelsJSONError, baseline, merge_runs  # noqa: E402

BIG = ((28672, 8192), (8192, 28672))
M1_FLOOR = {"2b": 5.0, "3b": 4.0, "4b": 3.0}
SLIM_SLACK = 1.10
SMALL, SMALL_FLOOR = (4096, 4096), 2.0
M16_FLOOR = 1.5
LARGE_M, LARGE_M_FLOOR = 256, 0.9


def checks(cells: list[dict]) -> list[dict]:
    """One dict per check: ``{"target", "where", "value", "need", "run", "met"}`` (``value`` a speedup,
    or for the SliM check SliM's time over 2-bit's); checks whose cells were not timed are left out."""
    at = {(c["N"], c["K"], c["M"], c["series"]): c for c in cells}
    out = []

    def add(target, where, value, need, run, met):
        out.append({"target": target, "where": where, "value": value, "need": need, "run": run, "met": met})

    for n, k in BIG:
        for v, floor in M1_FLOOR.items():
            c = at.get((n, k, 1, v))
            if c:
                add(f"M=1 {v} >= {floor:g}x", f"{n}x{k}", c["speedup"], floor, c["run"], c["speedup"] >= floor)
        s, b = at.get((n, k, 1, "slim")), at.get((n, k, 1, "2b"))
        if s and b:
            ratio = s["us"] / b["us"]
            runs = s["run"] if s["run"] == b["run"] else f"{s['run']} / {b['run']}"
            add("M=1 SliM time <= 1.10x 2-bit", f"{n}x{k}", ratio, SLIM_SLACK, runs, ratio <= SLIM_SLACK)
    for v in ("2b", "3b", "4b", "slim"):
        c = at.get(SMALL + (1, v))
        if c:
            add(f"M=1 {v} >= {SMALL_FLOOR:g}x", f"{SMALL[0]}x{SMALL[1]}", c["speedup"], SMALL_FLOOR, c["run"],
                c["speedup"] >= SMALL_FLOOR)
    for c in cells:
        if c["series"] == "int4":
            continue
        if c["M"] == 16:
            add(f"M=16 {c['series']} >= {M16_FLOOR:g}x", f"{c['N']}x{c['K']}", c["speedup"], M16_FLOOR, c["run"],
                c["speedup"] >= M16_FLOOR)
        elif c["M"] >= LARGE_M:
            add(f"M={c['M']} {c['series']} >= {LARGE_M_FLOOR:g}x", f"{c['N']}x{c['K']}", c["speedup"], LARGE_M_FLOOR,
                c["run"], c["speedup"] >= LARGE_M_FLOOR)
    return out


def report(rows: list[dict]) -> str:
    lines = [f"{'target':<30} {'where':>11} {'measured':>9} {'met':>4}  run"]
    for r in rows:
        lines.append(f"{r['target']:<30} {r['where']:>11} {r['value']:>8.2f}{'' if 'SliM' in r['target'] else 'x'}"
                     f" {'yes' if r['met'] else 'no':>4}  {r['run']}")
    met = sum(r["met"] for r in rows)
    lines.append(f"{met} of {len(rows)} checks met")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="kernels.py JSONs, earliest first")
    args = ap.parse_args(argv)
    try:
        meta, cells = merge_runs(args.json)
    except KernelsJSONError as e:
        ap.error(str(e))
    rows = checks(cells)
    if not rows:
        ap.error("none of the targets' cells were timed in these files")
    if baseline(meta) != "FP16":  # the targets are set against FP16; a bfloat16 run is read against BF16
        print(f"(bfloat16 activations: every ratio is to cuBLAS {baseline(meta)} in the same run)")
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
