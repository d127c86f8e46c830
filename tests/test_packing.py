"""Packing in layout slimq.segmented-bitplane.v1 and the pure-torch reference matmul."""
from __future__ import annotations

import math

import pytest
import torch

from slimq.format.layout import PLANE_WIDTHS, PackedLinear
from slimq.format.packing import check_packed, dequantize_packed, pack, pack_planes, unpack, unpack_planes
from slimq.kernels.reference import packed_matmul_reference
from slimq.quant.result import QuantizedTensor


def random_qt(n: int, k: int, gs: int, bits, *, act_order: bool = False, seed: int = 0) -> QuantizedTensor:
    """A random QuantizedTensor ``[n, k]``; ``bits`` is an int, a ``[G]`` or an ``[n, G]`` tensor."""
    gen = torch.Generator().manual_seed(seed)
    size = k if gs == -1 else gs
    g = math.ceil(k / size)
    g_idx = torch.arange(k, dtype=torch.int32) // size
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    if isinstance(bits, int):
        bits = torch.full((n, g), bits)
    elif bits.dim() == 1:
        bits = bits[None].expand(n, g)
    bits = bits.to(torch.int8).contiguous()
    maxq = (1 << bits.long()[:, g_idx.long()]) - 1
    codes = torch.minimum((torch.rand(n, k, generator=gen) * (maxq + 1)).floor(), maxq.float()).to(torch.uint8)
    scales = (torch.rand(n, g, generator=gen) * 0.02 + 1e-3).half()
    zeros = (torch.rand(n, g, generator=gen) * (1 << bits.long()).float()).half()
    return QuantizedTensor(codes, scales, zeros, g_idx, bits, gs)


# --- bit planes -----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("ks", [1, 31, 33, 100])
def test_planes_round_trip(bits, ks):
    codes = torch.randint(0, 2 ** bits, (ks, 5), dtype=torch.uint8)
    planes = pack_planes(codes, bits)
    assert [p.dtype for p in planes] == [torch.int32] * len(PLANE_WIDTHS[bits])
    assert [tuple(p.shape) for p in planes] == [(math.ceil(ks * w / 32), 5) for w in PLANE_WIDTHS[bits]]
    assert torch.equal(unpack_planes(planes, bits, ks), codes)


def _word(values: list[int], width: int) -> int:
    """The documented word: slot j at bits [w*j, w*j + w), as a signed int32."""
    u = sum(v << (width * j) for j, v in enumerate(values))
    return u - (1 << 32) if u >= 1 << 31 else u


@pytest.mark.parametrize("bits", range(1, 9))
def test_planes_match_documented_bit_positions(bits):
    ks = 70
    codes = torch.randint(0, 2 ** bits, (ks, 3), dtype=torch.uint8)
    codes[:, 0] = 2 ** bits - 1  # all ones: exercises the int32 sign bit
    planes = pack_planes(codes, bits)
    shift = 0
    for plane, w in zip(planes, PLANE_WIDTHS[bits]):
        per = 32 // w
        for col in range(3):
            part = [(int(c) >> shift) & ((1 << w) - 1) for c in codes[:, col]]
            part += [0] * (plane.shape[0] * per - ks)
            expect = [_word(part[r * per:(r + 1) * per], w) for r in range(plane.shape[0])]
            assert plane[:, col].tolist() == expect
        shift += w


def test_pack_planes_rejects_out_of_range_and_float():
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_planes(torch.tensor([[8]]), 3)
    with pytest.raises(TypeError):
        pack_planes(torch.zeros(4, 4), 3)
    with pytest.raises(ValueError, match="1..8"):
        pack_planes(torch.zeros(4, 4, dtype=torch.uint8), 9)


# --- whole layers ---------------------------------------------------------------------------

def _assert_round_trip(qt: QuantizedTensor) -> PackedLinear:
    packed = pack(qt)
    check_packed(packed)
    back = unpack(packed)
    assert torch.equal(back.codes, qt.codes)
    gi, gb = qt.g_idx.long(), back.g_idx.long()
    for a, b in ((qt.scales, back.scales), (qt.zeros, back.zeros), (qt.bits, back.bits)):
        assert torch.equal(a[:, gi], b[:, gb])  # per-element quantizer identical
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert torch.equal(dequantize_packed(packed), qt.dequantize())
    return packed


@pytest.mark.parametrize("bits", range(1, 9))
def test_uniform_bits_round_trip(bits):
    packed = _assert_round_trip(random_qt(9, 100, 32, bits))
    assert len(packed.segments) == 1 and packed.row_perm is None
    assert torch.equal(packed.col_perm.long(), torch.arange(100))


@pytest.mark.parametrize("n,k,gs", [(7, 100, 32), (33, 130, 64), (16, 576, 128), (5, 64, -1), (3, 40, 40)])
def test_mixed_group_bits(n, k, gs):
    g = 1 if gs == -1 else math.ceil(k / gs)
    bits = torch.tensor([1, 2, 3] * g)[:g]
    packed = _assert_round_trip(random_qt(n, k, gs, bits, seed=n))
    assert len(packed.segments) == len(set(bits.tolist()))
    qt_bits = bits[(torch.arange(k) // (k if gs == -1 else gs))]
    stored = qt_bits[packed.col_perm.long()]
    assert bool((stored[1:] >= stored[:-1]).all()), "columns are sorted by bit-width"


def test_mixed_all_widths_act_order():
    k, gs = 300, 32  # 10 groups, the last one short; groups scattered by act-order
    bits = torch.tensor([8, 1, 5, 3, 3, 7, 2, 4, 6, 1])
    packed = _assert_round_trip(random_qt(11, k, gs, bits, act_order=True))
    assert sorted(s.bits for s in packed.segments) == [1, 2, 3, 4, 5, 6, 7, 8]
    for s in packed.segments:  # every group full except a segment's last
        assert s.group_size == gs


def test_row_varying_bits_mixllm():
    n, k, gs = 13, 96, 32
    row_bits = torch.tensor([3, 2, 8, 2, 3, 3, 2, 8, 4, 4, 2, 3, 8])
    packed = _assert_round_trip(random_qt(n, k, gs, row_bits[:, None].expand(n, 3)))
    assert packed.row_perm is not None
    assert len(packed.segments) == 4
    for s in packed.segments:
        assert (s.c0, s.c1) == (0, k)
        assert bool((row_bits[packed.row_perm.long()[s.r0:s.r1]] == s.bits).all())


def test_rows_and_groups_varying():
    n, k, gs = 10, 165, 32  # 6 groups, last one short
    bits = torch.randint(1, 5, (n, 6), generator=torch.Generator().manual_seed(3))
    _assert_round_trip(random_qt(n, k, gs, bits))


def test_pack_rejects_bad_codes():
    qt = random_qt(4, 64, 32, 2)
    qt.codes[0, 0] = 4
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        pack(qt)


def test_check_packed_detects_bad_shapes():
    packed = pack(random_qt(4, 64, 32, 3))
    packed.segments[0].scales = packed.segments[0].scales[:1]
    with pytest.raises(ValueError, match="scales"):
        check_packed(packed)


# --- reference matmul -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", ["uniform3", "mixed", "rows", "both"])
def test_reference_matmul_matches_dequantized(dtype, tol, case):
    n, k, gs = 37, 200, 64
    bits = {"uniform3": 3, "mixed": torch.tensor([2, 1, 4, 3]),
            "rows": torch.randint(2, 5, (n, 1)).expand(n, 4), "both": torch.randint(1, 9, (n, 4))}[case]
    qt = random_qt(n, k, gs, bits, act_order=case == "mixed")
    packed = pack(qt)
    x = torch.randn(2, 3, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    ref = x.double() @ qt.dequantize(torch.float64).T + bias.double()
    for chunk in (4 * n * 32, 2 ** 24):  # tiny chunks (one word row per plane) and one chunk
        y = packed_matmul_reference(x, packed, bias, chunk_bytes=chunk)
        assert y.dtype == dtype and y.shape == (2, 3, n)
        err = (y.double() - ref).abs().max() / ref.abs().max()
        assert err < tol, f"relative error {err:.2e} >= {tol}"


def test_reference_matmul_checks_inputs():
    packed = pack(random_qt(4, 64, 32, 4))
    with pytest.raises(ValueError, match="in_features=64"):
        packed_matmul_reference(torch.randn(2, 63), packed)
    with pytest.raises(TypeError):
        packed_matmul_reference(torch.ones(2, 64, dtype=torch.int32), packed)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_byte_path_equals_arithmetic_path(width):
    from slimq.format.packing import _pack_width, _pack_width_arith

    ks, ns = 77, 6
    part = torch.randint(0, 2 ** width, (ks, ns), dtype=torch.uint8)
    per = 32 // width
    n_words = math.ceil(ks / per)
    padded = torch.zeros(n_words * per, ns, dtype=torch.uint8)
    padded[:ks] = part
    assert torch.equal(_pack_width(part, width), _pack_width_arith(padded, width, n_words))
