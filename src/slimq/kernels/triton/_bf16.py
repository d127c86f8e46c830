"""Where the kernels read codes as bfloat16 (activations that stay bfloat16: ``_mvx`` at one token, ``_wg`` with
``direct``): constants only, no kernels.

The float16 paths read a code ``q`` at bit ``p`` of a half-word OR-ed with a magic exponent as ``2**(10 - p) + q``
(10 mantissa bits). bfloat16 has 7, so a code must end at bit 6: pair ``j`` of a width-``w`` plane (codes ``j`` and
``j + H`` at bit ``j w`` of each half of a word) is read from the word shifted right by ``(j // G) G w`` at bit
``p = (j % G) w``, ``G = 7 // w`` pairs per shifted copy (4-bit words: 4 copies; 2-bit: 3; 1-bit: 3). Merged 3-bit
codes (a 2-bit pair and its partner bit at ``p + 2``) use the 2-bit rule: ``p <= 4``. The magic is ``2**(7 - p + c)``
(exponent field ``134 - p + c``) for a plane with coefficient ``2**c``. 8-bit planes do not fit.
"""
from __future__ import annotations

import triton

__all__ = ["bf_group", "bf_pos", "bf_shift", "bf_mask2", "bf_magic", "BF16_MAX_WIDTH"]

BF16_MAX_WIDTH = 4  # widest plane read as bfloat16 (a code of w bits needs w <= 7 mantissa bits; planes are 1, 2, 4, 8)


@triton.constexpr_function
def bf_group(w):
    """Pairs of a width-``w`` plane per shifted copy of a word (codes at bits ``0 .. 6``)."""
    if not 1 <= int(w) <= BF16_MAX_WIDTH:
        raise ValueError(f"bfloat16 reads take planes of 1-{BF16_MAX_WIDTH} bits, got {w}")
    return 7 // int(w)


@triton.constexpr_function
def bf_shift(j, w):
    """Right shift of the word that pair ``j`` of a width-``w`` plane is read from."""
    g = bf_group(w)
    return (int(j) // g) * g * int(w)


@triton.constexpr_function
def bf_pos(j, w):
    """Bit (within its half-word) of pair ``j`` of a width-``w`` plane in its shifted copy."""
    return (int(j) % bf_group(w)) * int(w)


@triton.constexpr_function
def bf_mask2(j, w, bits=None):
    """Mask of pair ``j``'s codes (``bits`` wide, default ``w``) in both halves."""
    m = ((1 << int(bits if bits is not None else w)) - 1) << bf_pos(j, w)
    return m | (m << 16)


@triton.constexpr_function
def bf_magic(j, w, c=0):
    """int32 bits of the bfloat16 pair ``(M, M)``, ``M = 2**(7 - p + c)``: pair ``j``'s masked codes read as ``M + 2**c
    q``."""
    m = (134 - bf_pos(j, w) + int(c)) << 7
    return m | (m << 16)
