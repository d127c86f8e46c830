"""Tensor-core path with the weights as the *register* operand (``"wg"``), layout
``slimq.segmented-bitplane.v1``.

Why: the other tensor-core paths compute ``x W^T`` with the dequantized weights as the second
(``B``) operand of ``tl.dot``. On Hopper, ``wgmma`` takes ``B`` only from shared memory, so a
``B`` made in registers must be stored to shared memory first (or the dot falls back to the
older ``mma.sync``). ``wgmma`` does take ``A`` from registers. This path computes the
transposed product ``y^T [BN, BT] = W [BN, K] x^T [K, BT]``: weight codes made in registers
are ``A`` as they are (``HGMMA`` with a register operand), and the activations, loaded from
global memory by Triton's software pipeline into shared memory, are ``B``.

The operand. As in ``_tc``: one LOP3 + HSUB2 turn a plane word into the exact half2
``(q_i, q_{i+H})`` of slots ``i`` and ``i + H``; that 32-bit value is a pair of consecutive K
entries of an fp16 MMA operand when the operand's K axis runs over ``(pair j, word row r, half
h)``, ``k = h + 2 (r + KP j)``. The MMA operand layout gives k bits 1-2 to the lanes of a quad,
so they must come from the word row: then every thread turns the words it loaded into its own
operand registers, with no data moved between threads (checked in the SASS: no shared-memory
round trip, no PRMT). The operand is ``[BN, 2 KP J]`` (rows first), built from
``join``/``permute``/``reshape``. :func:`operand_gather_kernel` writes the activations in the same
order (one buffer per plane width), so a piece of ``x^T`` is a plain ``[2 KP J, BT]`` load.

Blocks and scaling. A block is ``BLK = min(group size, 128)`` storage columns inside one group.
Per block and plane, ``H / J`` dots (``J`` pairs of every word each; ``J = H`` (``JOIN``): one dot
over the whole block) add into a float32 block sum that starts at ``-z * sum_k x_k`` (plane 0);
then ``acc += coef * s * sum``. With ``SCALED`` the operands are the weights ``(q - z) s`` in fp16
instead (one HFMA2 more per pair) and the dots accumulate into ``acc`` directly: cheaper once the
``BN x BT`` rescaling per block outweighs it (64 tokens and up). Codes are exact in fp16 and the
MMA accumulates in float32; the activations go through fp16 (bf16 inputs are converted: ``|x|``
must stay below 65504), except where the kernel reads bf16 ``x`` itself (``DIRECT`` with ``XBF16``): then the
operand is bf16 (codes read with a bf16 magic, ``_bf16``; SCALED weights rounded to bf16) and the dots bf16.

3-bit segments (with ``JOIN``) are one operand of whole codes ``q0 + 4 q1`` (``_h2.pair3_halves``,
:func:`_virtual_words`) rather than a dot per plane: half the MMA work and block rescaling.

Tiles: ``BN`` weight rows (>= 64 per warpgroup of 4 warps for ``wgmma``), ``BT`` tokens
(>= 16). Programs walk the tokens fastest, so the ``cdiv(M, BT)`` programs sharing a weight tile
run together and read it from L2 after the first. Tokens past ``M`` read as 0 (masked loads)
unless ``EVEN_M`` (``M`` a multiple of ``BT``) says there are none.
"""
from __future__ import annotations

import triton
import triton.language as tl

from slimq.kernels.triton._h2 import _scaled_x, _slot, pair_tree
from slimq.kernels.triton._kernels import _tile_range
from slimq.kernels.triton._tc import _tc_src
from slimq.kernels.triton._tiles import pdl_release, pdl_wait, plane_coef, plane_width, store_rows, unit_range

__all__ = ["wg_kernel", "operand_gather_kernel", "wg_pieces"]


@triton.constexpr_function
def wg_pieces(blk, w, join):
    """``(KP, J)``: word rows per block and pairs per dot for plane width ``w`` (``join``: all
    ``H`` pairs of a word in one dot, else the fewest that make the dot's K >= 16)."""
    kp = int(blk) * int(w) // 32
    h = 16 // int(w)
    return kp, (h if join else min(h, max(1, 8 // kp)))


@triton.constexpr_function
def _kp(blk, w, join):
    return wg_pieces(blk, w, join)[0]


@triton.constexpr_function
def _j(blk, w, join):
    return wg_pieces(blk, w, join)[1]


@triton.jit
def _operand(words, sh, v, s2, z2, I0: tl.constexpr, J: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr,
             SCALED: tl.constexpr, MERGE: tl.constexpr, BF16: tl.constexpr = False):
    """fp16 (``BF16``: bf16) ``[BN, 2 KP J]``: column ``h + 2 (r + KP j)`` = slot ``I0 + j + h H`` of word row
    ``r``."""
    t = pair_tree(words, sh, v, s2, z2, I0, J, W, ASM, SCALED, MERGE, BF16)
    BN: tl.constexpr = words.shape[0]
    KP: tl.constexpr = words.shape[1]
    # [BN, KP, h, j0, j1, ...] -> [BN, ..., j1, j0, KP, h]: j above the word row, so that the MMA
    # operand's lane bits (k bits 1-2) come from the word row and every thread keeps its own words
    if J == 2:
        t = tl.permute(t, (0, 3, 1, 2))
    elif J == 4:
        t = tl.permute(t, (0, 4, 3, 1, 2))
    elif J == 8:
        t = tl.permute(t, (0, 5, 4, 3, 1, 2))
    elif J == 16:
        t = tl.permute(t, (0, 6, 5, 4, 3, 1, 2))
    return tl.reshape(t, [BN, 2 * KP * J])


@triton.jit
def _virtual_words(seg, k0, ns, offs_n, KP: tl.constexpr, ASM: tl.constexpr, FULL: tl.constexpr):
    """int32 ``[BN, KP]``: for 2-bit word row ``r`` of a 3-bit segment's block at ``k0``, the 16 bits of
    its 1-bit plane (slots ``(r % 2) 16 .. + 15`` of 1-bit word ``r // 2``, loaded as the int16 half
    of that word) respread so that slot ``i`` (``i < 8``) sits at bit ``i`` and slot ``i + 8`` at
    bit ``16 + i``: the partner of 2-bit pair ``i`` where ``_h2.pair3_halves`` reads it. One PRMT per word.
    (Choosing the half by the load address, not by a per-element shift or selector, keeps every
    operand of the PRMT free of the word row, which lets Triton lay it out like the 2-bit words.)"""
    r = tl.arange(0, KP)
    rows1 = k0 // 32 + r // 2
    half_ptr = seg[5].to(tl.pointer_type(tl.int16))  # little-endian: half 0 = slots 0-15
    hp = half_ptr + rows1[None, :] * (2 * ns) + 2 * offs_n[:, None] + (r % 2)[None, :]
    if FULL:
        u = tl.load(hp)
    else:
        u = tl.load(hp, mask=(rows1 < (seg[1] + 31) // 32)[None, :], other=0)
    u = u.to(tl.int32) & 0xFFFF
    if ASM:  # bytes (0, -, 1, -) of u, zeros in between
        return tl.inline_asm_elementwise("prmt.b32 $0, $1, 0, 0x4140;", "=r,r", [u], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        return (u & 0xFF) | ((u >> 8) << 16)


@triton.jit
def _plane_sum(init, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_n, s2, z2, P: tl.constexpr,
               BITS: tl.constexpr, BLK: tl.constexpr, JOIN: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr,
               FULL: tl.constexpr, MERGE: tl.constexpr = False, EVEN_M: tl.constexpr = False, bx=None,
               BF16: tl.constexpr = False):
    """float32 ``[BN, BT]``: ``init + sum_k q_k x_k`` of plane ``P`` over segment columns ``[k0, k0 + BLK)``
    (SCALED: ``init + sum_k w_k x_k``, ``w`` this plane's share of the weight, from ``s2``/``z2``).
    MERGE (3-bit segments, ``P == 0``): both planes at once, ``q`` the whole 3-bit code. ``bx``: the
    activations ``[BLK, BT]`` in operand order (:func:`_direct_x`; one piece, ``JOIN``), else loaded
    from the gather's buffer. ``BF16`` (with ``bx`` bfloat16): the operand in bfloat16, bfloat16 dots."""
    W: tl.constexpr = plane_width(BITS, P)
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    KP: tl.constexpr = _kp(BLK, W, JOIN)
    J: tl.constexpr = _j(BLK, W, JOIN)
    KD: tl.constexpr = 2 * KP * J
    offs_kw = k0 // E + tl.arange(0, KP)
    wp = seg[4 + P] + offs_kw[None, :] * ns + offs_n[:, None]
    if FULL:
        words = tl.load(wp)
    else:
        words = tl.load(wp, mask=(offs_kw < (seg[1] + E - 1) // E)[None, :], other=0)
    sh = words >> 8
    if MERGE:
        v = _virtual_words(seg, k0, ns, offs_n, KP, ASM, FULL)
    else:
        v = words
    xp = xt_ptr + _slot(W) * stride_tb + offs_m[None, :] * stride_tm + (seg[0] + k0 + tl.arange(0, KD))[:, None]
    part = init
    for p in tl.static_range(H // J):
        a = _operand(words, sh, v, s2, z2, p * J, J, W, ASM, SCALED, MERGE, BF16)
        if bx is not None:
            b = bx
        elif EVEN_M:
            b = tl.load(xp + p * KD)
        else:
            b = tl.load(xp + p * KD, mask=mask_m[None, :], other=0.0)
        if BF16 and not ASM:  # the interpreter's bfloat16 dot is wrong (numpy has no bfloat16): float32 there
            part = tl.dot(a.to(tl.float32), b.to(tl.float32), part)
        else:
            part = tl.dot(a, b, part)
    return part


@triton.jit
def _direct_x(x_ptr, stride_xm, offs_m, mask_m, c0, c_end, W: tl.constexpr, BT: tl.constexpr, BLK: tl.constexpr,
              FULL: tl.constexpr, EVEN_M: tl.constexpr, perm_ptr, PERM: tl.constexpr, sblk=None,
              XBF16: tl.constexpr = False):
    """``DIRECT`` (float16 ``x``, or ``XBF16`` bfloat16 kept as it is): storage columns ``[c0, c0 + BLK)`` of ``x`` itself
    (0 at ``c_end`` and past, and for tokens past ``M``): ``x``'s columns ``c0 ..``, or with PERM ``col_perm[c0] ..`` (a block moved
    whole, from a ``BLK``-aligned start), as ``(b, xs)``: ``b [BLK, BT]`` in the
    operand order of plane width ``W`` with ``JOIN`` (position ``h + 2 (r + KP j)`` holds column
    ``r E + h H + j``: a reshape and a permute of the natural tile, no address arithmetic per
    element) and ``xs [BT]`` its float32 sums, what the gather launch would have written."""
    E: tl.constexpr = 32 // W
    H: tl.constexpr = E // 2
    KP: tl.constexpr = BLK * W // 32
    cols = c0 + tl.arange(0, BLK)
    if PERM and sblk is not None:  # the source block, loaded ahead (a multiple of BLK by construction)
        src = sblk * BLK + tl.arange(0, BLK)
    elif PERM:
        src = tl.multiple_of(tl.load(perm_ptr + c0), BLK) + tl.arange(0, BLK)
    else:
        src = cols
    ptr = x_ptr + offs_m[:, None] * stride_xm + src[None, :]
    if FULL and EVEN_M:
        xn = tl.load(ptr)
    elif FULL:
        xn = tl.load(ptr, mask=mask_m[:, None], other=0.0)
    else:
        xn = tl.load(ptr, mask=mask_m[:, None] & (cols < c_end)[None, :], other=0.0)
    xs = tl.sum(xn.to(tl.float32), axis=1)
    b = tl.permute(tl.reshape(xn, [BT, KP, 2, H]), (3, 1, 2, 0))  # (m, r, h, j) -> (j, r, h, m)
    return tl.reshape(b, [BLK, BT]), xs


@triton.jit
def _block_src(perm_ptr, c0, last, BLK: tl.constexpr, PERM: tl.constexpr):
    """With PERM the source block ``col_perm[c0] / BLK`` of the block at storage column ``c0`` (clamped to the
    segment's last whole block ``last``), loaded a block ahead of its ``x`` like the scales (carried as a block
    index: a loop-carried column would lose its multiple-of-BLK hint, and the ``x`` loads their vectors);
    else 0 (unused)."""
    if PERM:
        return tl.load(perm_ptr + tl.minimum(c0, last)) // BLK
    else:
        return 0


@triton.jit
def _half2(v, shape, ASM: tl.constexpr, BF16: tl.constexpr = False):
    """float32 ``v [BN]`` as what ``pair_halves`` takes for ``s2``/``z2``, broadcast to ``shape``:
    the int32 bits of the half2 (``BF16``: bfloat16 pair) ``(v, v)`` (ASM), else float32."""
    if ASM:
        v2 = tl.inline_asm_elementwise("mov.b32 $0, {$1, $1};", "=r,h", [v.to(tl.bfloat16 if BF16 else tl.float16)],
                                       dtype=tl.int32, is_pure=True, pack=1)
        return tl.broadcast_to(v2[:, None], shape)
    else:
        return tl.broadcast_to(v[:, None], shape)


@triton.jit
def _wg_params(seg, k0, xs_ptr, stride_sm, offs_m, mask_m, ns, offs_n, valid, GS: tl.constexpr, BLK: tl.constexpr,
               SCALED: tl.constexpr, EVEN_M: tl.constexpr, DIRECT: tl.constexpr = False):
    """The block at ``k0``'s float32 scales and zeros ``[BN]`` and (unless SCALED or DIRECT: then 0) its
    tokens' activation sums ``[BT]``; zeros unless ``valid`` (a block past the program's range, loaded ahead)."""
    g = k0 // GS
    v = tl.where(valid, 1, 0)
    ok = (offs_n * 0 + v) > 0
    s = tl.load(seg[2] + g * ns + offs_n, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(seg[3] + g * ns + offs_n, mask=ok, other=0.0).to(tl.float32)
    if SCALED or DIRECT:
        xs = tl.zeros(offs_m.shape, tl.float32)
    elif EVEN_M:
        xs = tl.load(xs_ptr + offs_m * stride_sm + (seg[0] + k0) // BLK, mask=(offs_m * 0 + v) > 0, other=0.0)
    else:
        xs = tl.load(xs_ptr + offs_m * stride_sm + (seg[0] + k0) // BLK, mask=mask_m & ((offs_m * 0 + v) > 0),
                     other=0.0)
    return s, z, xs


@triton.jit
def _wg_block(acc, seg, k0, s, z, xs, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_n,
              BITS: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr, BLK: tl.constexpr,
              JOIN: tl.constexpr, ASM: tl.constexpr, SCALED: tl.constexpr, FULL: tl.constexpr,
              EVEN_M: tl.constexpr, DIRECT: tl.constexpr = False, perm_ptr=None, DIRECT_PERM: tl.constexpr = False,
              sblk=None, XBF16: tl.constexpr = False):
    """``acc [BN, BT] += W x^T`` over segment columns ``[k0, k0 + BLK)`` of every plane; ``s``, ``z``,
    ``xs`` the block's :func:`_wg_params` (loaded a block ahead by the caller). DIRECT: ``xt_ptr`` is
    ``x`` itself (rows ``stride_tm`` apart), its block and sums read here (:func:`_direct_x`; ``XBF16``: bfloat16,
    multiplied as bfloat16).

    SCALED: the operands are the weights ``(q - z) s`` (plane 0) and ``coef q s`` (others), one
    HFMA2 per code pair more, and the dots accumulate straight into ``acc``. Else the operands
    are the exact codes and each plane's float32 block sum is scaled once (``BN x BT`` FMAs per
    plane and block: cheaper for few tokens, dearer for many)."""
    KP0: tl.constexpr = BLK * plane_width(BITS, 0) // 32
    MERGE: tl.constexpr = BITS == 3 and JOIN  # one operand of whole 3-bit codes: one dot instead of two
    bx = None
    if DIRECT:
        bx, xs = _direct_x(xt_ptr, stride_tm, offs_m, mask_m, seg[0] + k0, seg[0] + seg[1], plane_width(BITS, 0), BT,
                           BLK, FULL, EVEN_M, perm_ptr, DIRECT_PERM, sblk, XBF16)
    if SCALED:
        acc = _plane_sum(acc, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_n,
                         _half2(s, [BN, KP0], ASM, XBF16), _half2(-z * s, [BN, KP0], ASM, XBF16), 0, BITS, BLK, JOIN,
                         ASM, True, FULL, MERGE, EVEN_M, bx, XBF16)
        for p in tl.static_range(1, 3):
            if plane_width(BITS, p) > 0 and not MERGE:
                tl.static_assert(not DIRECT, "DIRECT takes codes of one plane (1, 2, 4, 8 bits) or merged 3-bit codes")
                acc = _plane_sum(acc, seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_n,
                                 _half2(s * plane_coef(BITS, p), [BN, _kp(BLK, plane_width(BITS, p), JOIN)], ASM),
                                 _half2(tl.zeros_like(s), [BN, _kp(BLK, plane_width(BITS, p), JOIN)], ASM), p, BITS,
                                 BLK, JOIN, ASM, True, FULL, False, EVEN_M)
        return acc
    part = _plane_sum(-z[:, None] * xs[None, :], seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_n,
                      s, z, 0, BITS, BLK, JOIN, ASM, False, FULL, MERGE, EVEN_M, bx, XBF16)
    acc += part * s[:, None]
    for p in tl.static_range(1, 3):
        if plane_width(BITS, p) > 0 and not MERGE:
            tl.static_assert(not DIRECT, "DIRECT takes codes of one plane (1, 2, 4, 8 bits) or merged 3-bit codes")
            part = _plane_sum(tl.zeros([BN, BT], tl.float32), seg, k0, xt_ptr, stride_tm, stride_tb, offs_m, mask_m,
                              ns, offs_n, s, z, p, BITS, BLK, JOIN, ASM, False, FULL, False, EVEN_M)
            acc += part * (s * plane_coef(BITS, p))[:, None]
    return acc


@triton.jit(do_not_specialize=["M", "r0", "split_k"])
def wg_kernel(xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr,
              bias_ptr, M, r0, ns, split_k, cnt_ptr, segs, perm_ptr, SEG_BITS: tl.constexpr, NSEG: tl.constexpr, GS: tl.constexpr,
              BN: tl.constexpr, BT: tl.constexpr, BLK: tl.constexpr, JOIN: tl.constexpr, ATOMIC: tl.constexpr,
              HAS_ROWPERM: tl.constexpr, HAS_BIAS: tl.constexpr, FUSED: tl.constexpr, ASM: tl.constexpr,
              SCALED: tl.constexpr = False, EVEN_M: tl.constexpr = False, PDL: tl.constexpr = False,
              DIRECT: tl.constexpr = False, DIRECT_PERM: tl.constexpr = False, XBF16: tl.constexpr = False,
              SEG_UNITS: tl.constexpr = None):
    """Grid ``(cdiv(M, BT) * cdiv(ns, BN), split_k)``, token tiles fastest; activations
    pre-arranged by :func:`operand_gather_kernel`, or (DIRECT, with JOIN) ``xt_ptr`` is the float16 (``XBF16``:
    bfloat16, multiplied as bfloat16 by bfloat16 operands) ``x`` itself, ``stride_tm`` its row stride (``xs_ptr``, ``stride_tb``, ``stride_sm`` unused), and
    ``col_perm`` (``perm_ptr``) the identity or, with DIRECT_PERM, moving whole ``BLK``-column blocks to
    ``BLK``-aligned starts (``_perm.perm_run``). ``ASM``: half2 inline PTX (else integer ops, for the
    interpreter). With ``SEG_UNITS`` (``KernelConfig.byte_split``) program ``pid_k`` takes the blocks of all
    segments in storage order that start in its ``1 / split_k`` of their total weight (``_tiles.unit_range``: a
    run of blocks in one or two segments, so fewer pipeline starts), else ``1 / split_k`` of every segment's."""
    tl.static_assert(JOIN or not DIRECT, "DIRECT reads each block as one operand piece: it needs JOIN")
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_m = tl.cdiv(M, BT)
    offs_m = (pid % n_m) * BT + tl.arange(0, BT)
    mask_m = offs_m < M
    offs_n = (pid // n_m) * BN + tl.arange(0, BN)
    mask_n = offs_n < ns
    # rows past ns re-read row ns - 1 (never stored). Tokens past M (not EVEN_M: M is no multiple of
    # BT) are masked (zero-filled), not clamped to M - 1: a 16-token tile holding 4 tokens that read
    # the 4th 13 times ran up to 1.25x slower (runs 15-17); with whole tiles the masks cost 3-bit
    # layers 5-9% (run 17), so EVEN_M launches go without them
    offs_nc = tl.minimum(offs_n, ns - 1)
    pdl_wait(PDL)
    acc = tl.zeros([BN, BT], tl.float32)
    for i in tl.static_range(NSEG):
        seg = segs[i]
        if SEG_UNITS is None:
            t_lo, t_hi = _tile_range(seg[1], pid_k, BLK, split_k)
        else:
            t_lo, t_hi = unit_range(segs, i, NSEG, SEG_UNITS, BLK, pid_k, split_k)
        t_full = tl.minimum(t_hi, seg[1] // BLK)
        # the operands of SCALED take s, z: loaded ahead they would cross layouts (shared memory) every block;
        # SliM layers with masked tokens ran 20-30% slower with them loaded ahead (run 35), others 2-12% faster
        if SCALED or not (EVEN_M or NSEG == 1):
            for t in range(t_lo, t_full):
                s, z, xs = _wg_params(seg, t * BLK, xs_ptr, stride_sm, offs_m, mask_m, ns, offs_nc, t < t_full, GS,
                                      BLK, SCALED, EVEN_M, DIRECT)
                acc = _wg_block(acc, seg, t * BLK, s, z, xs, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns,
                                offs_nc, SEG_BITS[i], BN, BT, BLK, JOIN, ASM, SCALED, True, EVEN_M, DIRECT, perm_ptr,
                                DIRECT_PERM, None, XBF16)
        else:
            # scales, zeros and activation sums one block ahead: the block's dot waits on them (its
            # accumulator starts at -z * xs), and Triton's pipeline stages only the dot operands' loads
            s, z, xs = _wg_params(seg, t_lo * BLK, xs_ptr, stride_sm, offs_m, mask_m, ns, offs_nc, t_lo < t_full, GS,
                                  BLK, SCALED, EVEN_M, DIRECT)
            last = seg[0] + tl.maximum(t_full - 1, 0) * BLK
            sb = _block_src(perm_ptr, seg[0] + t_lo * BLK, last, BLK, DIRECT_PERM)
            for t in range(t_lo, t_full):
                cs, cz, cxs, csb = s, z, xs, sb
                s, z, xs = _wg_params(seg, (t + 1) * BLK, xs_ptr, stride_sm, offs_m, mask_m, ns, offs_nc,
                                      t + 1 < t_full, GS, BLK, SCALED, EVEN_M, DIRECT)
                sb = _block_src(perm_ptr, seg[0] + (t + 1) * BLK, last, BLK, DIRECT_PERM)
                acc = _wg_block(acc, seg, t * BLK, cs, cz, cxs, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns,
                                offs_nc, SEG_BITS[i], BN, BT, BLK, JOIN, ASM, SCALED, True, EVEN_M, DIRECT, perm_ptr,
                                DIRECT_PERM, csb, XBF16)
        if (t_hi > t_lo) & (t_hi * BLK > seg[1]):  # the segment's last block is partial and ours
            k0 = (t_hi - 1) * BLK
            s, z, xs = _wg_params(seg, k0, xs_ptr, stride_sm, offs_m, mask_m, ns, offs_nc, t_hi > t_lo, GS, BLK, SCALED,
                                  EVEN_M, DIRECT)
            acc = _wg_block(acc, seg, k0, s, z, xs, xt_ptr, stride_tm, stride_tb, offs_m, mask_m, ns, offs_nc,
                            SEG_BITS[i], BN, BT, BLK, JOIN, ASM, SCALED, False, EVEN_M, DIRECT, perm_ptr,
                            DIRECT_PERM, None, XBF16)
    store_rows(tl.trans(acc), out_ptr, stride_om, acc_ptr, stride_am, rowperm_ptr, bias_ptr, r0, offs_m, mask_m,
               offs_n, mask_n, ATOMIC, HAS_ROWPERM, HAS_BIAS, cnt_ptr, split_k, FUSED)


@triton.jit
def _operand_src(p, BLK: tl.constexpr, W: tl.constexpr, JOIN: tl.constexpr, TC_ORDER: tl.constexpr):
    """Storage column whose activation sits at position ``p`` of a width-``W`` operand buffer: the
    ``wg`` order (``h + 2 (r + KP j)`` within a piece), or with TC_ORDER ``_tc``'s (``h + 2 (r J + j)``)."""
    if TC_ORDER:
        return _tc_src(p, BLK, W)
    else:
        E: tl.constexpr = 32 // W
        H: tl.constexpr = E // 2
        KP: tl.constexpr = _kp(BLK, W, JOIN)
        J: tl.constexpr = _j(BLK, W, JOIN)
        KD: tl.constexpr = 2 * KP * J
        q = p % BLK
        piece = q // KD
        e = q % KD
        r = (e // 2) % KP
        j = e // (2 * KP)
        return (p // BLK) * BLK + r * E + piece * J + j + (e % 2) * H


@triton.jit(do_not_specialize=["K", "KT"])
def operand_gather_kernel(x_ptr, stride_xm, perm_ptr, xt_ptr, stride_tm, stride_tb, xs_ptr, stride_sm, K, KT,
                          WIDTHS: tl.constexpr, NW: tl.constexpr, BLK: tl.constexpr, JOIN: tl.constexpr,
                          BLOCK: tl.constexpr, TC_ORDER: tl.constexpr = False, PDL: tl.constexpr = False):
    """Activations of row ``m`` in the operand order of :func:`wg_kernel` (or, TC_ORDER, of
    ``_tc.tc_kernel``), per plane width
    (``xt[slot(W)][m, p] = fp16(x[m, col_perm[src(p)]])``, 0 past ``K``, written up to ``KT``,
    ``K`` rounded up to ``BLK``) and their float32 sums per ``BLK`` block (``xs[m, p // BLK]``).
    Grid ``(cdiv(KT, BLOCK), M)``; ``BLOCK`` a multiple of ``BLK``."""
    pdl_release(PDL)
    m = tl.program_id(1)
    row = m.to(tl.int64) * stride_xm
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < KT
    blocks = tl.program_id(0) * (BLOCK // BLK) + tl.arange(0, BLOCK // BLK)
    cols = blocks[:, None] * BLK + tl.arange(0, BLK)[None, :]
    sums = tl.sum(_scaled_x(x_ptr, row, perm_ptr, cols, K, 1.0).to(tl.float32), axis=1)
    tl.store(xs_ptr + m * stride_sm + blocks, sums, mask=blocks * BLK < KT)
    for w in tl.static_range(NW):
        v = _scaled_x(x_ptr, row, perm_ptr, _operand_src(p, BLK, WIDTHS[w], JOIN, TC_ORDER), K, 1.0)
        tl.store(xt_ptr + _slot(WIDTHS[w]) * stride_tb + m * stride_tm + p, v, mask=ok)
