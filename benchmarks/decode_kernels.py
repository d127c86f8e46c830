"""The non-matmul kernels of ``decode.py``'s llama step (Triton), with pure-torch references.

Shapes: ``B`` sequences, ``NH`` heads of ``HD`` (a power of two) features, ``H = NH * HD``, KV caches
``[B, NH, L, HD]`` (``L`` the longest sequence), ``pos`` a one-element int64 tensor (the position being decoded,
read on the device so that one CUDA graph serves every step). Every kernel reads and writes float16/bfloat16 and
computes in float32.

``rope_attend`` is one launch per layer for what ``rope_cache`` + ``F.scaled_dot_product_attention`` with a mask
over the whole cache take four or more for (rotation, the mask's ``where``, fills, the attention), and reads
positions ``0 .. pos`` only. Program ``(b, head, split)`` rotates its query, forms the softmax statistics of its
``BLOCK_L`` cached positions below ``pos`` (split 0 also those of the new key and value, from registers, which it
then stores into the caches at ``pos``: no program reads a position another writes), and the last split of a head
to arrive on an atomic counter combines them (flash-decoding in one launch: at batch 1 a head's ~150 positions in
one program took ~8.5 us, its loads serialised on 32 SMs; split 32 positions apiece, 160 programs share them
in ~6.7 us).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["add_rmsnorm", "attend_workspace", "rope_attend", "rope_attend_reference", "rope_cache", "rope_tables",
           "silu_mul"]


@triton.jit
def _add_rmsnorm(h_ptr, d_ptr, w_ptr, out_ptr, H, eps, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
    """Row b: ``h += d`` (if HAS_D), ``out = h / rms(h) * w``."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < H
    h = tl.load(h_ptr + b * H + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_D:
        h += tl.load(d_ptr + b * H + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + b * H + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    r = tl.rsqrt(tl.sum(h * h, axis=0) / H + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * H + offs, (h * r * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, d: torch.Tensor | None, w: torch.Tensor, out: torch.Tensor, eps: float) -> None:
    """``h [B, H] += d`` (in place, when ``d`` is given), then ``out [B, H] = rmsnorm(h) * w``. One program per
    row with a warp per 256 features (4-16): at H = 4096 16 warps took 2.4 us a call against 3.9 with 4 (H200,
    run 204: the row's loads spread over more warps)."""
    B, H = h.shape
    block = triton.next_power_of_2(H)
    _add_rmsnorm[(B,)](h, d if d is not None else h, w, out, H, eps, HAS_D=d is not None, BLOCK=block,
                       num_warps=max(4, min(16, block // 256)))


@triton.jit
def _silu_mul(gu_ptr, out_ptr, INTER, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < INTER
    g = tl.load(gu_ptr + b * 2 * INTER + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + b * 2 * INTER + INTER + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * INTER + offs, (g / (1 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """``gu [B, 2 * I]`` (gate then up) -> ``silu(gate) * up [B, I]``."""
    B, inter = gu.shape[0], gu.shape[1] // 2
    out = torch.empty(B, inter, device=gu.device, dtype=gu.dtype)
    _silu_mul[(B, triton.cdiv(inter, 1024))](gu, out, inter, BLOCK=1024)
    return out


@triton.jit
def _rope_coeffs(cos_ptr, sin_ptr, pos, full, HD: tl.constexpr):
    """The rotation at ``pos`` over all ``HD`` features, float32: feature ``f`` pairs with ``f + HD/2`` (rotate-half),
    ``rotated = x * c + partner * s`` with the sine negated below ``HD/2``."""
    c = tl.load(cos_ptr + pos * (HD // 2) + full % (HD // 2))
    s = tl.load(sin_ptr + pos * (HD // 2) + full % (HD // 2))
    return c, tl.where(full < HD // 2, -s, s)


@triton.jit
def _rotate(row, c, s, full, HD: tl.constexpr):
    """``row[0:HD]`` rotated by :func:`_rope_coeffs`' ``(c, s)``, float32."""
    return tl.load(row + full).to(tl.float32) * c + tl.load(row + (full + HD // 2) % HD).to(tl.float32) * s


@triton.jit
def _rope_cache(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, kc_ptr, vc_ptr, NH, L, HD: tl.constexpr):
    """Program (b, head): rotate q, k at position ``pos``; write q to ``q [B, NH, HD]`` and k, v into the caches
    at ``pos``."""
    b = tl.program_id(0)
    hh = tl.program_id(1)
    pos = tl.load(pos_ptr)
    full = tl.arange(0, HD)
    row = qkv_ptr + b * 3 * NH * HD + hh * HD
    c, s = _rope_coeffs(cos_ptr, sin_ptr, pos, full, HD)
    dt = q_ptr.dtype.element_ty
    tl.store(q_ptr + (b * NH + hh) * HD + full, _rotate(row, c, s, full, HD).to(dt))
    cache = ((b * NH + hh) * L + pos) * HD
    tl.store(kc_ptr + cache + full, _rotate(row + NH * HD, c, s, full, HD).to(dt))
    tl.store(vc_ptr + cache + full, tl.load(row + 2 * NH * HD + full))


def rope_cache(qkv, cos, sin, pos, kc, vc) -> torch.Tensor:
    """Rotate and cache as :func:`rope_attend` does; return the rotated queries ``[B, NH, HD]`` (for SDPA)."""
    B, NH, L, HD = kc.shape
    q = torch.empty(B, NH, HD, device=qkv.device, dtype=qkv.dtype)
    _rope_cache[(B, NH)](qkv, cos, sin, pos, q, kc, vc, NH, L, HD=HD)
    return q


@triton.jit
def _rope_attend(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, out_ptr, part_ptr, ml_ptr, cnt_ptr, NH, L,
                 nsplit, scale, HD: tl.constexpr, BLOCK_L: tl.constexpr, SPLITS: tl.constexpr):
    """Program (b, head, split): see :func:`rope_attend`. ``nsplit`` programs per head (the grid's last axis),
    ``SPLITS`` that rounded up to a power of two (the partials' stride)."""
    b = tl.program_id(0)
    hh = tl.program_id(1)
    sp = tl.program_id(2)
    bh = b * NH + hh
    pos = tl.load(pos_ptr)
    full = tl.arange(0, HD)
    dt = out_ptr.dtype.element_ty
    base = bh * L * HD
    row = qkv_ptr + b * 3 * NH * HD + hh * HD
    c, s = _rope_coeffs(cos_ptr, sin_ptr, pos, full, HD)
    q = _rotate(row, c, s, full, HD)
    # Rounded to the cache's dtype as SDPA would see it; the scale folded in (log2 domain for exp2).
    q = q.to(dt).to(tl.float32) * (scale * 1.4426950408889634)
    start = sp * BLOCK_L
    if (start < pos) | (sp == 0):
        offs = start + tl.arange(0, BLOCK_L)
        valid = offs < pos
        tile = base + offs[:, None] * HD + full[None, :]
        vt = tl.load(vc_ptr + tile, mask=valid[:, None], other=0.0)
        kt = tl.load(kc_ptr + tile, mask=valid[:, None], other=0.0)
        sc = tl.where(valid, tl.sum(kt.to(tl.float32) * q[None, :], axis=1), float("-inf"))
        if sp == 0:
            # The new position (from registers; stored after the loads, which the compiler cannot tell apart).
            k = _rotate(row + NH * HD, c, s, full, HD).to(dt)
            v = tl.load(row + 2 * NH * HD + full)
            m_new = tl.sum(q * k.to(tl.float32), axis=0)
            m = tl.maximum(m_new, tl.max(sc, axis=0))
            p = tl.exp2(sc - m)
            w_new = tl.exp2(m_new - m)
            acc = tl.sum(p[:, None] * vt.to(tl.float32), axis=0) + w_new * v.to(tl.float32)
            lsum = tl.sum(p, axis=0) + w_new
            tl.store(kc_ptr + base + pos * HD + full, k)
            tl.store(vc_ptr + base + pos * HD + full, v)
        else:
            m = tl.max(sc, axis=0)
            p = tl.exp2(sc - m)
            acc = tl.sum(p[:, None] * vt.to(tl.float32), axis=0)
            lsum = tl.sum(p, axis=0)
        if SPLITS == 1:
            tl.store(out_ptr + bh * HD + full, (acc / lsum).to(dt))
        else:
            tl.store(part_ptr + (bh * SPLITS + sp) * HD + full, acc)
            tl.store(ml_ptr + (bh * SPLITS + sp) * 2, m)
            tl.store(ml_ptr + (bh * SPLITS + sp) * 2 + 1, lsum)
    if SPLITS > 1:
        # Every split arrives on the counter (release after the block's stores); the last one to arrive (acquire)
        # combines the partials and puts the counter back to zero for the next launch.
        tl.debug_barrier()
        if tl.atomic_add(cnt_ptr + bh, 1, sem="acq_rel", scope="gpu") == nsplit - 1:
            si = tl.arange(0, SPLITS)
            live = ((si * BLOCK_L < pos) & (si < nsplit)) | (si == 0)
            ms = tl.load(ml_ptr + (bh * SPLITS + si) * 2, mask=live, other=float("-inf"), cache_modifier=".cg")
            ls = tl.load(ml_ptr + (bh * SPLITS + si) * 2 + 1, mask=live, other=0.0, cache_modifier=".cg")
            parts = tl.load(part_ptr + (bh * SPLITS + si[:, None]) * HD + full[None, :], mask=live[:, None],
                            other=0.0, cache_modifier=".cg")
            w = tl.where(live, tl.exp2(ms - tl.max(ms, axis=0)), 0.0)
            o = tl.sum(w[:, None] * parts, axis=0) / tl.sum(w * ls, axis=0)
            tl.store(out_ptr + bh * HD + full, o.to(dt))
            tl.store(cnt_ptr + bh, 0)


def attend_workspace(B: int, NH: int, L: int, HD: int, device, block_l: int | None = None) -> dict:
    """What :func:`rope_attend` needs besides its operands, allocated once (CUDA graphs replay it): ``block_l``
    cached positions per program (default: the cache in at most 32 splits, at least 32 positions each), the
    splits' partial outputs ``[B * NH, S, HD]`` and (max, sum) ``[B * NH, S, 2]`` (float32), and one arrival
    counter per head ``[B * NH]`` (int32, zero between launches)."""
    block_l = block_l or max(32, triton.next_power_of_2(triton.cdiv(L, 32)))
    if block_l < 16 or block_l & (block_l - 1):
        raise ValueError(f"block_l must be a power of two >= 16, got {block_l}")
    splits = triton.next_power_of_2(triton.cdiv(L, block_l))
    f32 = {"device": device, "dtype": torch.float32}
    return {"block_l": block_l, "splits": splits, "part": torch.empty(B * NH, splits, HD, **f32),
            "ml": torch.empty(B * NH, splits, 2, **f32), "cnt": torch.zeros(B * NH, device=device, dtype=torch.int32)}


def rope_attend(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, kc: torch.Tensor,
                vc: torch.Tensor, work: dict | None = None, num_warps: int = 2) -> torch.Tensor:
    """One decode step's attention: ``qkv [B, 3 * H]`` (q, k, v of every head), ``cos``/``sin [L, HD / 2]``
    float32, ``pos`` int64 ``[1]`` below ``L`` (not checked: it lives on the device, and reading it would
    synchronize); caches ``kc``/``vc [B, NH, L, HD]`` get k (rotated) and v at ``pos``. Returns ``[B, H]``: each
    head's causal attention over positions ``0 .. pos`` (scale ``HD ** -0.5``).

    The positions are split over programs (``work``, from :func:`attend_workspace`; made here when not given),
    ``B * NH * S`` of them, so that one sequence still spreads its loads over many SMs; each writes its part's
    softmax statistics and the last of a head to finish combines them (flash-decoding in one launch)."""
    B, NH, L, HD = kc.shape
    if qkv.shape != (B, 3 * NH * HD) or vc.shape != kc.shape or HD & (HD - 1):
        raise ValueError(f"rope_attend: qkv {tuple(qkv.shape)}, caches {tuple(kc.shape)} / {tuple(vc.shape)} "
                         f"(want qkv [B, 3 * NH * HD], equal caches, HD a power of two)")
    work = work if work is not None else attend_workspace(B, NH, L, HD, qkv.device)
    if work["part"].shape != (B * NH, work["splits"], HD):
        raise ValueError(f"rope_attend: workspace for {tuple(work['part'].shape)} partials, this call needs "
                         f"[{B * NH}, {work['splits']}, {HD}]")
    out = torch.empty(B, NH * HD, device=qkv.device, dtype=qkv.dtype)
    nsplit = triton.cdiv(L, work["block_l"])
    _rope_attend[(B, NH, nsplit)](qkv, cos, sin, pos, kc, vc, out, work["part"], work["ml"], work["cnt"], NH, L,
                                  nsplit, 1.0 / math.sqrt(HD), HD=HD, BLOCK_L=work["block_l"], SPLITS=work["splits"],
                                  num_warps=num_warps)
    return out


def rope_tables(L: int, HD: int, device, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``, ``sin`` ``[L, HD / 2]`` float32 of the rotary angles ``pos * theta ** (-2 i / HD)``."""
    inv = 1.0 / (theta ** (torch.arange(0, HD, 2, device=device).float() / HD))
    ang = torch.arange(L, device=device).float()[:, None] * inv[None]
    return ang.cos().contiguous(), ang.sin().contiguous()


def rope_attend_reference(qkv, cos, sin, pos, kc, vc) -> torch.Tensor:
    """Pure torch, in place on the caches like :func:`rope_attend`: rotation, cache write, SDPA with a mask."""
    B, NH, L, HD = kc.shape
    p = int(pos)
    q, k, v = qkv.view(B, 3, NH, HD).unbind(1)

    def rot(t):
        a, b = t.float().chunk(2, dim=-1)
        c, s = cos[p].float(), sin[p].float()
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1).to(t.dtype)

    kc[:, :, p] = rot(k)
    vc[:, :, p] = v
    mask = (torch.arange(L, device=qkv.device) <= p)[None, None, None, :]
    att = F.scaled_dot_product_attention(rot(q)[:, :, None].float(), kc.float(), vc.float(), attn_mask=mask)
    return att.reshape(B, NH * HD).to(qkv.dtype)
