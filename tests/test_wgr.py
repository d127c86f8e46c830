"""The experimental large-M ``wgr`` kernel (``_wgr.py``: weights as ``wgmma``'s register operand).

Gluon kernels do not run in the Triton interpreter, so CI checks what it can without a GPU: the operand order
(``wgr_src``) is a permutation, the kernel's reshape/permute of each tile's code pairs (``fragment_order``),
replayed in torch, puts every code where the activation gather (``wgr_src``) puts its activation, the probe's
gather index, and (``_sm90``) that the kernel compiles for sm_90 with the weights as the register operand of
asynchronous ``wgmma``. On a GPU the last test checks the probe's call against the pure-torch reference (the
path's own plan, gather kernel and split-K: ``test_kernels_triton.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _sm90 import compile_sm90

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _gluon():
    """Skip where this Triton has no Gluon Hopper ops (imported here, not when the module is collected)."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")


@pytest.mark.parametrize("w", [2, 4])
def test_operand_order_is_a_permutation_matching_the_fragment(w):
    _gluon()
    from slimq.kernels.triton._wgr import fragment_order, wgr_src
    src = [wgr_src(k, w) for k in range(64)]
    assert sorted(src) == list(range(64))
    # the kernel's tile of pairs [rows / 16, 2, 8, KP, H, 2]: word row r, pair j (codes j and j + H), half h
    e, kp = 32 // w, 64 * w // 32
    h2 = e // 2
    r = torch.arange(kp).view(1, 1, 1, kp, 1, 1)
    j = torch.arange(h2).view(1, 1, 1, 1, h2, 1)
    h = torch.arange(2).view(1, 1, 1, 1, 1, 2)
    col = (r * e + j + h * h2).expand(1, 2, 8, kp, h2, 2)  # the storage column each pair half holds
    got = col.reshape(1, 2, 8, 2, 2, 2, 2, 2, 2).permute(fragment_order(w)).reshape(16, 64)
    assert torch.equal(got, torch.tensor(src).expand(16, 64))


def _f16(bits: torch.Tensor) -> torch.Tensor:
    """float values of 16-bit patterns (int64 tensor)."""
    return bits.to(torch.int16).view(torch.float16).float()


def test_three_bit_pair_math_gives_exact_codes():
    """``_fragment3``'s (and ``_fragment1``'s) per-pair arithmetic, replayed on integers: the 2-bit plane's pair
    ``(j, j + 8)`` at bit
    ``p``, the 1-bit partner (``_smem_partner``'s respread: slot ``i`` at bit ``i``, ``i + 8`` at ``16 + i``)
    shifted to ``p + 2``, merged into the magic ``(25 - p) << 10`` per half and less it: every 3-bit code
    ``q2 + 4 q1`` of a word, exactly, for either half of the 1-bit word."""
    _gluon()
    from slimq.kernels.triton._wgr import seg_planes
    assert [seg_planes(b) for b in ((2,), (3,), (4,), (1,), (1, 2, 3))] == [
        (True, False, 2), (True, True, 2), (True, False, 4), (False, True, 2), (True, True, 2)]
    for bad in ((2, 4), (5,), (1, 2, 3, 2)):
        with pytest.raises(ValueError):
            seg_planes(bad)
    g = torch.Generator().manual_seed(0)
    q2 = torch.randint(0, 4, (64, 16), generator=g)  # 64 words of 16 2-bit codes
    q1 = torch.randint(0, 2, (64, 32), generator=g)  # their 1-bit words (32 slots)
    w = (q2 << (2 * torch.arange(16))).sum(1)
    u = (q1 << torch.arange(32)).sum(1)
    for h in (0, 1):
        half = (u >> (16 * h)) & 0xFFFF
        v = (half & 0xFF) | ((half >> 8) << 16)  # prmt 0x4140 / 0x4342
        for j in range(8):
            hi8 = j >= 4
            p = 2 * j - (8 if hi8 else 0)
            sh = p + 2 - j
            src = w >> 8 if hi8 else w
            sv = v << sh if sh >= 0 else v >> -sh
            m2 = (3 << p) | (3 << (p + 16))
            m1 = (1 << (p + 2)) | (1 << (p + 18))
            e = 25 - p
            t = (src & m2) | ((e << 10) | (e << 26))
            t = (sv & m1) | t
            lo = _f16(t & 0xFFFF) - _f16(torch.tensor(e << 10))
            hi = _f16((t >> 16) & 0xFFFF) - _f16(torch.tensor(e << 10))
            want_lo = q2[:, j] + 4 * q1[:, 16 * h + j]
            want_hi = q2[:, j + 8] + 4 * q1[:, 16 * h + j + 8]
            assert torch.equal(lo, want_lo.float()) and torch.equal(hi, want_hi.float()), (h, j)
            sv1 = v << (p - j) if p >= j else v >> (j - p)  # _fragment1: the 1-bit code alone, at bit p
            t1 = (sv1 & ((1 << p) | (1 << (p + 16)))) | ((e << 10) | (e << 26))
            assert torch.equal(_f16(t1 & 0xFFFF) - _f16(torch.tensor(e << 10)), q1[:, 16 * h + j].float())
            assert torch.equal(_f16((t1 >> 16) & 0xFFFF) - _f16(torch.tensor(e << 10)), q1[:, 16 * h + j + 8].float())


def _bf16(bits: torch.Tensor) -> torch.Tensor:
    """float values of 16-bit bfloat16 patterns (int64 tensor)."""
    return bits.to(torch.int16).view(torch.bfloat16).float()


def test_bfloat16_pair_math_gives_exact_codes():
    """The bfloat16 fragment's per-pair arithmetic (``_code_at``, ``_magic`` with ``BF16``), replayed on integers:
    the word shifted right by ``S`` (4 j at 4 bits, 6 (j // 3) at 2 and 3 bits) puts pair ``j``'s codes at bit ``p
    = j W - S`` of each half, below bfloat16's 7 mantissa bits even with a 3-bit code's partner bit at ``p + 2``;
    ``| (134 - p) << 7`` per half, less that magic, is every code exactly (2-, 4-bit words; 3-bit codes from a
    2-bit word and its 1-bit partners; 1-bit codes alone)."""
    g = torch.Generator().manual_seed(1)

    def shift(j, w):
        return 4 * j if w == 4 else 6 * (j // 3)

    for w in (2, 4):
        e_per = 32 // w
        q = torch.randint(0, 1 << w, (64, e_per), generator=g)
        word = (q << (w * torch.arange(e_per))).sum(1)
        for j in range(e_per // 2):
            sh = shift(j, w)
            p = j * w - sh
            assert 0 <= p and p + w <= 7, (w, j, p)
            m = ((1 << w) - 1) << p
            e = 134 - p
            t = ((word >> sh) & (m | (m << 16))) | ((e << 7) | (e << 23))
            lo = _bf16(t & 0xFFFF) - _bf16(torch.tensor(e << 7))
            hi = _bf16((t >> 16) & 0xFFFF) - _bf16(torch.tensor(e << 7))
            assert torch.equal(lo, q[:, j].float()) and torch.equal(hi, q[:, j + e_per // 2].float()), (w, j)
    q2 = torch.randint(0, 4, (64, 16), generator=g)
    q1 = torch.randint(0, 2, (64, 32), generator=g)
    word = (q2 << (2 * torch.arange(16))).sum(1)
    u = (q1 << torch.arange(32)).sum(1)
    for h in (0, 1):
        half = (u >> (16 * h)) & 0xFFFF
        v = (half & 0xFF) | ((half >> 8) << 16)  # _smem_partner's respread
        for j in range(8):
            sh = shift(j, 2)
            p = 2 * j - sh
            assert p + 3 <= 7, (j, p)
            e = 134 - p
            magic = (e << 7) | (e << 23)
            sv = v << (p + 2 - j) if p + 2 >= j else v >> (j - p - 2)
            t = ((word >> sh) & ((3 << p) | (3 << (p + 16)))) | magic
            t = (sv & ((1 << (p + 2)) | (1 << (p + 18)))) | t
            assert torch.equal(_bf16(t & 0xFFFF) - _bf16(torch.tensor(e << 7)),
                               (q2[:, j] + 4 * q1[:, 16 * h + j]).float()), (h, j)
            assert torch.equal(_bf16((t >> 16) & 0xFFFF) - _bf16(torch.tensor(e << 7)),
                               (q2[:, j + 8] + 4 * q1[:, 16 * h + j + 8]).float()), (h, j)
            sv1 = v << (p - j) if p >= j else v >> (j - p)
            t1 = (sv1 & ((1 << p) | (1 << (p + 16)))) | magic
            assert torch.equal(_bf16(t1 & 0xFFFF) - _bf16(torch.tensor(e << 7)), q1[:, 16 * h + j].float())
            assert torch.equal(_bf16((t1 >> 16) & 0xFFFF) - _bf16(torch.tensor(e << 7)), q1[:, 16 * h + j + 8].float())


def test_operand_order_refuses_other_widths_and_positions():
    _gluon()
    from slimq.kernels.triton._wgr import fragment_order, wgr_src
    for bad in ((0, 1), (0, 3), (0, 8), (64, 2), (-1, 4)):
        with pytest.raises(ValueError):
            wgr_src(*bad)
    with pytest.raises(ValueError):
        fragment_order(8)


def test_probe_gather_index_and_arguments():
    _gluon()
    import wgr_probe
    from slimq.kernels.triton._wgr import wgr_src
    idx = wgr_probe.operand_index(192, 4, "cpu")
    assert idx.tolist() == [t * 64 + wgr_src(k, 4) for t in range(3) for k in range(64)]
    for bad in (["--variants", "8b"], ["--stages", "1"], ["--rounds", "0"], ["--stages", "6"], ["--split", "9"],
                ["--ws", "2"], ["--sk", "2"], ["--pdl", "2"], ["--warps", "2"]):
        with pytest.raises(SystemExit):
            wgr_probe.main(bad)


_BODY = """
    from test_kernels_triton import random_layer
    from slimq.kernels.triton import KernelConfig, Workspace
    import slimq.kernels.triton._wgr_plan as wgr_plan
    from slimq.kernels.triton._wgr_plan import wgr_launches
    from slimq.kernels.triton._wgr import wgr_kernel
    from slimq.kernels.triton._wgrk import wgrk_kernel
    from _sass import backward_loops, wgmma_register_hazards
    f = json.loads(sys.argv[1])
    wgr_plan._pdl = lambda x, cfg: cfg.pdl  # as on an sm_90 device (the CPU stand-in has none)
    n, k, m, bt, w = 256, 1024, 256, f["bt"], f["w"]
    p = random_layer(n, k, 128, w)
    dt = getattr(torch, f.get("dt", "float16"))
    x = torch.zeros(m, k, dtype=dt)
    out = torch.empty(m, n, dtype=dt)
    ws = Workspace("cpu", m, n, k, dt, split_rows=m, stream_k_programs=f.get("sk", 0))
    cfg = KernelConfig("wgr", block_m=bt, block_n=16 * f["warps"], block_k=64, num_warps=f["warps"],
                       num_stages=f["stages"], split_k=f["split"], producers=f["ws"], stream_k=f.get("sk", 0))
    gather, lc = wgr_launches(x, p, torch.zeros(n, dtype=dt) if f["bias"] else None, out, ws, cfg)[:2]
    kw = {key: v for key, v in lc.kwargs.items() if key != "launch_pdl"}  # a launch option, not a kernel argument
    kern = (wgrk_kernel if f.get("sk") else wgr_kernel).warmup(*lc.args, **kw, grid=(1,))
    sass = sass_of(kern)
    loops = backward_loops(sass)
    k_loops = [lp for lp in loops if sum(op.startswith("HGMMA") for op in lp) == 8]  # stream-K: inside a unit loop
    loop = min(k_loops, key=len) if k_loops else []
    others = [lp for lp in loops if not any(op.startswith("HGMMA") for op in lp)]
    print(json.dumps({"rs_hgmma": len(re.findall(r"HGMMA\\.64x%dx16\\.F32(?:\\.BF16)? R\\d+, R\\d+, gdesc" % bt, sass)),
                      "wait0": sass.count("DEPBAR.LE gsb0, 0x0"), "wait1": sass.count("DEPBAR.LE gsb0, 0x1"),
                      "spills": sass.count("STL") + sass.count("LDL"),
                      "loop_spills": sum(op.startswith(("STL", "LDL")) for op in loop),
                      "loop_hgmma": sum(op.startswith("HGMMA") for op in loop),
                      "loop_sts": sum(op.startswith("STS") for op in loop),
                      "loop_lds": sum(op.startswith(("LDS", "LDSM")) for op in loop),
                      "loop_ldg": sum(op.startswith("LDG") for op in loop),
                      "loop_tma": sum(op.startswith("UTMALDG") for op in loop),
                      "other_loop_tma": [sum(op.startswith("UTMALDG") for op in lp) for lp in others],
                      "loop_arrive": sum(op.startswith("SYNCS.ARRIVE") for op in loop),
                      "loop_hfma2": sum(op.startswith("HFMA2") for op in loop), "loop": len(loop),
                      "red": len(re.findall(r"REDG\\.E\\.ADD\\.F32", sass)),
                      "pdl": [gather.kwargs.get("PDL", False), lc.kwargs.get("launch_pdl", False)],
                      "gdc_wait": sass.count("ACQBULK"), "atomics": sass.count("ATOMG"),
                      "hazards": wgmma_register_hazards(sass)}))
"""


@pytest.mark.parametrize("w,bt,warps,stages,split,bias,ws", [
    (2, 256, 8, 4, 1, False, 0), (4, 128, 8, 3, 1, True, 0), (2, 256, 8, 5, 3, False, 0), (4, 64, 4, 4, 1, False, 0),
    (3, 256, 8, 4, 1, False, 0), (3, 64, 4, 3, 2, True, 0), (1, 256, 8, 4, 1, False, 0),
    ([1, 2, 3, 2], 256, 8, 4, 1, False, 0), ([3, 1, 2], 128, 4, 3, 2, True, 0), ([2, 3], 256, 8, 4, 1, False, 0),
    (2, 256, 8, 4, 1, False, 1), (4, 64, 4, 3, 2, True, 1), ([1, 2, 3, 2], 256, 8, 4, 1, False, 1),
    (2, 256, 8, 4, 1, False, "bf16"), (4, 128, 8, 3, 2, True, "bf16"), (3, 256, 8, 4, 1, False, "bf16"),
    ([1, 2, 3, 2], 256, 8, 4, 1, False, "bf16")])
def test_wgr_compiles_for_sm90_with_register_operand(w, bt, warps, stages, split, bias, ws):
    """Every ``HGMMA`` takes its A operand from registers, and none of those registers is written while its
    ``wgmma`` may still run (``_sass.wgmma_register_hazards``); in the K loop (two tiles) the four of each tile,
    one wait per tile that leaves a group in flight, each tile's four TMA loads (activations, words, scales,
    zeros) and no global loads, no shared-memory stores (the fragment is built in registers: the layout changes
    are checked trivial when compiling), one HFMA2 per code pair of the thread's 32 weights; no spills. With the
    copy warp (``ws``) the TMA loads are in its loop (one tile per trip) and the K loop releases each slot with
    one arrive instead; that warp waits for the gather (``griddepcontrol.wait``, the kernel launched with PDL).
    ``ws == "bf16"``: the copy warp with bfloat16 activations (bfloat16 weights in the fragment, the same counts)."""
    _gluon()
    dt = "bfloat16" if ws == "bf16" else "float16"
    ws = int(ws == "bf16" or ws)
    got = compile_sm90(_BODY, {"w": w, "bt": bt, "warps": warps, "stages": stages, "split": split, "bias": bias,
                               "ws": ws, "dt": dt})
    assert got["hazards"] == [], got["hazards"]  # no A register rewritten while its wgmma may still read it
    assert got["rs_hgmma"] == 16 and got["loop_hgmma"] == 8, got  # peeled first and last tiles, the loop's two
    assert got["wait0"] == 2 and got["wait1"] == 4, got
    widths = sorted(set(w if isinstance(w, list) else [w]))  # SliM: a branch per segment in each of the two tiles
    copies = 1 + sum(2 + (b != 1) + (b in (1, 3)) for b in widths)  # activations; scales, zeros, words, partners
    if ws:  # with the copy warp the kernel launches during the gather (PDL) and that warp waits for it
        assert got["loop_tma"] == 0 and got["loop_arrive"] == 2 and copies in got["other_loop_tma"], got
        assert got["pdl"] == [True, True] and got["gdc_wait"] == 1, got
    else:
        assert got["loop_tma"] == 2 * copies and got["pdl"] == [False, False] and got["gdc_wait"] == 0, got
    assert got["loop_ldg"] == 0 and got["loop_lds"] > 0, got
    assert got["loop_sts"] == 0 and got["spills"] == 0 and got["loop_hfma2"] == 32 * len(widths), got
    assert (got["red"] > 0) == (split > 1), got  # split K: float32 sums added into the workspace


@pytest.mark.parametrize("w,bt,warps,bias", [(2, 256, 8, False), (4, 256, 8, True), ([1, 2, 3], 256, 8, False),
                                          (3, 64, 4, False)])
def test_wgrk_compiles_for_sm90(w, bt, warps, bias):
    """Stream-K ``wgr`` (``_wgrk``): per unit the K loop of ``wgr`` with the copy warp (A operands from registers
    and none rewritten while its ``wgmma`` may run, the copies in the copy warp's loop, one arrive per tile, no
    global loads or shared stores in the loop), launched during the gather; partials and flags by stores and
    GPU-scope atomics, no float32 reductions (no split K). The partial slot's offsets are made per unit, so that
    the K loop holds no epilogue addresses: at most one local load in it (3-bit and SliM; LLVM had hoisted them
    over every K loop, and the 3-bit loop spilled 6 times, SliM's 20)."""
    _gluon()
    got = compile_sm90(_BODY, {"w": w, "bt": bt, "warps": warps, "stages": 4 if warps == 8 else 3, "split": 1,
                               "bias": bias, "ws": 1, "sk": 8})
    assert got["hazards"] == [], got["hazards"]
    assert got["rs_hgmma"] == 16 and got["loop_hgmma"] == 8 and got["wait0"] == 2 and got["wait1"] == 4, got
    widths = sorted(set(w if isinstance(w, list) else [w]))
    copies = 1 + sum(2 + (b != 1) + (b in (1, 3)) for b in widths)
    assert got["loop_tma"] == 0 and got["loop_arrive"] == 2 and copies in got["other_loop_tma"], got
    assert got["loop_ldg"] == 0 and got["loop_sts"] == 0 and got["red"] == 0 and got["atomics"] > 0, got
    assert got["pdl"] == [True, True] and got["gdc_wait"] == 1, got
    assert got["loop_spills"] <= 1, got


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="wgr is Gluon for sm_90 (Hopper)")
@pytest.mark.parametrize("variant,m,bt,stages", [("2b", 300, 256, 4), ("4b", 130, 128, 3), ("2b", 300, 128, 5),
                                                 ("4b", 300, 256, 2), ("3b", 300, 256, 4), ("3b", 130, 64, 3),
                                                 ("1b", 300, 256, 4), ("slim", 300, 256, 4), ("slim", 130, 64, 3)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wgr_matches_reference_on_gpu(variant, m, bt, stages, dtype):
    _gluon()
    import wgr_probe
    from kernels import TOL, build_layer, rel_err

    from slimq.kernels.reference import packed_matmul_reference
    dev = torch.device("cuda")
    p = build_layer(200, 512, variant, dev, seed=3)  # a partial row tile and a partial token tile
    x = torch.randn(m, 512, device=dev, dtype=dtype)
    out = torch.empty(m, 200, device=dev, dtype=dtype)
    wgr_probe.wgr_call(x, p, out, bt, stages)()
    assert rel_err(out, packed_matmul_reference(x, p).float()) < TOL[dtype]
