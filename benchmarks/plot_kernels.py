"""Speedup over cuBLAS FP16 against the token count M, one panel per layer shape, from one or more
``benchmarks/kernels.py`` JSONs (no GPU needed).

Several JSONs merge cell by cell: a later file's (shape, M, variant) replaces an earlier one's, so a
table can combine runs that each re-measured part of it (as the README's does). Every ratio is
taken inside its own run (that run's FP16 time), never across runs. Runs with bfloat16 activations
(``kernels.py --dtype bfloat16``) are ratios to cuBLAS BF16 and say so; runs of both activation types do
not merge. Prints the merged ratios with the run each came from, and writes a PNG.

    python benchmarks/plot_kernels.py benchmarks/reference/kernels_h200.json [more.json ...] --out speedup.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

VARIANTS = ("2b", "3b", "4b", "slim")
STYLE = {"2b": ("#f4a261", "2-bit"), "3b": ("#2a9d8f", "3-bit"), "4b": ("#3d5a98", "4-bit"),
         "slim": ("#b2182b", "SliM 1/2/3-bit"), "int4": ("#888888", "torch int4 (peer)")}


class KernelsJSONError(ValueError):
    """A file is not a ``benchmarks/kernels.py`` result."""


def merge_runs(paths: list[Path]) -> tuple[dict, list[dict]]:
    """``(meta of the last file, cells)``; a cell is ``{"N", "K", "M", "series", "speedup", "us",
    "fp16_us", "run"}`` for every (shape, M, series) in any file, the last file that has it winning.
    ``series`` is a variant or ``"int4"``. Files timed with different activation dtypes (``meta["dtype"]``,
    float16 where absent) are refused: their ratios have different baselines."""
    if not paths:
        raise KernelsJSONError("give at least one kernels.py JSON")
    cells: dict[tuple, dict] = {}
    meta = {}
    dtypes = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            meta, rows = data["meta"], data["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KernelsJSONError(f"{path}: not a kernels.py JSON ({type(e).__name__}: {e})") from e
        dtypes.setdefault(meta.get("dtype", "float16"), Path(path).name)
        if len(dtypes) > 1:
            raise KernelsJSONError("runs with different activation dtypes do not merge: "
                                   + ", ".join(f"{f} ({d})" for d, f in dtypes.items()))
        for r in rows:
            try:
                key, fp16 = (int(r["N"]), int(r["K"]), int(r["M"])), float(r["fp16_us"])
            except (KeyError, TypeError, ValueError) as e:
                raise KernelsJSONError(f"{path}: a row lacks N, K, M or fp16_us ({e})") from e
            timed = {v: r[v]["us"] for v in VARIANTS if isinstance(r.get(v), dict) and r[v].get("ok", True)}
            if r.get("int4_us"):
                timed["int4"] = r["int4_us"]
            for series, us in timed.items():
                if us and math.isfinite(us) and us > 0:
                    cells[key + (series,)] = {"N": key[0], "K": key[1], "M": key[2], "series": series,
                                              "speedup": fp16 / us, "us": us, "fp16_us": fp16,
                                              "run": Path(path).name}
    if not cells:
        raise KernelsJSONError("no timed cells in " + ", ".join(map(str, paths)))
    return meta, sorted(cells.values(), key=lambda c: (c["N"] * c["K"], c["N"], c["M"], c["series"]))


def baseline(meta: dict) -> str:
    """What the ratios of a run with ``meta`` are taken against: ``"FP16"``, or ``"BF16"`` for bfloat16
    activations."""
    return "BF16" if meta.get("dtype") == "bfloat16" else "FP16"


def table(cells: list[dict], base: str = "FP16") -> str:
    """Speedups per (shape, M), one column per series, with the run of each cell (a letter); shapes
    timed at one M only are listed here but not plotted. ``base``: the cuBLAS baseline's name."""
    runs = sorted({c["run"] for c in cells})
    tag = {r: chr(ord("a") + i) for i, r in enumerate(runs)}
    series = [s for s in (*VARIANTS, "int4") if any(c["series"] == s for c in cells)]
    by_key: dict[tuple, dict] = {}
    for c in cells:
        by_key.setdefault((c["N"], c["K"], c["M"]), {})[c["series"]] = c
    lines = [f"speedup over cuBLAS {base} (run: " + ", ".join(f"{tag[r]} = {r}" for r in runs) + ")",
             f"{'N x K':>12} {'M':>5} " + " ".join(f"{s:>8}" for s in series)]
    for (n, k, m), row in by_key.items():
        cols = [f"{row[s]['speedup']:6.2f}x{tag[row[s]['run']]}" if s in row else f"{'-':>8}" for s in series]
        lines.append(f"{f'{n}x{k}':>12} {m:>5} " + " ".join(cols))
    return "\n".join(lines)


def plot(cells: list[dict], out_png: Path, title: str = "", dpi: int = 120, base: str = "FP16") -> Path:
    """One panel per shape timed at two or more M: speedup (log axis) against M (log axis), a line per
    series, the 1x line; ``base`` names the baseline on the y axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    ms = {}
    for c in cells:
        ms.setdefault((c["N"], c["K"]), set()).add(c["M"])
    shapes = sorted((s for s, m in ms.items() if len(m) >= 2), key=lambda s: (s[0] * s[1], s))
    if not shapes:
        raise KernelsJSONError("no shape was timed at two or more token counts: nothing to plot")
    cells = [c for c in cells if (c["N"], c["K"]) in shapes]
    all_m = sorted({c["M"] for c in cells})
    lo = min(c["speedup"] for c in cells)
    hi = max(c["speedup"] for c in cells)
    yticks = [2.0 ** e for e in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
    ncol = min(3, len(shapes))
    nrow = math.ceil(len(shapes) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.3 * nrow), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    for ax, (n, k) in zip(axes.flat, shapes):
        for s, (color, label) in STYLE.items():
            pts = sorted((c["M"], c["speedup"]) for c in cells if (c["N"], c["K"], c["series"]) == (n, k, s))
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3.5, color=color, label=label, ls="--" if s == "int4" else "-")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(all_m))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(FixedLocator(yticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}x"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_title(f"{n} x {k} (out x in)", fontsize=10)
        ax.set_xlabel("tokens M")
        ax.grid(True, alpha=0.25)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"speedup over {base}")
    for ax in list(axes.flat)[len(shapes):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, out_png, dpi)


def save_png(fig, out_png: Path, dpi: int) -> Path:
    """``fig`` as a PNG at ``out_png`` (its folder made), written to a temporary name and then renamed, so that a
    failed write never leaves a half-written plot."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(out_png)
    return out_png


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="kernels.py JSONs, earliest first")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels_speedup.png"))
    args = ap.parse_args(argv)
    try:
        meta, cells = merge_runs(args.json)
    except KernelsJSONError as e:
        ap.error(str(e))
    base = baseline(meta)
    print(table(cells, base))
    acts = ", bfloat16 activations" if base == "BF16" else ""
    title = f"slimq kernels on {meta.get('gpu', '?')} (group size {meta.get('group_size', '?')}{acts})"
    print(f"wrote {plot(cells, args.out, title, base=base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
