"""Report plots: SliM-LLM bit allocations and salience distributions.

Every figure is a ``matplotlib.figure.Figure`` drawn on its own Agg canvas, so no
pyplot state is created or left behind, and nothing depends on the global backend.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = ["BIT_COLORS", "plot_allocation_heatmap", "plot_salience_histogram"]

# One fixed colour per bit-width, so plots of different runs compare at a glance:
# warm = few bits, cool = many; neighbours differ clearly in hue and lightness.
BIT_COLORS: dict[int, str] = {
    1: "#b2182b", 2: "#f4a261", 3: "#2a9d8f", 4: "#3d5a98",
    5: "#8ab17d", 6: "#e9c46a", 7: "#7b4f9d", 8: "#222222",
}
_MISSING = "#ffffff"  # linears with fewer groups than the widest one
_BLOCK_RE = re.compile(r"\.(\d+)\.")


def _as_list(x: torch.Tensor | Sequence[float] | np.ndarray) -> list:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().flatten().tolist()
    return np.asarray(x).flatten().tolist()


def _row_label(name: str) -> tuple[int, str]:
    """(block index or -1, short label) for a linear name like ``model.layers.3.self_attn.q_proj``."""
    m = _BLOCK_RE.search(name)
    block = int(m.group(1)) if m else -1
    leaf = name[m.end():] if m else name
    return block, leaf


def _canvas(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_allocation_heatmap(alloc: Mapping[str, torch.Tensor | Sequence[int]], out_png: str | Path,
                            title: str | None = None, dpi: int = 120) -> Path:
    """Heatmap of per-group bit-widths: one row per linear (sorted by block index, then
    as given), one column per column group; linears with fewer groups leave the rest
    grey. The legend gives every width's share of all groups. Returns ``out_png``."""
    if not alloc:
        raise ValueError("alloc must hold at least one linear")
    rows = sorted(enumerate(alloc.items()), key=lambda t: (_row_label(t[1][0])[0], t[0]))
    names = [name for _, (name, _) in rows]
    vals = [[int(b) for b in _as_list(bits)] for _, (_, bits) in rows]
    bad = sorted({b for v in vals for b in v if b not in BIT_COLORS})
    if bad:
        raise ValueError(f"bit-widths must lie in 1..8, got {bad}")
    gmax = max(len(v) for v in vals)
    grid = np.full((len(vals), gmax), np.nan)
    for i, v in enumerate(vals):
        grid[i, :len(v)] = v
    cmap = ListedColormap([BIT_COLORS[b] for b in range(1, 9)]).with_extremes(bad=_MISSING)
    norm = BoundaryNorm(np.arange(0.5, 9.5), cmap.N)
    fig = _canvas(min(4 + 0.25 * gmax, 16), min(2.2 + (0.16 if len(vals) <= 100 else 0.07) * len(vals), 40))
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    _label_rows(ax, names)
    ax.set_xlabel("column group")
    ax.set_xticks(range(0, gmax, max(1, gmax // 16)))
    counts = {b: sum(v.count(b) for v in vals) for b in BIT_COLORS}
    total = sum(counts.values())
    handles = [Patch(color=BIT_COLORS[b], label=f"{b} bit ({100 * c / total:.0f}% of groups)")
               for b, c in counts.items() if c]
    if any(len(v) < gmax for v in vals):
        handles.append(Patch(facecolor=_MISSING, edgecolor="black", linewidth=0.5, label="no such group"))
    ax.legend(handles=handles,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    ax.set_title(title or f"bit allocation ({len(vals)} linears)", fontsize=10)
    fig.savefig(out_png, dpi=dpi)
    return Path(out_png)


def _label_rows(ax, names: list[str]) -> None:
    labels = [_row_label(n) for n in names]
    starts = [i for i, (b, _) in enumerate(labels) if i == 0 or b != labels[i - 1][0]]
    for i in starts[1:]:
        ax.axhline(i - 0.5, color="black", linewidth=0.6)
    if len(names) <= 100:
        short = [leaf.rsplit(".", 1)[-1] for _, leaf in labels]
        ax.set_yticks(range(len(names)), [f"{b}.{s}" if b >= 0 else s for (b, _), s in zip(labels, short)],
                      fontsize=6 if len(names) > 40 else 7)
        return
    # Many rows: one tick per block.
    step = max(1, math.ceil(len(starts) / 40))
    ax.set_yticks(starts[::step], [f"block {labels[i][0]}" for i in starts[::step]], fontsize=7)


def plot_salience_histogram(group_salience: torch.Tensor | Sequence[float] | Mapping[str, torch.Tensor],
                            out_png: str | Path, title: str = "group salience", bins: int = 40,
                            dpi: int = 120) -> Path:
    """Histogram of ``log10`` of group salience (it spans orders of magnitude). Given a
    mapping ``{label: salience}`` the series are overlaid as outlines (up to 8).
    Non-positive values (dead inputs) are counted in the legend, not plotted."""
    series = dict(group_salience) if isinstance(group_salience, Mapping) else {"": group_salience}
    if not series or len(series) > 8:
        raise ValueError(f"give 1..8 salience series, got {len(series)}")
    data = {}
    for label, s in series.items():
        v = np.asarray(_as_list(s), dtype=np.float64)
        if v.size == 0 or not np.isfinite(v).all():
            raise ValueError(f"salience series {label!r} must be non-empty and finite")
        data[label] = (np.log10(v[v > 0]), int((v <= 0).sum()))
    pos = np.concatenate([d for d, _ in data.values()])
    lo, hi = (pos.min(), pos.max()) if pos.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig = _canvas(6.0, 3.6)
    ax = fig.add_subplot()
    for label, (d, n_zero) in data.items():
        name = (label + ": " if label else "") + f"{d.size} groups" + (f", {n_zero} zero" if n_zero else "")
        if len(data) == 1:
            ax.hist(d, bins=edges, color="#4c72b0", alpha=0.85, label=name)
            for q, ls in ((0.5, "-"), (0.9, "--")):
                if d.size:
                    ax.axvline(np.quantile(d, q), color="black", linestyle=ls, linewidth=0.8,
                               label=f"{int(q * 100)}th percentile")
        else:
            ax.hist(d, bins=edges, histtype="step", linewidth=1.4, label=name)
    ax.set_xlabel("log10 salience  (sum of $w_{ij}^2 / U_{jj}^2$ over the group)")
    ax.set_ylabel("groups")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.savefig(out_png, dpi=dpi)
    return Path(out_png)
