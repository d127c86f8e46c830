"""What the kernel plans read from a layer's ``col_perm`` (layout ``slimq.segmented-bitplane.v1``: storage column
``c`` holds input column ``col_perm[c]``), each computed once per layer and kept on the ``PackedLinear``; while a
CUDA graph is being captured an answer not yet known is taken as the slower one (computing it would synchronize).
``Backend.prepare`` (``slimq.kernels.triton.prepare``, run by ``share_workspace``) computes all of them ahead.
"""
from __future__ import annotations

import torch

from slimq.format.layout import PackedLinear

__all__ = ["identity_perm", "perm_run"]

_PERM_RUN_MAX = 1024


def _capturing(packed: PackedLinear) -> bool:
    return packed.col_perm.is_cuda and torch.cuda.is_current_stream_capturing()


def identity_perm(packed: PackedLinear) -> bool:
    """Whether ``packed.col_perm`` is the identity (uniform layers without act-order); kept in
    ``packed.perm_identity`` (False while capturing and unknown)."""
    if packed.perm_identity is None:
        if _capturing(packed):
            return False
        ar = torch.arange(packed.in_features, device=packed.col_perm.device, dtype=packed.col_perm.dtype)
        packed.perm_identity = bool(torch.equal(packed.col_perm, ar))
    return packed.perm_identity


def perm_run(packed: PackedLinear) -> int:
    """The longest power of two ``r <= 1024`` such that ``col_perm`` maps every aligned block of ``r`` storage
    columns (the last one may be short) to ``r`` consecutive columns of ``x`` starting at a multiple of ``r``
    (1 if none): groups moved whole, as SliM's grouping of the bit-widths does without act-order. Kept in
    ``packed.perm_run`` (1 while capturing and unknown)."""
    if packed.perm_run is None:
        if _capturing(packed):
            return 1
        perm = packed.col_perm.long()
        k = perm.numel()
        pos = torch.arange(k, device=perm.device)
        run = 1
        while run < _PERM_RUN_MAX and run * 2 <= max(k, 1):
            r = run * 2
            start = perm[pos - pos % r]  # the source column of each position's block start
            if not bool(((perm == start + pos % r) & (start % r == 0)).all()):
                break
            run = r
        packed.perm_run = run
    return packed.perm_run
