"""Which layers and devices each Triton path can run: ``None``, or the reason why not (the dispatch in
:mod:`slimq.kernels.triton.ops` falls back on it; an explicitly requested path raises with it)."""
from __future__ import annotations

import torch

from slimq.format.layout import PackedLinear
from slimq.kernels.triton._plan import WGS_MAX_SEGMENTS, bands, tc_block, wgs_block_k, wgs_tiles_contiguous

__all__ = ["wgs_unavailable", "wgs_supported", "wgr_supported", "h2_supported", "mv_supported", "tc_supported"]


def wgs_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if ``wgs`` can run on ``device`` with activations of ``dtype``, else why not (it needs
    Hopper's ``wgmma``, sm_90, float16/bfloat16 and ``triton.experimental.gluon``)."""
    if device.type != "cuda":
        return f"needs a CUDA device (Gluon has no interpreter), got {device.type!r}"
    if torch.cuda.get_device_capability(device)[0] != 9:
        return f"needs an sm_90 GPU (wgmma), device has {torch.cuda.get_device_capability(device)}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16 activations, got {dtype}"
    try:
        from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma  # noqa: F401
    except ImportError as e:
        return f"needs triton.experimental.gluon with Hopper ops ({e})"
    return None


def wgs_supported(x: torch.Tensor, packed: PackedLinear) -> str | None:
    """None if ``wgs`` can run ``packed`` on ``x``, else why not: :func:`wgs_unavailable`, a group
    size that is a multiple of 32, and ``K`` a multiple of 8 (TMA needs 16-byte activation rows)."""
    why = wgs_unavailable(x.device, x.dtype)
    if why is None and not wgs_block_k(packed.segments[0].group_size):
        why = f"group size {packed.segments[0].group_size} is not a multiple of 32"
    if why is None and packed.in_features % 8:
        why = f"K = {packed.in_features} is not a multiple of 8 (TMA rows of 16 bytes)"
    most = max(len(segs) for _, _, segs in bands(packed))
    if why is None and most > WGS_MAX_SEGMENTS:
        why = f"a band has {most} segments, more than {WGS_MAX_SEGMENTS}"
    if why is None:
        bk = wgs_block_k(packed.segments[0].group_size)
        why = next(filter(None, (wgs_tiles_contiguous(segs, packed.in_features, bk) for _, _, segs in bands(packed))),
                   None)
    return why


def wgr_supported(x: torch.Tensor, packed: PackedLinear) -> str | None:
    """None if the ``wgr`` path can run ``packed`` on ``x``, else why not: Hopper and Gluon
    (:func:`wgs_unavailable`), float16 or bfloat16 activations (the weights are built in the same type), and the
    layer conditions of :func:`wgr_layer_unsupported`."""
    return wgs_unavailable(x.device, x.dtype) or wgr_layer_unsupported(packed)


def wgr_layer_unsupported(packed: PackedLinear) -> str | None:
    """The layer-side conditions of :func:`wgr_supported` (no device needed): no ``row_perm``; one segment of 1-
    to 4-bit codes or up to three of 1-3 bits (SliM), each on whole 64-column tiles; ``K`` and the group size
    multiples of 64; code planes, scales and zeros that TMA can read (contiguous, 16-byte aligned rows:
    ``out_features`` a multiple of 8)."""
    segs = packed.segments
    if packed.row_perm is not None or any((s.r0, s.r1) != (0, packed.out_features) for s in segs):
        return "needs segments spanning every row (no row_perm)"
    from slimq.kernels.triton._wgr import seg_planes  # Gluon: wgr_supported checks for it first
    try:
        seg_planes(tuple(s.bits for s in sorted(segs, key=lambda s: s.c0)))
    except ValueError as e:
        return str(e)
    gs = segs[0].group_size
    if packed.in_features % 64 or gs % 64 or any(s.c0 % 64 or s.c1 % 64 for s in segs):
        return f"needs K, the group size and segment bounds multiples of 64, got K={packed.in_features}, group {gs}"
    if packed.out_features % 8:
        return f"needs out_features a multiple of 8 (16-byte rows of scales for TMA), got {packed.out_features}"
    for s in segs:
        parts = [("code plane", p, 4) for p in s.planes] + [("scales", s.scales, 2), ("zeros", s.zeros, 2)]
        for name, t, size in parts:
            if not t.is_contiguous() or t.data_ptr() % 16 or t.element_size() != size:
                return f"needs a contiguous, 16-byte aligned {name} of {8 * size}-bit elements for TMA"
    return None


def h2_supported(packed: PackedLinear, *, join: bool = True) -> str | None:
    """None if the half2 paths can run ``packed``, else why not. All of them need group sizes
    that are multiples of 32; ``h2`` and the joined ``h2dot`` variant (``join``) also need
    segments on 32-column boundaries (their activation buffers are laid out per 32 columns)."""
    gs = packed.segments[0].group_size
    if gs % 32:
        return f"group size {gs} is not a multiple of 32"
    return _misaligned_segment(packed, 32) if join else None


def mv_supported(packed: PackedLinear) -> str | None:
    """None if the ``mv`` path can run ``packed``, else why not: it needs whole 128-column tiles (group
    size and every segment's columns on multiples of 128), band heights that are multiples of 4 and
    16-byte aligned contiguous planes (rows are read four at a time), and no 7-bit codes."""
    gs = packed.segments[0].group_size
    if gs % 128:
        return f"group size {gs} is not a multiple of 128"
    for s in packed.segments:
        if s.c0 % 128 or s.c1 % 128:
            return f"segment columns [{s.c0}, {s.c1}) are not on 128-column boundaries"
        if s.bits == 7:
            return "7-bit codes (their third plane's magic constant passes the float16 range)"
        if (s.r1 - s.r0) % 4:
            return f"segment rows [{s.r0}, {s.r1}) are not a multiple of 4"
        if any(not t.is_contiguous() or t.data_ptr() % 16 for t in s.planes):
            return "a bit plane is not contiguous and 16-byte aligned"
    return None


def _misaligned_segment(packed: PackedLinear, blk: int) -> str | None:
    """Why not every segment starts on a multiple of ``blk`` columns and ends on one (or at ``K``)."""
    k = packed.in_features
    for s in packed.segments:
        if s.c0 % blk or (s.c1 % blk and s.c1 != k):
            return f"segment columns [{s.c0}, {s.c1}) are not on {blk}-column boundaries"
    return None


def tc_supported(packed: PackedLinear) -> str | None:
    """None if the ``tc`` path can run ``packed``, else why not: it needs a group size divisible
    by 32 and segments that start (and end, unless at ``K``) on a multiple of :func:`tc_block`."""
    gs = packed.segments[0].group_size
    blk = tc_block(gs)
    if not blk:
        return f"group size {gs} is not a multiple of 32"
    return _misaligned_segment(packed, blk)
