"""Pure-torch reference matmul for layout ``slimq.segmented-bitplane.v1``: the oracle
every kernel is tested against, and the CPU backend.

It dequantizes one segment at a time, in chunks of ``chunk_cols`` storage columns
(a multiple of 32, so every plane's chunk starts on a word boundary), and
accumulates ``x @ W^T`` in float32. Peak extra memory is the float32 output
``[M, N]`` plus one chunk ``[chunk, Ns]`` of weights and ``[M, chunk]`` of inputs.
"""
from __future__ import annotations

import math

import torch

from slimq.format.layout import PackedLinear, Segment, plane_widths

__all__ = ["packed_matmul_reference", "dequantize_segment_chunk", "DEFAULT_CHUNK_BYTES"]

# Bytes of float32 weights dequantized at once (per chunk); bounds the reference's extra memory.
DEFAULT_CHUNK_BYTES = 16 * 2 ** 20


def dequantize_segment_chunk(seg: Segment, a: int, b: int) -> torch.Tensor:
    """float32 ``W_seg^T[a:b] [b - a, Ns]``: segment columns ``[a, b)`` (``a`` a multiple of 32)."""
    if a % 32:
        raise ValueError(f"chunk start must be a multiple of 32, got {a}")
    q = None
    shift = 0
    for plane, w in zip(seg.planes, plane_widths(seg.bits)):
        per = 32 // w
        words = plane[a // per: math.ceil(b / per)].to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32, device=words.device) * w
        part = ((words[:, None, :] >> shifts[None, :, None]) & ((1 << w) - 1)).reshape(-1, words.shape[1])
        part = part[: b - a]
        q = part if q is None else q | (part << shift)
        shift += w
    gidx = torch.arange(a, b, device=q.device) // seg.group_size
    scale = seg.scales[gidx].float()
    zero = seg.zeros[gidx].float()
    return (q.float() - zero) * scale


def _chunk_cols(n_rows: int, chunk_bytes: int) -> int:
    return max(32, (chunk_bytes // (4 * max(n_rows, 1))) // 32 * 32)


def packed_matmul_reference(
    x: torch.Tensor,
    packed: PackedLinear,
    bias: torch.Tensor | None = None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """``y = x @ W_hat^T + bias`` for ``x [..., K]`` (float16/bfloat16/float32).

    ``W_hat`` is the dequantized packed weight; products accumulate in float32 and
    ``y [..., N]`` comes back in ``x.dtype``. ``bias`` is ``[N]`` (any float dtype) or None.
    """
    k, n = packed.in_features, packed.out_features
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"x must end in in_features={k}, got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be [N={n}], got {tuple(bias.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    y = torch.zeros(x2.shape[0], n, dtype=torch.float32, device=x.device)
    col_perm = packed.col_perm.long()
    for seg in packed.segments:
        ks = seg.c1 - seg.c0
        step = _chunk_cols(seg.r1 - seg.r0, chunk_bytes)
        for a in range(0, ks, step):
            b = min(a + step, ks)
            w = dequantize_segment_chunk(seg, a, b)
            xc = x2[:, col_perm[seg.c0 + a: seg.c0 + b]].float()
            y[:, seg.r0:seg.r1].addmm_(xc, w)
    if packed.row_perm is not None:
        out = torch.empty_like(y)
        out[:, packed.row_perm.long()] = y
        y = out
    if bias is not None:
        y += bias.float()
    return y.to(x.dtype).reshape(*lead, n)
