"""The half2 dequantization's arithmetic (``_dq16``), checked in float16 on the CPU: the kernel itself is Gluon
and runs only on a Hopper GPU (tests/test_kernels_triton.py there), so here the identities it relies on.

Per plane the masked code bits OR'd into a float16 magic ``M = 2**(10 - pos + c)`` read as ``M + q 2**c``;
with two planes, plane 1 less both magics (one ``HSUB2`` by ``M0 + M1``) plus plane 0 must give the code
exactly, for every pair slot ``j`` and every code of every width the half2 path takes."""
from __future__ import annotations

import numpy as np
import pytest

# triton is imported inside the tests, not at collection: tests/test_kernels_triton.py runs in this process only
# while nothing has imported triton before it (else it reruns itself in a fresh interpreter-mode process)


def _imports():
    pytest.importorskip("triton.experimental.gluon")
    from slimq.kernels.triton._dq16 import _pair_asm
    from slimq.kernels.triton._tiles import plane_width
    return _pair_asm, plane_width


def _f16(v: float) -> float:
    return float(np.float16(v))


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_both_magics_off_plane_one_is_exact(bits):
    _, plane_width = _imports()
    w0, w1 = plane_width(bits, 0), plane_width(bits, 1)
    for j in range(8):
        m0, m1 = 2.0 ** (10 - (j * w0) % 8), 2.0 ** (10 - (j * w1) % 8 + w0)
        both = _f16(m0 + m1)
        assert both == m0 + m1  # the f16x2 constant is exact
        for q0 in range(2 ** w0):
            for q1 in range(2 ** w1):
                a, t = _f16(m0 + q0), _f16(m1 + q1 * 2 ** w0)
                assert (a, t) == (m0 + q0, m1 + q1 * 2 ** w0)  # the codes sit in the mantissa
                assert _f16(a + _f16(t - both)) == q0 + q1 * 2 ** w0, (bits, j, q0, q1)


def test_pair_asm_subtracts_once_per_plane_after_the_first_two():
    """One ``HSUB2`` for one plane, one for two (both magics at once), two for three; one ``HFMA2`` each."""
    _pair_asm, _ = _imports()
    for n, subs in ((1, 1), (2, 1), (3, 2)):
        asm = _pair_asm(n)
        assert asm.count("sub.f16x2") == subs and asm.count("fma.rn.f16x2") == 1
        assert asm.count("lop3.b32") == n and asm.count("add.f16x2") == n - 1
