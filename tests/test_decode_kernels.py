"""``benchmarks/decode_kernels.py`` (the decode benchmark's non-matmul kernels) against pure torch.

Shares ``test_kernels_triton``'s set-up (imported first: it turns the Triton interpreter on when there is no GPU),
so in CI the kernels run in the interpreter on small shapes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from test_kernels_triton import DEV, IN_PROCESS, gpu, inproc, run_in_interpreter  # isort: skip (TRITON_INTERPRET first)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import decode_kernels as dk


@pytest.mark.skipif(IN_PROCESS, reason="kernels run in this process")
def test_in_interpreter_subprocess():
    """triton was imported before this module (compiled mode, no GPU): run it in a fresh process."""
    run_in_interpreter(__file__)


def _caches(B, NH, L, HD, pos, dt, gen):
    """Caches holding random keys and values at positions below ``pos`` and garbage (large values) above, which
    the attention must not read."""
    kc = torch.randn(B, NH, L, HD, generator=gen).to(DEV, dt)
    vc = torch.randn(B, NH, L, HD, generator=gen).to(DEV, dt)
    kc[:, :, pos + 1:] = 1e3
    vc[:, :, pos + 1:] = -1e3
    return kc, vc


@inproc
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pos,block_l", [(0, 16), (1, 32), (31, 32), (32, 32), (33, 32), (69, 16), (69, 128),
                                         (69, None)])
def test_rope_attend_matches_rotation_cache_write_and_masked_sdpa(pos, block_l, dt):
    """Position 0 (only the new key), inside the first split, at a split's edge and past it, five splits (of
    70 positions: 3 rounded up to 8 partial slots), one split larger than the cache (no combining): the output
    and both caches match the reference; nothing past ``pos`` is read (the caches hold +-1000 there)."""
    B, NH, L, HD = 2, 3, 70, 16
    gen = torch.Generator().manual_seed(pos)
    qkv = torch.randn(B, 3 * NH * HD, generator=gen).to(DEV, dt)
    cos, sin = dk.rope_tables(L, HD, DEV)
    p = torch.tensor([pos], device=DEV)
    kc, vc = _caches(B, NH, L, HD, pos, dt, gen)
    kr, vr = kc.clone(), vc.clone()
    work = dk.attend_workspace(B, NH, L, HD, DEV, block_l=block_l)
    got = dk.rope_attend(qkv, cos, sin, p, kc, vc, work)
    want = dk.rope_attend_reference(qkv, cos, sin, p, kr, vr)
    assert not work["cnt"].any()  # put back to zero for the next launch
    assert got.shape == (B, NH * HD) and got.dtype == dt
    tol = 2e-2 if dt == torch.bfloat16 else 2e-3
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    # float16 caches bit for bit; bfloat16 keys within one unit in the last place (the interpreter's rounding).
    ctol = {"rtol": 8e-3, "atol": 0} if dt == torch.bfloat16 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(kc, kr, **ctol)
    assert torch.equal(vc, vr)


@inproc
def test_rope_cache_then_sdpa_is_the_same_attention():
    """The ``--attention sdpa`` path (rotation and cache write in one kernel, then SDPA over the masked cache)
    matches the reference too."""
    B, NH, L, HD, pos = 2, 2, 40, 16, 17
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, 3 * NH * HD, generator=gen).to(DEV, torch.float16)
    cos, sin = dk.rope_tables(L, HD, DEV)
    p = torch.tensor([pos], device=DEV)
    kc, vc = _caches(B, NH, L, HD, pos, torch.float16, gen)
    kr, vr = kc.clone(), vc.clone()
    q = dk.rope_cache(qkv, cos, sin, p, kc, vc)
    mask = (torch.arange(L, device=DEV) <= pos)[None, None, None, :]
    got = torch.nn.functional.scaled_dot_product_attention(q[:, :, None].float(), kc.float(), vc.float(),
                                                           attn_mask=mask).reshape(B, -1)
    want = dk.rope_attend_reference(qkv, cos, sin, p, kr, vr)
    torch.testing.assert_close(got, want.float(), rtol=2e-3, atol=2e-3)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


@inproc
def test_rope_attend_reuses_its_workspace_across_positions():
    """One workspace (as a CUDA graph replays it) over successive positions, the caches filled by the kernel
    itself: every step matches the reference run on its own caches."""
    B, NH, L, HD = 1, 2, 40, 16
    gen = torch.Generator().manual_seed(3)
    cos, sin = dk.rope_tables(L, HD, DEV)
    kc, vc = _caches(B, NH, L, HD, L - 1, torch.float16, gen)
    kr, vr = kc.clone(), vc.clone()
    work = dk.attend_workspace(B, NH, L, HD, DEV, block_l=16)
    for pos in range(0, 35, 3):
        qkv = torch.randn(B, 3 * NH * HD, generator=gen).to(DEV, torch.float16)
        p = torch.tensor([pos], device=DEV)
        got = dk.rope_attend(qkv, cos, sin, p, kc, vc, work)
        want = dk.rope_attend_reference(qkv, cos, sin, p, kr, vr)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


@gpu
@pytest.mark.parametrize("B", [1, 16])
def test_rope_attend_at_the_decode_benchmarks_size(B):
    """32 heads of 128 over a 144-position cache (``decode.py``'s), 5 splits per head and up to 2560 programs racing
    on the arrival counters, one workspace over 20 positions: every step matches the reference."""
    NH, L, HD = 32, 144, 128
    gen = torch.Generator().manual_seed(4)
    cos, sin = dk.rope_tables(L, HD, DEV)
    kc, vc = _caches(B, NH, L, HD, L - 1, torch.float16, gen)
    kr, vr = kc.clone(), vc.clone()
    work = dk.attend_workspace(B, NH, L, HD, DEV)
    for pos in list(range(10)) + list(range(134, 144)):
        qkv = torch.randn(B, 3 * NH * HD, generator=gen).to(DEV, torch.float16)
        p = torch.tensor([pos], device=DEV)
        got = dk.rope_attend(qkv, cos, sin, p, kc, vc, work)
        want = dk.rope_attend_reference(qkv, cos, sin, p, kr, vr)
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)
    assert not work["cnt"].any()


@inproc
def test_rope_attend_refuses_mismatched_shapes():
    kc = torch.zeros(1, 2, 8, 12, device=DEV, dtype=torch.float16)
    cos, sin = dk.rope_tables(8, 12, DEV)
    with pytest.raises(ValueError, match="HD a power of two"):
        dk.rope_attend(torch.zeros(1, 72, device=DEV, dtype=torch.float16), cos, sin,
                       torch.zeros(1, dtype=torch.long, device=DEV), kc, kc.clone())
    kc = torch.zeros(1, 2, 8, 16, device=DEV, dtype=torch.float16)
    with pytest.raises(ValueError, match="workspace for"):
        dk.rope_attend(torch.zeros(1, 96, device=DEV, dtype=torch.float16), cos, sin,
                       torch.zeros(1, dtype=torch.long, device=DEV), kc, kc.clone(),
                       dk.attend_workspace(2, 2, 8, 16, DEV))
    with pytest.raises(ValueError, match="block_l must be a power of two"):
        dk.attend_workspace(1, 2, 8, 16, DEV, block_l=24)


@inproc
@pytest.mark.parametrize("with_d", [False, True])
def test_add_rmsnorm_and_silu_mul(with_d):
    """The residual add and RMSNorm (a width that is not a power of two), and SiLU(gate) * up."""
    gen = torch.Generator().manual_seed(2)
    B, H, eps = 3, 80, 1e-5
    h = torch.randn(B, H, generator=gen).to(DEV, torch.float16)
    d = torch.randn(B, H, generator=gen).to(DEV, torch.float16) if with_d else None
    w = (1 + 0.1 * torch.randn(H, generator=gen)).to(DEV, torch.float16)
    out = torch.empty_like(h)
    want_h = h.float() + (d.float() if with_d else 0)
    want = want_h * torch.rsqrt(want_h.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    dk.add_rmsnorm(h, d, w, out, eps)
    torch.testing.assert_close(h.float(), want_h.half().float())
    torch.testing.assert_close(out.float(), want, rtol=2e-3, atol=2e-3)
    gu = torch.randn(B, 2 * 1100, generator=gen).to(DEV, torch.float16)
    g, u = gu.float().chunk(2, dim=-1)
    torch.testing.assert_close(dk.silu_mul(gu).float(), torch.nn.functional.silu(g) * u, rtol=2e-3, atol=2e-3)
