"""A plain round-to-nearest quantizer built from the primitives, for driver tests."""
from __future__ import annotations

import torch

from slimq.quant.primitives import fit_qparams, group_bounds, make_g_idx, quantize_codes
from slimq.quant.result import QuantizedTensor

__all__ = ["rtn"]


def rtn(W: torch.Tensor, bits: int = 3, gs: int = 32) -> QuantizedTensor:
    """Plain asymmetric min/max round-to-nearest of ``W [N, K]``, from the primitives.

    ``info`` carries a placeholder ``loss`` of 0 so the driver's loss-logging path runs.
    """
    n, k = W.shape
    bounds = group_bounds(k, gs)
    codes = torch.empty(n, k)
    scales, zeros = [], []
    for s, e in bounds:
        sc, z = fit_qparams(W[:, s:e], bits, False)
        codes[:, s:e] = quantize_codes(W[:, s:e], sc, z, bits)
        scales.append(sc)
        zeros.append(z)
    return QuantizedTensor(codes.to(torch.uint8), torch.stack(scales, 1).half(), torch.stack(zeros, 1).half(),
                           make_g_idx(k, gs), torch.full((n, len(bounds)), bits, dtype=torch.int8), gs,
                           {"loss": 0.0})
