"""Hessian linear algebra shared by GPTQ and SliM-LLM's salience.

GPTQ needs the rows of the inverse Hessian restricted to the not-yet-quantized
columns. Frantar et al. (2022) observe that row ``i`` of that shrinking inverse,
divided by the square root of its diagonal, is row ``i`` of the upper Cholesky
factor ``U`` of ``H^{-1}`` (``U^T U = H^{-1}``), so one factorisation serves the
whole column sweep. SliM-LLM's element salience ``w_ij^2 / [H^{-1}]_jj^2`` uses
the diagonal of the same factor.
"""
from __future__ import annotations

import math

import torch

from slimq.config import GPTQOptions

__all__ = ["HessianError", "dead_columns", "damped_hessian", "inverse_hessian_cholesky"]

_DEFAULT_PERCDAMP = GPTQOptions.percdamp


class HessianError(ValueError):
    """A Hessian cannot be used: wrong shape, non-finite entries, or not positive
    definite even after damping (then retrying with a larger ``percdamp`` is the
    usual remedy; the caller owns that policy)."""


def _check_hessian(H: torch.Tensor) -> None:
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise HessianError(f"H must be a square [K, K] matrix, got shape {tuple(H.shape)}")
    if not H.is_floating_point():
        raise HessianError(f"H must be a floating-point tensor, got dtype {H.dtype}")
    bad = ~torch.isfinite(H)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(dim=1)).flatten()
        raise HessianError(
            f"H has {int(bad.sum())} non-finite entries (NaN/inf) in {rows.numel()} rows, "
            f"first rows {rows[:5].tolist()}; the calibration activations overflowed or contain NaN"
        )


def dead_columns(H: torch.Tensor) -> torch.Tensor:
    """bool ``[K]``: input columns whose Hessian diagonal is exactly 0, i.e. inputs
    that were zero on every calibration token. GPTQ zeroes their weights."""
    return H.diagonal() == 0


def damped_hessian(H: torch.Tensor, percdamp: float = _DEFAULT_PERCDAMP) -> torch.Tensor:
    """GPTQ's conditioned Hessian, float32 ``[K, K]`` (a new tensor; ``H`` is untouched).

    Dead diagonal entries (``H_ii == 0``) become 1, then ``percdamp * mean(diag H)``
    is added to the diagonal. Raises ``HessianError`` on non-finite or non-square ``H``.
    """
    _check_hessian(H)
    if not (math.isfinite(percdamp) and percdamp >= 0.0):
        raise HessianError(f"percdamp must be a finite number >= 0, got {percdamp}")
    H = H.to(torch.float32, copy=True)
    diag = H.diagonal()  # a view: edits below change H
    diag[diag == 0] = 1.0
    diag += percdamp * diag.mean()
    return H


def inverse_hessian_cholesky(H: torch.Tensor, percdamp: float = _DEFAULT_PERCDAMP) -> torch.Tensor:
    """Upper Cholesky factor ``U`` (float32 ``[K, K]``, on ``H``'s device) of the
    inverse of ``damped_hessian(H, percdamp)``: ``U^T U = (H + damp I)^{-1}``.

    Both factorisations run in float32 (as GPTQ does). There is deliberately no
    silent retry with more damping: a failure raises ``HessianError`` saying which
    step failed, and the caller may retry with a larger ``percdamp``.
    """
    Hd = damped_hessian(H, percdamp)
    k = Hd.shape[0]
    L, info = torch.linalg.cholesky_ex(Hd)
    if int(info) != 0:
        raise HessianError(
            f"damped Hessian [{k}, {k}] is not positive definite (Cholesky failed at column "
            f"{int(info) - 1}) with percdamp={percdamp}; increase percdamp or check the calibration data"
        )
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(U).all()):
        raise HessianError(
            f"inverse of the damped Hessian [{k}, {k}] is not numerically positive definite "
            f"in float32 (percdamp={percdamp}); increase percdamp"
        )
    return U
