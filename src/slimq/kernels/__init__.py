"""Matmul backends for packed layers, chosen through a small registry.

A backend computes ``y = x @ W_hat^T + bias`` for ``x [..., K]`` and a
:class:`~slimq.format.layout.PackedLinear`. Built in: ``"reference"`` (pure
torch, any device; ``slimq.kernels.reference``). ``"triton"`` lives in
``slimq.kernels.triton``, which registers itself when imported; the registry
imports it on first use, so a machine without triton simply lacks that backend.

``select_backend("auto", device)`` takes the highest-priority backend usable on
the device; when that is the reference on a GPU it logs one notice per device
type. An explicit name that cannot run raises :class:`BackendUnavailableError`.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from slimq.format.layout import PackedLinear
from slimq.kernels.reference import packed_matmul_reference

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "BackendRegistry",
    "REGISTRY",
    "register_backend",
    "get_backend",
    "select_backend",
    "backend_names",
]

log = logging.getLogger(__name__)

MatmulFn = Callable[[torch.Tensor, PackedLinear, "torch.Tensor | None"], torch.Tensor]


class BackendUnavailableError(RuntimeError):
    """The requested backend is unknown or cannot run on the requested device."""


@dataclass(frozen=True)
class Backend:
    """A matmul backend.

    ``matmul(x, packed, bias) -> y``: ``x [..., K]`` float16/bfloat16/float32 on the
    backend's device, ``bias [N]`` or None, ``y [..., N]`` in ``x.dtype``.
    ``unavailable(device) -> str | None``: None if it can run on ``device``, else why not.
    ``priority``: higher wins in ``"auto"`` selection. ``make_workspace(device, max_m, max_n,
    max_k, dtype) -> workspace`` (optional): preallocated scratch that ``matmul`` then accepts
    as ``workspace=`` so that a call allocates nothing but its output (see
    ``slimq.nn.qlinear.share_workspace``). ``prepare(packed)`` (optional): the once-per-layer
    checks a call would otherwise make on its first use (and skip under CUDA-graph capture, where
    they would synchronize), done ahead; ``share_workspace`` runs it for every layer.
    """

    name: str
    matmul: MatmulFn
    unavailable: Callable[[torch.device], str | None]
    priority: int = 0
    make_workspace: Callable[..., object] | None = None
    prepare: Callable[[PackedLinear], None] | None = None


def _reference_unavailable(device: torch.device) -> str | None:
    return None


class BackendRegistry:
    """Name -> Backend, plus modules that register further backends when imported."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._lazy: dict[str, str] = {}
        self._import_errors: dict[str, str] = {}
        self._fallback_noticed: set[str] = set()

    def register(self, backend: Backend, *, replace: bool = False) -> None:
        if backend.name in self._backends and not replace:
            raise ValueError(f"backend {backend.name!r} is already registered (pass replace=True)")
        self._backends[backend.name] = backend

    def register_lazy(self, name: str, module: str) -> None:
        """``module`` registers backend ``name`` when imported."""
        self._lazy[name] = module

    def _load_lazy(self, name: str) -> None:
        module = self._lazy.get(name)
        if module is None or name in self._backends or name in self._import_errors:
            return
        try:
            importlib.import_module(module)
        except ImportError as e:  # an optional dependency (e.g. triton) is missing
            self._import_errors[name] = f"importing {module} failed: {e}"
            return
        if name not in self._backends:
            self._import_errors[name] = f"{module} did not register backend {name!r}"

    def names(self) -> list[str]:
        for name in list(self._lazy):
            self._load_lazy(name)
        return sorted(self._backends)

    def get(self, name: str, device: torch.device | str | None = None) -> Backend:
        """The backend ``name``; with ``device``, raise unless it can run there."""
        self._load_lazy(name)
        if name not in self._backends:
            why = self._import_errors.get(name)
            known = sorted(set(self._backends) | set(self._lazy))
            raise BackendUnavailableError(
                f"backend {name!r} is not available" + (f" ({why})" if why else "") + f"; known: {known}")
        backend = self._backends[name]
        if device is not None:
            why = backend.unavailable(torch.device(device))
            if why is not None:
                raise BackendUnavailableError(f"backend {name!r} cannot run on {device}: {why}")
        return backend

    def select(self, name: str, device: torch.device | str) -> Backend:
        """``name`` (checked for ``device``), or for ``"auto"`` the best backend usable on ``device``."""
        device = torch.device(device)
        if name != "auto":
            return self.get(name, device)
        reasons = {}
        for cand in sorted((self._backends[n] for n in self.names()), key=lambda b: -b.priority):
            why = cand.unavailable(device)
            if why is None:
                if cand.name == "reference" and device.type != "cpu" and device.type not in self._fallback_noticed:
                    self._fallback_noticed.add(device.type)
                    reasons.update({n: e for n, e in self._import_errors.items()})
                    log.warning("no fast kernel for %s (%s); using the slow pure-torch reference backend",
                                device.type, "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "none registered")
                return cand
            reasons[cand.name] = why
        raise BackendUnavailableError(f"no backend can run on {device}: {reasons}")


REGISTRY = BackendRegistry()
REGISTRY.register(Backend("reference", packed_matmul_reference, _reference_unavailable, priority=0))
REGISTRY.register_lazy("triton", "slimq.kernels.triton")


def register_backend(name: str, matmul: MatmulFn, unavailable: Callable[[torch.device], str | None], *,
                     priority: int = 0, replace: bool = False) -> Backend:
    """Register a backend in the default registry; returns it."""
    backend = Backend(name, matmul, unavailable, priority)
    REGISTRY.register(backend, replace=replace)
    return backend


def get_backend(name: str, device: torch.device | str | None = None) -> Backend:
    """Backend ``name`` from the default registry (checked for ``device`` when given)."""
    return REGISTRY.get(name, device)


def select_backend(name: str, device: torch.device | str) -> Backend:
    """``name`` or ``"auto"`` resolved for ``device`` with the default registry."""
    return REGISTRY.select(name, device)


def backend_names() -> list[str]:
    """Names of the backends that are registered (after importing the optional ones)."""
    return REGISTRY.names()
