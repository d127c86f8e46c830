"""The dispatch rule of the Triton backend: which :class:`~slimq.kernels.triton._config.KernelConfig` a
call of ``M`` tokens on an ``N x K`` layer gets (:func:`select_config`), the ``wgs`` tiling and the float32
fallbacks. Every threshold below was set from ``benchmarks/kernels.py --tune`` runs on an H200 (runs named in
benchmarks/KERNEL_NOTES.md); :func:`slimq.kernels.triton.ops.resolve_config` applies the rule to a layer."""
from __future__ import annotations

import math

import triton

from slimq.kernels.triton._config import KernelConfig

__all__ = ["select_config", "wgs_config", "wgr_config", "WGR_M", "fallback_config", "FMA_MAX_M", "H2_MAX_M",
           "SKINNY_MAX_M", "WG_MAX_M",
           "WGS_SPLIT_MAX_M", "DEQUANT_MIN_M", "MV_MAX_M"]

FMA_MAX_M = 1        # float32 CUDA-core fallback for M == 1 (layers h2 cannot run)
H2_MAX_M = 1         # half2 CUDA cores up to here ...
SKINNY_MAX_M = 16    # (fallbacks: h2dot / dot with M padded to 16 up to here, tiled gemm beyond)
WG_MAX_M = 128       # ... weights as the register operand of the tensor-core dot up to here ...
WGS_SPLIT_MAX_M = 512  # wgs splits K (float32 sums in workspace.acc) only up to this many tokens
WGR_M = (256, 1024)    # wgr (weights as the register operand, 2-/3-/4-bit layers) where it can fill its waves
WGR_DIRECT_MAX_N = 16384  # wgr reads x in its natural order (no gather launch) at 2 and 4 bits up to this many rows
DEQUANT_MIN_M = WG_MAX_M + 1  # ... and wgs (sm_90) or dequantize-then-cuBLAS from here
_WG_WAVES = (3.9, 2.9)  # wg programs per SM to aim for: token tiles <= 32, >= 64 (runs 12-13)
_WG_WIDE_WAVES = 2  # wg with 128-row tiles (_wg_wide_rows): K split for at least ~this many programs per SM
_WG_BIG_WEIGHTS = 1 << 27  # wg on layers under this many weights: PDL (<= 32 tokens) and 128-row tiles (9-16 tokens)
# wg with 16-token tiles reads x itself (direct, no gather launch) on layers of up to _WG_DIRECT_WEIGHTS weights, and
# with 9-16 tokens and codes of 3+ bits up to _WG_DIRECT_WEIGHTS_3B (H200 runs 179-183: the per-program reordering
# costs more than the launch on bigger layers)
_WG_DIRECT_WEIGHTS = 1 << 24
_WG_DIRECT_WEIGHTS_3B = 1 << 26
_H2_MAX_PROGRAMS = 4096  # h2 (M == 1, >= 4 bits): K split 16, fewer when the grid would pass this (run 12)
MV_MAX_M = 8  # the dispatch sends 2..MV_MAX_M tokens to mv on big layers (one block of 8 token columns)
_MVT_PROGRAMS_PER_SM = 4  # mv with 2-8 tokens: K split up to 16 while the grid holds at most this many per SM
_MV_PROGRAMS_PER_SM = 8  # mv (M == 1): K split up to 16 while the grid fits in one wave: 8 programs of 4 warps per
# SM at 2 bits (64 registers), 7 with wider codes (72 registers; 8192 x 28672 at 4 bits: K split 8 48-51 us, 16 57 us)
_MV_L2_MIN_WEIGHTS = 1 << 26  # mv (M == 1) on layers of this many weights: L2 prefetch and a register cap (run 76)
_MV_L2_SPLIT_PER_SM = 7  # ... there K is split up to 16 while the grid holds at most this many programs per SM,
_MV_L2_MIN_TILES = 16  # ... the L2 prefetch only where a program takes more K tiles than this (run 243), of codes
# under 4 bits (run 249)
_MV_L2_CAPS = (96, 80, 72)  # ... under the highest of these register caps that still fits it in one wave
_MV_DIRECT_MIN_WEIGHTS = 1 << 24  # mv (M == 1) reading x itself on layers from this many weights (_mv_direct_mid)
_BYTE_SPLIT_TILE_UNITS = 576  # mv (M == 1) and wg (9-16 tokens) on mixed-width layers: K split into equal shares
# of bytes plus this per tile (a 2-bit tile's bytes, _plan.segment_units) ...
_BYTE_SPLIT_PLANE_UNITS = (288, 576)  # ... and, mv only, this per bit plane past the first (3-bit tiles: two
# planes), the second on layers of _BYTE_SPLIT_BIG_WEIGHTS+ weights
_BYTE_SPLIT_BIG_WEIGHTS = 1 << 27
_MVS_MAX_K = 4096  # mv with the warps splitting K (k_warps, _mvs) at M == 1: layers of at most this many columns
_MVS_TILES = 8  # ... whose K tiles per warp (summed over segments, at most) stay under this (_mvs.MVS_MAX_TILES)
_GV_PROGRAMS_PER_SM = 8  # gv (M == 1): K split 32, fewer when the grid would pass this many per SM (runs 19, 23)
# gv pairs its own activations (gather=True, one launch) on layers up to this many weights, and
# 4-bit-and-wider layers take gv (not h2) up to it (run 27); with 3-bit codes only up to the second
_GV_GATHER_MAX_WEIGHTS = 1 << 27
_GV_GATHER_MAX_WEIGHTS_3B = 1 << 24
# wgs (M > WG_MAX_M), warp-specialised (producers=4, half2 dequantization): where it beat dequantize-then-cuBLAS
# on the H200 (runs 51-53; with stream-K, run 89): layers of 2^26+ weights up to 1024 tokens, layers of 2^25+
# weights up to 512 tokens (wgs_config); dequant+cuBLAS stays faster on smaller layers and more tokens
_WGS_MAX_M = 1024
_WGS_MIN_WEIGHTS = 1 << 26
_WGS_SMALL_MAX_M = 512
_WGS_SMALL_MIN_WEIGHTS = 1 << 25
# ... one program per 256 x 128 tile where those make one wave this full and K is short (stream-K's partial
# sums cost more than the last few percent of the wave there: 8192 x 8192 at 512 tokens, run 89), else
# stream-K over the SM count
_WGS_FULL_WAVES = 0.95
_WGS_SHORT_K = 16384


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _pow2_at_most(v: int) -> int:
    return 1 << max(0, v.bit_length() - 1)


def select_config(m: int, n: int, k: int, *, num_sms: int = 132, bits: tuple[int, ...] | None = None,
                  mv: bool = True, wgr: bool = True, direct: bool = True) -> KernelConfig:
    """The dispatch rule: kernel path and tiling for ``x [m, k] @ W^T`` with ``W [n, k]``.

    Set from ``benchmarks/kernels.py --tune`` on an H200 (132 SMs; benchmarks/KERNEL_NOTES.md,
    runs 10-20):

    * ``M == 1``: the tensor-core GEMV ``mv`` where it measured faster (:func:`_mv_wins`: 8192+ input
      columns, codes all 4-bit or wider, every layer of 2^27+ weights, uniform widths on 2^26+; 128-row
      programs, whose weights load evict-first; on 2^26+ weights with more than ``_MV_L2_MIN_TILES`` K tiles per
      program of codes under 4 bits the weights of the tile past the loaded one prefetched into L2
      (``l2_ahead=1``), K split up to 16 at ``_MV_L2_SPLIT_PER_SM`` programs per SM and the highest register cap
      of ``_MV_L2_CAPS`` that keeps the grid in one wave; below, K split up to 16 while the grid holds at most
      ``_MV_PROGRAMS_PER_SM`` programs per SM). Where ``direct`` (the caller's
      word that the token and layer let ``mv`` read ``x`` itself: ``_plan.mv_reads_x``; ``resolve_config``
      checks it) ``mv`` reads ``x`` without the gather launch where that won (:func:`_mv_direct_wins`), and
      takes the other layers of 2^24 up to 2^27 weights too (:func:`_mv_direct_mid`). Layers of up to 4096 columns
      whose 32-row programs make one wave take ``mv`` with the warps splitting K (:func:`_mvs_wins`). Mixed-width
      (SliM) layers with K split share their tiles out across the segments by bytes plus a cost per tile
      (:func:`_byte_split_wins`, :func:`_byte_split_units`). Elsewhere the half2 CUDA-core GEMV ``gv`` (one
      output row per thread, 128-row tiles, 2 warps, K split 32, or less so that the grid holds at most
      ``_GV_PROGRAMS_PER_SM`` programs per SM, and at most one split per 128-column tile). On layers of up to
      ``_GV_GATHER_MAX_WEIGHTS`` weights (``_GV_GATHER_MAX_WEIGHTS_3B`` with 3-bit segments, or when ``bits`` is
      unknown) every
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
      says; with 9-16 tokens K is split for about ``_WG_WIDE_WAVES`` (128 rows) or ``_WG_WAVES[0]`` programs
      per SM and a full last wave, :func:`_balanced_split`), 4 warps, 3 stages, one dot per 128-column block
      (``join``), tokens in tiles of 16 (``M <= 16``), 32, 64 or 128; from 64-token tiles on, the
      operands are dequantized weights (``scaled``) instead of codes scaled per block. K is split
      so that the grid holds about ``_WG_WAVES`` programs per SM (rounded down to a power of two),
      and launched with programmatic dependent launch only for exact-code tiles (<= 32 tokens) on layers under
      ``_WG_BIG_WEIGHTS`` weights: there it gained 2-5% in runs 14 and 80 alike; on the big layers it
      gained 1-3% but cost 20% once (8192 x 28672, 16 tokens, 3-bit, run 14), and with 64-token tiles it
      was neutral but cost 33% on 28672 x 8192 3-bit (run 14).
      With 16-token tiles, where ``col_perm`` is the identity and ``x`` float16 (``_plan.wg_direct``), the programs
      read ``x`` themselves (``direct``) instead of a gather launch writing it in operand order: on layers of up
      to ``_WG_DIRECT_WEIGHTS`` weights, and of ``_WG_DIRECT_WEIGHTS_3B`` with 9-16 tokens and 3- and 4-bit codes
      (H200 runs 179-180, ``kernels.py --tune --paths wg --ms 16``, the dispatch's tiling: 4096 x 4096 2-bit
      13.7 -> 12.9 us, 3-bit 16.5 -> 14.2, 4-bit 15.4 -> 14.0; 4096 x 11008 3-bit 24.6 -> 22.8, 4-bit 22.8 ->
      21.2; 8192 x 8192 3-bit 29.8 -> 29.1, 4-bit 27.6 -> 26.6; but 2-bit there 19.0-23.0 -> 19.7-24.8, and 8192 x
      28672 / 28672 x 8192 3- and 4-bit 69-77 -> 78-92: each program reorders its blocks, which costs more than
      the launch on big layers; run 183, 4 tokens: 4096 x 4096 2-bit 13.6 -> 12.5, 3-bit 16.5 -> 13.7, 4-bit
      15.1 -> 13.3, 11008 x 4096 and 4096 x 11008 mixed within the timing noise).
      Mixed-width (SliM) layers at 9-16 tokens with K split take ``byte_split`` with 576 units per block: each
      program a run of blocks across the segments, weighed by bytes plus a cost per block, instead of a share of
      every segment's blocks with a pipeline start in each (H200 run 256, ``wg_split.py --m 16 --variants slim
      --no-splits --extra byte_split=1[,tile_units=576[,plane_units=P]]``, us: 4096 x 4096 15.4 -> 14.8, 4096 x
      11008 24.5 -> 23.0, 11008 x 4096 23.9 -> 22.8, 8192 x 8192 27.3 -> 26.7, 8192 x 28672 68.0 -> 63.9, 28672 x
      8192 70.3 -> 68.5; bytes alone and plane costs were slower); at 4 tokens mixed (run 257: 4096 x 11008 24.8
      -> 23.3, 4096 x 4096 15.0 -> 15.5), so not there.
      It beat ``h2dot``/``tc`` at ``M = 4`` and 16 by 1.1-1.7x, ``gemm`` at 17-64 tokens by
      1.2-2.5x and dequantize-then-cuBLAS at 128 tokens (2-, 4-bit; 3-bit merged into one operand).
    * beyond, on uniform 2-4-bit and SliM layers of ``WGR_M`` tokens: ``wgr`` where :func:`wgr_config` fills
      its waves (``wgr=False``: the rule without it, for layers or
      activations it cannot take); uniform 2- and 4-bit layers of up to ``WGR_DIRECT_MAX_N`` rows read ``x``
      in its natural order (``direct``, ``_wgrn``; the plan keeps the gather where ``x`` or ``col_perm`` does
      not qualify);
    * else ``wgs`` where :func:`wgs_config` gives a tiling (layers of 2^26+ weights up to 1024 tokens,
      2^25+ up to 512; stream-K unless the tiles make one full wave; where it cannot run,
      :func:`resolve_config` turns it into ``dequant``), else dequantize into the workspace then cuBLAS in
      one pass.

    ``bits``: the layer's segment bit-widths (:func:`resolve_config` passes them; without them no
    ``mv``). ``mv=False``: the rule without ``mv`` (for layers it cannot run). Layers ``wg`` or ``wgs`` cannot run get :func:`resolve_config`'s fallback.
    """
    if m < 1 or n < 1 or k < 1:
        raise ValueError(f"m, n, k must be >= 1, got {m}, {n}, {k}")
    k_tiles = triton.cdiv(k, 128)
    if m <= H2_MAX_M:
        return _m1_config(n, k, bits, num_sms, allow_mv=mv, direct=direct)
    if mv and m <= MV_MAX_M and _mvt_wins(n, k, bits):  # ~4 programs per SM, K split up to 16
        split = _pow2_at_most(max(1, _MVT_PROGRAMS_PER_SM * num_sms // triton.cdiv(n, 128)))
        return KernelConfig("mv", block_m=16, block_n=128, block_k=128, split_k=max(1, min(16, split, k_tiles)),
                            num_warps=4, num_stages=1, maxnreg=128, l2_ahead=0 if set(bits) == {3} else 1)
    if m <= WG_MAX_M:
        bt = 16 if m <= 16 else (32 if m <= 32 else (64 if m <= 64 else 128))
        if m > MV_MAX_M and bt == 16:  # 128 rows where _wg_wide_rows says; K split for whole waves (run 97)
            bn = 128 if _wg_wide_rows(n, k, bits) else 64
            per_sm = _WG_WIDE_WAVES if bn == 128 else _WG_WAVES[0]
            split = _balanced_split(triton.cdiv(n, bn), k_tiles, per_sm, num_sms)
        else:
            bn = 64
            tiles = triton.cdiv(m, bt) * triton.cdiv(n, bn)
            waves = _WG_WAVES[0] if bt <= 32 else _WG_WAVES[1]
            split = 1 << max(0, int(math.log2(max(1.0, waves * num_sms / tiles))))
        direct = bt == 16 and (n * k <= _WG_DIRECT_WEIGHTS or (m > MV_MAX_M and n * k <= _WG_DIRECT_WEIGHTS_3B
                                                                and bool(bits) and min(bits) >= 3))
        split = max(1, min(16, split, k_tiles))
        # SliM at 9-16 tokens: runs of blocks across the segments, plus a cost per block (runs 256-257)
        shares = m > MV_MAX_M and bt == 16 and split > 1 and _byte_split_wins(bits)
        return KernelConfig("wg", block_m=bt, block_n=bn, split_k=split, num_warps=4, num_stages=3, join=True,
                            scaled=bt >= 64, pdl=bt <= 32 and n * k < _WG_BIG_WEIGHTS, direct=direct,
                            byte_split=shares, tile_units=_BYTE_SPLIT_TILE_UNITS if shares else 0)
    return (wgr_config(m, n, k, bits, num_sms) if wgr else None) or wgs_config(m, n, k, num_sms) or _DEQUANT


def wgr_config(m: int, n: int, k: int, bits: tuple[int, ...] | None, num_sms: int = 132) -> KernelConfig | None:
    """``wgr`` at ``WGR_M`` tokens (``[128 rows, 256 tokens]`` tiles, or 128 tokens; :func:`_wgr_tiles`) for a
    uniform 2-, 3- or 4-bit layer or a SliM layer (two or three segments of 1-3 bits), or None where its grid would
    leave SMs idle. K is split (float32 sums, a finalize launch; up to ``WGS_SPLIT_MAX_M`` tokens) 4 or 2 ways where
    the tiles then still make one wave and each program keeps more than 32 K tiles, or the tiles fill a quarter of
    the SMs or less; then one wave must be half full, more waves' last one 75%. Where unsplit tiles make more than
    one wave and the last is under 90% full (2-, 4-bit) or 80% (3-bit, SliM: more registers spilled in stream-K; 85%
    from three waves on, run 152), stream-K (``stream_k``, ``_wgrk``: one persistent program per SM sharing the
    tiles' K tiles). H200 run 143 (``wgr_probe.py --ws 1 --sk 0,1``), stream-K against one program per tile: 28672 x
    8192 at 512 tokens (3.4 waves) 2-bit 0.85 -> 0.94x of FP16, 4-bit 0.84 -> 0.93, 3-bit / SliM 0.81 / 0.80 -> 0.83
    / 0.82; at 256 (1.7 waves) 2-bit 0.99 -> 1.06, 4-bit 0.99 -> 1.04 (3-bit / SliM 0.95 / 0.96 -> 0.94 / 0.94);
    11008 x 4096 at 512 (1.3 waves, ``wgs`` before: 0.66-0.71) 0.72-0.80, at 1024 (2.6 waves) 2-bit 0.82 -> 0.83,
    4-bit 0.82 -> 0.83 (3-bit / SliM 0.80 / 0.82 -> 0.76). It lost where the tiles already filled their waves (8192
    x 8192 at 512: 0.93-0.96 -> 0.76-0.86). Run 152, stream-K's row tiles fastest (``_wgrk._unit_tile``): 28672 x
    8192 at 512 3-bit / SliM 0.82 / 0.82 -> 0.86 / 0.84. Where 128-token tiles make one wave 90%+ full and 256-token
    ones leave it short (4096 x 4096 at 512 tokens, 64 tiles: ``wgs`` 0.60-0.63x of FP16 before) or, at 2 and 4 bits
    with ``K <= 8192``, need a K split of 2 (8192 x 8192 at 256), 128-token tiles (run 145): 4096 x 4096 at 512
    0.70-0.78x, 8192 x 8192 at 256 2-bit 0.80 -> 0.85, 4-bit 0.80 -> 0.84 (3-bit, SliM: 0.78 / 0.80 -> 0.76; 4096 x
    11008 at 512, 2 / 3 bits: 0.76 / 0.69 against 0.77 / 0.75 at K split 2). Where either of those (a K split or
    128-token tiles) would be taken with ``K <= 8192``, one unsplit wave of 64-row tiles instead (one warpgroup of
    MMA warps, ``_wgr_tiles(warps=4)``): 256 tokens where such tiles fill it 90%+, else 128 tokens in place of a
    split that leaves each program 16 K tiles or fewer. H200 runs 156-158 (``wgr_probe.py --warps 4``), against
    the dispatch before: 4096 x 4096 at 256 (K split 4 -> 64 x 128 tiles) 2-bit 0.78 -> 0.84x, 3-bit 0.75 ->
    0.79; at 512 (128-token tiles -> 64 x 256) 0.78 -> 0.80, 3-bit 0.70 -> 0.77; 8192 x 8192 at 256 2-bit 0.86
    -> 0.90, 3-bit 0.79 -> 0.84. Not for long K: 8192 x 28672 at 256 lost 10-16% against K split 2 (2-bit 1.01
    -> 0.90), 4096 x 11008 at 512 within 1-4% either way. 64 x 128 tiles keep 5 K tiles in flight at 2 and 4
    bits (runs 166-167, 4096 x 4096 at 256: 2-bit 0.85 -> 0.91, 4-bit 0.80 -> 0.86; 3-bit, SliM within 1%).

    H200, run 131 (``benchmarks/wgr_probe.py --ws 1``, every benchmark shape at 256 / 512 / 1024 tokens, four
    variants, K split 1 / 2 / 4; ratio to cuBLAS FP16, the dispatch before in brackets): at this rule's split
    2-bit 28672 x 8192 1.02 / 0.88 / 0.89 (0.89 / 0.73 / 0.86), 8192 x 28672 1.05 / 0.95 / 0.94 (0.92 / 0.79 /
    0.80), 8192 x 8192 0.79 / 0.93 / 0.92 (0.75 / 0.82 / 0.81), 3-bit and SliM 0.72-1.03 against 0.63-0.91;
    1.01-1.27x faster than the dispatch before in all 64 cells it takes. Left to ``wgs`` then (taken since by
    stream-K and 128-token tiles, above), where it was slower:
    11008 x 4096 at 512 (172 tiles, 1.3 waves) 0.64-0.66 (0.67-0.70) and 4096 x 4096 at 512 (64 tiles; K split 2
    leaves 32 K tiles per program) 0.55-0.56 unsplit, 0.59-0.60 split 2 (0.58-0.63). The copy warp
    (``producers=1``) gained 10-17% over the MMA warps issuing the copies themselves (run 130); launching it during
    the gather (``pdl``, the copy warp waits for it) a median 1.4 us per call (run 138).

    ``direct`` (session 26, H200 runs 262-263, ``kernels.py --ms 256,512,1024 --variants 2b,4b --no-peer --rounds
    5``, the operand-order gather of before and the natural order alternated in one call): no gather launch
    gained 4-12% on the layers of up to 11008 rows at 2 and 4 bits (4096 x 4096 at 1024 tokens 2-bit 58.3 ->
    51.7-51.9 us, 4096 x 11008 at 1024 150.6 -> 131.3-135.3, 11008 x 4096 at 256 51.0 -> 47.6-48.0) and 1-8% on
    8192 x 28672, but lost on 28672 x 8192 (4-bit at 1024 758.9 -> 789.7-792.1, 2-bit at 512 379.0 ->
    388.4-393.2): the extra PRMT per fragment register costs per weight and token tile, the gather per token and
    column, so the gather is kept above ``WGR_DIRECT_MAX_N`` rows. 3-bit codes and SliM in natural order (run 264,
    the same A/B twice) were slower: their MMA warps run three more instructions per fragment register (the 1-bit
    plane's bits spread into place) and set the pace (3-bit 11008 x 4096 at 256 51.5 / 52.3 -> 58.1 / 58.0 us,
    8192 x 28672 at 1024 758.7 / 760.4 -> 888.0 / 855.0; SliM 4096 x 4096 at 256 31.5 -> 37.7 / 37.4, gaining
    only where 1-bit segments weigh in at 1024 tokens: 4096 x 4096 58.9 -> 56.7), so they keep the gather.

    Session 27 (H200 runs 270-273, ``benchmarks/wgr_timeline.py``): stream-K's partial sums took ~4 us to store
    and as long per peer to add (128 x 256 float32 in row-major order, 32 bytes of 8 lines per warp access); in 8 x
    8 blocks (``_wgrk._slot_offsets``) 11008 x 4096 at 256 tokens, 2-bit, took 52.0 -> 43.2 us. Stream-K then beat
    one program per tile also where the tiles fill one wave only 50-90% (11008 x 4096 at 256, ``wg_split.py --m 256
    --no-splits --extra stream_k=132,...``: 2-bit 46.6 -> 43.0 us, 3-bit 51.0 -> 48.0, 4-bit 49.5 -> 46.4, SliM
    50.8 -> 47.5), in place of a K split of 2 at 512+ tokens (4096 x 11008 at 512: 2-bit 78.1 -> 74.3, 3-bit 86.5
    -> 84.8, 4-bit 80.1 -> 77.9, SliM 85.1 / 85.2), and at 3 bits and SliM up to a 90% full last wave under three
    waves (11008 x 4096 at 1024, 2.6 waves: 3-bit 157.9 -> 149.8, SliM 157.7 -> 151.2); not with 64-row tiles or
    K splits of 4 (4096 x 4096, 4096 x 11008 at 256: 1-10% slower)."""
    if not bits or not WGR_M[0] <= m <= WGR_M[1] or k % 64:
        return None
    uniform = len(set(bits)) == 1 and bits[0] in (2, 3, 4)
    if not uniform and not (len(set(bits)) > 1 and len(bits) <= 3 and set(bits) <= {1, 2, 3}):
        return None
    tiles = triton.cdiv(n, 128) * triton.cdiv(m, 256)
    split = next((s for s in (4, 2) if m <= WGS_SPLIT_MAX_M and tiles * s <= num_sms
                  and (tiles * 4 <= num_sms or k // 64 // s > 32)), 1)
    waves = tiles * split / num_sms
    fill = waves / math.ceil(waves)
    two_four = uniform and bits[0] in (2, 4)
    direct = two_four and n <= WGR_DIRECT_MAX_N
    short = fill < (0.5 if waves <= 1 else 0.75)
    part_wave = fill < (0.9 if two_four or waves < 3 else 0.85) and (waves > 1 or not short)
    if (split == 1 and part_wave) or (split == 2 and m >= 512):
        return _wgr_tiles(256, stream_k=num_sms, direct=direct)
    t128 = _one_wave(triton.cdiv(n, 128) * triton.cdiv(m, 128), num_sms) and (
        short or (two_four and split == 2 and k <= 8192))
    if (split > 1 or t128) and k <= 8192:  # one wave of 64-row tiles (one warpgroup), unsplit, where they fill it
        if _one_wave(triton.cdiv(n, 64) * triton.cdiv(m, 256), num_sms):
            return _wgr_tiles(256, warps=4, direct=direct)
        if split > 1 and k // 64 // split <= 16 and _one_wave(triton.cdiv(n, 64) * triton.cdiv(m, 128), num_sms):
            return _wgr_tiles(128, warps=4, stages=5 if two_four else 4, direct=direct)
    if t128:
        return _wgr_tiles(128, direct=direct)  # 128-token tiles fill one wave
    return None if short else _wgr_tiles(256, split_k=split, direct=direct)


def _one_wave(tiles: int, num_sms: int) -> bool:
    """Whether ``tiles`` programs fill one wave 90% or more."""
    return 0.9 * num_sms <= tiles <= num_sms


def _wgr_tiles(block_m: int, split_k: int = 1, stream_k: int = 0, warps: int = 8, stages: int = 4,
               direct: bool = False) -> KernelConfig:
    """``wgr`` on ``[16 warps rows, block_m tokens]`` tiles: ``warps`` MMA warps (8: two warpgroups, 128 rows; 4:
    one, 64 rows), the copy warp, ``stages`` K tiles in flight; ``direct``: uniform 2- and 4-bit layers read ``x``
    in its natural order where it qualifies (``_wgr_plan.wgr_direct``; no gather launch)."""
    return KernelConfig("wgr", block_m=block_m, block_n=16 * warps, block_k=64, num_warps=warps, num_stages=stages,
                        split_k=split_k, producers=1, stream_k=stream_k, direct=direct)


def _balanced_split(tiles: int, k_tiles: int, per_sm: float, num_sms: int) -> int:
    """K split (1-16, not only powers of two) for ``wg`` with 9-16 tokens: the smallest that puts at least
    ``0.95 per_sm`` programs on each SM and fills its last wave to 95%+ (``u / ceil(u)``, ``u`` programs per
    SM), else the fullest last wave among those, else the largest split allowed. H200 run 97 (16 tokens, every
    split 1-16): 28672 x 8192 on 64-row tiles 3.4 programs per SM (split 1, 52 SMs holding 4 and 80 holding 3)
    -> 6.8 (split 2): 3-bit 82.2 -> 76.4 us, 2-bit 64.3 -> 60.3, SliM 71.5 -> 69.7, 4-bit 73.6 -> 74.8;
    11008 x 4096 split 2 -> 3 (64 rows: 2.6 -> 3.9 per SM, 3-bit 26.0 -> 24.4, SliM 25.3 -> 23.8; 128 rows:
    split 4 -> 3, 2.6 -> 1.95 per SM, 2-bit 19.8 -> 19.1). The other shapes' splits already filled their waves."""
    best, best_fill = None, -1.0
    top = max(1, min(16, k_tiles))
    for split in range(1, top + 1):
        u = tiles * split / num_sms
        if u < 0.95 * per_sm:
            continue
        fill = u / math.ceil(u)
        if fill >= 0.95:
            return split
        if fill > best_fill + 1e-9:
            best, best_fill = split, fill
    return best if best is not None else top


def _wg_wide_rows(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Where ``wg`` with 16-token tiles ran faster on 128-row tiles than on 64 (H200, run 82, 16 tokens, K split
    to ~2 programs per SM): layers under 2^27 weights with 8192+ input columns (4096 x 11008 2-bit 20.5 ->
    19.7 us, 3-bit 25.2 -> 24.6, SliM 25.1 -> 24.1; 8192 x 8192 2-bit 24.9 -> 23.0, SliM 28.5 -> 27.2), and
    with fewer columns only uniform 1-, 2- or 4-bit codes (11008 x 4096 2-bit 21.5 -> 19.6, 4-bit 23.7 ->
    22.5, but 3-bit 25.9 -> 27.6 and SliM 25.1 -> 29.7: short K shares of several planes or segments).
    Only with 9-16 tokens: with 4 (masked tokens, run 83) SliM on 4096 x 11008 took 31.9 us against 24.7 and
    11008 x 4096 2-bit / 4-bit 24.3 / 28.8 against 21.0 / 24.1."""
    if n * k >= _WG_BIG_WEIGHTS:
        return False
    return k >= 8192 or (bool(bits) and len(set(bits)) == 1 and max(bits) in (1, 2, 4))


def _mv_wins(n: int, k: int, bits: tuple[int, ...] | None, direct: bool = True) -> bool:
    """Where ``mv`` beat ``gv``/``h2`` at ``M == 1`` (H200, KERNEL_NOTES): layers of 8192+ input columns
    whose codes are all 4-bit or wider (run 63: 1.05-1.20x); with the L2 prefetch (run 76) every layer of
    2^27+ weights (SliM 1/2/3-bit mixes 1.10x, 3-bit 1.07-1.09x, 2-bit 1.05-1.07x) and uniform widths on
    2^26+ (8192 x 8192: 2-bit 1.04x, 3-bit 1.02x); SliM there too where it reads ``x`` itself (``direct``,
    :func:`_mv_direct_wins`; after the gather it had stayed 3% slower than ``gv``). Smaller layers lost (but see
    :func:`_mv_direct_mid`)."""
    if not bits or k < 8192 or 7 in bits:
        return False
    return (min(bits) >= 4 or n * k >= 1 << 27
            or (n * k >= _MV_L2_MIN_WEIGHTS and (len(set(bits)) == 1 or direct)))


def _mv_direct_mid(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Layers of ``_MV_DIRECT_MIN_WEIGHTS`` up to 2^27 weights (those ``mvs`` and :func:`_mv_wins` do not take)
    where ``mv`` reading ``x`` itself beat ``gv`` at ``M == 1`` (H200 runs 187 and 190, ``kernels.py --tune
    --paths mvdx``, us, ``gv`` -> ``mv`` with ``direct``, no L2 prefetch, the highest register cap of
    128/96/80/72 that keeps one wave): 4096 x 11008 (K split 16, 128 registers) 2-bit 15.9 -> 12.8, 3-bit 18.2 ->
    15.7, 4-bit 19.1 -> 16.3 (``mv`` after the gather), SliM 16.6 -> 14.9; 11008 x 4096 (K split 8, 80
    registers) 2-bit 14.1 -> 13.2, 3-bit 17.9 -> 16.1, 4-bit 18.1 -> 15.8, SliM 16.9 -> 15.3; 22016 x 4096 (K
    split 4, 80 registers) 2-bit 21.0 -> 19.1, 3-bit 27.5 -> 25.2, 4-bit 29.6 -> 24.3, SliM 24.1 -> 21.7."""
    return bool(bits) and 7 not in bits and _MV_DIRECT_MIN_WEIGHTS <= n * k < 1 << 27


def _byte_split_wins(bits: tuple[int, ...] | None) -> bool:
    """Whether one-token ``mv`` (and ``wg`` at 9-16 tokens, :func:`select_config`) on a layer of mixed widths (SliM:
    1/2/3-bit segments) splits K into equal shares across the segments (``byte_split``: each program enters only
    the segments it has tiles of) instead of a share of every segment: on every such layer timed
    (:func:`_byte_split_units`). Not with 8-bit codes:
    MixLLM's 4/8-bit layers are row bands of one segment each (nothing to share out; untimed)."""
    return bool(bits) and len(set(bits)) > 1 and 8 not in bits


def _byte_split_units(n: int, k: int) -> tuple[int, int]:
    """``(tile_units, plane_units)`` of the dispatched ``byte_split``: a fixed cost per tile on top of its bytes (a
    1-bit tile takes nearly a 2-bit one's time: 8192 x 28672 uniform 1-bit 30.3 us, 2-bit 32.5, run 234) and a
    further cost per tile for each bit plane past the first (a 3-bit tile decodes a 2- and a 1-bit plane: 28672 x
    8192 uniform 3-bit 45.7 us against 2-bit 30.7, run 246, 1.5x the time for 1.5x the bytes but at 2.1x the
    instructions), higher on layers of ``_BYTE_SPLIT_BIG_WEIGHTS`` weights. H200, SliM, ``wg_split.py --m 1
    --no-splits --extra byte_split=1,tile_units=T,plane_units=P`` (us). Runs 232-235, before ``plane_units``
    (plain split -> equal bytes -> plus 576 per tile): 8192 x 28672 (k8, 3.9 programs per SM) 37.7 -> 39.6 ->
    36.6, at 128 registers 35.2; 8192 x 8192 17.1 -> 19.2 -> 16.5; 4096 x 11008 14.9 -> 14.9 -> 13.5; 12288 x 4096
    15.7 -> 14.8 -> 14.2; 11008 x 4096 15.6 -> 14.3 -> 13.8; 22016 x 4096 21.7 -> 20.4 -> 20.4; 28672 x 8192 (6.8
    programs per SM) 38.3 -> 35.6 -> 36.6. Run 245 (T x P in {0, 288, 576, 864} x {0, 288, 576}, the dispatch's
    tiling since run 244): 28672 x 8192 bytes alone (the dispatch then) 33.3, T 576 P 576 32.8 (best), T 288 P 288
    33.0, T 576 P 0 34.7; 8192 x 28672 T 576 P 0 (then) 35.5, P 576 34.5 (best), P 288 34.5. Run 247 (T 576; P 0 /
    288 / 576): 8192 x 8192 16.0 / 16.1 / 16.3, 4096 x 11008 13.5 / 13.6 / 13.6, 11008 x 4096 14.0 / 13.8 / 14.5,
    12288 x 4096 14.3 / 14.2 / 14.8, 22016 x 4096 20.1 / 19.5 / 19.3."""
    return _BYTE_SPLIT_TILE_UNITS, _BYTE_SPLIT_PLANE_UNITS[n * k >= _BYTE_SPLIT_BIG_WEIGHTS]


def _mv_direct_wins(n: int, k: int, bits: tuple[int, ...]) -> bool:
    """Where ``mv`` with K split over programs read ``x`` itself (``direct``: no gather launch) faster than after
    the gather at ``M == 1`` (H200 run 186, ``kernels.py --tune --paths mvdx,mvs --ms 1``, us): layers under 2^27
    weights (8192 x 8192: 2-bit 16.2 -> 15.3, 3-bit 21.6 -> 19.5, 4-bit 21.7 -> 19.9, SliM 18.8 (``gv``) ->
    17.2) and 3-4-bit codes on the big layers (8192 x 28672 3-bit 47.5 -> 45.9, 4-bit 46.5 -> 44.9; 28672 x
    8192 3-bit 47.1 -> 46.3, 4-bit 46.4 -> 44.2); 2-bit and SliM there lost 1-3 us (28672 x 8192 2-bit 32.9
    -> 33.8, 8192 x 28672 SliM 37.7 -> 38.9): the correction MMAs and pair PRMTs cost more than the launch where
    the codes are few."""
    return n * k < 1 << 27 or min(bits) >= 3


def _mvs_wins(n: int, k: int, bits: tuple[int, ...] | None, num_sms: int) -> bool:
    """Where ``mv`` with the warps splitting K beat ``gv`` at ``M == 1`` (H200 run 170, ``kernels.py --tune --paths
    mvs``): 4096 x 4096, 2-bit 10.5 -> 9.2 us, 3-bit 11.4 -> 10.3, 4-bit 11.6 -> 10.3, SliM 12.4 -> 10.8; it lost
    on 11008 x 4096 (two and a half programs per SM: 14.3 -> 14.7 us at 2 bits), 4096 x 11008 (six tiles per warp:
    16.1 -> 18.8) and 8192 x 8192 (16.1 -> 19.4). So: up to ``_MVS_MAX_K`` columns, 32-row programs filling at most
    one wave, codes of 1-6 and 8 bits."""
    if not bits or 7 in bits or k > _MVS_MAX_K or triton.cdiv(n, 32) > num_sms:
        return False
    return triton.cdiv(triton.cdiv(k, 128), _mvs_warps(bits)) + len(set(bits)) - 1 <= _MVS_TILES


def _mvs_warps(bits: tuple[int, ...]) -> int:
    """``k_warps`` of the dispatched ``mvs``: 16 on uniform layers, 8 on mixed (SliM) ones (run 170, when SliM
    still needed the gather launch; run 186, reading ``x`` through ``col_perm``: 8 warps 10.1 us, 16 11.4)."""
    return 16 if len(set(bits)) == 1 else 8


def _mv_per_sm(maxnreg: int) -> int:
    """Resident 4-warp programs per SM at ``maxnreg`` registers per thread (64K registers per SM)."""
    return 65536 // (maxnreg * 128)


def _mvt_wins(n: int, k: int, bits: tuple[int, ...] | None) -> bool:
    """Where ``mv`` with 2-8 tokens (one block of 8 B columns) beat ``wg`` (H200, run 65, 4 tokens): layers of
    2^26+ weights, every bit-width (1.0-1.12x on 8192 x 8192, 1.2-1.5x on 8192 x 28672 and 28672 x 8192).
    With 9-16 tokens (two blocks, 103-128 registers) it was 1.2-1.5x slower than ``wg``: not taken."""
    return bool(bits) and 7 not in bits and n * k >= 1 << 26


def _m1_config(n: int, k: int, bits: tuple[int, ...] | None, num_sms: int, allow_mv: bool = True,
               direct: bool = True) -> KernelConfig:
    """The ``M == 1`` rule of :func:`select_config` (``allow_mv=False``: for layers ``mv`` cannot run;
    ``direct=False``: for a token or layer ``mv`` cannot read ``x`` of itself, ``_plan.mv_reads_x``)."""
    k_tiles = triton.cdiv(k, 128)
    if allow_mv and _mvs_wins(n, k, bits, num_sms):  # 32 rows and all of K per program (one wave)
        kw = _mvs_warps(bits)
        return KernelConfig("mv", block_m=1, block_n=32, block_k=128, num_warps=kw, num_stages=1, k_warps=kw,
                            maxnreg=128 if kw == 16 else 0, direct=True)
    big = allow_mv and _mv_wins(n, k, bits, direct) and n * k >= _MV_L2_MIN_WEIGHTS
    mid = allow_mv and direct and not big and _mv_direct_mid(n, k, bits)
    if big or mid:
        # K split up to 16 at <= 7 programs per SM. On 2^26+ weights the next tile past the loaded one prefetched
        # into L2 and the highest register cap that keeps the grid in one wave (96 for 3-bit codes: two waves were
        # faster; codes of 4+ bits only with 96, else neither cap nor prefetch: 28672 x 8192 4-bit 46.9 against
        # 48.7 us); reading x itself where that won (:func:`_mv_direct_wins`): 128 registers where that keeps
        # one wave and for 3-bit codes, no L2 prefetch for mixed widths (SliM on 8192 x 8192: 18.2 -> 17.2 us
        # without; run 186). Elsewhere from 2^24 weights (:func:`_mv_direct_mid`): x read itself, no prefetch, the
        # highest cap of 128/96/80/72 that keeps one wave (runs 187, 190). Mixed widths: tiles shared out by
        # bytes plus a cost per tile, 128 registers where that keeps one wave (8192 x 28672 SliM: 36.6 us at 96,
        # 35.2 at 128, run 234). Since the weights load evict-first (``_mv._ld4_stream``) the L2 prefetch, whose
        # lines come in evict-normal, pays only on long K shares (run 243, us with -> without: 28672 x 8192, 16
        # tiles per program, 2-bit 32.1 -> 30.1, 3-bit 46.1 -> 45.5, SliM 34.4 -> 33.4; 8192 x 8192, 8 tiles, 2-bit
        # 15.1 -> 14.7, 3-bit 19.2 -> 18.6; 8192 x 28672, 28 tiles, 2-bit 32.2 -> 33.8, SliM 35.8 -> 36.4), and
        # not for 4-bit codes, whose tiles hold twice the bytes in flight (8192 x 28672 4-bit, with -> without, us:
        # 42.5 -> 41.6 in run 245, 42.5 -> 41.3 and 43.2 -> 41.6 in run 249). Mixed widths: 576 more per 3-bit tile
        # on 2^27+ weights, 288 below (:func:`_byte_split_units`, runs 245-247).
        rows = triton.cdiv(n, 128)
        split = max(1, min(16, k_tiles, _pow2_at_most(max(1, _MV_L2_SPLIT_PER_SM * num_sms // rows))))

        def fits(r: int) -> bool:
            return _mv_per_sm(r) * num_sms >= rows * split

        split_bytes = _byte_split_wins(bits) and split > 1
        units, planes = _byte_split_units(n, k) if split_bytes else (0, 0)
        if mid:
            return KernelConfig("mv", block_m=1, block_n=128, block_k=128, split_k=split, num_warps=4,
                                num_stages=1, maxnreg=next((r for r in (128,) + _MV_L2_CAPS if fits(r)), 0),
                                direct=True, byte_split=split_bytes, tile_units=units, plane_units=planes)
        caps = _MV_L2_CAPS[:1] if min(bits) >= 4 else _MV_L2_CAPS
        cap = 96 if set(bits) == {3} else next((r for r in caps if fits(r)), 0)
        dx = direct and _mv_direct_wins(n, k, bits)
        if (dx and set(bits) == {3}) or ((dx or split_bytes) and fits(128)):
            cap = 128
        return KernelConfig("mv", block_m=1, block_n=128, block_k=128, split_k=split, num_warps=4, num_stages=1,
                            maxnreg=cap, l2_ahead=1 if cap and not (dx and len(set(bits)) > 1)
                            and k_tiles // split > _MV_L2_MIN_TILES and max(bits) < 4 else 0, direct=dx,
                            byte_split=split_bytes, tile_units=units, plane_units=planes)
    if allow_mv and _mv_wins(n, k, bits, direct):  # 128-row programs, as many K shares as fit in one wave
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
    runs 51-53 and 89, benchmarks/KERNEL_NOTES.md): layers of ``_WGS_MIN_WEIGHTS`` weights up to ``_WGS_MAX_M``
    tokens, or of ``_WGS_SMALL_MIN_WEIGHTS`` up to ``_WGS_SMALL_MAX_M``. Always 256-token x 128-row tiles,
    8 MMA warps and 4 producer warps (weights loaded three tiles ahead). One program per tile where the tiles
    make one wave at least ``_WGS_FULL_WAVES`` full and ``K < _WGS_SHORT_K``; else stream-K (``stream_k``: one
    persistent program per SM sharing the tiles' K tiles evenly; run 89, against one program per tile and
    the former split-K: 28672 x 8192 2-bit at 256 tokens 0.83x -> 0.93x of FP16, at 512 0.71x -> 0.80x,
    8192 x 8192 at 256 0.65x -> 0.72x, 11008 x 4096 at 256 0.62x -> 0.69x)."""
    if m > _WGS_MAX_M or n * k < _WGS_SMALL_MIN_WEIGHTS or (n * k < _WGS_MIN_WEIGHTS and m > _WGS_SMALL_MAX_M):
        return None
    tiles = triton.cdiv(m, 256) * triton.cdiv(n, 128)
    one_wave = _WGS_FULL_WAVES * num_sms <= tiles <= num_sms
    stream = 0 if one_wave and k < _WGS_SHORT_K else num_sms
    return KernelConfig("wgs", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=2, producers=4,
                        depth=2, stream_k=stream)


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
