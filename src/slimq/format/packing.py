"""Bit packing for layout ``slimq.segmented-bitplane.v1`` (spec: ``slimq.format.layout``).

``pack`` turns a :class:`~slimq.quant.result.QuantizedTensor` into a
:class:`~slimq.format.layout.PackedLinear`; ``unpack`` goes back (up to a
renumbering of the column groups). ``pack_planes`` / ``unpack_planes`` handle one
segment's ``[Ks, Ns]`` code matrix. Everything is vectorised; the only Python
loops run over bit planes, the <= 32 slots of a word, patterns and segments.
"""
from __future__ import annotations

import math
import sys

import torch

from slimq.format.layout import LAYOUT_NAME, PackedLinear, Segment, plane_widths
from slimq.quant.result import QuantizedTensor

__all__ = [
    "pack_planes",
    "unpack_planes",
    "pack",
    "unpack",
    "dequantize_packed",
    "check_packed",
    "plane_shape",
    "packed_nbytes",
]


def plane_shape(n_cols: int, n_rows: int, width: int) -> tuple[int, int]:
    """Shape ``[ceil(n_cols * width / 32), n_rows]`` of one int32 bit plane."""
    return (math.ceil(n_cols * width / 32), n_rows)


def _to_int32_wrapping(words: torch.Tensor) -> torch.Tensor:
    """int64 words in ``[0, 2**32)`` -> int32 with the same bit pattern."""
    return (words - ((words >> 31) << 32)).to(torch.int32)


def _pack_width(part: torch.Tensor, width: int) -> torch.Tensor:
    """Pack ``part [Ks, Ns]`` (values < 2**width, any int dtype) into int32 ``[ceil(Ks*width/32), Ns]``."""
    per = 32 // width
    ks, ns = part.shape
    n_words = math.ceil(ks / per)
    padded = torch.zeros(n_words * per, ns, dtype=torch.uint8, device=part.device)
    padded[:ks] = part
    if sys.byteorder != "little":
        return _pack_width_arith(padded, width, n_words)
    # Build the 4 bytes of each word (slot j sits in byte j*width//8), then reinterpret
    # [.., 4] bytes as one little-endian int32: one pass over uint8 data, no int64 temporaries.
    spb = 8 // width
    slots = padded.view(n_words * 4, spb, ns)
    byte = slots[:, 0, :].clone()
    for i in range(1, spb):  # <= 8 slots per byte
        byte |= slots[:, i, :] << (width * i)
    out = torch.empty(n_words, ns, 4, dtype=torch.uint8, device=part.device)  # fresh, standard strides
    out.copy_(byte.view(n_words, 4, ns).permute(0, 2, 1))
    return out.view(torch.int32).reshape(n_words, ns)


def _pack_width_arith(padded: torch.Tensor, width: int, n_words: int) -> torch.Tensor:
    """Endianness-independent ``_pack_width`` on zero-padded ``[n_words * 32/width, Ns]`` uint8."""
    per = 32 // width
    slots = padded.view(n_words, per, padded.shape[1])
    acc = torch.zeros(n_words, padded.shape[1], dtype=torch.int64, device=padded.device)
    for j in range(per):  # <= 32 slots: bounded, independent of the matrix size
        acc |= slots[:, j, :].to(torch.int64) << (width * j)
    return _to_int32_wrapping(acc)


def _unpack_width(plane: torch.Tensor, width: int, n_cols: int) -> torch.Tensor:
    """Inverse of ``_pack_width``: int32 ``[W, Ns]`` -> uint8 ``[n_cols, Ns]``."""
    per = 32 // width
    shifts = torch.arange(per, dtype=torch.int32, device=plane.device) * width
    mask = (1 << width) - 1
    vals = (plane.to(torch.int32)[:, None, :] >> shifts[None, :, None]) & mask
    return vals.reshape(-1, plane.shape[1])[:n_cols].to(torch.uint8)


def pack_planes(codes: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Split ``codes [Ks, Ns]`` (uint8 or any int dtype, values in ``[0, 2**bits)``) into bit planes.

    Returns one int32 tensor ``[ceil(Ks * w / 32), Ns]`` per plane width
    ``w`` in ``plane_widths(bits)``; see the layout spec for the slot order.
    """
    widths = plane_widths(bits)
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [Ks, Ns], got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.numel():
        hi = int(codes.max())
        lo = 0 if codes.dtype == torch.uint8 else int(codes.min())
        if lo < 0 or hi >= 2 ** bits:
            raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] for {bits}-bit planes, got range [{lo}, {hi}]")
    c = codes.to(torch.uint8)
    planes, shift = [], 0
    for w in widths:
        planes.append(_pack_width((c >> shift) & ((1 << w) - 1), w))
        shift += w
    return planes


def unpack_planes(planes: list[torch.Tensor], bits: int, n_cols: int) -> torch.Tensor:
    """Inverse of ``pack_planes``: uint8 codes ``[n_cols, Ns]``."""
    widths = plane_widths(bits)
    if len(planes) != len(widths):
        raise ValueError(f"{bits}-bit codes need {len(widths)} planes {widths}, got {len(planes)}")
    out, shift = None, 0
    for plane, w in zip(planes, widths):
        expect = math.ceil(n_cols * w / 32)
        if plane.dim() != 2 or plane.shape[0] != expect:
            raise ValueError(f"a width-{w} plane for {n_cols} columns must be [{expect}, Ns], "
                             f"got {tuple(plane.shape)}")
        part = _unpack_width(plane, w, n_cols)
        out = part if out is None else out | (part << shift)
        shift += w
    return out


# --- whole layers ---------------------------------------------------------------------------------

def _validate_qt(qt: QuantizedTensor) -> None:
    if qt.codes.dtype.is_floating_point:
        raise TypeError(f"QuantizedTensor.codes must be an integer tensor, got {qt.codes.dtype}")
    bits = qt.bits.long()
    if bits.numel() and (int(bits.min()) < 1 or int(bits.max()) > 8):
        raise ValueError(f"bit-widths must lie in 1..8, got range [{int(bits.min())}, {int(bits.max())}]")
    g = qt.g_idx.long()
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= qt.n_groups):
        raise ValueError(f"g_idx must lie in [0, {qt.n_groups}), got range [{int(g.min())}, {int(g.max())}]")
    # code ranges are checked per segment by pack_planes (no [N, K] temporary here)


def _row_blocks(bits: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, int, int]]]:
    """Group rows by bit pattern. Returns (row_perm or None, patterns [P, G], [(r0, r1, p), ...])."""
    patterns, inverse = torch.unique(bits, dim=0, return_inverse=True)
    if patterns.shape[0] == 1:
        return None, patterns, [(0, bits.shape[0], 0)]
    row_perm = torch.argsort(inverse, stable=True).to(torch.int32)
    counts = torch.bincount(inverse, minlength=patterns.shape[0]).tolist()
    blocks, r = [], 0
    for p, c in enumerate(counts):
        blocks.append((r, r + c, p))
        r += c
    return row_perm, patterns, blocks


def _group_order(patterns: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Non-empty groups in storage order: sorted by (their bit-widths across the patterns, id)."""
    order = torch.nonzero(sizes > 0).flatten()
    for p in range(patterns.shape[0] - 1, -1, -1):  # least significant key first; stable sorts
        order = order[torch.argsort(patterns[p, order], stable=True)]
    return order


def _segments_of_block(pattern_bits: torch.Tensor, sizes: torch.Tensor, gs: int) -> list[tuple[int, int]]:
    """Split storage groups into runs of one bit-width whose groups are full except the last.

    ``pattern_bits``/``sizes``: ``[Gn]`` in storage order. Returns ``[(g0, g1), ...]`` group ranges.
    """
    gn = pattern_bits.shape[0]
    start = torch.ones(gn, dtype=torch.bool)
    if gn > 1:
        start[1:] = (pattern_bits[1:] != pattern_bits[:-1]) | (sizes[:-1] != gs)
    starts = torch.nonzero(start).flatten().tolist() + [gn]
    return list(zip(starts[:-1], starts[1:]))


def _take(t: torch.Tensor, idx: torch.Tensor, start: int, dim: int) -> torch.Tensor:
    """``t.index_select(dim, idx)``, or a plain slice when ``idx`` is ``start, start+1, ...``."""
    if bool((idx == torch.arange(start, start + idx.numel(), device=idx.device)).all()):
        return t.narrow(dim, start, idx.numel())
    return t.index_select(dim, idx)


def pack(qt: QuantizedTensor) -> PackedLinear:
    """Pack ``qt`` (``W [N, K]``) into layout ``slimq.segmented-bitplane.v1``.

    Columns are sorted by (group bit-width, group id); rows by bit pattern when the
    bit-widths vary along rows (MixLLM), else ``row_perm`` is None. Groups whose
    bit-widths and sizes allow it share a segment; a short group ends its segment.
    """
    _validate_qt(qt)
    n, k = qt.shape
    bits = qt.bits.to(torch.int64).cpu()
    g_idx = qt.g_idx.to(torch.int64).cpu()
    sizes_all = torch.bincount(g_idx, minlength=qt.n_groups)
    gs = int(sizes_all.max())
    row_perm, patterns, blocks = _row_blocks(bits)
    order = _group_order(patterns, sizes_all)
    rank = torch.empty(qt.n_groups, dtype=torch.int64)
    rank[order] = torch.arange(order.numel())
    col_perm = torch.argsort(rank[g_idx], stable=True)
    sizes = sizes_all[order]
    col_start = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]).tolist()

    dev = qt.codes.device
    rows_all = row_perm.long() if row_perm is not None else torch.arange(n)
    segments = []
    for r0, r1, p in blocks:
        rows = rows_all[r0:r1].to(dev)
        for g0, g1 in _segments_of_block(patterns[p, order], sizes, gs):
            c0, c1 = col_start[g0], col_start[g1]
            cols = col_perm[c0:c1].to(dev)
            gids = order[g0:g1].to(dev)
            b = int(patterns[p, order[g0]])
            codes = _take(_take(qt.codes, rows, r0, 0), cols, c0, 1).t()
            segments.append(Segment(
                r0=r0, r1=r1, c0=c0, c1=c1, bits=b, group_size=gs,
                planes=pack_planes(codes, b),
                scales=qt.scales[rows][:, gids].t().to(torch.float16).contiguous(),
                zeros=qt.zeros[rows][:, gids].t().to(torch.float16).contiguous(),
            ))
    return PackedLinear(
        in_features=k, out_features=n, col_perm=col_perm.to(torch.int32).to(dev),
        row_perm=None if row_perm is None else row_perm.to(dev), segments=segments,
    )


def check_packed(packed: PackedLinear) -> None:
    """Raise ValueError unless ``packed`` obeys the layout (shapes, dtypes, tiling)."""
    if packed.layout != LAYOUT_NAME:
        raise ValueError(f"unsupported layout {packed.layout!r}; this slimq reads {LAYOUT_NAME!r}")
    n, k = packed.out_features, packed.in_features
    if tuple(packed.col_perm.shape) != (k,):
        raise ValueError(f"col_perm must be [K={k}], got {tuple(packed.col_perm.shape)}")
    if packed.row_perm is not None and tuple(packed.row_perm.shape) != (n,):
        raise ValueError(f"row_perm must be [N={n}], got {tuple(packed.row_perm.shape)}")
    area = 0
    for i, s in enumerate(packed.segments):
        if not (0 <= s.r0 < s.r1 <= n and 0 <= s.c0 < s.c1 <= k and s.group_size >= 1):
            raise ValueError(f"segment {i} {s.meta()} lies outside the [{n}, {k}] weight or is empty")
        ks, ns = s.c1 - s.c0, s.r1 - s.r0
        for w, plane in zip(plane_widths(s.bits), s.planes):
            if plane.dtype != torch.int32 or tuple(plane.shape) != plane_shape(ks, ns, w):
                raise ValueError(f"segment {i}: width-{w} plane must be int32 {plane_shape(ks, ns, w)}, "
                                 f"got {plane.dtype} {tuple(plane.shape)}")
        if len(s.planes) != len(plane_widths(s.bits)):
            raise ValueError(f"segment {i}: {s.bits}-bit codes need {len(plane_widths(s.bits))} planes, "
                             f"got {len(s.planes)}")
        gshape = (math.ceil(ks / s.group_size), ns)
        for nm, t in (("scales", s.scales), ("zeros", s.zeros)):
            if tuple(t.shape) != gshape:
                raise ValueError(f"segment {i}: {nm} must be {gshape}, got {tuple(t.shape)}")
        area += ks * ns
    if area != n * k:
        raise ValueError(f"segments cover {area} weights, expected N*K = {n * k}")


def unpack(packed: PackedLinear) -> QuantizedTensor:
    """Back to a :class:`QuantizedTensor` (original row/column order).

    Its groups are the storage-order groups (the union of every segment's group
    boundaries), so ``g_idx`` and the group numbering may differ from the tensor
    that was packed, but codes, ``dequantize()`` and each column's (scale, zero,
    bits) are identical.
    """
    check_packed(packed)
    n, k = packed.out_features, packed.in_features
    dev = packed.col_perm.device
    starts = sorted({s.c0 + j * s.group_size for s in packed.segments
                     for j in range(math.ceil((s.c1 - s.c0) / s.group_size))})
    starts_t = torch.tensor(starts, dtype=torch.int64, device=dev)
    g_count = len(starts)
    codes_s = torch.zeros(n, k, dtype=torch.uint8, device=dev)
    scales_s = torch.zeros(n, g_count, dtype=torch.float16, device=dev)
    zeros_s = torch.zeros(n, g_count, dtype=torch.float16, device=dev)
    bits_s = torch.zeros(n, g_count, dtype=torch.int8, device=dev)
    cover = torch.zeros(n, k, dtype=torch.int32, device=dev)
    for s in packed.segments:
        codes_s[s.r0:s.r1, s.c0:s.c1] = unpack_planes(s.planes, s.bits, s.c1 - s.c0).t()
        cover[s.r0:s.r1, s.c0:s.c1] += 1
        fine = torch.nonzero((starts_t >= s.c0) & (starts_t < s.c1)).flatten()
        local = (starts_t[fine] - s.c0) // s.group_size
        scales_s[s.r0:s.r1, fine] = s.scales[local].t().to(torch.float16)
        zeros_s[s.r0:s.r1, fine] = s.zeros[local].t().to(torch.float16)
        bits_s[s.r0:s.r1, fine] = s.bits
    if not bool((cover == 1).all()):
        raise ValueError("segments must tile the weight exactly once; found overlaps or holes")
    sg = torch.searchsorted(starts_t, torch.arange(k, device=dev), right=True) - 1
    col_perm = packed.col_perm.long()
    g_idx = torch.empty(k, dtype=torch.int32, device=dev)
    g_idx[col_perm] = sg.to(torch.int32)
    codes = torch.empty_like(codes_s)
    codes[:, col_perm] = codes_s
    if packed.row_perm is not None:
        rp = packed.row_perm.long()
        codes[rp] = codes.clone()
        for t in (scales_s, zeros_s, bits_s):
            t[rp] = t.clone()
    return QuantizedTensor(codes, scales_s, zeros_s, g_idx, bits_s, packed.segments[0].group_size
                           if packed.segments else -1)


def dequantize_packed(packed: PackedLinear, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W_hat [N, K]`` (original order) of a packed layer, computed in float32, returned in ``dtype``."""
    return unpack(packed).dequantize(dtype)


def packed_nbytes(packed: PackedLinear) -> dict[str, int]:
    """Bytes of a packed layer by kind: ``planes``, ``scales_zeros``, ``perms``."""
    planes = sum(p.numel() * p.element_size() for s in packed.segments for p in s.planes)
    sz = sum(s.scales.numel() * s.scales.element_size() + s.zeros.numel() * s.zeros.element_size()
             for s in packed.segments)
    perms = packed.col_perm.numel() * packed.col_perm.element_size()
    if packed.row_perm is not None:
        perms += packed.row_perm.numel() * packed.row_perm.element_size()
    return {"planes": planes, "scales_zeros": sz, "perms": perms}
