"""SliM-LLM salience: how much the layer output suffers when a weight is perturbed.

Element salience (Huang et al., 2024, eq. 3, as their GPTQ-based code computes it)::

    s_ij = w_ij^2 / [U_jj]^2

with ``U`` the upper Cholesky factor of the damped inverse Hessian *in the order
GPTQ processes columns* (with act-order the diagonal of ``U`` depends on that
order). ``U_jj^2`` is the inverse-Hessian diagonal of column ``j`` restricted to the
columns not yet quantized when ``j`` is reached, i.e. exactly the OBS denominator
GPTQ divides the rounding error of column ``j`` by.

Group salience sums ``s_ij`` over every row and over the columns of a group (as
numbered by ``g_idx``; a short last group simply sums fewer columns).

Pure: tensors in, tensors out.
"""
from __future__ import annotations

import torch

from slimq.quant.linalg import HessianError, damped_hessian, dead_columns
from slimq.quant.primitives import make_g_idx

__all__ = ["gptq_column_order", "gptq_group_index", "inverse_cholesky_diagonal", "element_salience",
           "group_salience"]


def gptq_column_order(H: torch.Tensor, act_order: bool) -> torch.Tensor:
    """int64 ``[K]``: the order in which GPTQ quantizes columns (``slimq.quant.gptq``):
    descending ``diag(H)`` (dead inputs counted as 1, ties kept stable) with act-order,
    else the identity."""
    k = H.shape[0]
    if not act_order:
        return torch.arange(k, device=H.device)
    dead = dead_columns(H)
    diag = torch.where(dead, torch.ones_like(H.diagonal()), H.diagonal()).float()
    return torch.sort(diag, descending=True, stable=True).indices


def gptq_group_index(H: torch.Tensor, group_size: int, act_order: bool, static_groups: bool) -> torch.Tensor:
    """int32 ``[K]`` (CPU): the group of each input column as ``gptq_quantize`` numbers
    groups (its result's ``g_idx``), so per-group bit-widths can be chosen before it runs.

    With act-order and without static groups, group ``g`` holds the columns at
    positions ``[g*gs, (g+1)*gs)`` of the processing order; otherwise consecutive columns.
    """
    k = H.shape[0]
    perm = gptq_column_order(H, act_order) if act_order and not static_groups else None
    return make_g_idx(k, group_size, None if perm is None else perm.cpu())


def inverse_cholesky_diagonal(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """float32 ``[K]``: the diagonal of ``U = inverse_hessian_cholesky(H, percdamp)``
    from a single Cholesky factorisation (no inverse).

    With ``J`` the order-reversing permutation, ``(J U J)^{-1}`` is the lower Cholesky
    factor of ``J H_d J`` (``H_d`` the damped Hessian), so ``U_jj = 1 / L_{K-1-j, K-1-j}``
    for ``L = cholesky(J H_d J)``: a third of the work of ``inverse_hessian_cholesky``
    and no explicit inverse. Raises ``HessianError`` if ``H_d`` is not positive definite.
    """
    Hd = damped_hessian(H, percdamp)
    L, info = torch.linalg.cholesky_ex(Hd.flip(0, 1))
    if int(info) != 0:
        raise HessianError(f"damped Hessian [{Hd.shape[0]}, {Hd.shape[0]}] is not positive definite "
                           f"with percdamp={percdamp}; increase percdamp or check the calibration data")
    return 1.0 / L.diagonal().flip(0)


def element_salience(W: torch.Tensor, H: torch.Tensor, percdamp: float, act_order: bool = False) -> torch.Tensor:
    """float32 ``[N, K]`` salience ``w_ij^2 / U_jj^2`` of ``W [N, K]`` under Hessian ``H [K, K]``.

    ``U`` is the upper Cholesky factor of the damped inverse of ``H`` permuted to
    GPTQ's processing order (``gptq_column_order``), with the damping ``percdamp`` GPTQ
    uses (its diagonal via ``inverse_cholesky_diagonal``). Dead inputs (``H_jj == 0``)
    get salience 0: GPTQ zeroes those weights and they never affect the output.
    Raises ``HessianError`` (a ``ValueError``) on a bad or indefinite ``H``.
    """
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W must be [N, K] and H [K, K]; got W {tuple(W.shape)}, H {tuple(H.shape)}")
    H = H.to(W.device)
    if act_order:
        perm = gptq_column_order(H, act_order)
        udiag = torch.empty(H.shape[0], dtype=torch.float32, device=W.device)
        udiag[perm] = inverse_cholesky_diagonal(H[perm][:, perm], percdamp)
    else:
        udiag = inverse_cholesky_diagonal(H, percdamp)
    sal = W.float().square() / udiag.square()[None, :]
    sal[:, dead_columns(H)] = 0.0
    return sal


def group_salience(salience: torch.Tensor, g_idx: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """float64 ``[G]``: sum of ``salience [N, K]`` over all rows and the columns of each
    group (``g_idx`` int ``[K]``, as in ``QuantizedTensor.g_idx``). float64 so that
    sums over millions of elements keep their order exactly enough for sorting."""
    if g_idx.shape != (salience.shape[1],):
        raise ValueError(f"g_idx must be [K={salience.shape[1]}], got {tuple(g_idx.shape)}")
    g = int(g_idx.max()) + 1 if n_groups is None else n_groups
    col = salience.double().sum(dim=0)
    out = torch.zeros(g, dtype=torch.float64, device=salience.device)
    return out.index_add_(0, g_idx.to(salience.device).long(), col)
