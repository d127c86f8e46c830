"""What a slimq checkpoint costs: bits per weight, file size, expected memory.

Reads only ``config.json`` and the safetensors headers (no tensor data), so it
is instant even for large checkpoints.
"""
from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

from slimq.format.checkpoint import read_quantization_config

__all__ = ["checkpoint_info", "format_info", "safetensors_header"]

_PART_OF = {"plane": "planes", "scales": "scales_zeros", "zeros": "scales_zeros",
            "col_perm": "perms", "row_perm": "perms"}


def safetensors_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{tensor name: {"dtype", "shape", "data_offsets"}}`` from a safetensors file's header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _nbytes(entry: dict[str, Any]) -> int:
    a, b = entry["data_offsets"]
    return b - a


def _layer_types(names: list[str]) -> dict[str, str]:
    """Linear name -> type: its last component (``q_proj``), or the last two where the last
    alone is ambiguous (GPT-2's ``attn.c_proj`` vs ``mlp.c_proj``)."""
    parents = defaultdict(set)
    for n in names:
        parts = n.split(".")
        parents[parts[-1]].add(".".join(parts[-2:]))
    return {n: n.split(".")[-1] if len(parents[n.split(".")[-1]]) == 1 else ".".join(n.split(".")[-2:])
            for n in names}


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    weights = sum(r["weights"] for r in rows)
    code = sum(r["code_bits"] for r in rows)
    parts = {k: sum(r[k] for r in rows) for k in ("planes", "scales_zeros", "perms")}
    hist: dict[int, int] = defaultdict(int)
    for r in rows:
        for b, c in r["bits_hist"].items():
            hist[b] += c
    return {
        "linears": len(rows), "weights": weights,
        "code_bits_per_weight": code / weights,
        "stored_code_bits_per_weight": 8 * parts["planes"] / weights,
        "all_in_bits_per_weight": 8 * sum(parts.values()) / weights,
        "bytes": sum(parts.values()), **{f"{k}_bytes": v for k, v in parts.items()},
        "bits_share": {int(b): c / weights for b, c in sorted(hist.items())},
    }


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Sizes and bits per weight of checkpoint ``path``, per layer type and in total.

    ``code_bits_per_weight``: mean bit-width of the codes; ``stored_...``: bits of
    the bit planes as stored (word padding included); ``all_in_...``: plus float16
    scales and zeros and int32 permutations. ``expected_memory_bytes`` is the
    bytes of all tensors as stored (what loading puts on the GPU, tied weights
    once), excluding activations and KV cache; ``fp16_bytes`` is the same model
    with every weight in float16.
    """
    path = Path(path)
    qc = read_quantization_config(path)
    tensors: dict[str, dict[str, Any]] = {}
    for fname in qc["checksums"]:
        tensors.update(safetensors_header(path / fname))
    linears = qc["linears"]
    owner = {}
    for name in linears:
        prefix = f"{name}."
        for t in tensors:
            if t.startswith(prefix):
                owner[t] = name
    rows = {}
    for name, meta in linears.items():
        hist: dict[int, int] = defaultdict(int)
        for s in meta["segments"]:
            hist[s["bits"]] += (s["r1"] - s["r0"]) * (s["c1"] - s["c0"])
        rows[name] = {"weights": meta["in_features"] * meta["out_features"],
                      "code_bits": sum(b * c for b, c in hist.items()), "bits_hist": dict(hist),
                      "planes": 0, "scales_zeros": 0, "perms": 0}
    other_bytes = other_params = 0
    for t, entry in tensors.items():
        name = owner.get(t)
        last = t.rsplit(".", 1)[-1]
        kind = _PART_OF.get("plane" if last.startswith("plane") else last)
        if name is not None and kind is not None:
            rows[name][kind] += _nbytes(entry)
        else:
            other_bytes += _nbytes(entry)
            n = 1
            for d in entry["shape"]:
                n *= d
            other_params += n
    types = _layer_types(list(linears))
    by_type: dict[str, list] = defaultdict(list)
    for name, r in rows.items():
        by_type[types[name]].append(r)
    tensor_bytes = sum(_nbytes(e) for e in tensors.values())
    file_bytes = sum((path / f).stat().st_size for f in qc["checksums"])
    total = _summarize(list(rows.values())) if rows else {}
    return {
        "path": str(path), "layout": qc["layout"], "format_version": qc["format_version"], "dtype": qc["dtype"],
        "quant_config": qc.get("config", {}),
        "by_type": {t: _summarize(rs) for t, rs in by_type.items()},
        "total": total,
        "other_params": other_params, "other_bytes": other_bytes,
        "tensor_bytes": tensor_bytes, "file_bytes": file_bytes,
        "dir_bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        "expected_memory_bytes": tensor_bytes,
        "fp16_bytes": 2 * (total.get("weights", 0) + other_params),
    }


def _mb(n: float) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def format_info(info: dict[str, Any]) -> str:
    """A printable table of :func:`checkpoint_info`'s result."""
    head = f"{'layer type':<18}{'linears':>8}{'weights':>14}{'code b/w':>10}{'stored b/w':>11}" \
           f"{'all-in b/w':>11}{'size':>14}  bit-widths"
    lines = [f"{info['path']}  ({info['layout']}, dtype {info['dtype']})", head, "-" * len(head)]

    def row(name: str, s: dict[str, Any]) -> str:
        share = " ".join(f"{b}b:{f:.0%}" for b, f in s["bits_share"].items())
        return (f"{name:<18}{s['linears']:>8}{s['weights']:>14,}{s['code_bits_per_weight']:>10.3f}"
                f"{s['stored_code_bits_per_weight']:>11.3f}{s['all_in_bits_per_weight']:>11.3f}"
                f"{_mb(s['bytes']):>14}  {share}")

    for t, s in info["by_type"].items():
        lines.append(row(t, s))
    if info["total"]:
        lines += ["-" * len(head), row("total", info["total"])]
    lines += [
        f"other tensors (embeddings, norms, biases, ...): {info['other_params']:,} values, {_mb(info['other_bytes'])}",
        f"safetensors files: {_mb(info['file_bytes'])}   whole directory: {_mb(info['dir_bytes'])}",
        f"expected memory for weights: {_mb(info['expected_memory_bytes'])}   "
        f"(float16 model: {_mb(info['fp16_bytes'])}, ratio {info['expected_memory_bytes'] / max(info['fp16_bytes'], 1):.3f})",
    ]
    return "\n".join(lines)
