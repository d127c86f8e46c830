"""Large-``M`` prototype ``wgr``: the weights as the *register* operand of an asynchronous ``wgmma``, in Gluon
(layout ``slimq.segmented-bitplane.v1``; Hopper, sm_90). Experimental: never dispatched, it runs only as an explicit
``KernelConfig("wgr", ...)`` (``_plan.wgr_launches``; ``benchmarks/wgr_probe.py`` times it).

Why: ``wgs`` dequantizes the weights into shared memory for ``wgmma``'s shared operand, which costs its producer
warps a partition barrier, a generic-to-async proxy fence and a second barrier per tile; on the H200 they set the
pace (tensor pipe busy 65-78% of the active cycles against cuBLAS's 90-98%, benchmarks/KERNEL_NOTES.md, session
13). Here the MMA warps build the weights in registers and ``wgmma`` reads them from there (as CUTLASS's
mixed-input Hopper GEMMs do): no weight stores, no proxy fence, and the dequantization of tile ``t + 1``
overlaps the asynchronous ``wgmma`` of tile ``t``.

The product is ``y^T [BN, BT] = W [BN, K] x^T [K, BT]``: weight rows are ``wgmma``'s M (64 per warpgroup, 16 per
warp), tokens its N (``BT`` up to 256), ``K`` in tiles of ``BK = 64``. The activations come by TMA from a
buffer gathered in *operand order* (:func:`wgr_src`): in the ``wgmma`` A fragment, lane ``l`` of a warp holds K
positions ``2 (l % 4) + {0, 1}`` and ``+ 8`` of each 16-wide step, so within a tile position ``k`` (bits
``b0..b5``) is given the code that lane ``b1 b2`` can take from its *own* words: word row ``r = (b1 b2) + 4 *
(higher row bits)``, code pair ``j``, half ``h`` (codes ``j`` and ``j + H`` of a word) as listed in
:func:`wgr_src`. Each thread then loads only its own words (one per row and tile at 2 bits, two at 4) and turns
them into its fragment with a reshape and permute that Gluon checks to be register renaming
(``convert_layout(assert_trivial=True)``).

Each code pair becomes a register of the fragment in one LOP3, HSUB2 and HFMA2 (:func:`_fragment`). Per K tile
a thread loads its words one tile ahead, the activations come ``STAGES - 1`` tiles ahead, and the ``wgmma`` of
tile ``t`` runs while the warps build tile ``t + 1``'s fragment (one group left in flight).

Prototype limits: one segment of 2- or 4-bit codes (one plane), float16 activations, ``K`` and the group size
multiples of 64, no ``row_perm``; one program per ``[BN, BT]`` output tile and K share (split-K through the
float32 workspace, no stream-K). Measured on the H200 (benchmarks/KERNEL_NOTES.md, session 13, the kernel after
a torch gather, without bias or split-K): correct on every layer tried; 28672 x 8192 at 1024 tokens 0.75x of
cuBLAS FP16 at 2 bits, within the dispatched ``wgs``'s spread (0.75-0.80x), 0.66x at 4 bits; slower where its
tiles make few waves (8192 x 28672 at 256 tokens 0.43x)."""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from slimq.kernels.triton._dq16 import _half2
from slimq.kernels.triton._wgs import _acc_layout, _cta_barrier, _tma_load

__all__ = ["wgr_kernel", "wgr_src", "fragment_order", "WGR_BK"]

WGR_BK = gl.constexpr(64)  # K columns per tile


def wgr_src(k: int, w: int) -> int:
    """Storage column (within its 64-column tile) whose activation sits at operand position ``k`` for ``w``-bit
    codes (module doc): position bits ``b0..b5`` name the half ``h``, the word row ``r`` and the pair ``j``;
    the code is slot ``j + h H`` of word row ``r``, column ``r E + j + h H`` (``E = 32 / w`` codes per word,
    ``H = E / 2``)."""
    if not 0 <= k < 64:
        raise ValueError(f"wgr: operand position {k} is outside a 64-column tile")
    b = [(k >> i) & 1 for i in range(6)]
    if w == 2:  # k bits (b0..b5) = (i3, r0, r1, i0, i1, i2): r = b1 + 2 b2, slot i = b3 + 2 b4 + 4 b5 + 8 b0
        r, i, e = b[1] + 2 * b[2], b[3] + 2 * b[4] + 4 * b[5] + 8 * b[0], 16
    elif w == 4:  # (i2, r0, r1, i0, i1, r2): r = b1 + 2 b2 + 4 b5, slot i = b3 + 2 b4 + 4 b0
        r, i, e = b[1] + 2 * b[2] + 4 * b[5], b[3] + 2 * b[4] + 4 * b[0], 8
    else:
        raise ValueError(f"wgr: plane width {w} is not supported (2 or 4)")
    return r * e + i


@triton.constexpr_function
def fragment_order(w):
    """How :func:`_fragment` permutes a tile's pairs ``[BN / 16, 2, 8, KP, H, 2]`` (rows, word row ``r``, pair
    ``j``, half ``h``), reshaped into single bits ``[BN / 16, 2, 8, b, b, b, b, b, b]``, so that the last six
    dimensions read (most significant first) as operand position ``k`` (:func:`wgr_src`): at 2 bits ``(r1, r0, j2,
    j1, j0, h) -> (j2, j1, j0, r1, r0, h)``, at 4 bits ``(r2, r1, r0, j1, j0, h) -> (r2, j1, j0, r1, r0, h)``."""
    if int(w) == 2:
        return [0, 1, 2, 5, 6, 7, 3, 4, 8]
    if int(w) == 4:
        return [0, 1, 2, 3, 6, 7, 4, 5, 8]
    raise ValueError(f"wgr: plane width {w} is not supported (2 or 4)")


@triton.constexpr_function
def _word_layout(kp, e, num_warps):
    """``[BN / 16, 2, 8, KP, E]`` codes: warp ``w`` rows ``16 w + 8 a + l // 4`` (``a`` in registers), lane ``l``
    word rows ``r`` with ``r % 4 == l % 4``, every code of those words in registers."""
    return gl.BlockedLayout([1, 2, 1, 1, e], [1, 1, 8, 4, 1], [num_warps, 1, 1, 1, 1], [4, 3, 2, 1, 0])


@gluon.jit
def _ar_last(n: gl.constexpr, L: gl.constexpr):
    """``arange(n)`` along the last dimension of a rank-5 tensor in layout ``L``."""
    a = gl.arange(0, n, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L)))))
    return a[None, None, None, None, :]


@gluon.jit
def _loads(plane, scale, zero, t, kt, n0, ns, GS: gl.constexpr, W: gl.constexpr, BN: gl.constexpr,
           num_warps: gl.constexpr):
    """Tile ``t``'s words ``[BN / 16, 2, 8, KP]`` and its rows' scale and zero (float32 ``[BN / 16, 2, 8]``), in
    slices of :func:`_word_layout`; nothing past the last tile ``kt - 1`` or the last row."""
    KP: gl.constexpr = WGR_BK * W // 32
    L4: gl.constexpr = gl.SliceLayout(4, _word_layout(KP, 16 // W, num_warps))
    L3: gl.constexpr = gl.SliceLayout(3, L4)
    a0 = gl.arange(0, BN // 16, layout=gl.SliceLayout(1, gl.SliceLayout(2, L3)))
    a1 = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(2, L3)))
    a2 = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, L3)))
    n = n0 + 16 * a0[:, None, None] + 8 * a1[None, :, None] + a2[None, None, :]
    ok = (n < ns) & (t < kt)
    r = gl.arange(0, KP, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L4))))[None, None, None, :]
    w = gl.load(plane + (t * KP + r) * ns + n[:, :, :, None], mask=ok[:, :, :, None] & (r < KP), other=0)
    g = t * WGR_BK // GS
    s = gl.load(scale + g * ns + n, mask=ok, other=0.0).to(gl.float32)
    z = gl.load(zero + g * ns + n, mask=ok, other=0.0).to(gl.float32)
    return w, s, z


@gluon.jit
def _fragment(w, s, z, W: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, num_warps: gl.constexpr):
    """The float16 weights ``(q - z) s`` of one tile as ``wgmma``'s register A operand ``[BN, 64]``, positions in
    operand order (:func:`wgr_src`). Per code pair ``(j, j + H)`` of a word (one LOP3, HSUB2 and HFMA2, as
    ``_h2.pair_halves``): ``(src & mask) | magic`` is the half2 ``(2^(10-p) + q_j, 2^(10-p) + q_(j+H))`` for the
    codes at bit ``p`` of each half (``src``: the word, or ``word >> 8`` where the codes would reach the
    exponent), less the magic the exact codes, then ``q s + (-z s)``. The pair is then a K position pair
    ``(k, k + 1)`` of the fragment: one 32-bit register of it."""
    KP: gl.constexpr = WGR_BK * W // 32
    H: gl.constexpr = 16 // W
    L: gl.constexpr = _word_layout(KP, H, num_warps)
    j = _ar_last(H, L)
    hi8 = (j * W + W) > 10
    p = j * W - gl.where(hi8, 8, 0)
    m = ((1 << W) - 1) << p
    e = 25 - p
    shape: gl.constexpr = [BN // 16, 2, 8, KP, H]
    src = gl.where(hi8, w[:, :, :, :, None] >> 8, w[:, :, :, :, None])
    mask = (m | (m << 16)).broadcast_to(shape)
    magic = ((e << 10) | (e << 26)).broadcast_to(shape)
    s2 = _half2(s)[:, :, :, None, None].broadcast_to(shape)
    c2 = _half2(-z * s)[:, :, :, None, None].broadcast_to(shape)
    lo, hi = gl.inline_asm_elementwise(
        "{ .reg .b32 t; lop3.b32 t, $2, $3, $4, 0xEA; sub.f16x2 t, t, $4; fma.rn.f16x2 t, t, $5, $6; "
        "mov.b32 {$0, $1}, t; }", "=h,=h,r,r,r,r,r", [src, mask, magic, s2, c2], dtype=(gl.float16, gl.float16),
        is_pure=True, pack=1)
    v = gl.reshape(gl.join(lo, hi), [BN // 16, 2, 8, 2, 2, 2, 2, 2, 2])
    ORDER: gl.constexpr = fragment_order(W)
    v = gl.reshape(gl.permute(v, ORDER.value), [BN, WGR_BK])
    LA: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_acc_layout(BN, BT, num_warps), k_width=2)
    return gl.convert_layout(v, LA, assert_trivial=True)


@gluon.jit
def _x_issue(xd, t0, kb, t, bars, x_smem, pred, BT: gl.constexpr, STAGES: gl.constexpr):
    """TMA of the program's ``t``-th activation tile (global K tile ``kb + t``) into ring slot ``t % STAGES``."""
    slot = t % STAGES
    mbarrier.expect(bars.index(slot), BT * WGR_BK * 2, pred=pred)
    _tma_load(xd, [t0, (kb + t) * WGR_BK], bars.index(slot), x_smem.index(slot), pred=pred)


@gluon.jit
def wgr_kernel(xd, M, out_ptr, stride_om, acc_ptr, stride_am, bias_ptr, plane, scale, zero, ns, K,
               W: gl.constexpr, GS: gl.constexpr, BN: gl.constexpr, BT: gl.constexpr, STAGES: gl.constexpr,
               num_warps: gl.constexpr, WAHEAD: gl.constexpr = 1, SPLIT: gl.constexpr = 1,
               HAS_BIAS: gl.constexpr = False):
    """``out[t, n] = sum_k x[t, k] W[n, k] (+ bias[n])`` for a one-segment layer of ``W``-bit codes; ``xd``: TMA
    descriptor of the activations gathered in operand order (``[M, K]``, ``[BT, 64]`` boxes). Grid ``cdiv(ns, BN) *
    SPLIT * cdiv(M, BT)``, token tiles fastest: with ``SPLIT > 1`` each program takes ``1 / SPLIT`` of the K tiles
    and adds its float32 sums into ``acc_ptr`` (``[M, N]``; a ``finalize_kernel`` launch writes ``out`` and the
    bias). ``WAHEAD`` (1-3): loop trips between loading a tile's words and building its fragment (1 was
    measured, run 111; 2 and 3 are untimed)."""
    pid = gl.program_id(0)
    n_t = gl.cdiv(M, BT)
    t0 = (pid % n_t) * BT
    pid_s = (pid // n_t) % SPLIT
    n0 = (pid // (n_t * SPLIT)) * BN
    kt_all = K // WGR_BK
    kb = pid_s * kt_all // SPLIT
    kt = (pid_s + 1) * kt_all // SPLIT - kb  # this program's K tiles: [kb, kb + kt) (kt >= 1: SPLIT <= K / 64)
    x_smem = gl.allocate_shared_memory(gl.float16, [STAGES, BT, WGR_BK], xd.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        _x_issue(xd, t0, kb, i, bars, x_smem, i < kt, BT, STAGES)
    LACC: gl.constexpr = _acc_layout(BN, BT, num_warps)
    w0, s0, z0 = _loads(plane, scale, zero, kb + 0, kb + kt, n0, ns, GS, W, BN, num_warps)
    w1, s1, z1 = _loads(plane, scale, zero, kb + 1, kb + kt, n0, ns, GS, W, BN, num_warps)
    w2, s2, z2 = _loads(plane, scale, zero, kb + 2, kb + kt, n0, ns, GS, W, BN, num_warps)
    a_cur = _fragment(w0, s0, z0, W, BN, BT, num_warps)
    # tile 0, peeled: the accumulator starts from a wgmma (ptxas serializes wgmma whose accumulator may come from
    # plain moves, info C7515; see _wgs)
    mbarrier.wait(bars.index(0), 0)
    acc = warpgroup_mma(a_cur, x_smem.index(0).permute((1, 0)),
                        gl.zeros([BN, BT], gl.float32, layout=LACC), use_acc=False, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))  # returns at once (one group in flight)
    a_next = _fragment(w1, s1, z1, W, BN, BT, num_warps)
    if WAHEAD == 1:
        for t in range(1, kt):  # carries tile t's fragment (a_next) and tile t + 1's words (w2)
            a_prev = a_cur
            a_cur = a_next
            acc, a_prev = _mma_tile(xd, t0, kb, t, kt, a_cur, a_prev, acc, bars, x_smem, BT, STAGES)
            w1, s1, z1 = w2, s2, z2
            w2, s2, z2 = _loads(plane, scale, zero, kb + t + 2, kb + kt, n0, ns, GS, W, BN, num_warps)
            a_next = _fragment(w1, s1, z1, W, BN, BT, num_warps)
    elif WAHEAD == 2:
        w3, s3, z3 = _loads(plane, scale, zero, kb + 3, kb + kt, n0, ns, GS, W, BN, num_warps)
        for t in range(1, kt):  # carries tile t's fragment and tiles t + 1 and t + 2's words
            a_prev = a_cur
            a_cur = a_next
            acc, a_prev = _mma_tile(xd, t0, kb, t, kt, a_cur, a_prev, acc, bars, x_smem, BT, STAGES)
            w1, s1, z1 = w2, s2, z2
            w2, s2, z2 = w3, s3, z3
            w3, s3, z3 = _loads(plane, scale, zero, kb + t + 3, kb + kt, n0, ns, GS, W, BN, num_warps)
            a_next = _fragment(w1, s1, z1, W, BN, BT, num_warps)
    else:
        w3, s3, z3 = _loads(plane, scale, zero, kb + 3, kb + kt, n0, ns, GS, W, BN, num_warps)
        w4, s4, z4 = _loads(plane, scale, zero, kb + 4, kb + kt, n0, ns, GS, W, BN, num_warps)
        for t in range(1, kt):  # carries tile t's fragment and tiles t + 1 .. t + 3's words
            a_prev = a_cur
            a_cur = a_next
            acc, a_prev = _mma_tile(xd, t0, kb, t, kt, a_cur, a_prev, acc, bars, x_smem, BT, STAGES)
            w1, s1, z1 = w2, s2, z2
            w2, s2, z2 = w3, s3, z3
            w3, s3, z3 = w4, s4, z4
            w4, s4, z4 = _loads(plane, scale, zero, kb + t + 4, kb + kt, n0, ns, GS, W, BN, num_warps)
            a_next = _fragment(w1, s1, z1, W, BN, BT, num_warps)
    acc, a_cur = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a_cur))
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    LO: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, num_warps], [0, 1])  # rows (n) fastest: coalesced
    y = gl.convert_layout(acc, LO)
    rows = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, LO))
    toks = t0 + gl.arange(0, BT, layout=gl.SliceLayout(0, LO))
    mask = (rows < ns)[:, None] & (toks < M)[None, :]
    if SPLIT > 1:
        gl.atomic_add(acc_ptr + toks[None, :] * stride_am + rows[:, None], y, mask=mask, sem="relaxed")
    else:
        if HAS_BIAS:
            y = y + gl.load(bias_ptr + rows, mask=rows < ns, other=0.0).to(gl.float32)[:, None]
        gl.store(out_ptr + toks[None, :] * stride_om + rows[:, None], y.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def _mma_tile(xd, t0, kb, t, kt, a_cur, a_prev, acc, bars, x_smem, BT: gl.constexpr, STAGES: gl.constexpr):
    """Tile ``t`` (``t >= 1``): wait for its activations, start its ``wgmma`` on fragment ``a_cur``, wait for tile
    ``t - 1``'s (fragment ``a_prev``) in both warpgroups, and refill that tile's activation slot with tile
    ``t + STAGES - 1``."""
    mbarrier.wait(bars.index(t % STAGES), (t // STAGES) & 1)
    acc = warpgroup_mma(a_cur, x_smem.index(t % STAGES).permute((1, 0)), acc, is_async=True)
    acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_prev))  # tile t - 1's wgmma is done
    _cta_barrier()  # ... in both warpgroups: its activation slot may be refilled
    _x_issue(xd, t0, kb, t + STAGES - 1, bars, x_smem, t + STAGES - 1 < kt, BT, STAGES)
    return acc, a_prev
