"""Save and load SliM-LLM bit allocations (per linear, the width of every column group)
as JSON, so a searched allocation can be reused, shared or plotted.

File format (``slimq.allocation``, version 1)::

    {
      "format": "slimq.allocation",
      "version": 1,
      "meta": {...},                                 # free JSON object (model, target bits, group size...)
      "allocation": {"model.layers.0.self_attn.q_proj": [2, 3, 1, ...], ...}
    }

Group ``g`` of a linear is numbered as in ``QuantizedTensor.g_idx``. Writes are atomic
(temporary file in the same directory, then ``os.replace``).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

__all__ = ["ALLOCATION_FORMAT", "ALLOCATION_VERSION", "AllocationFileError", "save_allocation", "load_allocation"]

ALLOCATION_FORMAT = "slimq.allocation"
ALLOCATION_VERSION = 1
_MIN_BITS, _MAX_BITS = 1, 8


class AllocationFileError(ValueError):
    """An allocation file (or the mapping to be saved) is malformed; the message says where."""


def _as_widths(name: str, bits: Any, where: str) -> list[int]:
    if isinstance(bits, torch.Tensor):
        if bits.dim() != 1 or bits.is_floating_point() or bits.dtype == torch.bool:
            raise AllocationFileError(f"{where}: allocation of {name!r} must be a 1-D integer tensor, "
                                      f"got dtype {bits.dtype} shape {tuple(bits.shape)}")
        bits = bits.tolist()
    if not isinstance(bits, Sequence) or isinstance(bits, (str, bytes)) or len(bits) == 0:
        raise AllocationFileError(f"{where}: allocation of {name!r} must be a non-empty list of ints, "
                                  f"got {type(bits).__name__}")
    out = []
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int):
            raise AllocationFileError(f"{where}: allocation of {name!r} holds a non-integer width {b!r}")
        if not _MIN_BITS <= b <= _MAX_BITS:
            raise AllocationFileError(f"{where}: allocation of {name!r} holds width {b}, "
                                      f"outside {_MIN_BITS}..{_MAX_BITS}")
        out.append(int(b))
    return out


def _jsonable_meta(meta: Mapping[str, Any] | None) -> dict:
    meta = dict(meta or {})
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise AllocationFileError(f"meta must be JSON-serialisable (no NaN/inf): {e}") from None
    return meta


def save_allocation(path: str | os.PathLike, allocation: Mapping[str, torch.Tensor | Sequence[int]],
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{linear_name: widths [G]}`` (int tensors or lists, each 1..8) and ``meta``
    to ``path`` atomically; returns the path. Raises ``AllocationFileError`` on bad input."""
    if not isinstance(allocation, Mapping) or not allocation:
        raise AllocationFileError("allocation must be a non-empty mapping {linear_name: widths}")
    body = {}
    for name, bits in allocation.items():
        if not isinstance(name, str) or not name:
            raise AllocationFileError(f"linear names must be non-empty strings, got {name!r}")
        body[name] = _as_widths(name, bits, "save_allocation")
    doc = {"format": ALLOCATION_FORMAT, "version": ALLOCATION_VERSION, "meta": _jsonable_meta(meta),
           "allocation": body}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_allocation(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by ``save_allocation``. Returns ``({linear_name: int8 [G]}, meta)``.

    Raises ``FileNotFoundError`` if it does not exist and ``AllocationFileError`` if it
    is not valid JSON, has the wrong format tag or version, or a width that is not an
    integer in 1..8.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text, parse_constant=lambda c: math.nan)
    except json.JSONDecodeError as e:
        raise AllocationFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != ALLOCATION_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise AllocationFileError(f"{path}: not a slimq allocation file (format {got!r}, "
                                  f"expected {ALLOCATION_FORMAT!r})")
    if doc.get("version") != ALLOCATION_VERSION:
        raise AllocationFileError(f"{path}: allocation file version {doc.get('version')!r} is not supported "
                                  f"(this slimq reads version {ALLOCATION_VERSION})")
    body, meta = doc.get("allocation"), doc.get("meta", {})
    if not isinstance(body, dict) or not body:
        raise AllocationFileError(f"{path}: 'allocation' must be a non-empty object {{linear_name: [widths]}}")
    if not isinstance(meta, dict):
        raise AllocationFileError(f"{path}: 'meta' must be an object, got {type(meta).__name__}")
    out = {name: torch.tensor(_as_widths(name, bits, str(path)), dtype=torch.int8) for name, bits in body.items()}
    return out, meta
