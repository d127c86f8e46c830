"""Host side of the Triton backend: shape-based dispatch, workspaces and launches.

``sbp_matmul(x, packed, bias, out=..., workspace=...)`` computes ``y = x @ W_hat^T + bias`` for a
:class:`~slimq.format.layout.PackedLinear` straight from its segment tensors (no repacking).
With ``out`` and ``workspace`` given it allocates nothing, copies nothing and never
synchronises with the host, so it can be captured in a CUDA graph.

Paths (``KernelConfig.path``), chosen by :func:`select_config` from ``M``:

* ``"fma"``  (``M == 1``): CUDA-core GEMV that streams the packed words once.
* ``"dot"``  (``1 < M <= 16``): same streaming, tensor cores with ``M`` padded to 16.
* ``"gemm"`` (``M > 16``): tiled ``tl.dot`` on tiles dequantized in registers.
* ``"dequant"``: dequantize into ``workspace.wbuf`` then cuBLAS (``torch.mm``); selectable,
  measured against ``"gemm"`` by ``benchmarks/kernels.py``.

``walk=True`` runs one launch per band (rows shared by several segments, e.g. the 1/2/3-bit
segments of a SliM-LLM layer) that walks all its segments; ``walk=False`` runs one launch per
segment, accumulating in the float32 workspace.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import triton

from slimq.format.layout import PackedLinear, Segment
from slimq.kernels.triton import _kernels as K

__all__ = ["KernelConfig", "Workspace", "select_config", "sbp_matmul", "PATHS",
           "FMA_MAX_M", "SKINNY_MAX_M"]

PATHS = ("fma", "dot", "gemm", "dequant")
FMA_MAX_M = 1        # CUDA cores up to here ...
SKINNY_MAX_M = 16    # ... tensor cores with M padded to 16 up to here, tiled GEMM beyond
_FINALIZE_BLOCK = 1024
_GATHER_BLOCK = 1024


@dataclass(frozen=True)
class KernelConfig:
    """One launch recipe. ``block_k`` is reduced automatically to divide the group size."""

    path: str
    block_m: int = 16
    block_n: int = 128
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    walk: bool = True
    gather: bool = False  # fuse x[:, col_perm] into the matmul kernel (else a gather pass into the workspace)
    group_m: int = 8

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.block_k < 32:
            raise ValueError(f"block_k must be >= 32 (whole words of every plane), got {self.block_k}")
        if self.path in ("dot", "gemm") and (self.block_m < 16 or self.block_n < 16):
            raise ValueError(f"tensor-core paths need block_m, block_n >= 16, got {self.block_m}, {self.block_n}")
        if self.split_k < 1:
            raise ValueError(f"split_k must be >= 1, got {self.split_k}")


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def select_config(m: int, n: int, k: int, *, num_sms: int = 132) -> KernelConfig:
    """The dispatch rule: kernel path and tiling for ``x [m, k] @ W^T`` with ``W [n, k]``.

    Split-K is used only where the output tiles alone cannot fill ``num_sms`` multiprocessors.
    """
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"m, n, k must be >= 1, got {m}, {n}, {k}")
    if m <= FMA_MAX_M:
        bn = 128
        cfg = KernelConfig("fma", block_m=1, block_n=bn, block_k=128, num_warps=4, num_stages=3)
        tiles = triton.cdiv(n, bn)
        want = max(1, min(triton.cdiv(2 * num_sms, tiles), max(1, k // 1024)))
        return dataclasses.replace(cfg, split_k=want)
    if m <= SKINNY_MAX_M:
        bn = 64
        tiles = triton.cdiv(n, bn)
        want = max(1, min(triton.cdiv(2 * num_sms, tiles), max(1, k // 1024)))
        return KernelConfig("dot", block_m=16, block_n=bn, block_k=128, split_k=want, num_warps=4, num_stages=3)
    bm = 64 if m <= 64 else 128
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, 128)
    want = max(1, min(triton.cdiv(num_sms, tiles), max(1, k // 2048)))
    return KernelConfig("gemm", block_m=bm, block_n=128, block_k=64, split_k=want, num_warps=4 if bm == 64 else 8,
                        num_stages=4, gather=False)


class Workspace:
    """Preallocated scratch for :func:`sbp_matmul`, shareable by all layers on one device.

    ``acc``: float32 ``[max_m * max_n]``, all zeros between calls (kernels that use it
    re-zero it). ``xperm``: ``[max_m * max_k]`` activations gathered into storage column
    order (``xperm32``: the same in float32 for the ``M == 1`` path). ``wbuf``:
    ``[max_n * max_k]`` dequantized weights (only if ``dequant``).
    """

    def __init__(self, device: torch.device | str, max_m: int, max_n: int, max_k: int,
                 dtype: torch.dtype = torch.float16, *, dequant: bool = False) -> None:
        self.max_m, self.max_n, self.max_k, self.dtype = max_m, max_n, max_k, dtype
        self.acc = torch.zeros(max_m * max_n, dtype=torch.float32, device=device)
        self.xperm = torch.empty(max_m * max_k, dtype=dtype, device=device)
        self.xperm32 = torch.empty(max_k, dtype=torch.float32, device=device)
        self.wbuf = torch.empty(max_n * max_k, dtype=dtype, device=device) if dequant else None

    def check(self, m: int, n: int, k: int, dtype: torch.dtype, path: str) -> None:
        if m > self.max_m or n > self.max_n or k > self.max_k:
            raise ValueError(f"workspace holds m, n, k <= {self.max_m}, {self.max_n}, {self.max_k}; "
                             f"got {m}, {n}, {k}")
        if dtype != self.dtype:
            raise TypeError(f"workspace dtype is {self.dtype}, activations are {dtype}")
        if path == "dequant" and self.wbuf is None:
            raise ValueError("the dequant path needs a Workspace(..., dequant=True)")


def _bands(packed: PackedLinear) -> list[tuple[int, int, list[Segment]]]:
    """Segments grouped by row range, in storage order: ``[(r0, ns, [segment, ...]), ...]``."""
    bands: dict[tuple[int, int], list[Segment]] = {}
    for s in packed.segments:
        bands.setdefault((s.r0, s.r1), []).append(s)
    return [(r0, r1 - r0, segs) for (r0, r1), segs in bands.items()]


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


def _check_inputs(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.shape[1] != packed.in_features:
        raise ValueError(f"x must be [M, K={packed.in_features}], got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.stride(1) != 1:
        raise ValueError(f"x must be contiguous along K, got strides {x.stride()}")
    if bias is not None and tuple(bias.shape) != (packed.out_features,):
        raise ValueError(f"bias must be [N={packed.out_features}], got {tuple(bias.shape)}")
    if out is not None:
        want = (x.shape[0], packed.out_features)
        if tuple(out.shape) != want or out.dtype != x.dtype or out.stride(1) != 1:
            raise ValueError(f"out must be {x.dtype} {want} contiguous along N, got {out.dtype} "
                             f"{tuple(out.shape)} strides {out.stride()}")
    gss = {s.group_size for s in packed.segments}
    if len(gss) != 1:
        raise ValueError(f"all segments of a layer must share one group size, got {sorted(gss)}")


def sbp_matmul(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None, *,
               out: torch.Tensor | None = None, workspace: Workspace | None = None,
               config: KernelConfig | None = None) -> torch.Tensor:
    """``out [M, N] = x [M, K] @ W_hat^T + bias`` on the GPU, in ``x.dtype``.

    ``x``: float16/bfloat16 (float32 also works, slower) ``[M, K]`` contiguous along K, in the
    layer's original column order. ``bias``: ``[N]`` any float dtype, or None. ``out``:
    preallocated ``[M, N]`` in ``x.dtype``; ``workspace``: a :class:`Workspace` big enough for
    this call. Missing ``out``/``workspace`` are allocated here (then the call is not
    allocation-free). ``config`` overrides :func:`select_config`.
    """
    _check_inputs(x, packed, bias, out)
    m, kdim = x.shape
    n = packed.out_features
    cfg = config or select_config(m, n, kdim, num_sms=_num_sms(x.device))
    if cfg.path in ("fma", "dot") and m > (cfg.block_m if cfg.path == "fma" else max(cfg.block_m, 16)):
        raise ValueError(f"path {cfg.path!r} with block_m={cfg.block_m} takes M <= {cfg.block_m}, got {m}")
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if workspace is None:
        workspace = Workspace(x.device, m, n, kdim, x.dtype, dequant=cfg.path == "dequant")
    workspace.check(m, n, kdim, x.dtype, cfg.path)
    if m == 0:
        return out
    if cfg.path == "dequant":
        return _run_dequant(x, packed, bias, out, workspace, cfg)
    xin = x
    if not cfg.gather:
        buf = workspace.xperm32 if cfg.path == "fma" and m == 1 else workspace.xperm
        xin = buf[: m * kdim].view(m, kdim)
        K.gather_kernel[(triton.cdiv(kdim, _GATHER_BLOCK), m)](x, x.stride(0), packed.col_perm, xin, xin.stride(0),
                                                              kdim, BLOCK=_GATHER_BLOCK)
    _run_kernels(xin, packed, bias, out, workspace, cfg, cfg.gather)
    return out


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter (CPU tensors, tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _run_kernels(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig, gather: bool) -> None:
    m = x.shape[0]
    n = packed.out_features
    bands = _bands(packed)
    gs = packed.segments[0].group_size
    bk, aligned = _block_k(cfg.block_k, gs)
    skinny = cfg.path in ("fma", "dot")
    bm = (max(cfg.block_m, 16) if cfg.path == "dot" else cfg.block_m) if skinny else cfg.block_m
    launches = [(r0, ns, segs) for r0, ns, segs in bands] if cfg.walk else \
        [(r0, ns, [s]) for r0, ns, segs in bands for s in segs]
    per_band = {r0: len(segs) for r0, _, segs in bands}
    atomic = cfg.split_k > 1 or (not cfg.walk and max(per_band.values()) > 1)
    acc = ws.acc[: m * n].view(m, n)
    has_rp = packed.row_perm is not None
    rp = packed.row_perm if has_rp else packed.col_perm  # any int32 tensor when unused
    b = bias if bias is not None else out
    for r0, ns, segs in launches:
        common = dict(
            SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BM=bm, BN=cfg.block_n, BK=bk,
            GATHER=gather, ALIGNED=aligned, ATOMIC=atomic,
            HAS_ROWPERM=has_rp, HAS_BIAS=bias is not None, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        args = (x, x.stride(0), packed.col_perm, out, out.stride(0), acc, acc.stride(0), rp, b,
                m, r0, ns, gs, cfg.split_k, tuple(_seg_arg(s) for s in segs))
        if skinny:
            grid = (triton.cdiv(ns, cfg.block_n), cfg.split_k)
            K.skinny_kernel[grid](*args, USE_DOT=cfg.path == "dot", ASM=x.is_cuda, **common)
        else:
            grid = (triton.cdiv(m, bm) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
            K.gemm_kernel[grid](*args, GROUP_M=cfg.group_m, **common)
    if atomic:
        grid = (triton.cdiv(n, _FINALIZE_BLOCK), m)
        K.finalize_kernel[grid](acc, acc.stride(0), out, out.stride(0), rp, b, m, n,
                                BLOCK=_FINALIZE_BLOCK, HAS_ROWPERM=has_rp, HAS_BIAS=bias is not None)


def _run_dequant(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> torch.Tensor:
    m, kdim = x.shape
    n = packed.out_features
    w = ws.wbuf[: n * kdim].view(n, kdim)
    gs = packed.segments[0].group_size
    bk, aligned = _block_k(cfg.block_k, gs)
    has_rp = packed.row_perm is not None
    rp = packed.row_perm if has_rp else packed.col_perm
    for r0, ns, segs in _bands(packed):
        max_tiles = max(triton.cdiv(s.c1 - s.c0, bk) for s in segs)
        grid = (triton.cdiv(ns, cfg.block_n), max_tiles)
        K.dequant_kernel[grid](w, w.stride(0), rp, r0, ns, gs, tuple(_seg_arg(s) for s in segs),
                               SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BN=cfg.block_n, BK=bk,
                               ALIGNED=aligned, HAS_ROWPERM=has_rp, num_warps=cfg.num_warps)
    xp = ws.xperm[: m * kdim].view(m, kdim)
    K.gather_kernel[(triton.cdiv(kdim, _GATHER_BLOCK), m)](x, x.stride(0), packed.col_perm, xp, xp.stride(0),
                                                          kdim, BLOCK=_GATHER_BLOCK)
    if bias is not None and bias.dtype == x.dtype:
        torch.addmm(bias, xp, w.t(), out=out)
    else:
        torch.mm(xp, w.t(), out=out)
        if bias is not None:
            out.add_(bias)
    return out
