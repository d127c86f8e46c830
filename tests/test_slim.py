"""SliM-LLM core: salience, budget-exact bit allocation (SBA), SQC, slim_quantize.

References are independent of the code under test: explicit Cholesky inverses,
direct per-candidate quantization with full matmuls, brute-force enumeration.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from slimq.config import ConfigError, GPTQOptions, SlimOptions
from slimq.quant.gptq import gptq_quantize
from slimq.quant.linalg import inverse_hessian_cholesky
from slimq.quant.primitives import fit_binary, fit_minmax, group_bounds
from slimq.quant.rtn import rtn_quantize
from slimq.quant.slim import slim_quantize
from slimq.quant.slim.allocation import level_widths, output_kl, plan_budget, sba_search
from slimq.quant.slim.salience import element_salience, gptq_group_index, group_salience, inverse_cholesky_diagonal
from slimq.quant.slim.slim import rtn_candidates
from slimq.quant.slim.sqc import make_sqc_fitter, sqc_grid, sqc_weights

OFF = SlimOptions(sba=False, sqc=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are small: one thread avoids OpenMP oversubscription on shared
    CI cores (10x faster here); the previous setting is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _layer(n: int, k: int, seed: int = 0, m: int = 512, spread: float = 1.0):
    """Random W [n, k], inputs X [m, k] with column scales varying by ``10**spread``, H = 2/m X^T X."""
    g = torch.Generator().manual_seed(seed)
    col = 10 ** (spread * torch.rand(k, generator=g))
    X = torch.randn(m, k, generator=g) * col
    W = torch.randn(n, k, generator=g) * 0.1
    return W, X, 2 * X.T @ X / m


def _col_counts(k: int, gs: int) -> list[int]:
    return [c1 - c0 for c0, c1 in group_bounds(k, gs)]


def _total_bits(bits: torch.Tensor, counts: list[int]) -> int:
    return sum(int(b) * c for b, c in zip(bits.tolist(), counts))


# --- salience -----------------------------------------------------------------------

def test_inverse_cholesky_diagonal_matches_full_factorisation() -> None:
    _, _, H = _layer(4, 200, seed=1, spread=2.0)
    U = inverse_hessian_cholesky(H, 0.01)
    d = inverse_cholesky_diagonal(H, 0.01)
    assert torch.allclose(d, U.diagonal(), rtol=1e-4)


@pytest.mark.parametrize("act_order", [False, True])
def test_element_and_group_salience(act_order: bool) -> None:
    W, X, H = _layer(8, 100, seed=2, spread=2.0)
    H[7, :] = 0
    H[:, 7] = 0  # a dead input
    Hd = H.double()
    Hd[7, 7] = 1.0
    Hd += 0.01 * Hd.diagonal().mean() * torch.eye(100, dtype=torch.float64)
    perm = torch.sort(torch.where(H.diagonal() == 0, 1.0, H.diagonal()), descending=True, stable=True).indices \
        if act_order else torch.arange(100)
    Hp = Hd[perm][:, perm]
    # U_jj^2 of the processing order = [inv(H restricted to later columns)]_00, by definition
    u2 = torch.stack([torch.linalg.inv(Hp[j:, j:])[0, 0] for j in range(100)])
    ref = torch.empty(100, dtype=torch.float64)
    ref[perm] = u2
    want = W.double().square() / ref  # ref = U_jj^2
    want[:, 7] = 0
    sal = element_salience(W, H, 0.01, act_order=act_order)
    assert torch.allclose(sal.double(), want, rtol=1e-3)
    g_idx = gptq_group_index(H, 32, act_order, False)
    gs = group_salience(sal, g_idx)
    assert gs.shape == (4,)  # 32, 32, 32 and a short group of 4
    for g in range(4):
        assert math.isclose(float(gs[g]), float(sal[:, g_idx == g].double().sum()), rel_tol=1e-9)


@pytest.mark.parametrize("act_order,static", [(False, False), (True, False), (True, True)])
def test_group_index_matches_gptq(act_order: bool, static: bool) -> None:
    W, _, H = _layer(16, 90, seed=3, spread=2.0)
    qt = gptq_quantize(W, H, bits=3, group_size=32, act_order=act_order, static_groups=static)
    assert torch.equal(gptq_group_index(H, 32, act_order, static), qt.g_idx)


# --- budget / SBA ---------------------------------------------------------------------

def _exact_case(n_bits: int, k: int, gs: int, palette: tuple) -> None:
    W, X, H = _layer(16, k, seed=n_bits, spread=1.5)
    counts = _col_counts(k, gs)
    g_idx = gptq_group_index(H, gs, False, False)
    gsal = group_salience(element_salience(W, H, 0.01), g_idx)
    widths = level_widths(n_bits, palette, False)
    assert min(widths) >= 1 and max(widths) <= 8
    if n_bits == 1:
        assert widths[0] == 1  # 0 bits do not exist: -1 (and -2) are dropped at N = 1
    wq = rtn_candidates(W, widths, gs, False, None)
    res = sba_search(W, X[:32], gsal, g_idx, n_bits, palette, wq)
    assert _total_bits(res.bits, counts) == n_bits * k
    assert res.bits.min() >= 1 and res.bits.max() <= 8
    assert res.path_scores[0] == pytest.approx(_kl(W, X[:32], torch.full((len(counts),), n_bits), wq, g_idx))
    # every scored candidate met the budget too
    assert all(_total_bits(b, counts) == n_bits * k for _, _, b in res.ranked)
    if n_bits == 1:
        assert bool((res.bits == 1).all()) and res.steps == 0  # nothing to trade against
    # The short last group is never moved.
    if counts[-1] != max(counts):
        assert int(res.bits[-1]) == n_bits


_SHAPES = [(512, 64), (576, 128), (448, 64), (200, 64), (100, 100), (70, 16)]


@pytest.mark.parametrize("n_bits", range(1, 8))
@pytest.mark.parametrize("k,gs", _SHAPES)
def test_sba_average_is_exact(n_bits: int, k: int, gs: int) -> None:
    """Every N in 1..7, even/odd group counts (8, 5, 7, 4, 1, 5 groups), short last
    groups (576/128, 200/64, 70/16), the paper's palette."""
    _exact_case(n_bits, k, gs, (-1, 0, 1))


@pytest.mark.parametrize("n_bits", [1, 2, 3, 6, 7])
@pytest.mark.parametrize("k,gs", [(576, 128), (448, 64)])
@pytest.mark.parametrize("palette", [(-1, 0, 1, 2), (-2, -1, 0, 1, 2), (0, 1)])
def test_sba_average_is_exact_wide_palettes(n_bits: int, k: int, gs: int, palette: tuple) -> None:
    _exact_case(n_bits, k, gs, palette)


@pytest.mark.parametrize("target,k,gs", [(2.5, 576, 128), (2.5, 576, 64), (2.5, 512, 64), (3.25, 768, 128),
                                         (2.1, 200, 64), (1.5, 130, 32), (7.5, 256, 128), (2.75, 70, 16)])
def test_fractional_budget_is_largest_achievable_not_above_target(target, k, gs) -> None:
    counts = _col_counts(k, gs)
    b = plan_budget(target, counts)
    assert b.base == math.floor(target)
    assert b.total_bits <= target * k + 1e-9
    # brute force over which groups sit at N + 1
    full = max(counts)
    short = [c for c in counts if c != full]
    n_full = len(counts) - len(short)
    best = max(a * full + s for a in range(n_full + 1) for s in ([0] + short)
               if b.base * k + a * full + s <= target * k + 1e-9)
    assert b.total_bits == b.base * k + best
    W, X, H = _layer(16, k, seed=7, spread=1.5)
    g_idx = gptq_group_index(H, gs, False, False)
    gsal = group_salience(element_salience(W, H, 0.01), g_idx)
    wq = rtn_candidates(W, level_widths(b.base, (-1, 0, 1), b.n_up > 0), gs, False, None)
    res = sba_search(W, X[:64], gsal, g_idx, target, (-1, 0, 1), wq)
    assert _total_bits(res.bits, counts) == b.total_bits
    qt = slim_quantize(W, H, X[:64], bits=target, group_size=gs, options=dataclasses.replace(OFF, sba=True))
    assert _total_bits(qt.bits[0], counts) == b.total_bits  # (avg_bits() is float32)


def test_fractional_start_gives_extra_bits_to_most_salient() -> None:
    W, X, H = _layer(16, 512, seed=8, spread=2.0)
    qt = slim_quantize(W, H, None, bits=2.5, group_size=64, options=OFF)
    assert qt.info["allocation_source"] == "start"
    sal = torch.tensor(qt.info["group_salience"])
    top = set(torch.argsort(sal, descending=True)[:4].tolist())
    assert {g for g, b in enumerate(qt.info["allocation"]) if b == 3} == top
    assert qt.avg_bits() == 2.5


def _kl(W, X, bits, wq, g_idx) -> float:
    """Reference: assemble W_q column by column, full matmul."""
    Wq = torch.stack([wq[int(bits[g_idx[j]])][:, j] for j in range(W.shape[1])], dim=1)
    logp = torch.log_softmax((X @ W.T).double(), -1)
    return output_kl(logp, X @ Wq.T)


def test_sba_path_is_the_papers_line_search() -> None:
    """Palette (-1, 0, 1): path score k = KL of 'k least salient at N-1, k most at N+1'."""
    W, X, H = _layer(32, 640, seed=9, spread=2.0)
    g_idx = gptq_group_index(H, 64, False, False)
    gsal = group_salience(element_salience(W, H, 0.01), g_idx)
    wq = rtn_candidates(W, [1, 2, 3], 64, False, None)
    res = sba_search(W, X[:128], gsal, g_idx, 2, (-1, 0, 1), wq)
    order = torch.argsort(gsal)
    assert len(res.path_scores) == 10 // 2 + 1
    ref = []
    for k in range(6):
        bits = torch.full((10,), 2)
        bits[order[:k]] = 1
        bits[order[10 - k:]] = 3
        ref.append(_kl(W, X[:128], bits, wq, g_idx))
    assert res.path_scores == pytest.approx(ref, rel=1e-4)
    assert res.steps == min(range(6), key=lambda k: ref[k])


def test_sba_prefers_mixed_precision_on_nonuniform_salience() -> None:
    """Half of the groups see 30x larger inputs: SBA moves bits there and beats uniform."""
    g = torch.Generator().manual_seed(10)
    k, gs = 512, 64
    scale = torch.ones(k)
    scale[torch.randperm(8, generator=g)[:4].repeat_interleave(gs) * gs + torch.arange(gs).repeat(4)] = 30.0
    X = torch.randn(1024, k, generator=g) * scale
    W = torch.randn(64, k, generator=g) * 0.05
    H = 2 * X.T @ X / 1024
    qt = slim_quantize(W, H, X[:256], bits=2, group_size=gs, options=SlimOptions(sqc=False))
    scores = qt.info["sba_scores"]
    assert qt.info["sba_k"] > 0
    assert min(scores) < 0.7 * scores[0]
    alloc = torch.tensor(qt.info["allocation"])
    hot = torch.tensor([bool(scale[j * gs] > 1) for j in range(8)])
    assert alloc[hot].float().mean() > alloc[~hot].float().mean()
    # and after GPTQ too: output KL on held-out rows beats uniform 2-bit GPTQ
    uni = gptq_quantize(W, H, bits=2, group_size=gs)
    logp = torch.log_softmax((X[256:] @ W.T).double(), -1)
    assert output_kl(logp, X[256:] @ qt.dequantize().T) < output_kl(logp, X[256:] @ uni.dequantize().T)


def test_wider_palette_scores_at_least_as_well() -> None:
    W, X, H = _layer(32, 768, seed=11, spread=2.5)
    g_idx = gptq_group_index(H, 64, False, False)
    gsal = group_salience(element_salience(W, H, 0.01), g_idx)
    wq = rtn_candidates(W, [1, 2, 3, 4], 64, False, None)
    narrow = sba_search(W, X[:128], gsal, g_idx, 2, (-1, 0, 1), wq)
    wide = sba_search(W, X[:128], gsal, g_idx, 2, (-1, 0, 1, 2), wq)
    assert wide.n_scored > narrow.n_scored
    assert wide.ranked[0][0] <= narrow.ranked[0][0] + 1e-12  # its first moves include the narrow path's
    assert _total_bits(wide.bits, _col_counts(768, 64)) == 2 * 768


# --- SQC ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("sym", [False, True])
def test_sqc_lambda1_grid1_is_minmax(bits: int, sym: bool) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(37, 50, generator=g) * 0.1 + 0.01
    sal = torch.rand(37, 50, generator=g) ** 4
    fit = make_sqc_fitter(1.0, 2.0, (1.0, 1.0, 1))
    want = fit_minmax(w, bits, sym)
    for s in (None, sal):
        got = fit(w, bits, sym, s)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sqc_grid_contains_exact_one() -> None:
    pts = sqc_grid((0.9, 1.1, 101))
    assert pts.numel() == 101 and bool((pts == 1.0).any())
    assert float(pts[0]) == pytest.approx(0.9) and float(pts[-1]) == pytest.approx(1.1)


def _weighted_err(w, scale, zero, bits, weight):
    from slimq.quant.primitives import dequantize_codes, quantize_codes
    return float((weight * (w - dequantize_codes(quantize_codes(w, scale, zero, bits), scale, zero)) ** 2).sum())


@pytest.mark.parametrize("search", ["coarse_fine", "exhaustive"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_sqc_lowers_salience_weighted_error(bits: int, search: str) -> None:
    g = torch.Generator().manual_seed(20 + bits)
    w = torch.randn(256, 128, generator=g) * 0.05
    sal = w.square() * torch.rand(256, 128, generator=g) ** 3
    lam, thr = 4.0, 1.5
    weight = sqc_weights(sal, w.shape, lam, thr)
    assert weight is not None and 0 < float((weight > 1).float().mean()) < 0.2
    fit = make_sqc_fitter(lam, thr, (0.9, 1.1, 101), search=search, chunk_elems=5000)  # small chunks: many
    base = fit_minmax(w, bits, False)
    ours = fit(w, bits, False, sal)
    e_base, e_ours = _weighted_err(w, *base, bits, weight), _weighted_err(w, *ours, bits, weight)
    assert e_ours < 0.97 * e_base, (e_ours, e_base)
    # per row it never does worse: the grid holds p = 1 exactly (bits > 1) / closed form (1 bit)
    from slimq.quant.primitives import dequantize_codes, quantize_codes
    per_row = lambda s, z: (weight * (w - dequantize_codes(quantize_codes(w, s, z, bits), s, z)) ** 2).sum(1)  # noqa: E731
    assert bool((per_row(*ours) <= per_row(*base) * (1 + 1e-6) + 1e-12).all())


def test_sqc_exhaustive_is_the_grid_optimum_and_coarse_fine_is_close() -> None:
    g = torch.Generator().manual_seed(25)
    w = torch.randn(300, 64, generator=g) * 0.05
    sal = w.square() * torch.rand(300, 64, generator=g) ** 3
    weight = sqc_weights(sal, w.shape, 3.0, 1.5)
    grid = sqc_grid((0.9, 1.1, 101))
    from slimq.quant.primitives import dequantize_codes, quantize_codes
    err = torch.stack([(weight * (w - dequantize_codes(quantize_codes(w, *fit_minmax(w, 3, False, float(p)), 3),
                                                       *fit_minmax(w, 3, False, float(p))))**2).sum(1)
                       for p in grid])  # [P, R], one grid point at a time
    def row_err(s, z):
        return (weight * (w - dequantize_codes(quantize_codes(w, s, z, 3), s, z)) ** 2).sum(1)
    ex = row_err(*make_sqc_fitter(3.0, 1.5, grid, search="exhaustive")(w, 3, False, sal))
    cf = row_err(*make_sqc_fitter(3.0, 1.5, grid, search="coarse_fine")(w, 3, False, sal))
    assert torch.allclose(ex, err.min(0).values, rtol=1e-5)
    assert bool((cf >= ex * (1 - 1e-6)).all())
    assert float(cf.sum()) <= 1.01 * float(ex.sum())
    with pytest.raises(ValueError, match="search"):
        make_sqc_fitter(2.0, 2.0, grid, search="golden")


def test_sqc_one_bit_is_weighted_binarisation() -> None:
    g = torch.Generator().manual_seed(30)
    w = torch.randn(64, 64, generator=g)
    sal = torch.rand(64, 64, generator=g) ** 6
    assert all(torch.equal(a, b) for a, b in zip(make_sqc_fitter(1.0, 2.0, (0.9, 1.1, 11))(w, 1, False, sal),
                                                 fit_binary(w)))
    weight = sqc_weights(sal, w.shape, 3.0, 2.0)
    scale, zero = make_sqc_fitter(3.0, 2.0, (0.9, 1.1, 11))(w, 1, False, sal)
    mu = w.mean(1)
    alpha = (weight * (w - mu[:, None]).abs()).sum(1) / weight.sum(1)
    assert torch.allclose(scale, 2 * alpha, rtol=1e-3)
    assert torch.allclose((0.5 - zero) * scale, mu, atol=2e-3)


# --- slim_quantize --------------------------------------------------------------------

@pytest.mark.parametrize("act_order,static", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("bits", [2, 3])
def test_k0_without_sqc_is_gptq(act_order: bool, static: bool, bits: int) -> None:
    W, X, H = _layer(48, 200, seed=40, spread=1.5)
    gopt = GPTQOptions(act_order=act_order, static_groups=static, blocksize=64)
    ref = gptq_quantize(W, H, bits=bits, group_size=64, act_order=act_order, static_groups=static, blocksize=64)
    n_groups = ref.n_groups
    for kwargs in ({"options": OFF}, {"options": SlimOptions(sqc=False), "allocation": torch.full((n_groups,), bits)}):
        qt = slim_quantize(W, H, X[:64], bits=bits, group_size=64, gptq=gopt, **kwargs)
        for f in ("codes", "scales", "zeros", "bits", "g_idx"):
            assert torch.equal(getattr(qt, f), getattr(ref, f)), f
        assert qt.info["loss"] == ref.info["loss"]


def test_sba_k0_choice_reproduces_gptq() -> None:
    """A layer of uniform salience at 8 bits: the uniform allocation wins (k = 0)."""
    W, X, H = _layer(16, 256, seed=41, spread=0.0)
    qt = slim_quantize(W, H, X[:64], bits=8, group_size=64, options=SlimOptions(sqc=False))
    assert qt.info["sba_k"] == 0 and qt.info["sba_n_scored"] == 1
    ref = gptq_quantize(W, H, bits=8, group_size=64)
    assert torch.equal(qt.codes, ref.codes) and torch.equal(qt.scales, ref.scales)


def test_one_bit_groups_binarise() -> None:
    W, X, H = _layer(32, 256, seed=42, spread=1.0)
    alloc = torch.tensor([1, 3, 1, 3])
    qt = slim_quantize(W, H, X[:64], bits=2, group_size=64, options=OFF, allocation=alloc)
    Wq = qt.dequantize()
    assert qt.avg_bits() == 2.0
    for g in (0, 2):
        cols = slice(64 * g, 64 * (g + 1))
        assert int(qt.codes[:, cols].max()) <= 1
        for r in range(32):
            assert torch.unique(Wq[r, cols]).numel() <= 2
    # the RTN candidates binarise exactly as sign(w - mu) * mean|w - mu| + mu
    wq = rtn_candidates(W, [1], 64, False, None)[1]
    w = W[:, :64]
    mu = w.mean(1, keepdim=True)
    alpha = (w - mu).abs().mean(1, keepdim=True)
    want = torch.where(w >= mu, 1.0, -1.0) * alpha + mu
    close = (wq[:, :64] - want).abs() <= 2e-3 * alpha
    # float16 scale/zero move the sign threshold by a hair: only weights at mu may flip
    assert bool(((w - mu).abs()[~close] < 2e-3 * alpha.expand_as(w)[~close]).all())
    assert float(close.float().mean()) > 0.99


def test_given_allocation_is_validated() -> None:
    W, X, H = _layer(8, 200, seed=43)
    with pytest.raises(ValueError, match=r"shape \[G=4\]"):
        slim_quantize(W, H, None, bits=2, group_size=64, options=OFF, allocation=torch.tensor([2, 2, 2]))
    with pytest.raises(ValueError, match="1..8"):
        slim_quantize(W, H, None, bits=2, group_size=64, options=OFF, allocation=torch.tensor([0, 2, 3, 2]))
    with pytest.raises(ValueError, match="integer"):
        slim_quantize(W, H, None, bits=2, group_size=64, options=OFF, allocation=torch.tensor([2.5, 2, 2, 2]))
    with pytest.raises(ValueError, match="X_sample"):
        slim_quantize(W, H, None, bits=2, group_size=64, options=SlimOptions())
    qt = slim_quantize(W, H, None, bits=2, group_size=64, options=SlimOptions(), allocation=[1, 3, 2, 2])
    assert qt.info["allocation_source"] == "given" and qt.info["allocation"] == [1, 3, 2, 2]


def test_sqc_changes_gptq_and_info_is_complete() -> None:
    W, X, H = _layer(48, 256, seed=44, spread=2.0)
    qt = slim_quantize(W, H, X[:64], bits=3, group_size=64)
    plain = slim_quantize(W, H, X[:64], bits=3, group_size=64, options=SlimOptions(sqc=False))
    assert qt.info["allocation"] == plain.info["allocation"]
    assert not torch.equal(qt.scales, plain.scales)
    for key in ("loss", "target_bits", "avg_bits", "allocation", "allocation_source", "sba_k", "sba_scores",
                "sba_n_scored", "group_salience", "seconds", "seconds_salience", "seconds_sba", "seconds_gptq"):
        assert key in qt.info, key
    assert len(qt.info["group_salience"]) == 4


def test_gptq_scoring_picks_best_of_shortlist() -> None:
    W, X, H = _layer(32, 512, seed=45, spread=2.0)
    opts = SlimOptions(sqc=False, score="gptq", gptq_shortlist=3)
    qt = slim_quantize(W, H, X[:128], bits=2, group_size=64, options=opts)
    scores = qt.info["gptq_scores"]
    assert len(scores) == 3 and scores[qt.info["gptq_pick"]] == min(scores)
    logp = torch.log_softmax((X[:128] @ W.T).double(), -1)
    assert output_kl(logp, X[:128] @ qt.dequantize().T) == pytest.approx(min(scores), rel=1e-6)
    rtn_pick = slim_quantize(W, H, X[:128], bits=2, group_size=64, options=SlimOptions(sqc=False))
    assert min(scores) <= output_kl(logp, X[:128] @ rtn_pick.dequantize().T) * (1 + 1e-9)


def test_slim_options_validation() -> None:
    with pytest.raises(ConfigError, match="contiguous"):
        SlimOptions(palette=(-2, 0, 1))
    with pytest.raises(ConfigError, match="gptq_shortlist"):
        SlimOptions(gptq_shortlist=0)
    with pytest.raises(ConfigError, match="sqc_search"):
        SlimOptions(sqc_search="fast")
    assert SlimOptions(palette=(-1, 0, 1, 2)).palette == (-1, 0, 1, 2)


def test_rtn_candidates_match_rtn_quantize() -> None:
    W, _, H = _layer(20, 300, seed=46)
    for gs in (64, 128, -1, 7):
        for sym in (False, True):
            c = rtn_candidates(W, [1, 2, 3, 5], gs, sym, None)
            for b in (1, 2, 3, 5):
                assert torch.equal(c[b], rtn_quantize(W, bits=b, group_size=gs, sym=sym).dequantize())
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    c = rtn_candidates(W, [3], 64, False, perm)[3]
    assert torch.equal(c[:, perm], rtn_quantize(W[:, perm], bits=3, group_size=64).dequantize())


def test_single_group_and_tiny_layers() -> None:
    W, X, H = _layer(8, 40, seed=47)
    for gs in (-1, 64):  # one group: nothing to trade, fractional targets round down
        qt = slim_quantize(W, H, X[:16], bits=2.7, group_size=gs, options=SlimOptions(sqc=False))
        assert qt.info["allocation"] == [2] and qt.info["sba_k"] == 0
        assert qt.avg_bits() == 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("act_order", [False, True])
def test_cuda_matches_cpu(act_order: bool) -> None:
    W, X, H = _layer(64, 448, seed=48, spread=2.0)
    gopt = GPTQOptions(act_order=act_order)
    cpu = slim_quantize(W, H, X[:128], bits=2.5, group_size=64, gptq=gopt)
    gpu = slim_quantize(W.cuda(), H.cuda(), X[:128].cuda(), bits=2.5, group_size=64, gptq=gopt)
    assert gpu.codes.is_cuda
    assert gpu.info["allocation"] == cpu.info["allocation"]
    assert torch.equal(gpu.g_idx.cpu(), cpu.g_idx)
    diff = (gpu.dequantize().cpu() - cpu.dequantize()).abs()
    assert float((diff > 1e-3).float().mean()) < 0.02
    half = slim_quantize(W.cuda().half(), H.cuda(), X[:128].cuda().half(), bits=2.5, group_size=64, gptq=gopt)
    assert half.avg_bits() == cpu.avg_bits()
