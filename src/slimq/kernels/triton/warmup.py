"""Compile kernel variants ahead of time, in parallel worker processes.

Triton compiles a kernel variant on its first launch, serially, which for the unrolled
``M == 1`` kernels takes seconds each. :func:`precompile` compiles the variants that a list of
:class:`~slimq.kernels.triton.ops.Launch` es will need in ``processes`` spawned workers; they
fill Triton's on-disk cache, so the launches themselves then only load binaries.
"""
from __future__ import annotations

import logging
import multiprocessing as mp

import torch

from slimq.kernels.triton.ops import Launch

__all__ = ["launch_spec", "precompile"]

log = logging.getLogger(__name__)


def _spec(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype).removeprefix("torch."))
    if type(v).__name__ == "TensorDescriptor":  # Gluon TMA descriptor ("wgs"): compiled per dtype, box and layout
        return ("tdesc", str(v.base.dtype).removeprefix("torch."), tuple(v.block_shape), v.layout)
    if isinstance(v, tuple):
        return ("tuple", tuple(_spec(e) for e in v))
    return ("value", v)


def launch_spec(launch: Launch) -> tuple:
    """A picklable description of what ``launch`` compiles: kernel, argument types and values
    that Triton specialises on, constexprs. Tensors become their dtypes (all 16-byte aligned)."""
    return (launch.module, launch.kernel, _spec(launch.args), tuple(sorted(launch.kwargs.items())))


def _rebuild(spec, device):
    kind, v = spec[:2]
    if kind == "tensor":
        return torch.empty(16, dtype=getattr(torch, v), device=device)
    if kind == "tuple":
        return tuple(_rebuild(e, device) for e in v)
    if kind == "tdesc":
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
        dtype, box, layout = spec[1:]
        base = torch.empty(box, dtype=getattr(torch, dtype), device=device)
        return TensorDescriptor(base, list(box), [box[1], 1], list(box), layout)
    return v


def _compile(specs: list[tuple], device: str = "cuda") -> int:
    from slimq.kernels.triton.ops import kernel_fn
    dev = torch.device(device)
    for module, name, args, kwargs in specs:
        kernel_fn(module, name).warmup(*_rebuild(args, dev), grid=(1,), **dict(kwargs))
    return len(specs)


def precompile(launches: list[Launch], processes: int = 8) -> int:
    """Compile the distinct variants among ``launches`` with ``processes`` workers (0: here).

    Returns the number of distinct variants. Needs a CUDA device; the workers share the
    caller's Triton cache directory.
    """
    specs = list(dict.fromkeys(launch_spec(lc) for lc in launches))
    if not specs:
        return 0
    if processes <= 0 or len(specs) == 1:
        return _compile(specs)
    chunks = [specs[i::processes] for i in range(min(processes, len(specs)))]
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(chunks)) as pool:
        done = sum(pool.map(_compile, chunks))
    log.info("precompiled %d kernel variants in %d processes", done, len(chunks))
    return done
