"""``QuantLinear``: a linear layer stored in layout ``slimq.segmented-bitplane.v1``.

Its state-dict names are the checkpoint's tensor names (see ``slimq.format.layout``)::

    col_perm, row_perm (only with row-varying bits), bias (optional),
    seg{i}.plane{p}, seg{i}.scales, seg{i}.zeros

so a checkpoint loads with plain ``load_state_dict``. It computes ``y = x W^T + b``
with ``W [out_features, in_features]`` also where it replaces GPT-2's ``Conv1D``
(whose stored weight is ``W^T``). The matmul runs on a backend from
``slimq.kernels``: ``"auto"`` (default) picks the fastest one usable on the
input's device, an explicit name raises if it cannot run there.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimq.format.layout import LAYOUT_NAME, PackedLinear, Segment, plane_widths
from slimq.format.packing import check_packed, pack, plane_shape, unpack
from slimq.kernels import Backend, select_backend
from slimq.quant.result import QuantizedTensor

__all__ = ["QuantLinear", "set_backend", "quant_linears", "share_workspace"]


class _SegmentBuffers(nn.Module):
    """Buffers of one segment: ``plane{p}`` int32, ``scales`` / ``zeros`` float16."""

    def __init__(self, planes: list[torch.Tensor], scales: torch.Tensor, zeros: torch.Tensor) -> None:
        super().__init__()
        self.n_planes = len(planes)
        for p, t in enumerate(planes):
            self.register_buffer(f"plane{p}", t)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)

    def planes(self) -> list[torch.Tensor]:
        return [getattr(self, f"plane{p}") for p in range(self.n_planes)]

    def _apply(self, fn, recurse: bool = True):
        # model.to(torch.bfloat16) / .float() must move scales and zeros but keep them
        # float16 (the layout's dtype; a round trip through bfloat16 would lose bits).
        probe = fn(torch.zeros(1, dtype=torch.float16, device=self.scales.device))
        if probe.dtype == torch.float16:
            return super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = buf.to(probe.device) if buf.is_floating_point() else fn(buf)
        return self


def _check_meta(meta: dict) -> None:
    for key in ("in_features", "out_features", "segments"):
        if key not in meta:
            raise ValueError(f"QuantLinear metadata lacks {key!r}: {sorted(meta)}")
    for s in meta["segments"]:
        missing = {"r0", "r1", "c0", "c1", "bits", "group_size"} - set(s)
        if missing:
            raise ValueError(f"segment metadata lacks {sorted(missing)}: {s}")


class QuantLinear(nn.Module):
    """Packed linear ``y = x W^T + b`` for ``x [..., in_features]`` -> ``y [..., out_features]``.

    Build it with :meth:`from_quantized`, :meth:`from_packed` or (for meta-device
    loading) :meth:`empty`. ``bias`` is a float parameter ``[out_features]`` in the
    model dtype; the output has the input's dtype.
    """

    def __init__(self, packed: PackedLinear, bias: torch.Tensor | None = None, *, backend: str = "auto") -> None:
        super().__init__()
        if packed.layout != LAYOUT_NAME:
            raise ValueError(f"unsupported layout {packed.layout!r}; QuantLinear holds {LAYOUT_NAME!r}")
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.segment_meta = [
            {"r0": s.r0, "r1": s.r1, "c0": s.c0, "c1": s.c1, "bits": s.bits, "group_size": s.group_size}
            for s in packed.segments
        ]
        self.register_buffer("col_perm", packed.col_perm)
        self.register_buffer("row_perm", packed.row_perm)
        for i, s in enumerate(packed.segments):
            self.add_module(f"seg{i}", _SegmentBuffers(s.planes, s.scales, s.zeros))
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must be [out_features={self.out_features}], got {tuple(bias.shape)}")
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
        self.backend = backend
        self.workspace: object | None = None  # shared scratch of the backend (see share_workspace)
        self._resolved: dict[str, Backend] = {}
        self._packed_view: PackedLinear | None = None

    # --- constructors ---------------------------------------------------------------------

    @classmethod
    def from_packed(cls, packed: PackedLinear, bias: torch.Tensor | None = None, *,
                    dtype: torch.dtype | None = None, backend: str = "auto") -> "QuantLinear":
        """Wrap a checked ``PackedLinear``; ``bias`` is cast to ``dtype`` when given."""
        check_packed(packed)
        if bias is not None:
            bias = bias.detach().to(dtype or bias.dtype)
        return cls(packed, bias, backend=backend)

    @classmethod
    def from_quantized(cls, qt: QuantizedTensor, bias: torch.Tensor | None = None, *,
                       dtype: torch.dtype = torch.float16, backend: str = "auto") -> "QuantLinear":
        """Pack ``qt`` (``W [N, K]``); ``bias [N]`` is stored in ``dtype``."""
        if bias is not None:
            bias = bias.detach().to(dtype)
        return cls(pack(qt), bias, backend=backend)

    @classmethod
    def empty(cls, meta: dict, *, bias: bool | None = None, dtype: torch.dtype = torch.float16,
              device: torch.device | str = "meta", backend: str = "auto") -> "QuantLinear":
        """A skeleton with uninitialised buffers shaped by ``meta`` (as from :meth:`meta`).

        ``meta``: ``in_features``, ``out_features``, ``segments`` (list of
        ``{r0, r1, c0, c1, bits, group_size}``), ``row_perm`` (bool) and ``bias``
        (bool; the ``bias`` argument overrides it). On ``device="meta"`` nothing is allocated.
        """
        _check_meta(meta)
        n, k = int(meta["out_features"]), int(meta["in_features"])
        segs = []
        for s in meta["segments"]:
            ks, ns = s["c1"] - s["c0"], s["r1"] - s["r0"]
            gshape = (math.ceil(ks / s["group_size"]), ns)
            segs.append(Segment(
                int(s["r0"]), int(s["r1"]), int(s["c0"]), int(s["c1"]), int(s["bits"]), int(s["group_size"]),
                [torch.empty(plane_shape(ks, ns, w), dtype=torch.int32, device=device)
                 for w in plane_widths(int(s["bits"]))],
                torch.empty(gshape, dtype=torch.float16, device=device),
                torch.empty(gshape, dtype=torch.float16, device=device),
            ))
        row_perm = torch.empty(n, dtype=torch.int32, device=device) if meta.get("row_perm") else None
        packed = PackedLinear(k, n, torch.empty(k, dtype=torch.int32, device=device), row_perm, segs)
        has_bias = bool(meta.get("bias", False)) if bias is None else bias
        b = torch.empty(n, dtype=dtype, device=device) if has_bias else None
        return cls(packed, b, backend=backend)

    # --- views ------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """JSON-ready description from which :meth:`empty` rebuilds this layer's skeleton."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "row_perm": self.row_perm is not None,
                "segments": [dict(s) for s in self.segment_meta]}

    @property
    def packed(self) -> PackedLinear:
        """A ``PackedLinear`` view of the current buffers (no copies).

        Cached: rebuilt after ``.to()`` / ``load_state_dict`` replace buffers. Assigning
        a buffer attribute by hand needs :meth:`invalidate_cache`.
        """
        if self._packed_view is None:
            self._packed_view = self._build_packed()
        return self._packed_view

    def invalidate_cache(self) -> None:
        """Forget the cached ``PackedLinear`` view and resolved backends."""
        self._packed_view = None
        self._resolved.clear()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half() ... replace buffers
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # assign=True replaces buffers
        self.invalidate_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _build_packed(self) -> PackedLinear:
        segs = []
        for i, m in enumerate(self.segment_meta):
            buf = getattr(self, f"seg{i}")
            segs.append(Segment(m["r0"], m["r1"], m["c0"], m["c1"], m["bits"], m["group_size"],
                                buf.planes(), buf.scales, buf.zeros))
        return PackedLinear(self.in_features, self.out_features, self.col_perm, self.row_perm, segs)

    @property
    def bits(self) -> dict[int, int]:
        """Weights per bit-width, e.g. ``{2: 36864, 3: 36864}``."""
        out: dict[int, int] = {}
        for m in self.segment_meta:
            out[m["bits"]] = out.get(m["bits"], 0) + (m["r1"] - m["r0"]) * (m["c1"] - m["c0"])
        return dict(sorted(out.items()))

    def avg_bits(self) -> float:
        """Mean code bits per weight (scales, zeros and permutations excluded)."""
        return sum(b * c for b, c in self.bits.items()) / (self.in_features * self.out_features)

    def to_quantized(self) -> QuantizedTensor:
        """Codes and quantizers back in original order (see ``slimq.format.packing.unpack``)."""
        return unpack(self.packed)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W_hat [out_features, in_features]`` (debugging; materialises the full matrix)."""
        return self.to_quantized().dequantize(dtype)

    # --- compute ----------------------------------------------------------------------------

    def _backend_for(self, device: torch.device) -> Backend:
        key = f"{self.backend}@{device.type}"
        b = self._resolved.get(key)
        if b is None:
            b = self._resolved[key] = select_backend(self.backend, device)
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self._backend_for(x.device)
        if self.workspace is not None and backend.make_workspace is not None:
            return backend.matmul(x, self.packed, self.bias, workspace=self.workspace)
        return backend.matmul(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        bits = ", ".join(f"{b}b:{c / (self.in_features * self.out_features):.0%}" for b, c in self.bits.items())
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, avg_bits={self.avg_bits():.3f} [{bits}], "
                f"segments={len(self.segment_meta)}, row_perm={self.row_perm is not None}, backend={self.backend}")


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """All QuantLinear modules of ``model`` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_backend(model: nn.Module, backend: str, device: torch.device | str | None = None) -> int:
    """Set every QuantLinear's backend; with ``device``, check it can run there now.

    Raises :class:`~slimq.kernels.BackendUnavailableError` for an explicit
    backend that cannot run on ``device``. Returns the number of layers set.
    """
    if device is not None:
        select_backend(backend, device)
    layers = quant_linears(model)
    for m in layers.values():
        m.backend = backend
        m.invalidate_cache()
    return len(layers)


def share_workspace(model: nn.Module, max_tokens: int, device: torch.device | str,
                    dtype: torch.dtype = torch.float16) -> object | None:
    """Give every QuantLinear of ``model`` one preallocated workspace of the backend that runs
    on ``device``, so that a forward call allocates only its output (and works under CUDA-graph
    capture without growing the memory pool). ``max_tokens``: the most rows of activations per
    call it serves (calls with more allocate their own scratch). Also runs the backend's per-layer
    checks ahead (``Backend.prepare``), so that a first call inside a capture takes the fast paths;
    call it after moving the model (``.to()`` rebuilds the layers' views). Returns the workspace, or
    None when that backend needs none (e.g. the pure-torch reference)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    layers = quant_linears(model)
    if not layers:
        return None
    backends = {m.backend for m in layers.values()}
    if len(backends) != 1:
        raise ValueError(f"layers use different backends {sorted(backends)}; call set_backend first")
    backend = select_backend(backends.pop(), device)
    if backend.make_workspace is None:
        ws = None
    else:
        max_n = max(m.out_features for m in layers.values())
        max_k = max(m.in_features for m in layers.values())
        ws = backend.make_workspace(torch.device(device), max_tokens, max_n, max_k, dtype)
    for m in layers.values():
        m.workspace = ws
        if backend.prepare is not None:  # facts a first call inside a CUDA-graph capture could not check
            backend.prepare(m.packed)
    return ws
