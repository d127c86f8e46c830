"""Human-readable summaries of a quantization run and of a checkpoint's bit allocation."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

__all__ = ["layer_type", "allocation_shares", "summarize_result", "write_report"]


def layer_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj`` (the name inside the block)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[i + 1:])
    return name


def allocation_shares(allocation: dict[str, list[int]], group_cols: dict[str, list[int]] | None = None
                      ) -> dict[str, dict[int, float]]:
    """Per layer type, the share of weight columns at each bit-width (columns, not groups,
    so a short last group counts for what it holds)."""
    cols: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for name, bits in allocation.items():
        sizes = group_cols[name] if group_cols else [1] * len(bits)
        for b, n in zip(bits, sizes):
            cols[layer_type(name)][int(b)] += n
    out = {}
    for t, d in cols.items():
        tot = sum(d.values())
        out[t] = {b: d[b] / tot for b in sorted(d)}
    return out


def summarize_result(res) -> str:
    """Table: per layer type, share of columns at each bit-width, average bits, mean layer loss."""
    alloc = res.allocation()
    shares = allocation_shares(alloc, {n: qt.group_cols().tolist() for n, qt in res.qtensors.items()})
    losses: dict[str, list[float]] = defaultdict(list)
    for name, info in res.layer_info.items():
        if "loss" in info:
            losses[layer_type(name)].append(float(info["loss"]))
    widths = sorted({b for d in shares.values() for b in d})
    head = f"{'layer type':<22}" + "".join(f"{str(b) + '-bit':>8}" for b in widths) + f"{'avg':>7}{'mean loss':>12}"
    lines = [f"{res.config.method} {res.config.bits}-bit g{res.config.group_size}: "
             f"{len(res.qtensors)} linears in {res.seconds:.1f} s, {res.avg_bits():.3f} bits/weight (codes)",
             head, "-" * len(head)]
    for t, d in shares.items():
        avg = sum(b * s for b, s in d.items())
        loss = f"{sum(losses[t]) / len(losses[t]):12.4g}" if losses.get(t) else f"{'':>12}"
        lines.append(f"{t:<22}" + "".join(f"{d.get(b, 0.0):>8.1%}" for b in widths) + f"{avg:>7.3f}" + loss)
    return "\n".join(lines)


def write_report(ckpt: Path, out: Path | None = None, *, layer: str | None = None) -> list[Path]:
    """Draw the allocation heatmap (and a group-salience histogram) of a slimq checkpoint."""
    from slimq.eval.plots import plot_allocation_heatmap, plot_salience_histogram
    from slimq.format.checkpoint import read_quantization_config

    qcfg = read_quantization_config(ckpt)
    layers = qcfg.get("linears", {})
    alloc = {name: meta["group_bits"] for name, meta in layers.items() if "group_bits" in meta}
    if not alloc:
        raise ValueError(f"{ckpt} records no per-group bit allocation")
    out = out or ckpt
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "allocation_heatmap.png"]
    plot_allocation_heatmap(alloc, written[0])
    sal = qcfg.get("config", {}).get("group_salience", {})
    if sal:
        name = layer or next(iter(sal))
        if name not in sal:
            raise ValueError(f"layer {name!r} has no recorded salience; layers with salience: {', '.join(list(sal)[:5])} ...")
        written.append(out / "salience_histogram.png")
        plot_salience_histogram(torch.tensor(sal[name]), written[-1], title=name)
    return written
