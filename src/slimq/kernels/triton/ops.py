"""Host side of the Triton backend: workspaces and the call (kernel configs live in
:mod:`slimq.kernels.triton._config`, the shape-based dispatch rule in :mod:`slimq.kernels.triton._dispatch`,
the launches each path makes in :mod:`slimq.kernels.triton._plan`; this module re-exports them).

``sbp_matmul(x, packed, bias, out=..., workspace=...)`` computes ``y = x @ W_hat^T + bias`` for a
:class:`~slimq.format.layout.PackedLinear` straight from its segment tensors (no repacking).
With ``out`` and ``workspace`` given it allocates nothing, copies nothing and never
synchronises with the host, so it can be captured in a CUDA graph.

Paths (``KernelConfig.path``), chosen by :func:`select_config` from ``M``:

* ``"gv"``   (``M == 1``): CUDA-core GEMV in half2 arithmetic (two weights per instruction), one
  output row per thread, activations pre-paired by a gather kernel (``slimq.kernels.triton._gv``).
* ``"mv"``   (``M <= 16``): GEMV on the tensor cores: one LOP3 turns two codes into the fp16 operand pair
  (magic constant kept, removed per 128-column block from sums the gather computes), ``mma.sync`` with the
  token in every column (``slimq.kernels.triton._mv``), or up to 16 tokens in two blocks of 8 columns
  (``block_m=16``, ``_mvt``); needs 128-column groups and segments (:func:`mv_supported`).
* ``"h2"``   (``M <= 16``): the same arithmetic with a word tile spread over the threads
  (``slimq.kernels.triton._h2``); selectable by config.
* ``"wg"`` (``2 <= M <= WG_MAX_M``): the weight codes as the *register* operand of the
  tensor-core dot (Hopper ``wgmma`` takes only that one from registers), tokens as the other,
  ``y^T = W x^T`` (``slimq.kernels.triton._wg``).
* ``"wgs"`` (``M > WG_MAX_M`` on sm_90): weights dequantized into shared memory and multiplied by
  asynchronous ``wgmma`` with both operands in shared memory (Gluon). With ``producers`` (the dispatch's
  choice) warp-specialised: producer warps dequantize (half2 for float16), MMA warps only feed the tensor
  cores (``slimq.kernels.triton._wgsw``, ``_dq16``), K split where tiles are few; without, every warp
  does both (``_wgs``). Needs no copy of the weights; :func:`wgs_unavailable` says where it cannot run.
* ``"wgr"`` (``WGR_M`` tokens on uniform 2-4-bit and SliM layers; sm_90, float16; :func:`wgr_supported`): the
  weights as ``wgmma``'s register operand, built by the MMA warps from words that a copy warp brings with the
  activations by TMA (``_wgr``); chosen where its tiles fill their waves (``_dispatch.wgr_config``). With
  ``stream_k`` persistent programs share the tiles' K tiles (``_wgrk``; dispatched where one program per tile
  leaves the last of several waves short).
* ``"dequant"`` (``M > WG_MAX_M`` where ``wgs`` is not chosen or cannot run): dequantize into
  ``workspace.wbuf`` then cuBLAS (``torch.mm``);
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

Split-K launches of ``gv``/``mv``/``h2``/``h2dot``/``tc``/``wg`` are finished by the last program of each output tile
(arrival counters in ``workspace.cnt``); the other paths (``wgs`` among them) use a ``finalize_kernel`` launch.

``walk=True`` runs one launch per band (rows shared by several segments, e.g. the 1/2/3-bit
segments of a SliM-LLM layer) that walks all its segments; ``walk=False`` runs one launch per
segment, accumulating in the float32 workspace.
"""
from __future__ import annotations

import torch
import triton

from slimq.format.layout import PackedLinear
from slimq.kernels.triton._config import PATHS, KernelConfig
from slimq.kernels.triton._dispatch import (
    _DEQUANT,
    DEQUANT_MIN_M,
    FMA_MAX_M,
    H2_MAX_M,
    MV_MAX_M,
    SKINNY_MAX_M,
    WG_MAX_M,
    WGS_SPLIT_MAX_M,
    _gemm_config,
    _h2dot_config,
    fallback_config,
    select_config,
    wgs_config,
)
from slimq.kernels.triton._mv import XC_SLOTS
from slimq.kernels.triton._plan import (
    H2_XSCALE,
    WGS_TILE,
    Launch,
    check_stream_room,
    dequant_mm,
    dequant_steps,
    gather_launch,
    gv_launches,
    h2_launches,
    h2dot_launches,
    kernel_fn,
    matmul_launches,
    mv_launches,
    mv_reads_x,
    tc_block,
    tc_launches,
    uses_acc,
    wg_launches,
    wgs_launches,
)
from slimq.kernels.triton._wgr_plan import wgr_launches
from slimq.kernels.triton._support import (
    h2_supported,
    mv_supported,
    tc_supported,
    wgr_supported,
    wgs_supported,
    wgs_unavailable,
)

__all__ = ["KernelConfig", "Workspace", "Launch", "select_config", "fallback_config", "resolve_config", "sbp_matmul",
           "plan_launches", "h2_supported", "mv_supported", "tc_supported", "wgs_supported", "wgr_supported", "wgs_unavailable", "tc_block", "workspace_fits",
           "kernel_fn",
           "PATHS", "FMA_MAX_M", "H2_MAX_M", "MV_MAX_M", "SKINNY_MAX_M", "WG_MAX_M", "DEQUANT_MIN_M", "WGS_SPLIT_MAX_M",
           "H2_XSCALE", "wgs_config"]


class Workspace:
    """Preallocated scratch for :func:`sbp_matmul`, shareable by all layers on one device.

    ``acc``: float32 ``[max(split_rows, min(max_m, WGS_SPLIT_MAX_M)) * max_n]``, all zeros between calls
    (kernels that use it re-zero it; ``wgs`` splits K up to ``WGS_SPLIT_MAX_M`` tokens). ``xperm``:
    ``[max_m * max_k]`` activations gathered into storage column order (``xperm32``: ``[max_k]`` the same in float32 for the ``M == 1`` path). ``wbuf``:
    ``[dequant_rows * max_k]`` dequantized weights (only with ``dequant``; ``dequant_rows``
    defaults to ``max_n``, a chunked config needs only ``chunk_n``). ``xpair`` int32
    ``[4, split_rows, Kp / 2]`` and ``xs32`` float32 ``[split_rows, Kp / 32]`` (``Kp = max_k`` rounded
    up to 128): paired or operand-ordered activations and their block sums (``gv``, ``h2``, ``h2dot``, ``tc``,
    ``wg``; ``mv`` takes ``xpair`` and ``xc32``, float32 ``[XC_SLOTS, split_rows, Kp / 128]``: sums per token and
    128-column block). ``cnt``: int32 per output tile, all zeros between calls: split-K arrival counters, so
    the last program of a tile writes the output (no finalize launch; ``gv``, ``h2``, ``h2dot``, ``tc``,
    ``wg``). ``skp`` float32 ``[stream_k_programs * WGS_TILE]`` and ``skf`` int32
    ``[stream_k_programs]`` (zeros between calls): a partial-sum slot and a flag per program of stream-K ``wgs``
    (``_wgsk``) or ``wgr`` (``_wgrk``); ``stream_k_programs`` defaults to the device's SM count where ``max_m >
    WG_MAX_M`` (17 MB on an H200), else 0.

    ``split_rows`` (default ``min(max_m, WG_MAX_M)``): the token rows of the buffers only the
    split-K and operand-ordered paths use. The dispatch sends more tokens than ``WG_MAX_M`` to
    ``wgs`` or dequantize-then-cuBLAS, which need none of them but ``acc`` (``wgs`` splitting K, up to
    ``WGS_SPLIT_MAX_M`` rows), so a workspace for long prompts does not pay for them per token
    (LLaMA-2-7B layers, 2048 tokens: 32 MiB of these buffers instead of 261 MiB).
    """

    def __init__(self, device: torch.device | str, max_m: int, max_n: int, max_k: int,
                 dtype: torch.dtype = torch.float16, *, dequant: bool = False, dequant_rows: int | None = None,
                 buffers: tuple[str, ...] = ("acc", "xperm", "xperm32", "xpair", "xs32", "xc32", "cnt", "skp", "skf"),
                 split_rows: int | None = None, stream_k_programs: int | None = None) -> None:
        if min(max_m, max_n, max_k) < 1:
            raise ValueError(f"max_m, max_n, max_k must be >= 1, got {max_m}, {max_n}, {max_k}")
        self.max_m, self.max_n, self.max_k, self.dtype = max_m, max_n, max_k, dtype
        self.split_rows = min(max_m, WG_MAX_M) if split_rows is None else min(split_rows, max_m)
        sr = self.split_rows
        kp = triton.cdiv(max_k, 128) * 128  # room for the "tc"/"wg" paths' whole 128-column blocks
        rows = max_n if dequant_rows is None else min(dequant_rows, max_n)
        acc_rows = max(sr, min(max_m, WGS_SPLIT_MAX_M))  # wgs splits K up to WGS_SPLIT_MAX_M tokens
        sizes = {"acc": (acc_rows * max_n, torch.float32), "xperm": (max_m * max_k, dtype),
                 "xperm32": (max_k, torch.float32), "wbuf": (rows * max_k, dtype),
                 "xpair": (4 * sr * kp // 2, torch.int32), "xs32": (sr * kp // 32, torch.float32),
                 "xc32": (XC_SLOTS * sr * kp // 128, torch.float32),
                 "cnt": (triton.cdiv(sr, 16) * triton.cdiv(max_n, 16), torch.int32)}
        if stream_k_programs is None:
            stream_k_programs = _num_sms(torch.device(device)) if max_m > WG_MAX_M else 0
        sizes["skp"] = (stream_k_programs * WGS_TILE, torch.float32)
        sizes["skf"] = (stream_k_programs, torch.int32)
        self.kp = kp
        self.pair_stride = sr * kp // 2  # elements between the width slots of xpair
        names = set(buffers) | ({"wbuf"} if dequant else set())
        for name, (numel, dt) in sizes.items():
            size = numel if name in names else 0
            alloc = torch.zeros if name in ("acc", "cnt", "skf") else torch.empty
            setattr(self, name, alloc(size, dtype=dt, device=device))

    @classmethod
    def for_call(cls, x: torch.Tensor, n: int, cfg: KernelConfig, atomic: bool) -> "Workspace":
        """Only the buffers one call with ``cfg`` needs (used when the caller passes none)."""
        m, k = x.shape
        need = ({"acc", "cnt"} if atomic else set()) | ({"skp", "skf"} if cfg.stream_k else set())
        if cfg.path in ("gv", "h2", "tc", "wg"):
            need |= {"xpair", "xs32"}
        elif cfg.path == "mv":
            need |= {"xpair", "xc32"}
        elif cfg.path == "h2dot":
            need |= {"xpair", "xperm"}
        elif not cfg.gather or cfg.path in ("dequant", "wgs"):
            need.add("xperm32" if cfg.path == "fma" and m == 1 else "xperm")
        return cls(x.device, m, n, k, x.dtype, dequant=cfg.path == "dequant",
                   dequant_rows=cfg.chunk_n or None, buffers=tuple(need), split_rows=m,
                   stream_k_programs=cfg.stream_k)

    def check(self, m: int, n: int, k: int, dtype: torch.dtype, cfg: KernelConfig, atomic: bool) -> None:
        if m > self.max_m or n > self.max_n or k > self.max_k:
            raise ValueError(f"workspace holds m, n, k <= {self.max_m}, {self.max_n}, {self.max_k}; "
                             f"got {m}, {n}, {k}")
        if dtype != self.dtype:
            raise TypeError(f"workspace dtype is {self.dtype}, activations are {dtype}")
        if cfg.path == "dequant" and self.wbuf.numel() < min(cfg.chunk_n or n, n) * k:
            raise ValueError("the dequant path needs a Workspace(..., dequant=True) with room for "
                             f"{min(cfg.chunk_n or n, n)} x {k} weights")
        if cfg.path in ("dequant", "wgs", "wgr") and self.xperm.numel() < m * k:
            raise ValueError(f"the {cfg.path} path needs a Workspace with buffer 'xperm' for {m} x {k} activations")
        if cfg.path == "mv" and self.xc32.numel() < XC_SLOTS * self.split_rows * self.kp // 128:
            raise ValueError("the mv path needs a Workspace with buffer 'xc32'")
        if cfg.path in ("gv", "mv", "h2", "h2dot", "tc", "wg"):
            if self.xpair.numel() < 4 * self.pair_stride or self.pair_stride == 0:
                raise ValueError(f"the {cfg.path} path needs a Workspace with buffer 'xpair'")
            if m > self.split_rows:
                raise ValueError(f"the {cfg.path} path needs a Workspace with split_rows >= {m}, "
                                 f"this one has {self.split_rows}")
        if cfg.stream_k:  # a partial slot and a flag per program (at most one program per step)
            steps = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n) * triton.cdiv(k, 32)
            check_stream_room(self, min(cfg.stream_k, steps), cfg)
        if atomic and self.acc.numel() < m * n:
            raise ValueError(f"this config accumulates {m} x {n} float32 sums in workspace.acc, which holds "
                             f"{self.acc.numel()} (split_rows {self.split_rows})")


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
    atomic = uses_acc(packed, cfg)
    if workspace is None:
        workspace = Workspace.for_call(x, n, cfg, atomic)
    workspace.check(m, n, kdim, x.dtype, cfg, atomic)
    if cfg.path == "dequant":
        for launch, rows in dequant_steps(x, packed, out, workspace, cfg):
            launch()
            if rows is not None:
                dequant_mm(x, packed, bias, out, workspace, rows)
        return out
    for launch in plan_launches(x, packed, bias, out, workspace, cfg):
        launch()
    return out


def resolve_config(x: torch.Tensor, packed: PackedLinear, config: KernelConfig | None = None) -> KernelConfig:
    """The config a call runs: ``config``, else :func:`select_config`; a selected half2 or ``wg``
    path the layer cannot take becomes the nearest path that can (an explicit one raises):
    ``wg`` -> ``h2dot`` (M <= 16, group sizes of 32s) -> ``dot`` / ``gemm``; ``gv``, ``h2`` -> ``fma``."""
    m, kdim = x.shape
    n = packed.out_features
    bits = tuple(s.bits for s in packed.segments)
    direct = m == 1 and mv_reads_x(x, packed)  # one-token mv may read x itself: the rule takes it further then
    cfg = config or select_config(m, n, kdim, num_sms=_num_sms(x.device), bits=bits, direct=direct)

    def refused(why: str | None) -> bool:
        """Whether the chosen path cannot run: an explicit ``config`` raises, a selected one falls back."""
        if why is not None and config is not None:
            raise ValueError(f"path {cfg.path!r} cannot run this layer: {why}")
        return why is not None

    if cfg.path == "wgr":  # before wgs: what the rule picks without wgr is checked below
        if not refused(wgr_supported(x, packed)):
            return cfg
        cfg = select_config(m, n, kdim, num_sms=_num_sms(x.device), bits=bits, wgr=False, direct=direct)
    if cfg.path == "wgs" and refused(wgs_supported(x, packed)):
        return _DEQUANT
    if cfg.path == "mv":
        if not refused(mv_supported(packed)):
            return cfg
        cfg = select_config(m, n, kdim, num_sms=_num_sms(x.device), bits=bits, mv=False, direct=direct)
    if cfg.path in ("gv", "h2", "h2dot", "tc", "wg") and refused(
            tc_supported(packed) if cfg.path in ("tc", "wg")
            else h2_supported(packed, join=cfg.path in ("gv", "h2") or cfg.join)):
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
        ws.check(x.shape[0], packed.out_features, x.shape[1], x.dtype, cfg, uses_acc(packed, cfg))
    except (ValueError, TypeError):
        return False
    return True


def plan_launches(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None, out: torch.Tensor,
                  ws: Workspace, cfg: KernelConfig) -> list[Launch]:
    """The Triton launches of one :func:`sbp_matmul` call, in order (no cuBLAS part)."""
    m, kdim = x.shape
    if cfg.path in ("fma", "dot", "gv", "mv", "h2") and m > max(cfg.block_m, 16 if cfg.path == "dot" else 1):
        raise ValueError(f"path {cfg.path!r} with block_m={cfg.block_m} takes M <= {cfg.block_m}, got {m}")
    if cfg.path == "dequant":
        return [lc for lc, _ in dequant_steps(x, packed, out, ws, cfg)]
    if cfg.path == "wgs":
        return wgs_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "wgr":
        return wgr_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "gv":
        return gv_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "mv":
        return mv_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "h2":
        return h2_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "h2dot":
        return h2dot_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "tc":
        return tc_launches(x, packed, bias, out, ws, cfg)
    if cfg.path == "wg":
        return wg_launches(x, packed, bias, out, ws, cfg)
    if cfg.gather:
        return matmul_launches(x, packed, bias, out, ws, cfg, True)
    gather, xin = gather_launch(x, packed, ws.xperm32 if cfg.path == "fma" and m == 1 else ws.xperm)
    return [gather] + matmul_launches(xin, packed, bias, out, ws, cfg, False)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter (CPU tensors, tests)
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count
