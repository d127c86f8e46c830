"""Host side of the Triton backend: shape-based dispatch, workspaces and launches.

``sbp_matmul(x, packed, bias, out=..., workspace=...)`` computes ``y = x @ W_hat^T + bias`` for a
:class:`~slimq.format.layout.PackedLinear` straight from its segment tensors (no repacking).
With ``out`` and ``workspace`` given it allocates nothing, copies nothing and never
synchronises with the host, so it can be captured in a CUDA graph.

Paths (``KernelConfig.path``), chosen by :func:`select_config` from ``M``:

* ``"h2"``   (``M == 1``): CUDA-core GEMV in half2 arithmetic (two weights per instruction),
  activations pre-paired by a gather kernel (``slimq.kernels.triton._h2``).
* ``"wg"`` (``2 <= M <= WG_MAX_M``): the weight codes as the *register* operand of the
  tensor-core dot (Hopper ``wgmma`` takes only that one from registers), tokens as the other,
  ``y^T = W x^T`` (``slimq.kernels.triton._wg``).
* ``"dequant"`` (``M > WG_MAX_M``): dequantize into ``workspace.wbuf`` then cuBLAS (``torch.mm``);
  faster than ``"gemm"`` and ``"wg"`` there on the shapes measured (benchmarks/KERNEL_NOTES.md). With
  ``chunk_n`` it alternates dequantizing ``chunk_n`` output rows and multiplying them, so
  ``wbuf`` is only ``chunk_n x K`` (slower: not the default).
* ``"tc"`` / ``"h2dot"`` (``M <= 16``): exact half2 codes, or half2-dequantized weights, as the
  *second* fp16 MMA operand (``slimq.kernels.triton._tc``, ``_h2dot``); ``h2dot`` serves layers
  ``wg`` cannot run (segments off 64/128-column blocks), both are selectable by config.
* ``"gemm"`` (``M > 16``): tiled ``tl.dot`` on tiles dequantized in registers, for layers ``wg``
  cannot run.
* ``"fma"`` / ``"dot"``: the float32 CUDA-core GEMV and the float32-unpacking tensor-core path,
  used for layers the half2 paths cannot run (:func:`h2_supported`, :func:`fallback_config`)
  and selectable by config.

Split-K launches of ``h2``/``h2dot``/``tc``/``wg`` are finished by the last program of each output tile
(arrival counters in ``workspace.cnt``); the other paths use a ``finalize_kernel`` launch.

``walk=True`` runs one launch per band (rows shared by several segments, e.g. the 1/2/3-bit
segments of a SliM-LLM layer) that walks all its segments; ``walk=False`` runs one launch per
segment, accumulating in the float32 workspace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from slimq.format.layout import PackedLinear, Segment, plane_widths
from slimq.kernels.triton import _h2 as H2
from slimq.kernels.triton import _h2dot as H2D
from slimq.kernels.triton import _kernels as K
from slimq.kernels.triton import _tc as TC
from slimq.kernels.triton import _wg as WG

__all__ = ["KernelConfig", "Workspace", "Launch", "select_config", "fallback_config", "resolve_config", "sbp_matmul",
           "plan_launches", "h2_supported", "tc_supported", "tc_block", "workspace_fits", "kernel_fn",
           "PATHS", "FMA_MAX_M", "H2_MAX_M", "SKINNY_MAX_M", "WG_MAX_M", "DEQUANT_MIN_M", "H2_XSCALE"]

PATHS = ("h2", "h2dot", "tc", "wg", "fma", "dot", "gemm", "dequant")
H2_XSCALE = 1.0 / 16  # activations are scaled by this before half2 arithmetic (see _h2's module doc)
FMA_MAX_M = 1        # float32 CUDA-core fallback for M == 1 (layers h2 cannot run)
H2_MAX_M = 1         # half2 CUDA cores up to here ...
SKINNY_MAX_M = 16    # (fallbacks: h2dot / dot with M padded to 16 up to here, tiled gemm beyond)
WG_MAX_M = 128       # ... weights as the register operand of the tensor-core dot up to here ...
DEQUANT_MIN_M = WG_MAX_M + 1  # ... and dequantize-then-cuBLAS from here
_WG_WAVES = (3.9, 2.9)  # wg programs per SM to aim for: token tiles <= 32, >= 64 (runs 12-13)
_H2_MAX_PROGRAMS = 4096  # h2 (M == 1): K split 16, fewer when the grid would pass this (run 12)
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
    prefetch: bool = False  # "fma" / "h2" with M == 1: load the next tile before computing this one
    chunk_n: int = 0  # "dequant": rows dequantized per step (0: the whole layer at once)
    join: bool = False  # "h2dot"/"wg": join a tile's operand pieces into one tl.dot (else one dot per code pair)
    scaled: bool = False  # "wg": dequantized weights as operands (else exact codes, scaled per block)
    pdl: bool = True  # "h2"/"tc"/"wg" on sm_90+: the matmul launches during its gather, waits on the device

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.block_k < 32:
            raise ValueError(f"block_k must be >= 32 (whole words of every plane), got {self.block_k}")
        if self.path in ("dot", "gemm", "h2dot", "tc", "wg") and (self.block_m < 16 or self.block_n < 16):
            raise ValueError(f"tensor-core paths need block_m, block_n >= 16, got {self.block_m}, {self.block_n}")
        if self.split_k < 1:
            raise ValueError(f"split_k must be >= 1, got {self.split_k}")
        if self.path == "h2" and self.block_m > 16:
            raise ValueError(f"path 'h2' takes block_m <= 16, got {self.block_m}")
        if self.scaled and self.path != "wg":
            raise ValueError(f"scaled applies to path 'wg' only, got {self.path!r}")
        if self.chunk_n < 0 or (self.chunk_n and self.path != "dequant"):
            raise ValueError(f"chunk_n must be 0, or > 0 with path 'dequant'; got {self.chunk_n} for {self.path!r}")


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _pow2_at_most(v: int) -> int:
    return 1 << max(0, v.bit_length() - 1)


def select_config(m: int, n: int, k: int, *, num_sms: int = 132, bits: tuple[int, ...] | None = None) -> KernelConfig:
    """The dispatch rule: kernel path and tiling for ``x [m, k] @ W^T`` with ``W [n, k]``.

    Set from ``benchmarks/kernels.py --tune`` on an H200 (132 SMs; benchmarks/KERNEL_NOTES.md,
    runs 10-13; the ``h2`` rule from earlier H100 runs, re-checked there):

    * ``M == 1``: the half2 CUDA-core path ``h2`` (64-row tiles, 2 warps, register prefetch, K
      split 16, or 8 where that would make more than ``_H2_MAX_PROGRAMS`` programs: 2-13% faster
      on 28672 x 8192); ``wg`` with 16 padded tokens was 1.3-1.9x slower there.
    * ``2 <= M <= WG_MAX_M``: ``wg``, the weight codes as the register operand of the tensor-core
      dot (``wgmma`` on Hopper) with 64-row tiles, 4 warps, 3 stages, one dot per 128-column block
      (``join``), tokens in tiles of 16 (``M <= 16``), 32, 64 or 128; from 64-token tiles on, the
      operands are dequantized weights (``scaled``) instead of codes scaled per block. K is split
      so that the grid holds about ``_WG_WAVES`` programs per SM (rounded down to a power of two),
      and launched without programmatic dependent launch (``pdl=False``: equal or faster on every
      shape of run 14, up to 1.3x for 3-bit layers).
      It beat ``h2dot``/``tc`` at ``M = 4`` and 16 by 1.1-1.7x, ``gemm`` at 17-64 tokens by
      1.2-2.5x and dequantize-then-cuBLAS at 128 tokens (2-, 4-bit; 3-bit merged into one operand).
    * beyond: dequantize into the workspace then cuBLAS, in one pass.

    ``bits`` (the layer's segment bit-widths) is accepted for callers that know it; the rule does
    not need it now. Layers ``wg`` cannot run get :func:`resolve_config`'s fallback.
    """
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"m, n, k must be >= 1, got {m}, {n}, {k}")
    k_tiles = triton.cdiv(k, 128)
    if m <= H2_MAX_M:
        split = min(16, k_tiles, _pow2_at_most(max(1, _H2_MAX_PROGRAMS // triton.cdiv(n, 64))))
        return KernelConfig("h2", block_m=1, block_n=64, block_k=128, split_k=max(1, split), num_warps=2,
                            num_stages=1, prefetch=True)
    if m <= WG_MAX_M:
        bt = 16 if m <= 16 else (32 if m <= 32 else (64 if m <= 64 else 128))
        tiles = triton.cdiv(m, bt) * triton.cdiv(n, 64)
        waves = _WG_WAVES[0] if bt <= 32 else _WG_WAVES[1]
        split = 1 << max(0, int(math.log2(max(1.0, waves * num_sms / tiles))))
        return KernelConfig("wg", block_m=bt, block_n=64, split_k=max(1, min(16, split, k_tiles)), num_warps=4,
                            num_stages=3, join=True, scaled=bt >= 64, pdl=False)
    return KernelConfig("dequant", block_n=64, block_k=128, num_warps=4)


def _gemm_config(m: int, n: int, k: int, num_sms: int = 132) -> KernelConfig:
    """The tiled ``gemm`` path (any group size): 64 x 128 tiles, K split until ~1.2 waves of tiles."""
    tiles = triton.cdiv(m, 64) * triton.cdiv(n, 128)
    split = max(1, min(8, round(1.2 * num_sms / tiles), triton.cdiv(k, 64)))
    return KernelConfig("gemm", block_m=64, block_n=128, block_k=64, split_k=split, num_warps=4, num_stages=4)


def _h2dot_config(m: int, k: int) -> KernelConfig:
    """``h2dot`` for ``2 <= M <= 16``: 128-row tiles, 3 stages, K split 8 (4 for ``K > 8192`` at ``M > 8``)."""
    split = 8 if k <= 8192 or m <= 8 else 4
    return KernelConfig("h2dot", block_m=16, block_n=128, split_k=max(1, min(split, triton.cdiv(k, 128))),
                        num_warps=4, num_stages=3)


def fallback_config(m: int, n: int, k: int) -> KernelConfig:
    """The float32 skinny paths, for ``M <= 16`` layers the ``h2``/``h2dot`` paths cannot take
    (group sizes that are not multiples of 32)."""
    k_tiles = triton.cdiv(k, 128)
    if m <= FMA_MAX_M:
        return KernelConfig("fma", block_m=1, block_n=128, block_k=128, split_k=max(1, min(8, k_tiles)),
                            num_warps=4, num_stages=3)
    return KernelConfig("dot", block_m=16, block_n=128, block_k=128, split_k=max(1, min(4, k_tiles)),
                        num_warps=4, num_stages=3)


def h2_supported(packed: PackedLinear, *, join: bool = True) -> str | None:
    """None if the half2 paths can run ``packed``, else why not. All of them need group sizes
    that are multiples of 32; ``h2`` and the joined ``h2dot`` variant (``join``) also need
    segments on 32-column boundaries (their activation buffers are laid out per 32 columns)."""
    gs = packed.segments[0].group_size
    if gs % 32:
        return f"group size {gs} is not a multiple of 32"
    return _misaligned_segment(packed, 32) if join else None


def _misaligned_segment(packed: PackedLinear, blk: int) -> str | None:
    """Why not every segment starts on a multiple of ``blk`` columns and ends on one (or at ``K``)."""
    k = packed.in_features
    for s in packed.segments:
        if s.c0 % blk or (s.c1 % blk and s.c1 != k):
            return f"segment columns [{s.c0}, {s.c1}) are not on {blk}-column boundaries"
    return None


class Workspace:
    """Preallocated scratch for :func:`sbp_matmul`, shareable by all layers on one device.

    ``acc``: float32 ``[max_m * max_n]``, all zeros between calls (kernels that use it
    re-zero it). ``xperm``: ``[max_m * max_k]`` activations gathered into storage column
    order (``xperm32``: ``[max_k]`` the same in float32 for the ``M == 1`` path). ``wbuf``:
    ``[dequant_rows * max_k]`` dequantized weights (only with ``dequant``; ``dequant_rows``
    defaults to ``max_n``, a chunked config needs only ``chunk_n``). ``xpair`` int32
    ``[4, max_m, Kp / 2]`` and ``xs32`` float32 ``[max_m, Kp / 32]`` (``Kp = max_k`` rounded up to 32):
    paired activations and block sums of the ``h2`` path. ``cnt``: int32 per output tile, all zeros
    between calls: split-K arrival counters, so the last program of a tile writes the output
    (no finalize launch; ``h2``, ``h2dot``, ``tc`` with tiles of >= 16 rows).
    """

    def __init__(self, device: torch.device | str, max_m: int, max_n: int, max_k: int,
                 dtype: torch.dtype = torch.float16, *, dequant: bool = False, dequant_rows: int | None = None,
                 buffers: tuple[str, ...] = ("acc", "xperm", "xperm32", "xpair", "xs32", "cnt")) -> None:
        self.max_m, self.max_n, self.max_k, self.dtype = max_m, max_n, max_k, dtype
        kp = triton.cdiv(max_k, 128) * 128  # room for the "tc" path's whole 128-column blocks
        rows = max_n if dequant_rows is None else min(dequant_rows, max_n)
        sizes = {"acc": (max_m * max_n, torch.float32), "xperm": (max_m * max_k, dtype),
                 "xperm32": (max_k, torch.float32), "wbuf": (rows * max_k, dtype),
                 "xpair": (4 * max_m * kp // 2, torch.int32), "xs32": (max_m * kp // 32, torch.float32),
                 "cnt": (triton.cdiv(max_m, 16) * triton.cdiv(max_n, 16), torch.int32)}
        self.kp = kp
        self.pair_stride = max_m * kp // 2  # elements between the width slots of xpair
        names = set(buffers) | ({"wbuf"} if dequant else set())
        for name, (numel, dt) in sizes.items():
            size = numel if name in names else 0
            alloc = torch.zeros if name in ("acc", "cnt") else torch.empty
            setattr(self, name, alloc(size, dtype=dt, device=device))

    @classmethod
    def for_call(cls, x: torch.Tensor, n: int, cfg: KernelConfig, atomic: bool) -> "Workspace":
        """Only the buffers one call with ``cfg`` needs (used when the caller passes none)."""
        m, k = x.shape
        need = {"acc", "cnt"} if atomic else set()
        if cfg.path in ("h2", "tc", "wg"):
            need |= {"xpair", "xs32"}
        elif cfg.path == "h2dot":
            need |= {"xpair", "xperm"}
        elif not cfg.gather or cfg.path == "dequant":
            need.add("xperm32" if cfg.path == "fma" and m == 1 else "xperm")
        return cls(x.device, m, n, k, x.dtype, dequant=cfg.path == "dequant",
                   dequant_rows=cfg.chunk_n or None, buffers=tuple(need))

    def check(self, m: int, n: int, k: int, dtype: torch.dtype, cfg: KernelConfig, atomic: bool) -> None:
        if m > self.max_m or n > self.max_n or k > self.max_k:
            raise ValueError(f"workspace holds m, n, k <= {self.max_m}, {self.max_n}, {self.max_k}; "
                             f"got {m}, {n}, {k}")
        if dtype != self.dtype:
            raise TypeError(f"workspace dtype is {self.dtype}, activations are {dtype}")
        if cfg.path == "dequant" and self.wbuf.numel() < min(cfg.chunk_n or n, n) * k:
            raise ValueError("the dequant path needs a Workspace(..., dequant=True) with room for "
                             f"{min(cfg.chunk_n or n, n)} x {k} weights")
        if cfg.path in ("h2", "h2dot", "tc", "wg") and (self.xpair.numel() < 4 * self.pair_stride or self.pair_stride == 0):
            raise ValueError(f"the {cfg.path} path needs a Workspace with buffer 'xpair'")
        if atomic and self.acc.numel() < m * n:
            raise ValueError("this config accumulates in workspace.acc, which was not allocated")


def kernel_fn(module: str, name: str):
    """The ``@triton.jit`` function ``name`` of kernel module ``module`` ("kernels", "h2", "h2dot")."""
    return getattr({"h2": H2, "h2dot": H2D, "tc": TC, "wg": WG}.get(module, K), name)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``getattr(_kernels, kernel)[grid](*args, **kwargs)``."""

    kernel: str
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict
    module: str = "kernels"  # "kernels" (``_kernels``), "h2" (``_h2``), "h2dot" (``_h2dot``) or "tc" (``_tc``)

    @property
    def fn(self):
        return kernel_fn(self.module, self.kernel)

    def __call__(self) -> None:
        self.fn[self.grid](*self.args, **self.kwargs)


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
    cfg = resolve_config(x, packed, config)
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    atomic = _uses_acc(packed, cfg)
    if workspace is None:
        workspace = Workspace.for_call(x, n, cfg, atomic)
    workspace.check(m, n, kdim, x.dtype, cfg, atomic)
    if cfg.path == "dequant":
        for launch, rows in _dequant_steps(x, packed, out, workspace, cfg):
            launch()
            if rows is not None:
                _dequant_mm(x, packed, bias, out, workspace, rows)
        return out
    for launch in plan_launches(x, packed, bias, out, workspace, cfg):
        launch()
    return out


def resolve_config(x: torch.Tensor, packed: PackedLinear, config: KernelConfig | None = None) -> KernelConfig:
    """The config a call runs: ``config``, else :func:`select_config`; a selected half2 or ``wg``
    path the layer cannot take becomes the nearest path that can (an explicit one raises):
    ``wg`` -> ``h2dot`` (M <= 16, group sizes of 32s) -> ``dot`` / ``gemm``; ``h2`` -> ``fma``."""
    m, kdim = x.shape
    n = packed.out_features
    cfg = config or select_config(m, n, kdim, num_sms=_num_sms(x.device), bits=tuple(s.bits for s in packed.segments))
    if cfg.path in ("h2", "h2dot", "tc", "wg"):
        why = tc_supported(packed) if cfg.path in ("tc", "wg") else h2_supported(packed, join=cfg.path == "h2" or cfg.join)
        if why is not None:
            if config is not None:
                raise ValueError(f"path {cfg.path!r} cannot run this layer: {why}")
            if m > SKINNY_MAX_M:
                return _gemm_config(m, n, kdim, _num_sms(x.device))
            if cfg.path in ("tc", "wg") and h2_supported(packed, join=False) is None:
                return _h2dot_config(m, kdim)
            cfg = fallback_config(m, n, kdim)
    return cfg


def workspace_fits(ws: Workspace, x: torch.Tensor, packed: PackedLinear) -> bool:
    """Whether ``ws`` (on ``x``'s device) serves ``sbp_matmul(x, packed, workspace=ws)``."""
    if ws.acc.device != x.device:
        return False
    cfg = resolve_config(x, packed)
    try:
        ws.check(x.shape[0], packed.out_features, x.shape[1], x.dtype, cfg, _uses_acc(packed, cfg))
    except (ValueError, TypeError):
        return False
    return True


def _uses_acc(packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether ``cfg`` accumulates in the float32 workspace (split-K or one launch per segment)."""
    if cfg.path == "dequant":
        return False
    per_band = max(len(segs) for _, _, segs in _bands(packed))
    return cfg.split_k > 1 or (not cfg.walk and per_band > 1 and cfg.path != "h2")


def plan_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                  ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """The Triton launches of one :func:`sbp_matmul` call, in order (no cuBLAS part)."""
    m, kdim = x.shape
    if cfg.path in ("fma", "dot", "h2") and m > max(cfg.block_m, 16 if cfg.path == "dot" else 1):
        raise ValueError(f"path {cfg.path!r} with block_m={cfg.block_m} takes M <= {cfg.block_m}, got {m}")
    if cfg.path == "dequant":
        return [lc for lc, _ in _dequant_steps(x, packed, out, ws, cfg)]
    if cfg.path == "h2":
        return _h2_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "h2dot":
        return _h2dot_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "tc":
        return _tc_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "wg":
        return _wg_launches(x, packed, bias, out, ws, cfg)
    if cfg.gather:
        return _matmul_launches(x, packed, bias, out, ws, cfg, True)
    gather, xin = _gather_launch(x, packed, ws.xperm32 if cfg.path == "fma" and m == 1 else ws.xperm)
    return [gather] + _matmul_launches(xin, packed, bias, out, ws, cfg, False)


def _pdl(x: torch.Tensor, cfg: KernelConfig) -> bool:
    """Programmatic dependent launch for gather -> matmul (sm_90+, ``h2`` and ``tc``): the matmul
    launches while the gather runs and waits for it on the device (``griddepcontrol``). Measured
    on the H100 (run 8): 1-5% faster calls at M = 1 and 16 on small layers, neutral on large ones;
    ``h2dot`` is left without it (its 4-bit calls with K > 8192 took up to 2x longer with it)."""
    return cfg.pdl and x.is_cuda and torch.cuda.get_device_capability(x.device) >= (9, 0)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter (CPU tensors, tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _matmul_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                     ws: Workspace, cfg: KernelConfig, gather: bool) -> list[Launch]:
    m = x.shape[0]
    gs = packed.segments[0].group_size
    bk, aligned = _block_k(cfg.block_k, gs)
    skinny = cfg.path in ("fma", "dot")
    bm = max(cfg.block_m, 16) if cfg.path == "dot" else cfg.block_m
    bands = _bands(packed)
    groups = bands if cfg.walk else [(r0, ns, [s]) for r0, ns, segs in bands for s in segs]
    atomic = _uses_acc(packed, cfg)
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
    """How an ``h2``/``h2dot``/``tc`` launch writes its tile: straight into ``out``, or (split-K,
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


def _h2dot_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
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
        gather, xin = _gather_launch(x, packed, ws.xperm)  # no PDL: it made h2dot up to 2x slower (run 8)
        launches = [gather]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in _bands(packed):
        args = (xin, xin.stride(0), xt, stride_tm, stride_tb, out, out.stride(0), o.acc, o.acc_stride,
                o.rp, o.b, m, r0, ns, gs, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BM=cfg.block_m, BN=cfg.block_n,
                  ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  JOIN=cfg.join, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
        launches.append(Launch("h2dot_kernel", grid, args, kw, module="h2dot"))
    return launches + o.finish(out, bias is not None)


def _gather_launch(x: torch.Tensor, packed: PackedLinear, buf: torch.Tensor) -> tuple[Launch, torch.Tensor]:
    """``x[:, col_perm]`` into ``buf`` (a workspace buffer, viewed ``[M, K]``): the launch and the view."""
    m, kdim = x.shape
    xin = buf[: m * kdim].view(m, kdim)
    return Launch("gather_kernel", (triton.cdiv(kdim, _GATHER_BLOCK), m),
                  (x, x.stride(0), packed.col_perm, xin, xin.stride(0), kdim), {"BLOCK": _GATHER_BLOCK}), xin


def _pdl_kw(pdl: bool) -> dict:
    """Launch options of a matmul that follows its gather: ``launch_pdl`` and the kernel's wait."""
    return {"PDL": True, "launch_pdl": True} if pdl else {}


def _dequant_steps(x: torch.Tensor, packed: PackedLinear, out: torch.Tensor, ws: Workspace,
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
    bands = _bands(packed)
    chunk = cfg.chunk_n if cfg.chunk_n and not has_rp and len(bands) == 1 and cfg.chunk_n < n else 0
    w = ws.wbuf[: (chunk or n) * kdim].view(chunk or n, kdim)
    steps: list[tuple[Launch, tuple[int, int] | None]] = [(_gather_launch(x, packed, ws.xperm)[0], None)]

    def launch(r0, ns, segs, lo, hi, row0):
        max_tiles = max(triton.cdiv(s.c1 - s.c0, bk) for s in segs)
        return Launch("dequant_kernel", (triton.cdiv(hi - lo, cfg.block_n), max_tiles),
                      (w, w.stride(0), rp, r0, ns, lo, hi, row0, gs, tuple(_seg_arg(s) for s in segs)),
                      dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), BN=cfg.block_n, BK=bk,
                           ALIGNED=aligned, HAS_ROWPERM=has_rp, num_warps=cfg.num_warps))

    if chunk:
        r0, ns, segs = bands[0]
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            steps.append((launch(r0, ns, segs, a, b, a), (a, b)))
        return steps
    for i, (r0, ns, segs) in enumerate(bands):
        steps.append((launch(r0, ns, segs, 0, ns, 0), (0, n) if i == len(bands) - 1 else None))
    return steps


def _dequant_mm(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
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


def _h2_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """Pair gather, one ``h2_kernel`` per band (and a finalize if split-K cannot finish in-kernel)."""
    m, kdim = x.shape
    gs = packed.segments[0].group_size
    bk, _ = _block_k(cfg.block_k, gs)
    widths = _plane_widths(packed)
    pdl = _pdl(x, cfg)
    stride_wm, stride_sm = ws.kp // 2, ws.kp // 32
    launches = [Launch("pair_gather_kernel", (triton.cdiv(kdim, _GATHER_BLOCK), m),
                       (x, x.stride(0), packed.col_perm, ws.xpair, stride_wm, ws.pair_stride, ws.xs32, stride_sm, kdim),
                       dict(XSCALE=H2_XSCALE, WIDTHS=widths, NW=len(widths), BLOCK=_GATHER_BLOCK, PDL=pdl),
                       module="h2")]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in _bands(packed):
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


def tc_supported(packed: PackedLinear) -> str | None:
    """None if the ``tc`` path can run ``packed``, else why not: it needs a group size divisible
    by 32 and segments that start (and end, unless at ``K``) on a multiple of :func:`tc_block`."""
    gs = packed.segments[0].group_size
    blk = tc_block(gs)
    if not blk:
        return f"group size {gs} is not a multiple of 32"
    return _misaligned_segment(packed, blk)


def _tc_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """Operand-order gather, one ``tc_kernel`` per band (and a finalize if split-K cannot finish in-kernel)."""
    m, kdim = x.shape
    gs = packed.segments[0].group_size
    blk = tc_block(gs)
    kt = triton.cdiv(kdim, blk) * blk
    widths = _plane_widths(packed)
    pdl = _pdl(x, cfg)
    xt = ws.xpair.view(torch.float16)
    stride_tm, stride_tb, stride_sm = ws.kp, 2 * ws.pair_stride, ws.kp // 32
    launches = [Launch("tc_gather_kernel", (triton.cdiv(kt, _GATHER_BLOCK), m),
                       (x, x.stride(0), packed.col_perm, xt, stride_tm, stride_tb, ws.xs32, stride_sm, kdim, kt),
                       dict(WIDTHS=widths, NW=len(widths), BLK=blk, BLOCK=_GATHER_BLOCK, PDL=pdl), module="tc")]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in _bands(packed):
        args = (xt, stride_tm, stride_tb, ws.xs32, stride_sm, out, out.stride(0), o.acc, o.acc_stride,
                o.rp, o.b, m, r0, ns, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), GS=gs, BM=cfg.block_m, BN=cfg.block_n, BLK=blk,
                  ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None, FUSED=o.fused, ASM=x.is_cuda,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_pdl_kw(pdl))
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
        launches.append(Launch("tc_kernel", grid, args, kw, module="tc"))
    return launches + o.finish(out, bias is not None)


def _fused_split(ws: Workspace, m: int, packed: PackedLinear, cfg: KernelConfig) -> bool:
    """Whether the split-K sums of an ``h2``/``h2dot``/``tc`` launch can be finished by their last
    program (enough tile counters in ``ws.cnt``), instead of a ``finalize_kernel`` launch."""
    m_tiles = 1 if cfg.path == "h2" else triton.cdiv(m, cfg.block_m)
    ns = max(n for _, n, _ in _bands(packed))
    return cfg.split_k > 1 and m_tiles * triton.cdiv(ns, cfg.block_n) <= ws.cnt.numel()


def _wg_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                 ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """Operand-order gather, one ``wg_kernel`` per band (and a finalize if split-K cannot finish in-kernel).
    ``cfg.block_m`` is the token tile ``BT``, ``cfg.block_n`` the weight-row tile ``BN``."""
    m, kdim = x.shape
    gs = packed.segments[0].group_size
    blk = tc_block(gs)
    kt = triton.cdiv(kdim, blk) * blk
    widths = _plane_widths(packed)
    pdl = _pdl(x, cfg)
    xt = ws.xpair.view(torch.float16)
    stride_tm, stride_tb, stride_sm = ws.kp, 2 * ws.pair_stride, ws.kp // 32
    launches = [Launch("wg_gather_kernel", (triton.cdiv(kt, _GATHER_BLOCK), m),
                       (x, x.stride(0), packed.col_perm, xt, stride_tm, stride_tb, ws.xs32, stride_sm, kdim, kt),
                       dict(WIDTHS=widths, NW=len(widths), BLK=blk, JOIN=cfg.join, BLOCK=_GATHER_BLOCK, PDL=pdl),
                       module="wg")]
    o = _split_output(packed, bias, out, ws, m, cfg)
    for r0, ns, segs in _bands(packed):
        args = (xt, stride_tm, stride_tb, ws.xs32, stride_sm, out, out.stride(0), o.acc, o.acc_stride,
                o.rp, o.b, m, r0, ns, cfg.split_k, o.cnt, tuple(_seg_arg(s) for s in segs))
        kw = dict(SEG_BITS=tuple(s.bits for s in segs), NSEG=len(segs), GS=gs, BN=cfg.block_n, BT=cfg.block_m,
                  BLK=blk, JOIN=cfg.join, ATOMIC=o.atomic, HAS_ROWPERM=o.has_rp, HAS_BIAS=bias is not None,
                  FUSED=o.fused, ASM=x.is_cuda, SCALED=cfg.scaled, EVEN_M=m % cfg.block_m == 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_pdl_kw(pdl))
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(ns, cfg.block_n), cfg.split_k)
        launches.append(Launch("wg_kernel", grid, args, kw, module="wg"))
    return launches + o.finish(out, bias is not None)
