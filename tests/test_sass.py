"""The SASS reader the kernel tests use (``_sass``): which registers an instruction writes, and the check that no
register an in-flight ``wgmma`` reads as its A operand is rewritten before the wait that retires it."""
from __future__ import annotations

from _sass import instructions, wgmma_register_hazards, written


def _sass(lines: list[str]) -> str:
    return "\n".join(f"        /*{16 * i:04x}*/                   {s} ;   /* 0x0000 */" for i, s in enumerate(lines))


def _group(a: int) -> list[str]:
    return [f"HGMMA.64x256x16.F32 R24, R{a}, gdesc[UR8], R24",
            f"HGMMA.64x256x16.F32 R24, R{a + 4}, gdesc[UR8], R24, gsb0"]


def test_written_registers():
    code = instructions(_sass(["LDS.128 R8, [R2+UR4]", "IMAD.WIDE R4, R3, 0x2, R6", "STS [R2], R9",
                               "@P0 HFMA2 R7, R1, R2, R3", "ISETP.GE.AND P0, PT, R1, R2, PT",
                               "LDSM.16.MT88.4 R12, [R2]"]))
    assert [written(i) for i in code] == [{8, 9, 10, 11}, {4, 5}, set(), {7}, set(), {12, 13, 14, 15}]
    assert code[3].pred and not code[0].pred


def test_rewrite_before_the_retiring_wait_is_found_around_a_loop():
    # loop: rebuild R168.. then issue on it, wait <= 1 (retires the previous group only), branch back: the next
    # trip's rebuild writes registers the previous trip's wgmma may still read
    loop = ["MOV R169, R3"] + _group(168) + ["WARPGROUP.DEPBAR.LE gsb0, 0x1", "@P0 BRA 0x0",
                                            "WARPGROUP.DEPBAR.LE gsb0, 0x0", "EXIT"]
    bad = wgmma_register_hazards(_sass(loop))
    assert len(bad) == 1 and "writes R169" in bad[0]


def test_two_alternating_fragments_or_a_full_wait_are_safe():
    two = ["MOV R169, R3"] + _group(168) + ["WARPGROUP.DEPBAR.LE gsb0, 0x1", "MOV R185, R3"] + _group(184) + [
        "WARPGROUP.DEPBAR.LE gsb0, 0x1", "@P0 BRA 0x0", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "EXIT"]
    assert wgmma_register_hazards(_sass(two)) == []
    full = ["MOV R169, R3"] + _group(168) + ["WARPGROUP.DEPBAR.LE gsb0, 0x0", "@P0 BRA 0x0", "EXIT"]
    assert wgmma_register_hazards(_sass(full)) == []
    # the write after the second group but before the wait that retires the first is caught
    late = _group(168) + _group(184) + ["MOV R170, R3", "WARPGROUP.DEPBAR.LE gsb0, 0x1", "EXIT"]
    assert len(wgmma_register_hazards(_sass(late))) == 1
