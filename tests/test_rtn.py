"""RTN against an independent float64 min/max reference written here."""
from __future__ import annotations

import pytest
import torch

from slimq.quant.primitives import fit_qparams
from slimq.quant.rtn import resolve_group_bits, rtn_quantize


def _ref_rtn(W: torch.Tensor, bits: list[int], gs: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain per-row, per-group min/max RTN in float64 (scales rounded to float16 as the
    format stores them). Returns (codes, dequantized weights)."""
    n, k = W.shape
    gs = k if gs == -1 else gs
    W = W.double()
    codes, deq = torch.empty_like(W), torch.empty_like(W)
    for g, c0 in enumerate(range(0, k, gs)):
        c1, maxq = min(c0 + gs, k), 2 ** bits[g] - 1
        for r in range(n):
            w = W[r, c0:c1]
            lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
            if sym:
                s = 2 * max(-lo, hi) / maxq
                z = (maxq + 1) / 2
            else:
                s = (hi - lo) / maxq
            s = float(torch.tensor(s if s > 1e-8 else 1.0).half())
            if not sym:
                z = min(max(round(-lo / s), 0), maxq)
            q = torch.clamp(torch.round(w / s + z), 0, maxq)
            codes[r, c0:c1], deq[r, c0:c1] = q, (q - z) * s
    return codes, deq


@pytest.mark.parametrize("gs", [8, 12, -1, 64])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_matches_reference(gs: int, bits: int, sym: bool) -> None:
    torch.manual_seed(bits * 100 + gs)
    W = torch.randn(16, 44) * torch.rand(16, 1) * 0.1  # gs 8 and 12 leave short last groups (4, 8)
    qt = rtn_quantize(W, bits=bits, group_size=gs, sym=sym)
    n_groups = 1 if gs in (-1, 64) else -(-44 // gs)
    codes, deq = _ref_rtn(W, [bits] * n_groups, gs, sym)
    assert qt.codes.dtype == torch.uint8 and qt.scales.dtype == torch.float16
    assert qt.n_groups == n_groups and qt.scales.shape == (16, n_groups)
    assert torch.equal(qt.g_idx, torch.arange(44, dtype=torch.int32) // (44 if gs == -1 else gs))
    # exact: float32 and float64 could only disagree on a value within ~1e-7 of a
    # rounding boundary, and these fixed seeds have none
    assert torch.equal(qt.codes.double(), codes)
    assert torch.allclose(qt.dequantize().double(), deq, rtol=0, atol=1e-6)
    assert torch.equal(qt.bits, torch.full((16, n_groups), bits, dtype=torch.int8))


def test_rtn_mixed_bits_and_binary() -> None:
    torch.manual_seed(1)
    W = torch.randn(8, 40)
    bits = torch.tensor([1, 2, 3, 8, 4])
    qt = rtn_quantize(W, bits=bits, group_size=8)
    assert torch.equal(qt.group_bits(), bits.to(torch.int8))
    maxq = (2 ** bits[qt.g_idx.long()] - 1)[None, :].expand(8, -1)
    assert bool((qt.codes.long() <= maxq).all())
    # group 0 is binarised: each row takes exactly two values, mu +- alpha
    w0 = W[:, :8]
    deq0 = qt.dequantize()[:, :8]
    mu, alpha = w0.mean(1, keepdim=True), (w0 - w0.mean(1, keepdim=True)).abs().mean(1, keepdim=True)
    expect = mu + alpha * torch.where(w0 >= mu, 1.0, -1.0)
    assert torch.allclose(deq0, expect, atol=2e-3 * float(W.abs().max()))
    # the 8-bit group is near-lossless
    assert (qt.dequantize()[:, 24:32] - W[:, 24:32]).abs().max() < 0.01


def test_rtn_salience_reaches_fitter() -> None:
    seen = []

    def fitter(w, bits, sym, salience=None):
        seen.append(salience.clone())
        return fit_qparams(w, bits, sym)

    W, sal = torch.randn(4, 20), torch.rand(4, 20)
    rtn_quantize(W, bits=3, group_size=8, fitter=fitter, salience=sal)
    assert [s.shape[1] for s in seen] == [8, 8, 4]
    assert torch.equal(torch.cat(seen, 1), sal)


def test_rtn_errors() -> None:
    W = torch.randn(4, 20)
    with pytest.raises(ValueError, match="1..8"):
        rtn_quantize(W, bits=9, group_size=8)
    with pytest.raises(ValueError, match=r"\[G=3\]"):
        rtn_quantize(W, bits=torch.tensor([2, 3]), group_size=8)
    with pytest.raises(ValueError, match="integer tensor"):
        rtn_quantize(W, bits=torch.tensor([2.0, 3.0, 4.0]), group_size=8)
    with pytest.raises(ValueError, match="group_size"):
        rtn_quantize(W, bits=3, group_size=0)
    W[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        rtn_quantize(W, bits=3, group_size=8)
    with pytest.raises(ValueError, match="float16-representable"):
        rtn_quantize(torch.randn(4, 8), bits=3, group_size=8,
                     fitter=lambda w, b, s, sal=None: (torch.full((4,), 0.1), torch.zeros(4)))
    assert resolve_group_bits(3, 2) == [3, 3]
