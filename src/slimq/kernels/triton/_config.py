"""The launch recipe of the Triton backend: :class:`KernelConfig` (path, tiling, options), validated on
construction. Which config a call gets is :mod:`slimq.kernels.triton._dispatch`'s rule."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KernelConfig", "PATHS"]

PATHS = ("gv", "mv", "h2", "h2dot", "tc", "wg", "wgs", "wgr", "fma", "dot", "gemm", "dequant")


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
    stream_k: int = 0  # "wgs" with producers: this many persistent programs (the SM count, at most) share the
    # tiles' K tiles evenly (stream-K, ``_wgsk``; 0: one program per tile and K split)
    k_warps: int = 0  # "mv" with one token: the warps of a 32-row program split its K, every tile's loads issued
    # up front, the rows summed in the program (``_mvs``; 0: each warp takes 32 rows)
    direct: bool = False  # "wg" with join, "mv" with one token: where col_perm moves whole blocks (the identity
    # included) and x is float16, each program reads its blocks of x itself (``_wg._direct_x``, ``_mvx``;
    # ``_plan.wg_direct``, ``_plan.mv_direct``) instead of a gather launch writing them in operand order; "wgr":
    # float16 x and a col_perm moving whole 64-column runs: TMA reads x itself, in its natural order (``_wgrn``,
    # ``_wgr_plan.wgr_direct``; dispatched at 2 and 4 bits)
    byte_split: bool = False  # "mv" with one token, and "wg", with split_k: program p takes the band's tiles (segments
    # in storage order) whose start lies in the p-th 1/split_k of its bytes, entering only the segments it has tiles
    # of (``_plan.segment_units``, ``_tiles.unit_range``; False: a 1/split_k share of every segment's tiles, one
    # pipeline start per segment)
    tile_units: int = 0  # "mv" and "wg" with byte_split: a fixed weight added to every tile's bytes in the shares, in
    # ``_plan.segment_units``' unit (1/16 byte per row; a 2-bit tile of groups of 128 is 576): 0 splits the bytes
    # evenly, a large value the tiles (a tile's latency rather than its bytes)
    plane_units: int = 0  # "mv" and "wg" with byte_split: a further weight per tile for every bit plane past the first
    # (3-bit codes: a 2- and a 1-bit plane, ``format.layout.PLANE_WIDTHS``), in the same unit: their tiles decode two
    # planes, more instructions than their bytes say

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
        if self.depth not in (1, 2) or (self.depth == 2 and self.path not in ("gv", "mv") and not self.producers):
            raise ValueError(f"depth must be 1, or 2 with path 'gv', 'mv' or 'wgs' with producers; got {self.depth} "
                             f"for {self.path!r}")
        if self.maxnreg and (self.path not in ("gv", "mv", "wgs") or not 32 <= self.maxnreg <= 255
                             or self.maxnreg % 8):
            raise ValueError(f"maxnreg must be 0, or a multiple of 8 in 32..255 with path 'gv', 'mv' or 'wgs'; got "
                             f"{self.maxnreg} for {self.path!r}")
        if self.path == "gv" and self.block_m != 1:
            raise ValueError(f"path 'gv' takes block_m == 1 (one token), got {self.block_m}")
        if self.k_warps and (self.path != "mv" or self.k_warps not in (1, 2, 4, 8, 16) or self.block_m != 1
                             or self.block_n != 32 or self.num_warps != self.k_warps or self.split_k != 1
                             or self.l2_ahead or self.depth != 1):
            raise ValueError(f"k_warps must be 0, or 1, 2, 4, 8 or 16 with path 'mv', block_m 1, block_n 32, "
                             f"num_warps == k_warps, split_k 1, no l2_ahead and depth 1; got k_warps={self.k_warps} "
                             f"for {self.path!r} (block_m={self.block_m}, block_n={self.block_n}, num_warps="
                             f"{self.num_warps}, split_k={self.split_k}, l2_ahead={self.l2_ahead}, depth={self.depth})")
        if self.path == "mv" and not self.k_warps and (self.block_m not in (1, 16) or self.block_k != 128
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
        if self.path == "wgr":  # _wgr: BN = 16 rows per warp, BT tokens = wgmma's N, BK = 64
            if self.num_warps not in (4, 8) or self.block_n != 16 * self.num_warps or self.block_k != 64:
                raise ValueError(f"path 'wgr' takes num_warps 4 or 8, block_n == 16 * num_warps and block_k == 64; "
                                 f"got num_warps={self.num_warps}, block_n={self.block_n}, block_k={self.block_k}")
            if not 64 <= self.block_m <= 256 or not 2 <= self.num_stages <= 5 or self.split_k > 8:
                raise ValueError(f"path 'wgr' takes 64 <= block_m <= 256, num_stages (K tiles in flight) 2..5 "
                                 f"and split_k <= 8; got {self.block_m}, {self.num_stages}, {self.split_k}")
        if self.l2_ahead and (self.path != "mv" or not 0 < self.l2_ahead <= 16):
            raise ValueError(f"l2_ahead must be 0, or 1..16 with path 'mv'; got {self.l2_ahead} for {self.path!r}")
        if self.stream_k < 0 or (self.stream_k and (self.path not in ("wgs", "wgr") or not self.producers
                                                     or self.split_k != 1)):
            raise ValueError(f"stream_k must be 0, or > 0 with path 'wgs' or 'wgr', producers and split_k 1; got "
                             f"stream_k={self.stream_k} for {self.path!r} with producers={self.producers}, "
                             f"split_k={self.split_k}")
        if self.producers and self.path not in ("wgs", "wgr"):
            raise ValueError(f"producers applies to paths 'wgs' and 'wgr' only, got {self.path!r}")
        if self.path == "wgr" and self.producers not in (0, 1):
            raise ValueError(f"path 'wgr' takes producers 0 or 1 (one warp issuing the copies), got {self.producers}")
        if self.direct and not ((self.path == "wg" and self.join) or (self.path == "mv" and self.block_m == 1)
                                or self.path == "wgr"):
            raise ValueError(f"direct applies to path 'wg' with join, to path 'mv' with block_m 1, and to 'wgr', "
                             f"only; got {self.path!r} (join={self.join}, block_m={self.block_m})")
        mv1 = self.path == "mv" and self.block_m == 1 and not self.k_warps
        if self.byte_split and (self.split_k < 2 or not (self.path == "wg" or mv1)):
            raise ValueError(f"byte_split applies to path 'wg', and 'mv' with block_m 1 and no k_warps, with "
                             f"split_k >= 2 only; got {self.path!r} (block_m={self.block_m}, k_warps={self.k_warps}, "
                             f"split_k={self.split_k})")
        if self.tile_units < 0 or (self.tile_units and not self.byte_split):
            raise ValueError(f"tile_units must be 0, or > 0 with byte_split; got tile_units={self.tile_units} "
                             f"(byte_split={self.byte_split})")
        if self.plane_units < 0 or (self.plane_units and not self.byte_split):
            raise ValueError(f"plane_units must be 0, or > 0 with byte_split; got plane_units={self.plane_units} "
                             f"(byte_split={self.byte_split})")
        if self.chunk_n < 0 or (self.chunk_n and self.path != "dequant"):
            raise ValueError(f"chunk_n must be 0, or > 0 with path 'dequant'; got {self.chunk_n} for {self.path!r}")
