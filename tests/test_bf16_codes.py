"""``_bf16``: where the bfloat16 reads (``_mvx`` at one token, ``_wg`` with ``direct``) find each code, replayed on
integers (no GPU): every pair of 1-, 2- and 4-bit words, merged 3-bit codes, and plane coefficients, read through
the shifted word, mask and magic as bfloat16, less the magic, is the code exactly.

``_bf16`` is imported inside the tests: importing it imports triton, which at collection time would come before
``test_kernels_triton`` turns the interpreter on (it must see ``TRITON_INTERPRET`` first).
"""
from __future__ import annotations

import pytest
import torch


def _bf():
    from slimq.kernels.triton import _bf16
    return _bf16


def _bf16(bits: torch.Tensor) -> torch.Tensor:
    return bits.to(torch.int16).view(torch.bfloat16).float()


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("c", [0, 2, 4])
def test_every_pair_reads_exactly(w, c):
    b = _bf()
    bf_magic, bf_mask2, bf_pos, bf_shift = b.bf_magic, b.bf_mask2, b.bf_pos, b.bf_shift
    g = torch.Generator().manual_seed(w + 10 * c)
    e = 32 // w
    q = torch.randint(0, 1 << w, (256, e), generator=g)
    word = (q << (w * torch.arange(e))).sum(1)
    word = torch.where(word >= 1 << 31, word - (1 << 32), word)  # int32 words, as the kernels load them
    for j in range(e // 2):
        assert bf_pos(j, w) + w <= 7 and bf_shift(j, w) + bf_pos(j, w) == j * w, (w, j)
        t = ((word >> bf_shift(j, w)) & bf_mask2(j, w)) | bf_magic(j, w, c)
        m = _bf16(torch.tensor(bf_magic(j, w, c) & 0xFFFF))
        assert torch.equal(_bf16(t & 0xFFFF) - m, (q[:, j] << c).float()), (w, j, c)
        assert torch.equal(_bf16((t >> 16) & 0xFFFF) - m, (q[:, j + e // 2] << c).float()), (w, j, c)


def test_merged_three_bit_codes_read_exactly():
    """2-bit pair ``i`` at ``p = bf_pos(i, 2) <= 4`` and its partner (bit ``i`` of the respread 1-bit word) moved to
    ``p + 2``: the 3-bit code ``q0 + 4 q1``, as ``_h2.pair3_halves_bf16`` builds it."""
    b = _bf()
    bf_magic, bf_mask2, bf_pos, bf_shift = b.bf_magic, b.bf_mask2, b.bf_pos, b.bf_shift
    g = torch.Generator().manual_seed(3)
    q0 = torch.randint(0, 4, (256, 16), generator=g)
    q1 = torch.randint(0, 2, (256, 16), generator=g)
    word = (q0 << (2 * torch.arange(16))).sum(1)
    v = (q1[:, :8] << torch.arange(8)).sum(1) | ((q1[:, 8:] << torch.arange(8)).sum(1) << 16)
    for i in range(8):
        p = bf_pos(i, 2)
        assert p + 3 <= 7
        d = p + 2 - i
        sv = v << d if d >= 0 else v >> -d
        m1 = (4 << p) | (4 << (p + 16))
        t = ((word >> bf_shift(i, 2)) & bf_mask2(i, 2)) | bf_magic(i, 2)
        t = (sv & m1) | t
        m = _bf16(torch.tensor(bf_magic(i, 2) & 0xFFFF))
        assert torch.equal(_bf16(t & 0xFFFF) - m, (q0[:, i] + 4 * q1[:, i]).float()), i
        assert torch.equal(_bf16((t >> 16) & 0xFFFF) - m, (q0[:, i + 8] + 4 * q1[:, i + 8]).float()), i


def test_wider_planes_are_refused():
    b = _bf()
    bf_group = b.bf_group
    assert b.BF16_MAX_WIDTH == 4 and bf_group(1) == 7 and bf_group(2) == 3 and bf_group(4) == 1
    with pytest.raises(ValueError, match="planes of 1-4 bits"):
        bf_group(8)
