"""Registry of per-linear quantization methods.

A method turns one ``LinearJob`` (a layer's weight, Hessian and sampled inputs, from
the sequential driver) into a ``QuantizedTensor``. Adding a method means adding one
function here and its name to ``slimq.config.METHOD_NAMES``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from slimq.config import QuantConfig
from slimq.quant.result import QuantizedTensor

__all__ = ["MethodFn", "METHODS", "get_method"]

MethodFn = Callable[["object", QuantConfig, "torch.Tensor | None"], QuantizedTensor]


def _rtn(job, config: QuantConfig, allocation: torch.Tensor | None) -> QuantizedTensor:
    from slimq.quant.rtn import rtn_quantize

    return rtn_quantize(job.W, bits=int(config.bits) if allocation is None else allocation,
                        group_size=config.group_size, sym=config.sym)


def _gptq(job, config: QuantConfig, allocation: torch.Tensor | None) -> QuantizedTensor:
    from slimq.quant.gptq import gptq_quantize

    g = config.gptq
    return gptq_quantize(job.W, job.H, bits=int(config.bits) if allocation is None else allocation,
                         group_size=config.group_size, sym=config.sym, percdamp=g.percdamp,
                         blocksize=g.blocksize, act_order=g.act_order, static_groups=g.static_groups)


def _slim(job, config: QuantConfig, allocation: torch.Tensor | None) -> QuantizedTensor:
    from slimq.quant.slim import slim_quantize

    return slim_quantize(job.W, job.H, job.X_sample, bits=config.bits, group_size=config.group_size,
                         sym=config.sym, options=config.slim, gptq=config.gptq, allocation=allocation)


METHODS: Mapping[str, MethodFn] = {"rtn": _rtn, "gptq": _gptq, "slim": _slim}

# Methods whose driver pass needs Hessians / sampled input rows.
NEEDS_HESSIAN = {"rtn": False, "gptq": True, "slim": True}
NEEDS_SAMPLES = {"rtn": False, "gptq": False, "slim": True}


def get_method(name: str) -> MethodFn:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
