"""Host side of the Triton backend: kernel configs, shape-based dispatch, workspaces and the call
(the launches each path makes are planned in :mod:`slimq.kernels.triton._plan`).

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

import math
from dataclasses import dataclass

import torch
import triton

from slimq.format.layout import PackedLinear
from slimq.kernels.triton._mv import XC_SLOTS
from slimq.kernels.triton._support import h2_supported, mv_supported, tc_supported, wgs_supported, wgs_unavailable
from slimq.kernels.triton._plan import (
    H2_XSCALE, Launch, dequant_mm, dequant_steps, gather_launch, gv_launches, h2_launches, h2dot_launches, kernel_fn,
    matmul_launches, mv_launches, tc_block, tc_launches, uses_acc, wg_launches, wgs_launches,
)

__all__ = ["KernelConfig", "Workspace", "Launch", "select_config", "fallback_config", "resolve_config", "sbp_matmul",
           "plan_launches", "h2_supported", "mv_supported", "tc_supported", "wgs_supported", "wgs_unavailable", "tc_block", "workspace_fits",
           "kernel_fn",
           "PATHS", "FMA_MAX_M", "H2_MAX_M", "MV_MAX_M", "SKINNY_MAX_M", "WG_MAX_M", "DEQUANT_MIN_M", "H2_XSCALE"]

PATHS = ("gv", "mv", "h2", "h2dot", "tc", "wg", "wgs", "fma", "dot", "gemm", "dequant")
FMA_MAX_M = 1        # float32 CUDA-core fallback for M == 1 (layers h2 cannot run)
H2_MAX_M = 1         # half2 CUDA cores up to here ...
SKINNY_MAX_M = 16    # (fallbacks: h2dot / dot with M padded to 16 up to here, tiled gemm beyond)
WG_MAX_M = 128       # ... weights as the register operand of the tensor-core dot up to here ...
WGS_SPLIT_MAX_M = 512  # wgs splits K (float32 sums in workspace.acc) only up to this many tokens
DEQUANT_MIN_M = WG_MAX_M + 1  # ... and wgs (sm_90) or dequantize-then-cuBLAS from here
_WG_WAVES = (3.9, 2.9)  # wg programs per SM to aim for: token tiles <= 32, >= 64 (runs 12-13)
_WG_WIDE_WAVES = 2  # wg with 128-row tiles (_wg_wide_rows): K split to the power of two nearest this many per SM
_WG_PDL_MAX_WEIGHTS = 1 << 27  # wg launches during its gather (PDL) on layers under this many weights (<= 32 tokens)
_H2_MAX_PROGRAMS = 4096  # h2 (M == 1, >= 4 bits): K split 16, fewer when the grid would pass this (run 12)
MV_MAX_M = 8  # the dispatch sends 2..MV_MAX_M tokens to mv on big layers (one block of 8 token columns)
_MVT_PROGRAMS_PER_SM = 4  # mv with 2-8 tokens: K split up to 16 while the grid holds at most this many per SM
_MV_PROGRAMS_PER_SM = 8  # mv (M == 1): K split up to 16 while the grid fits in one wave: 8 programs of 4 warps per
# SM at 2 bits (64 registers), 7 with wider codes (72 registers; 8192 x 28672 at 4 bits: K split 8 48-51 us, 16 57 us)
_MV_L2_MIN_WEIGHTS = 1 << 26  # mv (M == 1) on layers of this many weights: L2 prefetch and a register cap (run 76)
_MV_L2_SPLIT_PER_SM = 7  # ... there K is split up to 16 while the grid holds at most this many programs per SM,
_MV_L2_CAPS = (96, 80, 72)  # ... under the highest of these register caps that still fits it in one wave
_GV_PROGRAMS_PER_SM = 8  # gv (M == 1): K split 32, fewer when the grid would pass this many per SM (runs 19, 23)
# gv pairs its own activations (gather=True, one launch) on layers up to this many weights, and
# 4-bit-and-wider layers take gv (not h2) up to it (run 27); with 3-bit codes only up to the second
_GV_GATHER_MAX_WEIGHTS = 1 << 27
_GV_GATHER_MAX_WEIGHTS_3B = 1 << 24
# wgs (M > WG_MAX_M), warp-specialised (producers=4, half2 dequantization): where it beat dequantize-then-cuBLAS
# on the H200 (runs 51-53): layers of 2^26+ weights up to 1024 tokens, layers of 2^25+ weights up to 256 tokens
# (wgs_config); dequant+cuBLAS stays faster on smaller layers and more tokens
_WGS_MAX_M = 1024
_WGS_MIN_WEIGHTS = 1 << 26
_WGS_SMALL_MAX_M = 256
_WGS_SMALL_MIN_WEIGHTS = 1 << 25


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
    gather: bool = False  # fuse x[:, col_perm] into the matmul ("gv": each program pairs its own columns; else a pass)
    group_m: int = 8
    prefetch: bool = False  # "fma" / "h2" with M == 1: load the next tile before computing this one
    depth: int = 1  # "gv": K-tiles whose weights are loaded ahead of the one computed (1 or 2); "wgs" with
    # producers: depth + 1 tiles ahead
    maxnreg: int = 0  # "gv", "mv": cap on registers per thread (0: the compiler's choice), for more resident warps;
    # "mv": a higher cap keeps ptxas from sinking the next tile's loads to the end of the loop
    chunk_n: int = 0  # "dequant": rows dequantized per step (0: the whole layer at once)
    join: bool = False  # "h2dot"/"wg": join a tile's operand pieces into one tl.dot (else one dot per code pair)
    scaled: bool = False  # "wg": dequantized weights as operands (else exact codes, scaled per block)
    pdl: bool = True  # "h2"/"tc"/"wg" on sm_90+: the matmul launches during its gather, waits on the device
    producers: int = 0  # "wgs": warps of a separate dequantization partition (4 or 8; 0: every warp does both)
    l2_ahead: int = 0  # "mv": the weights of the tile this many K tiles past the next are prefetched into L2
    # (prefetch.global.L2: bytes in flight without registers; 0: none)

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
        if self.depth not in (1, 2) or (self.depth != 1 and self.path not in ("gv", "mv") and not self.producers):
            raise ValueError(f"depth must be 1, or 2 with path 'gv', 'mv' or 'wgs' with producers; got {self.depth} for "
                             f"{self.path!r}")
        if self.maxnreg and (self.path not in ("gv", "mv", "wgs") or not 32 <= self.maxnreg <= 255
                             or self.maxnreg % 8):
            raise ValueError(f"maxnreg must be 0, or a multiple of 8 in 32..255 with path 'gv', 'mv' or 'wgs'; got "
                             f"{self.maxnreg} for {self.path!r}")
        if self.path == "gv" and self.block_m != 1:
            raise ValueError(f"path 'gv' takes block_m == 1 (one token), got {self.block_m}")
        if self.path == "mv" and (self.block_m not in (1, 16) or self.block_k != 128
                                  or self.block_n != 32 * self.num_warps or self.gather):
            raise ValueError(f"path 'mv' takes block_m 1 or 16, block_k == 128, block_n == 32 * num_warps and no "
                             f"gather; got block_m={self.block_m}, block_k={self.block_k}, block_n={self.block_n}, "
                             f"num_warps={self.num_warps}, gather={self.gather}")
        if self.path == "h2" and self.block_m > 16:
            raise ValueError(f"path 'h2' takes block_m <= 16, got {self.block_m}")
        if self.scaled and self.path != "wg":
            raise ValueError(f"scaled applies to path 'wg' only, got {self.path!r}")
        if self.path == "wgs":
            if self.split_k != 1 and not (self.producers and self.split_k <= 8):
                raise ValueError(f"path 'wgs' splits K (split_k 2..8) only with producers, got split_k={self.split_k}")
            if self.num_warps not in (4, 8) or self.block_m < 16 * self.num_warps or self.block_m > 256:
                raise ValueError(f"path 'wgs' takes num_warps 4 or 8 and 16 * num_warps <= block_m <= 256, got "
                                 f"block_m={self.block_m}, num_warps={self.num_warps}")
            if not 1 <= self.num_stages <= 4:
                raise ValueError(f"path 'wgs' takes num_stages (activation tiles in flight) 1..4, got {self.num_stages}")
            if self.producers not in (0, 4, 8) or (self.producers and self.num_warps != 8):
                raise ValueError(f"path 'wgs' takes producers 0, or 4 or 8 with num_warps 8, got producers="
                                 f"{self.producers} with {self.num_warps} warps")
            if self.block_n < 16 * self.producers:  # a producer warp dequantizes 32 rows and half a tile or more
                raise ValueError(f"path 'wgs' takes block_n >= 16 * producers, got block_n={self.block_n} with "
                                 f"{self.producers} producers")
            dq_warps = self.producers or self.num_warps  # the warps that dequantize: one row each
            if self.block_n < 32 or self.block_n > 256 or self.block_n > 32 * dq_warps:
                raise ValueError(f"path 'wgs' takes 32 <= block_n <= min(256, 32 * dequantizing warps), got "
                                 f"block_n={self.block_n} with {dq_warps} warps")
        if self.l2_ahead and (self.path != "mv" or not 0 < self.l2_ahead <= 16):
            raise ValueError(f"l2_ahead must be 0, or 1..16 with path 'mv'; got {self.l2_ahead} for {self.path!r}")
        if self.producers and self.path != "wgs":
            raise ValueError(f"producers applies to path 'wgs' only, got {self.path!r}")
        if self.chunk_n < 0 or (self.chunk_n and self.path != "dequant"):
            raise ValueError(f"chunk_n must be 0, or > 0 with path 'dequant'; got {self.chunk_n} for {self.path!r}")


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _pow2_at_most(v: int) -> int:
    return 1 << max(0, v.bit_length() - 1)


def select_config(m: int, n: int, k: int, *, num_sms: int = 132, bits: tuple[int, ...] | None = None,
                  mv: bool = True) -> KernelConfig:
    """The dispatch rule: kernel path and tiling for ``x [m, k] @ W^T`` with ``W [n, k]``.

    Set from ``benchmarks/kernels.py --tune`` on an H200 (132 SMs; benchmarks/KERNEL_NOTES.md,
    runs 10-20):

    * ``M == 1``: the tensor-core GEMV ``mv`` where it measured faster (:func:`_mv_wins`: 8192+ input
      columns, codes all 4-bit or wider, every layer of 2^27+ weights, uniform widths on 2^26+; 128-row
      programs; on 2^26+ weights the weights of the tile past the loaded one prefetched into L2
      (``l2_ahead=1``), K split up to 16 at ``_MV_L2_SPLIT_PER_SM`` programs per SM and the highest
      register cap of ``_MV_L2_CAPS`` that keeps the grid in one wave; below, K split up to
      16 while the grid holds at most ``_MV_PROGRAMS_PER_SM`` programs per SM); elsewhere the half2 CUDA-core GEMV ``gv`` (one output row per thread, 128-row tiles, 2
      warps, K split 32, or less so that the grid holds at most ``_GV_PROGRAMS_PER_SM`` programs per
      SM, and at most one split per 128-column tile). On layers of up to ``_GV_GATHER_MAX_WEIGHTS``
      weights (``_GV_GATHER_MAX_WEIGHTS_3B`` with 3-bit segments, or when ``bits`` is unknown) every
      program pairs its own activations (``gather``: one launch instead of two, K split <= 16): 4-17%
      faster there, slower on the big shapes (run 27). Layers of 1- and 2-bit codes only load two
      tiles ahead (``depth=2``: 3-13% faster in run 27, once the shared half2 sums freed registers);
      on SliM layers (their 1/2-bit segments; wider ones keep one tile) it was 4-8% slower on four
      of six shapes (run 31), so they keep ``depth=1``.
      Big layers whose segments all have 4 or more bits keep ``h2`` (64-row tiles, 2 warps, register
      prefetch, K split 16 or 8), up to 10% faster there (runs 19, 27). ``wg`` with 16 padded tokens
      was 1.25-1.9x slower at M = 1.
    * ``2 <= M <= MV_MAX_M`` on layers of 2^26+ weights: ``mv`` with the tokens as MMA columns (one block
      of 8; 128-row programs, 4 warps, ``maxnreg=128`` so that the next tile's loads stay ahead, K split
      up to 16 while the grid holds at most ``_MVT_PROGRAMS_PER_SM`` programs per SM; the tile past the
      next prefetched into L2, except for uniform 3-bit codes: run 78, 4 tokens, 2-13% faster on the big
      layers, 3-bit 4% slower on 28672 x 8192).
    * ``2 <= M <= WG_MAX_M`` otherwise: ``wg``, the weight codes as the register operand of the tensor-core
      dot (``wgmma`` on Hopper) with 64-row tiles (128 for 9-16 tokens where :func:`_wg_wide_rows`
      says, K split to about ``_WG_WIDE_WAVES`` programs per SM), 4 warps, 3 stages, one dot per 128-column block
      (``join``), tokens in tiles of 16 (``M <= 16``), 32, 64 or 128; from 64-token tiles on, the
      operands are dequantized weights (``scaled``) instead of codes scaled per block. K is split
      so that the grid holds about ``_WG_WAVES`` programs per SM (rounded down to a power of two),
      and launched with programmatic dependent launch only for exact-code tiles (<= 32 tokens) on layers under
      ``_WG_PDL_MAX_WEIGHTS`` weights: there it gained 2-5% in runs 14 and 80 alike; on the big layers it
      gained 1-3% but cost 20% once (8192 x 28672, 16 tokens, 3-bit, run 14), and with 64-token tiles it
      was neutral but cost 33% on 28672 x 8192 3-bit (run 14).
      It beat ``h2dot``/``tc`` at ``M = 4`` and 16 by 1.1-1.7x, ``gemm`` at 17-64 tokens by
      1.2-2.5x and dequantize-then-cuBLAS at 128 tokens (2-, 4-bit; 3-bit merged into one operand).
    * beyond: ``wgs`` where :func:`wgs_config` gives a tiling (big layers, up to 512 tokens, up to two
      waves of tiles; where it cannot run, :func:`resolve_config` turns it into ``dequant``), else
      dequantize into the workspace then cuBLAS in one pass.

    ``bits``: the layer's segment bit-widths (:func:`resolve_config` passes them; without them no
    ``mv``). ``mv=False``: the rule without ``mv`` (for layers it cannot run). Layers ``wg`` or ``wgs`` cannot run get :func:`resolve_config`'s fallback.
    """
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"m, n, k must be >= 1, got {m}, {n}, {k}")
    k_tiles = triton.cdiv(k, 128)
    if m <= H2_MAX_M:
        return _m1_config(n, k, bits, num_sms, allow_mv=mv)
    if mv and m <= MV_MAX_M and _mvt_wins(n, k, bits):  # ~4 programs per SM, K split up to 16
        split = _pow2_at_most(max(1, _MVT_PROGRAMS_PER_SM * num_sms // triton.cdiv(n, 128)))
        return KernelConfig("mv", block_m=16, block_n=128, block_k=128, split_k=max(1, min(16, split, k_tiles)),
                            num_warps=4, num_stages=1, maxnreg=128, l2_ahead=0 if set(bits) == {3} else 1)
    if m <= WG_MAX_M:
        bt = 16 if m <= 16 else (32 if m <= 32 else (64 if m <= 64 else 128))
        if m > MV_MAX_M and bt == 16 and _wg_wide_rows(n, k, bits):  # 128-row tiles, K split to ~2 per SM (run 82)
            bn = 128
            split = 1 << max(0, round(math.log2(max(1.0, _WG_WIDE_WAVES * num_sms / triton.cdiv(n, bn)))))
        else:
            bn = 64
            tiles = triton.cdiv(m, bt) * triton.cdiv(n, bn)
            waves = _WG_WAVES[0] if bt <= 32 else _WG_WAVES[1]
            split = 1 << max(0, int(math.log2(max(1.0, waves * num_sms / tiles))))
        return KernelConfig("wg", block_m=bt, block_n=bn, split_k=max(1, min(16, split, k_tiles)), num_warps=4,
                            num_stages=3, join=True, scaled=bt >= 64, pdl=bt <= 32 and n * k < _WG_PDL_MAX_WEIGHTS)
    return wgs_config(m, n, k, num_sms) or _DEQUANT


def _wg_wide_rows(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Where ``wg`` with 16-token tiles ran faster on 128-row tiles than on 64 (H200, run 82, 16 tokens, K split
    to ~2 programs per SM): layers under 2^27 weights with 8192+ input columns (4096 x 11008 2-bit 20.5 ->
    19.7 us, 3-bit 25.2 -> 24.6, SliM 25.1 -> 24.1; 8192 x 8192 2-bit 24.9 -> 23.0, SliM 28.5 -> 27.2), and
    with fewer columns only uniform 1-, 2- or 4-bit codes (11008 x 4096 2-bit 21.5 -> 19.6, 4-bit 23.7 ->
    22.5, but 3-bit 25.9 -> 27.6 and SliM 25.1 -> 29.7: short K shares of several planes or segments).
    Only with 9-16 tokens: with 4 (masked tokens, run 83) SliM on 4096 x 11008 took 31.9 us against 24.7 and
    11008 x 4096 2-bit / 4-bit 24.3 / 28.8 against 21.0 / 24.1."""
    if n * k >= _WG_PDL_MAX_WEIGHTS:
        return False
    return k >= 8192 or (bool(bits) and len(set(bits)) == 1 and max(bits) in (1, 2, 4))


def _mv_wins(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Where ``mv`` beat ``gv``/``h2`` at ``M == 1`` (H200, KERNEL_NOTES): layers of 8192+ input columns
    whose codes are all 4-bit or wider (run 63: 1.05-1.20x); with the L2 prefetch (run 76) every layer of
    2^27+ weights (SliM 1/2/3-bit mixes 1.10x, 3-bit 1.07-1.09x, 2-bit 1.05-1.07x) and uniform widths on
    2^26+ (8192 x 8192: 2-bit 1.04x, 3-bit 1.02x; SliM stayed 3% slower than ``gv``). Smaller layers lost."""
    if not bits or k < 8192 or 7 in bits:
        return False
    return min(bits) >= 4 or n * k >= 1 << 27 or (len(set(bits)) == 1 and n * k >= _MV_L2_MIN_WEIGHTS)


def _mv_per_sm(maxnreg: int) -> int:
    """Resident 4-warp programs per SM at ``maxnreg`` registers per thread (64K registers per SM)."""
    return 65536 // (maxnreg * 128)


def _mvt_wins(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Where ``mv`` with 2-8 tokens (one block of 8 B columns) beat ``wg`` (H200, run 65, 4 tokens): layers of
    2^26+ weights, every bit-width (1.0-1.12x on 8192 x 8192, 1.2-1.5x on 8192 x 28672 and 28672 x 8192).
    With 9-16 tokens (two blocks, 103-128 registers) it was 1.2-1.5x slower than ``wg``: not taken."""
    return bool(bits) and 7 not in bits and n * k >= 1 << 26


def _m1_config(n: int, k: int, bits: tuple[int, ...] | None, num_sms: int, allow_mv: bool = True) -> KernelConfig:
    """The ``M == 1`` rule of :func:`select_config` (``allow_mv=False``: for layers ``mv`` cannot run)."""
    k_tiles = triton.cdiv(k, 128)
    if allow_mv and _mv_wins(n, k, bits) and n * k >= _MV_L2_MIN_WEIGHTS:
        # the next tile past the loaded one prefetched into L2, K split up to 16 at <= 7 programs per SM, the
        # highest register cap that keeps the grid in one wave (96 for 3-bit codes: two waves were faster;
        # codes of 4+ bits only with 96, else neither cap nor prefetch: 28672 x 8192 4-bit 46.9 against 48.7 us)
        rows = triton.cdiv(n, 128)
        split = max(1, min(16, k_tiles, _pow2_at_most(max(1, _MV_L2_SPLIT_PER_SM * num_sms // rows))))
        caps = _MV_L2_CAPS[:1] if min(bits) >= 4 else _MV_L2_CAPS
        cap = 96 if set(bits) == {3} else next((r for r in caps if _mv_per_sm(r) * num_sms >= rows * split), 0)
        return KernelConfig("mv", block_m=1, block_n=128, block_k=128, split_k=split, num_warps=4, num_stages=1,
                            maxnreg=cap, l2_ahead=1 if cap else 0)
    if allow_mv and _mv_wins(n, k, bits):  # 128-row programs, as many K shares as fit in one wave
        per_sm = _MV_PROGRAMS_PER_SM if max(bits) <= 2 else _MV_PROGRAMS_PER_SM - 1  # 64 / 72 registers
        split = _pow2_at_most(max(1, per_sm * num_sms // triton.cdiv(n, 128)))
        return KernelConfig("mv", block_m=1, block_n=128, block_k=128, split_k=max(1, min(16, split, k_tiles)),
                            num_warps=4, num_stages=1)
    if bits and min(bits) >= 4 and n * k > _GV_GATHER_MAX_WEIGHTS:
        split = min(16, k_tiles, _pow2_at_most(max(1, _H2_MAX_PROGRAMS // triton.cdiv(n, 64))))
        return KernelConfig("h2", block_m=1, block_n=64, block_k=128, split_k=max(1, split), num_warps=2,
                            num_stages=1, prefetch=True)
    split = max(1, min(32, k_tiles, _pow2_at_most(max(1, _GV_PROGRAMS_PER_SM * num_sms // triton.cdiv(n, 128)))))
    narrow = bool(bits) and max(bits) <= 2  # 1- and 2-bit codes only (SliM layers: see below)
    gather = n * k <= (_GV_GATHER_MAX_WEIGHTS if bits and 3 not in bits else _GV_GATHER_MAX_WEIGHTS_3B)
    if gather:  # each program pairs its own columns: fewer, longer programs (run 27)
        split = min(split, 16)
    return KernelConfig("gv", block_m=1, block_n=128, block_k=128, split_k=split, num_warps=2, num_stages=1,
                        depth=2 if narrow and k_tiles >= 2 * split else 1, gather=gather)


def wgs_config(m: int, n: int, k: int, num_sms: int = 132) -> KernelConfig | None:
    """The ``wgs`` tiling for ``M > WG_MAX_M``, or None where dequantize-then-cuBLAS was faster (H200,
    runs 51-53, benchmarks/KERNEL_NOTES.md): layers of ``_WGS_MIN_WEIGHTS`` weights up to ``_WGS_MAX_M``
    tokens, or of ``_WGS_SMALL_MIN_WEIGHTS`` up to ``_WGS_SMALL_MAX_M``. Always 256-token x 128-row tiles,
    8 MMA warps and 4 producer warps (weights loaded three tiles ahead); where those tiles fill under
    0.75 of the SMs, K is split so that about one wave runs (at most 4 ways, ``WGS_SPLIT_MAX_M`` tokens)."""
    if m > _WGS_MAX_M or n * k < _WGS_SMALL_MIN_WEIGHTS or (n * k < _WGS_MIN_WEIGHTS and m > _WGS_SMALL_MAX_M):
        return None
    tiles = triton.cdiv(m, 256) * triton.cdiv(n, 128)
    split = max(1, min(4, num_sms // tiles)) if tiles < 0.75 * num_sms and m <= WGS_SPLIT_MAX_M else 1
    return KernelConfig("wgs", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=2, producers=4,
                        depth=2, split_k=split)


_DEQUANT = KernelConfig("dequant", block_n=64, block_k=128, num_warps=4)


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
    ``wg``).

    ``split_rows`` (default ``min(max_m, WG_MAX_M)``): the token rows of the buffers only the
    split-K and operand-ordered paths use. The dispatch sends more tokens than ``WG_MAX_M`` to
    ``wgs`` or dequantize-then-cuBLAS, which need none of them but ``acc`` (``wgs`` splitting K, up to
    ``WGS_SPLIT_MAX_M`` rows), so a workspace for long prompts does not pay for them per token
    (LLaMA-2-7B layers, 2048 tokens: 32 MiB of these buffers instead of 261 MiB).
    """

    def __init__(self, device: torch.device | str, max_m: int, max_n: int, max_k: int,
                 dtype: torch.dtype = torch.float16, *, dequant: bool = False, dequant_rows: int | None = None,
                 buffers: tuple[str, ...] = ("acc", "xperm", "xperm32", "xpair", "xs32", "xc32", "cnt"),
                 split_rows: int | None = None) -> None:
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
        self.kp = kp
        self.pair_stride = sr * kp // 2  # elements between the width slots of xpair
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
        if cfg.path in ("gv", "h2", "tc", "wg"):
            need |= {"xpair", "xs32"}
        elif cfg.path == "mv":
            need |= {"xpair", "xc32"}
        elif cfg.path == "h2dot":
            need |= {"xpair", "xperm"}
        elif not cfg.gather or cfg.path in ("dequant", "wgs"):
            need.add("xperm32" if cfg.path == "fma" and m == 1 else "xperm")
        return cls(x.device, m, n, k, x.dtype, dequant=cfg.path == "dequant",
                   dequant_rows=cfg.chunk_n or None, buffers=tuple(need), split_rows=m)

    def check(self, m: int, n: int, k: int, dtype: torch.dtype, cfg: KernelConfig, atomic: bool) -> None:
        if m > self.max_m or n > self.max_n or k > self.max_k:
            raise ValueError(f"workspace holds m, n, k <= {self.max_m}, {self.max_n}, {self.max_k}; "
                             f"got {m}, {n}, {k}")
        if dtype != self.dtype:
            raise TypeError(f"workspace dtype is {self.dtype}, activations are {dtype}")
        if cfg.path == "dequant" and self.wbuf.numel() < min(cfg.chunk_n or n, n) * k:
            raise ValueError("the dequant path needs a Workspace(..., dequant=True) with room for "
                             f"{min(cfg.chunk_n or n, n)} x {k} weights")
        if cfg.path in ("dequant", "wgs") and self.xperm.numel() < m * k:
            raise ValueError(f"the {cfg.path} path needs a Workspace with buffer 'xperm' for {m} x {k} activations")
        if cfg.path == "mv" and self.xc32.numel() < XC_SLOTS * self.split_rows * self.kp // 128:
            raise ValueError("the mv path needs a Workspace with buffer 'xc32'")
        if cfg.path in ("gv", "mv", "h2", "h2dot", "tc", "wg"):
            if self.xpair.numel() < 4 * self.pair_stride or self.pair_stride == 0:
                raise ValueError(f"the {cfg.path} path needs a Workspace with buffer 'xpair'")
            if m > self.split_rows:
                raise ValueError(f"the {cfg.path} path needs a Workspace with split_rows >= {m}, "
                                 f"this one has {self.split_rows}")
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
    cfg = config or select_config(m, n, kdim, num_sms=_num_sms(x.device),
                                  bits=tuple(s.bits for s in packed.segments))
    if cfg.path == "wgs":
        why = wgs_supported(x, packed)
        if why is not None:
            if config is not None:
                raise ValueError(f"path 'wgs' cannot run this layer: {why}")
            return _DEQUANT
    if cfg.path == "mv":
        why = mv_supported(packed)
        if why is None:
            return cfg
        if config is not None:
            raise ValueError(f"path 'mv' cannot run this layer: {why}")
        cfg = select_config(m, n, kdim, num_sms=_num_sms(x.device), bits=tuple(s.bits for s in packed.segments),
                            mv=False)
    if cfg.path in ("gv", "h2", "h2dot", "tc", "wg"):
        why = (tc_supported(packed) if cfg.path in ("tc", "wg")
               else h2_supported(packed, join=cfg.path in ("gv", "h2") or cfg.join))
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
