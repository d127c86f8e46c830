"""Where a large-``M`` ``wgr`` call's time goes, program by program: in-kernel timestamps (``_trace``,
layout ``slimq.trace.v1``) of one program per tile (``wgr_kernel``) or stream-K (``wgrk_kernel``) on an H100/H200.

For each config (the dispatch's, then each ``--also`` variant of it) the call runs ``--reps`` times with
timestamps, the L2 flushed before each as the timing protocol does (a 256 MB buffer zeroed) after a warm-up of
untraced calls; the run of median span is kept. Per program and unit (one tile's K range) it reports the K
loop's time and K tiles (us per K tile), the partial sums stored or the peers' partials awaited and added, and
the tile's store; then the call's span, the programs' start skew and the idle time after each program ended.
Prints a summary per config, writes ``OUT/wgr_timeline.json`` and a Gantt chart ``OUT/wgr_timeline.png``;
``--from JSON`` prints and draws a stored run again (no GPU).

    PYTHONPATH=src python3 benchmarks/wgr_timeline.py --shape 11008x4096 --m 256 --variant 2b \\
        --also stream_k=132 [--reps 5] [--out DIR]
    python3 benchmarks/wgr_timeline.py --from benchmarks/reference/wgr_timeline_h200_run271_11008x4096_m256_blocks.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import FLUSH_BYTES  # noqa: E402

TRACE_SLOTS = 32  # _trace.TRACE_SLOTS (checked against it at run time)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One program's share of one tile: K tiles ``[kb, ke)`` of tile ``tile`` (``finishes``: holds its last)."""

    tile: int
    kb: int
    ke: int
    finishes: bool


def sk_units(steps: int, kt: int, programs: int) -> list[list[Unit]]:
    """Each stream-K program's units in the order it runs them (``_wgsk._units`` / ``_unit``): program ``c``
    takes steps ``[c S / C, (c + 1) S / C)`` of the ``S`` steps (tile ``t``'s K tile ``k`` is step ``t kt + k``),
    last tile first."""
    if min(steps, kt, programs) < 1:
        raise ValueError(f"steps, kt and programs must be >= 1, got {steps}, {kt}, {programs}")
    out = []
    for c in range(programs):
        lo, hi = c * steps // programs, (c + 1) * steps // programs
        units = []
        if hi > lo:
            t_hi = (hi - 1) // kt
            for t in range(t_hi, lo // kt - 1, -1):
                kb, ke = max(lo, t * kt) - t * kt, min(hi, (t + 1) * kt) - t * kt
                units.append(Unit(t, kb, ke, ke == kt))
        out.append(units)
    return out


def dp_units(programs: int, kt: int, split: int, n_t: int) -> list[list[Unit]]:
    """One unit per program of ``wgr_kernel`` (grid: row tiles x K split x ``n_t`` token tiles, token tiles
    fastest): program ``p``'s K share ``[s kt / split, (s + 1) kt / split)``, ``s = (p // n_t) % split``, of tile
    ``(p // (n_t split)) n_t + p % n_t``; ``finishes`` unless split (its sums then go to the float32 workspace)."""
    if split < 1 or kt < split or n_t < 1:
        raise ValueError(f"need 1 <= split <= kt and n_t >= 1, got split={split}, kt={kt}, n_t={n_t}")
    out = []
    for p in range(programs):
        s = (p // n_t) % split
        out.append([Unit((p // (n_t * split)) * n_t + p % n_t, s * kt // split, (s + 1) * kt // split, split == 1)])
    return out


def analyse(trace: list[list[int]], units: list[list[Unit]], max_units: int) -> dict:
    """Per-program timeline (microseconds from the earliest program start) from the raw stamps ``trace``
    (``[programs][TRACE_SLOTS]`` int64 ns: start, three per unit, SM last) and each program's ``units``; units past
    ``max_units`` were not stamped and are left out. Returns ``{"programs": [...], "summary": {...}}``."""
    if len(trace) != len(units):
        raise ValueError(f"{len(trace)} programs traced, {len(units)} planned")
    t0 = min(row[0] for row in trace)
    progs, loops, first_loops, parts, adds, stores = [], [], [], [], [], []
    for row, us in zip(trace, units):
        start = (row[0] - t0) / 1e3
        prev, recs = start, []
        for u, unit in enumerate(us[:max_units]):
            loop_end, part_end, end = ((row[1 + 3 * u + j] - t0) / 1e3 for j in range(3))
            if not prev <= loop_end <= part_end <= end:
                raise ValueError(f"stamps out of order in a program's unit {u}: {prev}, {loop_end}, {part_end}, {end}")
            n = unit.ke - unit.kb
            rec = {"tile": unit.tile, "kb": unit.kb, "ke": unit.ke, "finishes": unit.finishes, "start": prev,
                   "loop_us": loop_end - prev, "k_tiles": n, "us_per_k_tile": (loop_end - prev) / n,
                   "partial_us": part_end - loop_end, "store_us": end - part_end, "end": end}
            (first_loops if u == 0 else loops).append(rec["us_per_k_tile"])
            if unit.finishes:
                adds.append(rec["partial_us"])
                stores.append(rec["store_us"])
            else:
                parts.append(rec["partial_us"])
            recs.append(rec)
            prev = end
        progs.append({"sm": int(row[TRACE_SLOTS - 1]), "start": start, "end": prev, "units": recs})
    span = max(p["end"] for p in progs)
    busy = [p["end"] - p["start"] for p in progs]

    def med(v):
        return statistics.median(v) if v else None

    summary = {"programs": len(progs), "span_us": span, "start_skew_us": max(p["start"] for p in progs),
               "busy_us_median": med(busy), "idle_after_us_median": med([span - p["end"] for p in progs]),
               "us_per_k_tile_first_unit": med(first_loops), "us_per_k_tile_later_units": med(loops),
               "partial_store_us": med(parts), "partials_added_us": med(adds), "tile_store_us": med(stores),
               "units_per_program": med([len(p["units"]) for p in progs])}
    return {"programs": progs, "summary": summary}


def summary_line(res: dict) -> str:
    """One config's result (``main``'s record) in one line."""
    s = res["timeline"]["summary"]

    def fmt(v):
        return "-" if v is None else f"{v:.2f}"
    return (f"{res['cfg']}: graph-timed {res['timed_us']:.1f} us; traced span {s['span_us']:.1f} us (runs "
            f"{', '.join(f'{v:.1f}' for v in res['spans_us'])}), {s['programs']} programs, start skew "
            f"{s['start_skew_us']:.1f}, busy {fmt(s['busy_us_median'])}, idle after {fmt(s['idle_after_us_median'])}"
            f"; us per K tile: first unit {fmt(s['us_per_k_tile_first_unit'])}, later "
            f"{fmt(s['us_per_k_tile_later_units'])}; partial stored {fmt(s['partial_store_us'])}, partials added "
            f"{fmt(s['partials_added_us'])}, tile stored {fmt(s['tile_store_us'])} (medians, us)")


def replot(path: Path, out_dir: Path) -> int:
    """Print and draw a stored ``wgr_timeline.json`` again (no GPU)."""
    try:
        results = json.loads(path.read_text())["results"]
        lines = [summary_line(r) for r in results]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a wgr_timeline.py result ({err})") from None
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    if _plot(results, out_dir / "wgr_timeline.png"):
        print(f"wrote {out_dir / 'wgr_timeline.png'}")
    return 0


def _plot(results: list[dict], path: Path) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return False
    fig = Figure(figsize=(11, 3.2 * len(results)))
    FigureCanvasAgg(fig)
    colors = {"loop": "#3d5a98", "loop1": "#7d9ad8", "partial": "#f4a261", "add": "#b2182b", "store": "#2a9d8f"}
    for i, res in enumerate(results):
        ax = fig.add_subplot(len(results), 1, i + 1)
        for y, p in enumerate(sorted(res["timeline"]["programs"], key=lambda p: p["sm"])):
            for j, u in enumerate(p["units"]):
                ax.barh(y, u["loop_us"], left=u["start"], height=0.9, color=colors["loop1" if j % 2 else "loop"],
                        linewidth=0)
                le = u["start"] + u["loop_us"]
                ax.barh(y, u["partial_us"], left=le, height=0.9, linewidth=0,
                        color=colors["add" if u["finishes"] else "partial"])
                ax.barh(y, u["store_us"], left=le + u["partial_us"], height=0.9, color=colors["store"], linewidth=0)
        s = res["timeline"]["summary"]
        ax.set_title(f"{res['shape']} at {res['m']} tokens, {res['variant']}: {res['cfg']} (span {s['span_us']:.1f} "
                     f"us, graph-timed {res['timed_us']:.1f} us)", fontsize=9)
        ax.set_ylabel("program (by SM)")
        ax.set_xlabel("us from the first program's start")
    handles = [Patch(color=c, label=lab) for lab, c in
               (("K loop", colors["loop"]), ("partial stored", colors["partial"]),
                ("peers' partials awaited + added", colors["add"]), ("tile stored", colors["store"]))]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    return True


def _traced_run(x, p, out, ws, cfg, torch):
    """One traced call: ``(trace rows, units, max units)``."""
    from slimq.kernels.triton._trace import TRACE_SLOTS as SLOTS, TRACE_UNITS
    from slimq.kernels.triton._wgr_plan import wgr_launches
    if SLOTS != TRACE_SLOTS:
        raise RuntimeError(f"_trace.TRACE_SLOTS is {SLOTS}, this script reads {TRACE_SLOTS}")
    launches = wgr_launches(x, p, None, out, ws, cfg)
    main = launches[-1] if launches[-1].kernel != "finalize_kernel" else launches[-2]
    programs = main.grid[0]
    trace = torch.zeros(programs * SLOTS, dtype=torch.int64, device=x.device)
    main.kwargs.update(trace_ptr=trace, TRACE=True)
    for ln in launches:
        ln()
    m, kdim = x.shape
    kt = kdim // 64
    if cfg.stream_k:
        tiles = -(-p.out_features // cfg.block_n) * -(-m // cfg.block_m)
        units = sk_units(tiles * kt, kt, programs)
    else:
        units = dp_units(programs, kt, cfg.split_k, -(-m // cfg.block_m))
    return trace, units, TRACE_UNITS


def main(argv=None) -> int:
    import torch
    from kernels import build_layer, cfg_name, parse_extras, time_graph

    from slimq.kernels.triton import Workspace, resolve_config, sbp_matmul
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="11008x4096", help="N x K (out_features x in_features)")
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--variant", default="2b", choices=["2b", "3b", "4b", "slim"])
    ap.add_argument("--also", action="append", default=[],
                    help="a variant of the dispatch's config, KernelConfig integer fields: stream_k=132,split_k=2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--from", dest="src", help="a stored wgr_timeline.json: print and draw it again (no GPU)")
    args = ap.parse_args(argv)
    if args.src:
        return replot(Path(args.src), Path(args.out))
    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    if not torch.cuda.is_available():
        raise SystemExit("wgr_timeline.py needs a CUDA GPU (Hopper)")
    n, k = (int(v) for v in args.shape.split("x"))
    dev = torch.device("cuda")
    p = build_layer(n, k, args.variant, dev, seed=1)
    x = torch.randn(args.m, k, device=dev, dtype=torch.float16)
    out = torch.empty(args.m, n, device=dev, dtype=torch.float16)
    ws = Workspace(dev, args.m, n, k, torch.float16)
    base = resolve_config(x, p)
    if base.path != "wgr":
        raise SystemExit(f"the dispatch runs {cfg_name(base)} here, not wgr: pick a shape and M it sends to wgr")
    cfgs = [base] + [dataclasses.replace(base, **f) for f in parse_extras(args.also, base)]
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=dev)
    results = []
    for cfg in cfgs:
        call = lambda: sbp_matmul(x, p, out=out, workspace=ws, config=cfg)  # noqa: E731
        timed = time_graph(call)  # also the warm-up: the clock as the timing protocol meets it
        runs = []
        for _ in range(args.reps):
            flush.zero_()
            trace, units, max_units = _traced_run(x, p, out, ws, cfg, torch)
            torch.cuda.synchronize()
            rows = trace.view(-1, TRACE_SLOTS).tolist()
            runs.append(analyse(rows, units, max_units))
        runs.sort(key=lambda r: r["summary"]["span_us"])
        tl = runs[len(runs) // 2]
        res = {"shape": args.shape, "m": args.m, "variant": args.variant, "cfg": cfg_name(cfg), "timed_us": timed,
               "spans_us": [r["summary"]["span_us"] for r in runs], "timeline": tl}
        results.append(res)
        print(summary_line(res), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "wgr_timeline.json.tmp"
    tmp.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "results": results}, indent=1))
    tmp.replace(out_dir / "wgr_timeline.json")
    plotted = _plot(results, out_dir / "wgr_timeline.png")
    print(f"wrote {out_dir / 'wgr_timeline.json'}" + (f" and {out_dir / 'wgr_timeline.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
