"""Decode speed from a ``benchmarks/decode.py`` JSON (no GPU needed): tokens/s over FP16 per variant and batch, and,
where the run was profiled (``--profile``), where a step's GPU time goes, by kind of kernel.

    python benchmarks/plot_decode.py benchmarks/reference/decode_h200_run205.json --out decode.png

Prints both as tables and writes a PNG (written to a temporary name, then renamed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plot_kernels import save_png

VARIANTS = ("fp16", "2b", "3b", "4b", "slim")
LABEL = {"fp16": "FP16", "2b": "2-bit", "3b": "3-bit", "4b": "4-bit", "slim": "SliM"}
# Kinds of kernel in a decode step, in stacking order, with their colours.
KINDS = {"linears (slimq)": "#b2182b", "linears (cuBLAS FP16)": "#3d5a98", "attention": "#2a9d8f",
         "RMSNorm": "#f4a261", "SiLU": "#e9c46a", "LM head (FP16)": "#6c757d", "other": "#c8c8c8"}
TARGET = 3.0  # the decode target: 3x FP16 tokens/s at batch 1, 2 bits


class DecodeJSONError(ValueError):
    """A file is not a ``benchmarks/decode.py`` result."""


def load(path: Path) -> dict:
    """The JSON's ``gpu`` and ``results`` (each with ``variant``, ``batch``, ``tokens_per_s``, ``speedup_vs_fp16``)."""
    try:
        data = json.loads(Path(path).read_text())
        results = data["results"]
        for r in results:
            r["variant"], r["batch"], r["tokens_per_s"] = str(r["variant"]), int(r["batch"]), float(r["tokens_per_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DecodeJSONError(f"{path}: not a decode.py JSON ({type(e).__name__}: {e})") from e
    if not results:
        raise DecodeJSONError(f"{path}: no results")
    return data


def kind(name: str, calls_per_step: float) -> str:
    """The kind of a kernel by its name (``decode.py``'s own kernels, cuBLAS, cuDNN, PyTorch, else slimq)."""
    if name in ("_rope_attend", "_rope_cache") or "sdpa" in name or "flash" in name or "where_kernel" in name \
            or "FillFunctor" in name:
        return "attention"  # the old path's mask (where) and fills belong to its SDPA
    if name == "_add_rmsnorm":
        return "RMSNorm"
    if name == "_silu_mul":
        return "SiLU"
    low = name.lower()
    if name.startswith("nvjet") or any(t in low for t in ("cublas", "xmma", "cutlass")):
        return "LM head (FP16)" if calls_per_step == 1 else "linears (cuBLAS FP16)"
    if name.startswith(("void at::", "at::")):
        return "other"
    return "linears (slimq)"


def breakdown(result: dict) -> dict[str, float]:
    """Microseconds per step by kind (:data:`KINDS`) from a profiled result; ``{}`` if it was not profiled."""
    out: dict[str, float] = {}
    for k in result.get("profile", {}).get("kernels", []):
        kd = kind(k["kernel"], k["calls_per_step"])
        out[kd] = out.get(kd, 0.0) + float(k["us_per_step"])
    return out


def tables(results: list[dict]) -> str:
    lines = [f"{'variant':>8} {'batch':>5} {'tok/s':>9} {'vs fp16':>8}"]
    for r in results:
        sp = r.get("speedup_vs_fp16")
        lines.append(f"{r['variant']:>8} {r['batch']:>5} {r['tokens_per_s']:>9.1f} "
                     f"{f'{sp:.2f}x' if sp else '-':>8}")
    prof = [r for r in results if r.get("profile")]
    if prof:
        lines.append("\nus per step by kind (profiled):")
        lines.append(f"{'variant':>8} {'batch':>5} " + " ".join(f"{k[:12]:>12}" for k in KINDS))
        for r in prof:
            b = breakdown(r)
            lines.append(f"{r['variant']:>8} {r['batch']:>5} " + " ".join(f"{b.get(k, 0.0):>12.0f}" for k in KINDS))
    return "\n".join(lines)


def plot(data: dict, out_png: Path, dpi: int = 110) -> Path:
    """Left: speedup over FP16 per variant, a bar per batch, the 3x target line. Right (when profiled): a step's GPU
    time by kind of kernel, a stacked bar per variant at the smallest batch profiled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    results = data["results"]
    prof = [r for r in results if r.get("profile")]
    fig = Figure(figsize=(11 if prof else 5.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if prof else 1, squeeze=False)[0]
    ax = axes[0]
    batches = sorted({r["batch"] for r in results})
    variants = [v for v in VARIANTS if v != "fp16" and any(r["variant"] == v for r in results)]
    width = 0.8 / max(1, len(batches))
    for i, b in enumerate(batches):
        xs, ys = [], []
        for j, v in enumerate(variants):
            r = next((r for r in results if (r["variant"], r["batch"]) == (v, b)), None)
            if r and r.get("speedup_vs_fp16"):
                xs.append(j + (i - (len(batches) - 1) / 2) * width)
                ys.append(r["speedup_vs_fp16"])
        bars = ax.bar(xs, ys, width * 0.95, label=f"batch {b}", color=["#b2182b", "#3d5a98", "#888888"][i % 3])
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(TARGET, color="#b2182b", lw=1.0, ls="--", label=f"target {TARGET:g}x (batch 1, 2-bit)")
    ax.set_xticks(range(len(variants)), [LABEL[v] for v in variants])
    ax.set_ylabel("tokens/s over FP16")
    ax.set_ylim(0, max(TARGET, max((r.get("speedup_vs_fp16") or 0) for r in results)) * 1.15)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("decode speed", fontsize=10)
    if prof:
        ax = axes[1]
        b0 = min(r["batch"] for r in prof)
        rows = [r for r in prof if r["batch"] == b0]
        names = [LABEL.get(r["variant"], r["variant"]) for r in rows]
        left = [0.0] * len(rows)
        for kd, color in KINDS.items():
            vals = [breakdown(r).get(kd, 0.0) / 1e3 for r in rows]
            if any(vals):
                ax.barh(names, vals, left=left, color=color, label=kd)
                left = [a + v for a, v in zip(left, vals)]
        ax.invert_yaxis()
        ax.set_xlabel("GPU time per step (ms)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"where a batch-{b0} step goes (profiled)", fontsize=10)
    fig.suptitle(f"LLaMA-2-7B-shaped decode on {data.get('gpu', '?')}", fontsize=11)
    return save_png(fig, out_png, dpi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", type=Path, help="a decode.py JSON")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.png"))
    args = ap.parse_args(argv)
    try:
        data = load(args.json)
    except DecodeJSONError as e:
        ap.error(str(e))
    print(tables(data["results"]))
    print(f"wrote {plot(data, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
