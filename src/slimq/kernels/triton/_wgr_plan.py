"""Launch plan of the ``wgr`` path (``_wgr``): the operand-order gather (none where the kernel reads ``x`` in its
natural order, :func:`wgr_direct`), ``wgr_kernel`` with one set of TMA descriptors per segment, and the split-K
finalize (kept apart from ``_plan``, which it builds on)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton

from slimq.format.layout import PackedLinear
from slimq.kernels.triton._perm import identity_perm, perm_run
from slimq.kernels.triton._plan import (Launch, _finalize_launch, _output_args, _pdl, _pdl_kw, check_stream_room,
                                        gather_launch)

if TYPE_CHECKING:
    from slimq.kernels.triton.ops import KernelConfig, Workspace

__all__ = ["wgr_launches", "wgr_direct"]


def wgr_direct(x: torch.Tensor, packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether a ``wgr`` call reads ``x`` itself (``cfg.direct``, ``_wgrn``): float16 ``x`` that TMA can read as it
    is (unit column stride, 16-byte aligned rows) and a ``col_perm`` that moves whole 64-column runs (the identity,
    or SliM's grouping of its bit-widths: the copies then read each K tile's column from ``col_perm``). Otherwise
    the call gathers ``x`` in operand order first."""
    return (cfg.path == "wgr" and cfg.direct and x.dtype == torch.float16 and x.stride(1) == 1
            and x.stride(0) * 2 % 16 == 0 and x.data_ptr() % 16 == 0 and perm_run(packed) >= 64)


def wgr_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``wgr`` (``_wgr``): ``x[:, col_perm]`` in ``_wgr``'s operand order into ``ws.xperm``, one ``wgr_kernel``
    reading it and each segment's planes, scales and zeros by TMA (``cfg.block_m`` tokens x ``cfg.block_n`` rows
    per tile, ``cfg.num_stages`` K tiles in flight), and with ``cfg.split_k > 1`` a ``finalize_kernel`` (the
    programs add float32 sums into ``ws.acc``); with ``cfg.stream_k`` (and the copy warp) ``_wgrk.wgrk_kernel``
    instead, by that many persistent programs (partial sums in ``ws.skp``, flags in ``ws.skf``). Layers:
    ``_support.wgr_supported``."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from slimq.kernels.triton._wgr import seg_planes
    from slimq.kernels.triton._wgs import smem_layout
    m, kdim = x.shape
    n = packed.out_features
    segs = sorted(packed.segments, key=lambda s: s.c0)
    seg_bits = tuple(s.bits for s in segs)
    kp = 64 * seg_planes(seg_bits)[2] // 32
    if cfg.split_k > kdim // 64:
        raise ValueError(f"wgr: split_k={cfg.split_k} exceeds the K tiles of the layer ({kdim // 64})")
    pdl = _pdl(x, cfg) and cfg.producers == 1  # the copy warp waits for the launch before (run 138)
    nat = wgr_direct(x, packed, cfg)
    if nat:
        first, xin = [], x
    else:
        gather, xin = gather_launch(x, packed, ws.xperm, wgr=seg_planes(seg_bits)[2], pdl=pdl)
        first = [gather]
    desc = TensorDescriptor(xin, [m, kdim], [xin.stride(0), 1], [cfg.block_m, 64], smem_layout(64, 16))

    def rows_desc(t: torch.Tensor, box_rows: int) -> TensorDescriptor:  # [R, ns] -> [box_rows, BN] boxes, unswizzled
        lay = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8 * t.element_size(), rank=2)
        return TensorDescriptor(t, list(t.shape), [t.shape[1], 1], [box_rows, cfg.block_n], lay)

    seg_args = []
    for s in segs:  # (words of the 2- or 4-bit plane, 1-bit plane, scales, zeros); an absent plane: any int32 one
        wide, one = s.planes[0], s.planes[-1]
        seg_args += [rows_desc(wide, kp), rows_desc(one, 2), rows_desc(s.scales, 1), rows_desc(s.zeros, 1)]
    seg_args += seg_args[-4:] * (3 - len(segs))
    starts = [s.c0 // 64 for s in segs[1:]] + [0] * (3 - len(segs))
    split = cfg.split_k > 1
    acc, has_rp, rp, b = _output_args(packed, bias, out, ws, m, split)
    kw = dict(SEG_BITS=seg_bits, GS=segs[0].group_size, BN=cfg.block_n, BT=cfg.block_m, STAGES=cfg.num_stages,
              num_warps=cfg.num_warps, HAS_BIAS=bias is not None and not split, **_pdl_kw(pdl),
              **({"NAT": True, "PERM_X": not identity_perm(packed)} if nat else {}))
    tiles = triton.cdiv(n, cfg.block_n) * triton.cdiv(m, cfg.block_m)
    if cfg.stream_k:  # persistent programs sharing the tiles' K tiles (_wgrk: always the copy warp, no K split)
        programs = min(cfg.stream_k, tiles * (kdim // 64))
        check_stream_room(ws, programs, cfg)
        return [*first, Launch("wgrk_kernel", (programs,), (desc, *seg_args, *starts, m, out, out.stride(0), ws.skp,
                                                            ws.skf, b, n, kdim, packed.col_perm), kw,
                                      module="wgrk")]
    kw.update(SPLIT=cfg.split_k, WS=cfg.producers == 1)
    grid = (tiles * cfg.split_k,)
    launches = [*first, Launch("wgr_kernel", grid, (desc, *seg_args, *starts, m, out, out.stride(0), acc,
                                                     acc.stride(0), b, n, kdim, packed.col_perm), kw, module="wgr")]
    if split:
        launches.append(_finalize_launch(acc, out, rp, b, has_rp, bias is not None))
    return launches
