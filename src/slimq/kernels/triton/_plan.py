"""Launch plans of the Triton backend: the launches one :func:`~slimq.kernels.triton.ops.sbp_matmul`
call makes, per kernel path (``KernelConfig.path``), with their arguments.

Every plan reads the layer's segments straight from the :class:`~slimq.format.layout.PackedLinear`
(no repacking) and writes into the caller's ``out`` and preallocated workspace buffers, so a
plan's launches allocate nothing. The dispatch (which path, which tiling) lives in
:mod:`slimq.kernels.triton.ops`; this module only turns a chosen config into launches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton

from slimq.format.layout import PLANE_WIDTHS, PackedLinear, Segment, plane_widths
from slimq.kernels.triton import _gv as GV
from slimq.kernels.triton import _mv as MV
from slimq.kernels.triton import _mv1 as MV1
from slimq.kernels.triton import _mvs as MVS
from slimq.kernels.triton import _mvt as MVT
from slimq.kernels.triton import _h2 as H2
from slimq.kernels.triton import _h2dot as H2D
from slimq.kernels.triton import _kernels as K
from slimq.kernels.triton import _tc as TC
from slimq.kernels.triton import _wg as WG
from slimq.kernels.triton._bf16 import BF16_MAX_WIDTH
from slimq.kernels.triton._perm import identity_perm, perm_run

if TYPE_CHECKING:  # annotations only: ops imports this module
    from slimq.kernels.triton.ops import KernelConfig, Workspace

__all__ = ["Launch", "kernel_fn", "tc_block", "H2_XSCALE", "bands", "gv_launches", "mv_launches", "h2_launches", "h2dot_launches",
           "tc_launches", "wg_launches", "wg_direct", "mv_direct", "mv_reads_x", "wgs_launches", "wgs_block_k", "wgs_tiles_contiguous", "WGS_MAX_SEGMENTS", "WGS_TILE", "check_stream_room", "matmul_launches", "dequant_steps", "dequant_mm", "gather_launch", "uses_acc"]

H2_XSCALE = 1.0 / 16  # activations are scaled by this before half2 arithmetic (see _h2's module doc)
_FINALIZE_BLOCK = 1024
_GATHER_BLOCK = 1024


def kernel_fn(module: str, name: str):
    """The ``@triton.jit`` function ``name`` of kernel module ``module`` ("kernels", "gv", "h2", "h2dot", "tc",
    "wg", or "wgs", "wgsw", "wgsk", "wgr", "wgrk": Gluon, imported on first use since it needs
    ``triton.experimental.gluon``)."""
    if module == "wgr":
        from slimq.kernels.triton import _wgr
        return getattr(_wgr, name)
    if module == "wgrk":
        from slimq.kernels.triton import _wgrk
        return getattr(_wgrk, name)
    if module == "wgs":
        from slimq.kernels.triton import _wgs
        return getattr(_wgs, name)
    if module == "wgsw":
        from slimq.kernels.triton import _wgsw
        return getattr(_wgsw, name)
    if module == "wgsk":
        from slimq.kernels.triton import _wgsk
        return getattr(_wgsk, name)
    return getattr({"gv": GV, "mv": MV, "mv1": MV1, "mvs": MVS, "mvt": MVT, "h2": H2, "h2dot": H2D, "tc": TC, "wg": WG}.get(module, K), name)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``getattr(_kernels, kernel)[grid](*args, **kwargs)``."""

    kernel: str
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict
    module: str = "kernels"  # "kernels" (``_kernels``) or "gv", "h2", "h2dot", "tc", "wg", "wgs" (``_gv`` ...)

    @property
    def fn(self):
        return kernel_fn(self.module, self.kernel)

    def __call__(self) -> None:
        self.fn[self.grid](*self.args, **self.kwargs)


def bands(packed: PackedLinear) -> list[tuple[int, int, list[Segment]]]:
    """Segments grouped by row range, in storage order: ``[(r0, ns, [segment, ...]), ...]``."""
    rows: dict[tuple[int, int], list[Segment]] = {}
    for s in packed.segments:
        rows.setdefault((s.r0, s.r1), []).append(s)
    return [(r0, r1 - r0, segs) for (r0, r1), segs in rows.items()]


def _seg_arg(s: Segment) -> tuple:
    return (s.c0, s.c1 - s.c0, s.scales, s.zeros, *s.planes)


def _block_k(cfg_bk: int, gs: int) -> tuple[int, bool]:
    """(BK, aligned): the largest power of two <= cfg_bk dividing ``gs`` (>= 32), else unaligned."""
    bk = cfg_bk
    while bk >= 32:
        if gs % bk == 0:
            return bk, True
        bk //= 2
    return cfg_bk, False


def uses_acc(packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether ``cfg`` accumulates in the float32 workspace (split-K or one launch per segment)."""
    if cfg.path in ("wgs", "wgr"):
        return cfg.split_k > 1
    if cfg.path == "dequant":
        return False
    per_band = max(len(segs) for _, _, segs in bands(packed))
    return cfg.split_k > 1 or (not cfg.walk and per_band > 1 and cfg.path not in ("gv", "h2"))


def _pdl(x: torch.Tensor, cfg: KernelConfig) -> bool:
    """Programmatic dependent launch for gather -> matmul (sm_90+, ``gv``, ``h2``, ``tc``, ``wg``, unless
    ``cfg.pdl`` is off): the matmul launches while the gather runs and waits for it on the device
    (``griddepcontrol``). Measured on the H100 (run 8): 1-5% faster calls at M = 1 and 16 on small
    layers, neutral on large ones; ``h2dot`` is left without it (its 4-bit calls with K > 8192 took
    up to 2x longer with it); the dispatch turns it off for ``wg`` (KERNEL_NOTES, run 14)."""
    return cfg.pdl and x.is_cuda and torch.cuda.get_device_capability(x.device) >= (9, 0)


def matmul_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                     ws: Workspace, cfg: KernelConfig, gather: bool) -> list[Launch]:
    m = x.shape[0]
    gs = packed.segments[0].group_size
    bk, aligned = _block_k(cfg.block_k, gs)
    skinny = cfg.path in ("fma", "dot")
    bm = max(cfg.block_m, 16) if cfg.path == "dot" else cfg.block_m
    bs = bands(packed)
    groups = bs if cfg.walk else [(r0, ns, [s]) for r0, ns, segs in bs for s in segs]
    atomic = uses_acc(packed, cfg)
    acc, has_rp, rp, b = _output_args(packed, bias, out, ws, m, atomic)
    launches = []
    for r0, ns, segs in groups:
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BM=bm, BN=cfg.block_n, BK=bk,
                  GATHER=gather, ALIGNED=aligned, ATOMIC=atomic, HAS_ROWPERM=has_rp, HAS_BIAS=bias is not None,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        args = (x, x.stride(0), packed.col_perm, out, out.stride(0), acc, acc.stride(0) if atomic else 0, rp, b,
                m, r0, ns, gs, cfg.split_k, tuple(_seg_arg(s) for s in segs))
        if skinny:
            grid = (triton.cdiv(ns, cfg.block_n), cfg.split_k)
            launches.append(Launch("skinny_kernel", grid, args, dict(kw, USE_DOT=cfg.path == "dot", ASM=x.is_cuda,
                                                                     PREFETCH=cfg.prefetch)))
        else:
            grid = (triton.cdiv(m, bm) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
            launches.append(Launch("gemm_kernel", grid, args, dict(kw, GROUP_M=cfg.group_m)))
    if atomic:
        launches.append(_finalize_launch(acc, out, rp, b, has_rp, bias is not None))
    return launches


def _output_args(packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor, ws: Workspace, m: int,
                 atomic: bool) -> tuple:
    """``(acc, has_row_perm, row_perm, bias_or_dummy)`` for a matmul launch writing ``out``."""
    n = packed.out_features
    acc = ws.acc[: m * n].view(m, n) if atomic else ws.acc
    has_rp = packed.row_perm is not None
    rp = packed.row_perm if has_rp else packed.col_perm  # any int32 tensor when unused
    return acc, has_rp, rp, bias if bias is not None else out


def _finalize_launch(acc: torch.Tensor, out: torch.Tensor, rp: torch.Tensor, b: torch.Tensor, has_rp: bool,
                     has_bias: bool) -> Launch:
    """float32 split-K workspace -> ``out`` (row_perm, bias, dtype), re-zeroing the workspace."""
    m, n = out.shape
    return Launch("finalize_kernel", (triton.cdiv(n, _FINALIZE_BLOCK), m),
                  (acc, acc.stride(0), out, out.stride(0), rp, b, m, n),
                  dict(BLOCK=_FINALIZE_BLOCK, HAS_ROWPERM=has_rp, HAS_BIAS=has_bias))


@dataclass(frozen=True)
class _SplitOutput:
    """How an ``h2``/``h2dot``/``tc``/``wg`` launch writes its tile: straight into ``out``, or (split-K,
    ``atomic``) into the float32 workspace ``acc``, finished by the tile's last program (``fused``,
    counters ``cnt``) or by a ``finalize_kernel`` launch (:meth:`finish`)."""

    acc: torch.Tensor
    acc_stride: int
    has_rp: bool
    rp: torch.Tensor
    b: torch.Tensor
    atomic: bool
    fused: bool
    cnt: torch.Tensor

    def finish(self, out: torch.Tensor, has_bias: bool) -> list[Launch]:
        """The launches after the matmul: a finalize unless the split-K sums finish in-kernel."""
        if not self.atomic or self.fused:
            return []
        return [_finalize_launch(self.acc, out, self.rp, self.b, self.has_rp, has_bias)]


def _split_output(packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor, ws: Workspace, m: int,
                  cfg: KernelConfig) -> _SplitOutput:
    atomic = cfg.split_k > 1
    fused = _fused_split(ws, m, packed, cfg)
    acc, has_rp, rp, b = _output_args(packed, bias, out, ws, m, atomic)
    return _SplitOutput(acc, acc.stride(0) if atomic else 0, has_rp, rp, b, atomic, fused, ws.cnt if fused else ws.acc)


def _plane_widths(packed: PackedLinear) -> tuple[int, ...]:
    """The bit-plane widths present in the layer, ascending (one activation buffer slot each)."""
    return tuple(sorted({w for s in packed.segments for w in plane_widths(s.bits)}))


def h2dot_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                    ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """Gather ``x`` (storage order, or the joined operands' tree order in ``xpair`` viewed as fp16),
    one ``h2dot_kernel`` per band (and a finalize if split-K cannot finish in-kernel)."""
    m, kdim = x.shape
    gs = packed.segments[0].group_size
    xt = ws.xpair.view(torch.float16)
    stride_tm, stride_tb = ws.kp, 2 * ws.pair_stride
    if cfg.join:
        widths = _plane_widths(packed)
        launches = [Launch("tree_gather_kernel", (triton.cdiv(kdim, _GATHER_BLOCK), m),
                           (x, x.stride(0), packed.col_perm, xt, stride_tm, stride_tb, kdim),
                           dict(WIDTHS=widths, NW=len(widths), BLOCK=_GATHER_BLOCK), module="h2dot")]
        xin = x
    else:
        gather, xin = gather_launch(x, packed, ws.xperm)  # no PDL: it made h2dot up to 2x slower (run 8)
        launches = [gather]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in bands(packed):
        args = (xin, xin.stride(0), xt, stride_tm, stride_tb, out, out.stride(0), o.acc, o.acc_stride,
                o.rp, o.b, m, r0, ns, gs, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BM=cfg.block_m, BN=cfg.block_n,
                  ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  JOIN=cfg.join, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
        launches.append(Launch("h2dot_kernel", grid, args, kw, module="h2dot"))
    return launches + o.finish(out, bias is not None)


def gather_launch(x: torch.Tensor, packed: PackedLinear, buf: torch.Tensor,
                  pair16: bool = False, pdl: bool = False, wgr: int = 0) -> tuple[Launch, torch.Tensor]:
    """``x[:, col_perm]`` into ``buf`` (a workspace buffer, viewed ``[M, K]``): the launch and the view.
    ``pair16``: in ``_dq16``'s pair order within 16-column blocks (``K % 16 == 0``); ``wgr`` (2 or 4): in
    ``_wgr``'s operand order for codes of that width (``K % 64 == 0``); ``pdl``: the next launch
    (``launch_pdl``) may start while this one runs."""
    m, kdim = x.shape
    xin = buf[: m * kdim].view(m, kdim)
    kw = {"BLOCK": _GATHER_BLOCK, **({"PAIR16": True} if pair16 else {}), **({"PDL": True} if pdl else {}),
          **({"WGR": wgr} if wgr else {})}
    return Launch("gather_kernel", (triton.cdiv(kdim, _GATHER_BLOCK), m),
                  (x, x.stride(0), packed.col_perm, xin, xin.stride(0), kdim), kw), xin


def _pdl_kw(pdl: bool) -> dict:
    """Launch options of a matmul that follows its gather: ``launch_pdl`` and the kernel's wait."""
    return {"PDL": True, "launch_pdl": True} if pdl else {}


def dequant_steps(x: torch.Tensor, packed: PackedLinear, out: torch.Tensor, ws: Workspace,
                   cfg: KernelConfig) -> list[tuple[Launch, tuple[int, int] | None]]:
    """The dequant path in order: ``(launch, rows)``; after a launch with ``rows = (a, b)`` the
    caller multiplies ``wbuf`` (holding original rows ``[a, b)``) into ``out[:, a:b]``.

    Chunks (``cfg.chunk_n``) need a single band without ``row_perm``; other layers are
    dequantized whole."""
    m, kdim = x.shape
    n = packed.out_features
    gs = packed.segments[0].group_size
    bk, aligned = _block_k(cfg.block_k, gs)
    has_rp = packed.row_perm is not None
    rp = packed.row_perm if has_rp else packed.col_perm
    bs = bands(packed)
    chunk = cfg.chunk_n if cfg.chunk_n and not has_rp and len(bs) == 1 and cfg.chunk_n < n else 0
    w = ws.wbuf[: (chunk or n) * kdim].view(chunk or n, kdim)
    steps: list[tuple[Launch, tuple[int, int] | None]] = [(gather_launch(x, packed, ws.xperm)[0], None)]

    def launch(r0, ns, segs, lo, hi, row0):
        max_tiles = max(triton.cdiv(s.c1 - s.c0, bk) for s in segs)
        return Launch("dequant_kernel", (triton.cdiv(hi - lo, cfg.block_n), max_tiles),
                      (w, w.stride(0), rp, r0, ns, lo, hi, row0, gs, tuple(_seg_arg(s) for s in segs)),
                      dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BN=cfg.block_n, BK=bk,
                           ALIGNED=aligned, HAS_ROWPERM=has_rp, num_warps=cfg.num_warps))

    if chunk:
        r0, ns, segs = bs[0]
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            steps.append((launch(r0, ns, segs, a, b, a), (a, b)))
        return steps
    for i, (r0, ns, segs) in enumerate(bs):
        steps.append((launch(r0, ns, segs, 0, ns, 0), (0, n) if i == len(bs) - 1 else None))
    return steps


def dequant_mm(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                ws: Workspace, rows: tuple[int, int]) -> None:
    """cuBLAS part of the dequant path: ``out[:, a:b] = xperm @ wbuf[:b-a]^T (+ bias[a:b])``."""
    m, kdim = x.shape
    a, b = rows
    w = ws.wbuf[: (b - a) * kdim].view(b - a, kdim)
    xp = ws.xperm[: m * kdim].view(m, kdim)
    o = out[:, a:b]
    bb = bias[a:b] if bias is not None else None
    if bb is not None and bb.dtype == x.dtype:
        torch.addmm(bb, xp, w.t(), out=o)
    else:
        torch.mm(xp, w.t(), out=o)
        if bb is not None:
            o.add_(bb)


def _pair_gather(x: torch.Tensor, packed: PackedLinear, ws: Workspace, pdl: bool) -> Launch:
    """``pair_gather_kernel``: the activations paired per plane width and summed per 32 columns."""
    m, kdim = x.shape
    widths = _plane_widths(packed)
    return Launch("pair_gather_kernel", (triton.cdiv(kdim, _GATHER_BLOCK), m),
                  (x, x.stride(0), packed.col_perm, ws.xpair, ws.kp // 2, ws.pair_stride, ws.xs32, ws.kp // 32, kdim),
                  dict(XSCALE=H2_XSCALE, WIDTHS=widths, NW=len(widths), BLOCK=_GATHER_BLOCK, PDL=pdl), module="h2")


def gv_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``gv`` (one token): pair gather (unless ``cfg.gather``: each ``gv_kernel`` program pairs its own
    columns), one ``gv_kernel`` per band (and a finalize if split-K cannot finish in-kernel)."""
    gs = packed.segments[0].group_size
    bk, _ = _block_k(cfg.block_k, gs)
    pdl = _pdl(x, cfg)
    launches = [] if cfg.gather else [_pair_gather(x, packed, ws, pdl)]
    o = _split_output(packed, bias, out, ws, 1, cfg)
    for r0, ns, segs in bands(packed):
        args = (ws.xpair, ws.pair_stride, ws.xs32, out, o.acc, o.rp, o.b, r0, cfg.split_k, o.cnt, 0,
                tuple(_seg_arg(s) for s in segs), x, packed.col_perm, x.shape[1])
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), NS=ns, BN=cfg.block_n, BK=bk, GS=gs,
                  ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  XSCALE_INV=1.0 / H2_XSCALE, DEPTH=cfg.depth, GATHER=cfg.gather, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, **_pdl_kw(pdl), **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))
        launches.append(Launch("gv_kernel", (triton.cdiv(ns, cfg.block_n), cfg.split_k), args, kw, module="gv"))
    return launches + o.finish(out, bias is not None)


def mv_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``mv`` (tensor cores; one token: ``mv_kernel``, or ``mvs_kernel`` with ``k_warps``; 2-16 tokens:
    ``mvt_kernel``): ``mv_gather_kernel`` (activation pairs and per-block sums; none where the programs read ``x``
    themselves, :func:`mv_direct`), one matmul launch per band (and a finalize if split-K cannot finish in-kernel:
    always with more than one token)."""
    m, kdim = x.shape
    nblk = triton.cdiv(kdim, MV.TILE)
    stride_cs = m * nblk  # xc32 as [XC_SLOTS, m, nblk]
    widths = _plane_widths(packed)
    pdl = _pdl(x, cfg)
    if mv_direct(x, packed, cfg):  # no gather: each program reads x itself
        o = _split_output(packed, bias, out, ws, m, cfg)
        if cfg.k_warps:
            return _mvs_launches(packed, bias, out, ws, cfg, stride_cs, False, o, x)
        return _mv1_launches(x, packed, bias, out, ws, cfg, stride_cs, False, o, direct=True)
    launches = [Launch("mv_gather_kernel", (nblk, m),
                       (x, x.stride(0), packed.col_perm, ws.xpair, ws.kp // 2, ws.pair_stride, ws.xc32, stride_cs,
                        nblk, kdim),
                       dict(XSCALE=H2_XSCALE, WIDTHS=widths, NW=len(widths), PDL=pdl), module="mv")]
    o = _split_output(packed, bias, out, ws, m, cfg)
    if cfg.k_warps:
        return launches + _mvs_launches(packed, bias, out, ws, cfg, stride_cs, pdl, o)
    if m == 1:
        return launches + _mv1_launches(x, packed, bias, out, ws, cfg, stride_cs, pdl, o)
    nt = 32 * cfg.num_warps
    for r0, ns, segs in bands(packed):
        kw = dict(_mv_kw(x, segs, ns, bias, o, cfg, pdl), XSCALE_INV=1.0 / H2_XSCALE, NB=triton.cdiv(m, 8))
        args = (ws.xpair, ws.kp // 2, ws.pair_stride, ws.xc32, stride_cs, nblk, out, out.stride(0), o.acc,
                o.acc_stride, o.rp, o.b, r0, m, 0, tuple(_seg_arg(s) for s in segs))
        launches.append(Launch("mvt_kernel", (triton.cdiv(ns, nt), cfg.split_k), args, kw, module="mvt"))
    return launches + o.finish(out, bias is not None)


def _mv_kw(x: torch.Tensor, segs: list[Segment], ns: int, bias: torch.Tensor | None, o: _SplitOutput,
           cfg: KernelConfig, pdl: bool) -> dict:
    """The constexprs and launch options ``mv_kernel`` and ``mvt_kernel`` share for one band."""
    return dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), NS=ns, NT=32 * cfg.num_warps,
                GS=segs[0].group_size, ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None,
                ASM=x.is_cuda, DEPTH=cfg.depth, L2A=cfg.l2_ahead, num_warps=cfg.num_warps, num_stages=1,
                **_pdl_kw(pdl), **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))


def _mv1_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                  ws: Workspace, cfg: KernelConfig, stride_cs: int, pdl: bool, o: _SplitOutput,
                  direct: bool = False) -> list[Launch]:
    """One ``mv_kernel`` per band (one token, K split over ``cfg.split_k`` programs), reading the gather's pairs and
    sums, or with ``direct`` ``x`` itself (:func:`mv_direct`; ``DIRECT_PERM`` unless ``col_perm`` is the
    identity), and the finalize if split-K cannot finish in-kernel."""
    launches = []
    xw = x.view(torch.int32) if direct else ws.xpair
    for r0, ns, segs in bands(packed):
        kw = dict(_mv_kw(x, segs, ns, bias, o, cfg, pdl), FUSED=o.fused,
                  XSCALE_INV=1.0 if direct else 1.0 / H2_XSCALE,
                  **({"DIRECT": True, "DIRECT_PERM": not identity_perm(packed),
                      "XBF16": x.dtype == torch.bfloat16} if direct else {}))
        kw.update(_shares_kw(cfg, segs))
        args = (xw, ws.pair_stride, ws.xc32, stride_cs, out, o.acc, o.rp, o.b, r0, cfg.split_k, o.cnt, 0,
                tuple(_seg_arg(s) for s in segs), packed.col_perm)
        launches.append(Launch("mv_kernel", (triton.cdiv(ns, 32 * cfg.num_warps), cfg.split_k), args, kw,
                               module="mv1"))
    return launches + o.finish(out, bias is not None)


def segment_units(segs: list[Segment], tile_units: int = 0, plane_units: int = 0) -> tuple[int, ...]:
    """A 128-column tile's bytes per row in each segment, in 1/16ths of a byte (codes, float16 scale and zero per
    group), plus ``tile_units`` (``KernelConfig.tile_units``: a fixed cost per tile) and ``plane_units`` for each bit
    plane past the first (``KernelConfig.plane_units``; 3-bit codes have two): the weights of
    ``KernelConfig.byte_split``'s equal shares."""
    if tile_units < 0 or plane_units < 0:
        raise ValueError(f"tile_units and plane_units must be >= 0, got {tile_units}, {plane_units}")
    return tuple(2 * MV.TILE * s.bits + 64 * MV.TILE // s.group_size + tile_units
                 + plane_units * (len(plane_widths(s.bits)) - 1) for s in segs)


def _shares_kw(cfg: KernelConfig, segs: list[Segment]) -> dict:
    """``SEG_UNITS`` for a ``byte_split`` launch of ``mv_kernel`` / ``wg_kernel`` over a band of several segments
    (one segment has nothing to share out: the plain split), else nothing."""
    return {"SEG_UNITS": segment_units(segs, cfg.tile_units, cfg.plane_units)} if cfg.byte_split and len(segs) > 1 \
        else {}


def mv_reads_x(x: torch.Tensor, packed: PackedLinear) -> bool:
    """Whether one-token ``mv`` can read ``x`` itself (``_mvx``): one float16 token, or a bfloat16 one on codes
    of planes up to 4 bits wide (no 8-bit codes: their plane does not fit bfloat16's 7 mantissa bits), 16-byte
    aligned and contiguous, and a ``col_perm`` that moves whole 128-column tiles (:func:`perm_run`; the identity
    included)."""
    bf16_ok = x.dtype == torch.bfloat16 and bf16_codes(packed)
    return (x.shape[0] == 1 and (x.dtype == torch.float16 or bf16_ok) and x.stride(1) == 1 and x.data_ptr() % 16 == 0
            and x.shape[1] % 8 == 0 and perm_run(packed) >= MV.TILE)


def bf16_codes(packed: PackedLinear) -> bool:
    """Whether every plane of the layer can be read as bfloat16 (``_bf16``: planes up to ``BF16_MAX_WIDTH`` bits;
    not 8-bit codes), so that a kernel reading bfloat16 ``x`` itself multiplies in bfloat16."""
    return all(max(plane_widths(s.bits)) <= BF16_MAX_WIDTH for s in packed.segments)


def mv_direct(x: torch.Tensor, packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether a one-token ``mv`` call reads ``x`` itself: ``cfg.direct`` where :func:`mv_reads_x`."""
    return cfg.path == "mv" and cfg.direct and mv_reads_x(x, packed)


# segment bit-widths whose codes make one operand per block in wg: one plane, or 3-bit codes merged with join
_WG_DIRECT_BITS = frozenset(b for b, widths in PLANE_WIDTHS.items() if len(widths) == 1) | {3}


def wg_direct(x: torch.Tensor, packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether a ``wg`` call reads ``x`` itself (``cfg.direct``, ``_wg._direct_x``): float16 ``x``, or bfloat16 on
    codes :func:`bf16_codes` takes (then multiplied as bfloat16), with unit column stride, codes of one operand per
    block (``_WG_DIRECT_BITS``) and a ``col_perm`` that moves whole blocks of the call's block size
    (:func:`perm_run`; the identity included)."""
    return (cfg.path == "wg" and cfg.direct and cfg.join
            and (x.dtype == torch.float16 or (x.dtype == torch.bfloat16 and bf16_codes(packed))) and x.stride(1) == 1
            and all(s.bits in _WG_DIRECT_BITS for s in packed.segments)
            and perm_run(packed) >= tc_block(packed.segments[0].group_size))


def _mvs_launches(packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor, ws: Workspace,
                  cfg: KernelConfig, stride_cs: int, pdl: bool, o: _SplitOutput,
                  x: torch.Tensor | None = None) -> list[Launch]:
    """``mv`` with ``k_warps``: one ``mvs_kernel`` per band (32 rows and all of K per program), reading the
    gather's pairs and sums, or with ``x`` the activations themselves (``DIRECT``: :func:`mv_direct`;
    ``DIRECT_PERM`` unless ``col_perm`` is the identity)."""
    launches = []
    for r0, ns, segs in bands(packed):
        tpw = tuple(triton.cdiv((s.c1 - s.c0) // MV.TILE, cfg.k_warps) for s in segs)
        if sum(tpw) > MVS.MVS_MAX_TILES:
            raise ValueError(f"path 'mv' with k_warps={cfg.k_warps} keeps {sum(tpw)} K tiles per warp in registers "
                             f"on this layer, at most {MVS.MVS_MAX_TILES}: take more k_warps or split_k")
        xw = ws.xpair if x is None else x.view(torch.int32)
        args = (xw, ws.pair_stride, ws.xc32, stride_cs, out, o.rp, o.b, r0, 0, tuple(_seg_arg(s) for s in segs),
                packed.col_perm)
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), SEG_TPW=tpw, NSEG=len(segs), NS=ns, NW=cfg.k_warps,
                  GS=segs[0].group_size, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, ASM=out.is_cuda,
                  XSCALE_INV=1.0 if x is not None else 1.0 / H2_XSCALE, DIRECT=x is not None,
                  DIRECT_PERM=x is not None and not identity_perm(packed),
                  XBF16=x is not None and x.dtype == torch.bfloat16, num_warps=cfg.k_warps,
                  num_stages=1, **_pdl_kw(pdl),
                  **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))
        launches.append(Launch("mvs_kernel", (triton.cdiv(ns, 32),), args, kw, module="mvs"))
    return launches


def h2_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """Pair gather, one ``h2_kernel`` per band (and a finalize if split-K cannot finish in-kernel)."""
    m = x.shape[0]
    gs = packed.segments[0].group_size
    bk, _ = _block_k(cfg.block_k, gs)
    pdl = _pdl(x, cfg)
    stride_wm, stride_sm = ws.kp // 2, ws.kp // 32
    launches = [_pair_gather(x, packed, ws, pdl)]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in bands(packed):
        args = (ws.xpair, stride_wm, ws.pair_stride, ws.xs32, stride_sm, out, out.stride(0), o.acc,
                o.acc_stride, o.rp, o.b, m, r0, ns, gs, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BM=cfg.block_m, BN=cfg.block_n, BK=bk,
                  ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  XSCALE_INV=1.0 / H2_XSCALE, PREFETCH=cfg.prefetch and cfg.block_m == 1, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, **_pdl_kw(pdl))
        launches.append(Launch("h2_kernel", (triton.cdiv(ns, cfg.block_n), cfg.split_k), args, kw, module="h2"))
    return launches + o.finish(out, bias is not None)


def tc_block(group_size: int) -> int:
    """Columns per block of the ``tc`` path: the largest power of two <= 128 dividing the group
    size (0 if below 32)."""
    blk = 128
    while blk >= 32 and group_size % blk:
        blk //= 2
    return blk if blk >= 32 else 0


def _operand_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                      ws: Workspace, cfg: KernelConfig, kernel: str, tiles: dict) -> list[Launch]:
    """The ``tc`` / ``wg`` call: an operand-order gather (``_wg.operand_gather_kernel``), one ``kernel``
    launch per band with the path's tile constexprs ``tiles``, and a finalize if split-K cannot
    finish in-kernel. Grid ``(cdiv(M, block_m) * cdiv(ns, block_n), split_k)``."""
    m, kdim = x.shape
    gs = packed.segments[0].group_size
    blk = tc_block(gs)
    kt = triton.cdiv(kdim, blk) * blk
    widths = _plane_widths(packed)
    direct = wg_direct(x, packed, cfg)
    pdl = _pdl(x, cfg) and not direct
    if direct:  # no gather: x as it is (its row stride for stride_tm; the sums' buffer unused)
        xt, stride_tm, stride_tb, stride_sm = x, x.stride(0), 0, 0
        launches = []
        perm = not identity_perm(packed)  # blocks moved whole: each block's first source column read from col_perm
    else:
        xt = ws.xpair.view(torch.float16)
        stride_tm, stride_tb, stride_sm = ws.kp, 2 * ws.pair_stride, ws.kp // 32
        launches = [Launch("operand_gather_kernel", (triton.cdiv(kt, _GATHER_BLOCK), m),
                           (x, x.stride(0), packed.col_perm, xt, stride_tm, stride_tb, ws.xs32, stride_sm, kdim, kt),
                           dict(WIDTHS=widths, NW=len(widths), BLK=blk, JOIN=cfg.join, BLOCK=_GATHER_BLOCK,
                                TC_ORDER=cfg.path == "tc", PDL=pdl), module="wg")]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in bands(packed):
        args = (xt, stride_tm, stride_tb, ws.xs32, stride_sm, out, out.stride(0), o.acc, o.acc_stride,
                o.rp, o.b, m, r0, ns, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        args += (packed.col_perm,) if kernel == "wg_kernel" else ()
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), GS=gs, BLK=blk, **tiles, ATOMIC=o.atomic,
                  HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_pdl_kw(pdl),
                  **({"DIRECT": True, "DIRECT_PERM": perm, "XBF16": x.dtype == torch.bfloat16} if direct else {}))
        kw.update(_shares_kw(cfg, segs))  # wg only (KernelConfig refuses byte_split on tc)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
        launches.append(Launch(kernel, grid, args, kw, module=cfg.path))
    return launches + o.finish(out, bias is not None)


def tc_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``tc``: operand-order gather, one ``tc_kernel`` per band (``BM`` tokens x ``BN`` rows per tile)."""
    return _operand_launches(x, packed, bias, out, ws, cfg, "tc_kernel", dict(BM=cfg.block_m, BN=cfg.block_n))


def _fused_split(ws: Workspace, m: int, packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether the split-K sums of a ``gv``/``mv``/``h2``/``h2dot``/``tc``/``wg`` launch can be finished by their
    last program (enough tile counters in ``ws.cnt``), instead of a ``finalize_kernel`` launch (``mv`` with more
    than one token has no in-kernel finish: ``mvt_kernel`` writes each lane's outputs on their own)."""
    if cfg.path == "mv" and m > 1:
        return False
    m_tiles = 1 if cfg.path in ("gv", "mv", "h2") else triton.cdiv(m, cfg.block_m)
    ns = max(n for _, n, _ in bands(packed))
    return cfg.split_k > 1 and m_tiles * triton.cdiv(ns, cfg.block_n) <= ws.cnt.numel()


def wg_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``wg``: operand-order gather, one ``wg_kernel`` per band; ``cfg.block_m`` is the token tile ``BT``,
    ``cfg.block_n`` the weight-row tile ``BN``; launches whose ``M`` fills whole token tiles skip the
    token masks (``EVEN_M``)."""
    m = x.shape[0]
    return _operand_launches(x, packed, bias, out, ws, cfg, "wg_kernel",
                             dict(BN=cfg.block_n, BT=cfg.block_m, JOIN=cfg.join, SCALED=cfg.scaled,
                                  EVEN_M=m % cfg.block_m == 0))


WGS_MAX_SEGMENTS = 8  # segments per band: _wgs.wgs_kernel takes one TMA descriptor argument (xd0..xd7) for each
WGS_TILE = 256 * 128  # float32 sums in a stream-K partial slot (Workspace.skp): the dispatch's 256 x 128 tiles
WGSW_SLOTS = 4  # weight-ring slots of the warp-specialised wgs (_wgsw): 4 x 16 KB at 128 x 64 half tiles
# producer warps -> (maxnreg of the launch, registers of each producer warp): 8 MMA warps + P producers share the
# SM's 64K registers; the MMA warps (a 256x128 float32 accumulator is 128 registers each) get the rest (184 / 160)
WGSW_REGS = {4: (168, 128), 8: (128, 96)}


def wgs_block_k(group_size: int) -> int:
    """``wgs``'s K tile: 64 columns, or 32 for group sizes that are odd multiples of 32 (0: none fits)."""
    return 64 if group_size % 64 == 0 else (32 if group_size % 32 == 0 else 0)


def wgs_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """``wgs``: ``x[:, col_perm]`` into ``ws.xperm``, then one kernel per band; ``cfg.block_m`` is the token
    tile ``BT``, ``cfg.block_n`` the row tile ``BN``. The kernels read the activations by TMA (zeros past
    ``K`` and ``M``). ``wgs_kernel`` (no producers) takes per segment a descriptor of ``xperm[:, :c1]`` and
    writes ``out``; with ``cfg.producers`` see :func:`_producer_launches`."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from slimq.kernels.triton._wgs import smem_layout
    m, kdim = x.shape
    # _dq16's half2 dequantization: float16, whole 16-column blocks, and no 7-bit codes (their top plane's
    # magic constant would overflow float16)
    h2 = (bool(cfg.producers) and x.dtype == torch.float16 and kdim % 16 == 0
          and all(s.bits != 7 for s in packed.segments))
    # stream-K starts during the gather (programmatic dependent launch): its producers dequantize the first
    # tiles while the MMA warps wait for the gathered activations (griddepcontrol.wait)
    pdl = bool(cfg.stream_k) and _pdl(x, cfg)
    gather, xin = gather_launch(x, packed, ws.xperm, pair16=h2, pdl=pdl)
    bk = wgs_block_k(packed.segments[0].group_size)
    box, layout = [cfg.block_m, bk], smem_layout(bk, 8 * x.element_size())
    if cfg.producers:
        whole = TensorDescriptor(xin, [m, kdim], [kdim, 1], box, layout)
        return [gather] + _producer_launches(whole, packed, bias, out, ws, cfg, bk, h2, pdl)
    launches = [gather]
    _, has_rp, rp, b = _output_args(packed, bias, out, ws, m, False)
    for r0, ns, segs in bands(packed):
        descs = [TensorDescriptor(xin, [m, s.c1], [kdim, 1], box, layout) for s in segs]
        descs += descs[:1] * (WGS_MAX_SEGMENTS - len(descs))
        grid = triton.cdiv(ns, cfg.block_n) * triton.cdiv(m, cfg.block_m)
        launches.append(Launch("wgs_kernel", (grid,), (*descs, m, out, out.stride(0), rp, b, r0, ns,
                                                       tuple(_seg_arg(s) for s in segs)),
                               _wgs_kwargs(packed, bias, cfg, segs, bk, has_rp), module="wgs"))
    return launches


def _wgs_kwargs(packed: PackedLinear, bias: torch.Tensor | None, cfg: KernelConfig, segs: list[Segment], bk: int,
                has_rp: bool) -> dict:
    """The constexprs and launch options every ``wgs`` kernel of one band takes."""
    return dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), GS=packed.segments[0].group_size,
                BT=cfg.block_m, BN=cfg.block_n, BK=bk, XAHEAD=cfg.num_stages, HAS_ROWPERM=has_rp,
                HAS_BIAS=bias is not None, num_warps=cfg.num_warps, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}))


def _producer_launches(whole, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor, ws: Workspace,
                       cfg: KernelConfig, bk: int, h2: bool, pdl: bool) -> list[Launch]:
    """The warp-specialised ``wgs`` launches after the gather, one per band, all reading ``whole`` (one TMA
    descriptor of the gathered ``[M, K]``, in ``_dq16``'s pair order with ``h2``): ``wgsk_kernel`` with
    ``cfg.stream_k`` (persistent programs sharing the band's tiles x K tiles; the first launched during the
    gather with ``pdl``), else ``wgsw_kernel``, which with ``cfg.split_k > 1`` adds float32 sums into the
    workspace for a ``finalize_kernel`` launch."""
    m, kdim = whole.shape
    split = cfg.split_k > 1  # float32 sums in the workspace, then finalize_kernel
    acc, has_rp, rp, b = _output_args(packed, bias, out, ws, m, split)
    maxnreg, pregs = WGSW_REGS[cfg.producers]
    launches = []
    for r0, ns, segs in bands(packed):
        segs = sorted(segs, key=lambda t: t.c0)  # K tiles are numbered across the band's segments, in column order
        why = wgs_tiles_contiguous(segs, kdim, bk)
        if why:
            raise ValueError(f"wgs with producers: {why}")
        kw = _wgs_kwargs(packed, bias, cfg, segs, bk, has_rp)
        kw.update(P=cfg.producers, PREGS=pregs, WS=WGSW_SLOTS, H2=h2, AHEAD=cfg.depth + 1,
                  maxnreg=cfg.maxnreg or maxnreg)
        seg_args = tuple(_seg_arg(s) for s in segs)
        grid = triton.cdiv(ns, cfg.block_n) * triton.cdiv(m, cfg.block_m)
        if cfg.stream_k:
            programs = min(cfg.stream_k, grid * triton.cdiv(kdim, bk))
            check_stream_room(ws, programs, cfg)
            launches.append(Launch("wgsk_kernel", (programs,),
                                   (whole, m, out, out.stride(0), ws.skp, ws.skf, rp, b, r0, ns, seg_args),
                                   {**kw, **_pdl_kw(pdl)}, module="wgsk"))
            pdl = False  # a later band's launch follows a wgsk launch, not the gather
            continue
        kw.update(SPLIT=cfg.split_k)
        if split:
            kw.update(HAS_ROWPERM=False, HAS_BIAS=False)  # finalize_kernel applies them
        launches.append(Launch("wgsw_kernel", (grid * cfg.split_k,),
                               (whole, m, out, out.stride(0), acc, acc.stride(0) if split else 0, rp, b, r0, ns,
                                seg_args), kw, module="wgsw"))
    if split:
        launches.append(_finalize_launch(acc, out, rp, b, has_rp, bias is not None))
    return launches


def check_stream_room(ws: Workspace, programs: int, cfg: KernelConfig) -> None:
    """A stream-K launch of ``programs`` needs a partial-sum slot (``block_m * block_n`` float32) and a flag each."""
    need = programs * cfg.block_m * cfg.block_n
    if ws.skp.numel() < need or ws.skf.numel() < programs:
        raise ValueError(f"{cfg.path} with stream_k={cfg.stream_k} needs a workspace with room for {programs} "
                         f"partial tiles ({need} float32 in 'skp', {programs} flags in 'skf'); this one has "
                         f"{ws.skp.numel()} and {ws.skf.numel()} (Workspace(..., stream_k_programs=...) sizes them)")


def wgs_tiles_contiguous(segs: list[Segment], kdim: int, bk: int) -> str | None:
    """``wgsw_kernel`` numbers K tiles across a band's segments: why ``segs`` do not cover ``[0, K)`` in
    column order with every boundary but ``K`` on a multiple of ``bk`` (layouts from ``slimq.format`` do),
    or None."""
    c = 0
    for s in sorted(segs, key=lambda t: t.c0):
        if s.c0 != c or (s.c1 != kdim and s.c1 % bk):
            return (f"a band's segments {[(t.c0, t.c1) for t in segs]} do not cover [0, {kdim}) in order on "
                    f"{bk}-column boundaries")
        c = s.c1
    return None if c == kdim else f"a band's segments end at column {c}, not K = {kdim}"
