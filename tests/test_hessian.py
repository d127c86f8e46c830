"""HessianAccumulator against 2/n X^T X computed in float64, and its reservoir sample."""
from __future__ import annotations

import pytest
import torch

from slimq.stats.hessian import HessianAccumulator


def _batches(sizes: list[int], k: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, k, generator=g) * 3 + 1 for m in sizes]


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_matches_direct_formula(dtype, rtol):
    xs = _batches([7, 1, 130, 33, 64], 24)
    acc = HessianAccumulator(24, dtype=dtype)
    for x in xs:
        acc.add(x.view(1, -1, 24) if x.shape[0] == 130 else x)  # 3-D [batch, seq, in] is flattened
    X = torch.cat(xs).double()
    H = 2.0 / X.shape[0] * X.T @ X
    assert acc.n_tokens == X.shape[0]
    out = acc.hessian()
    assert out.dtype == torch.float32 and out.shape == (24, 24)
    torch.testing.assert_close(acc._H.double(), H, rtol=rtol, atol=rtol * H.abs().max().item())


def test_half_precision_inputs_are_accumulated_in_float32():
    x = torch.randn(50, 8).half()
    acc = HessianAccumulator(8)
    acc.add(x)
    X = x.double()
    torch.testing.assert_close(acc.hessian().double(), 2 / 50 * X.T @ X, rtol=1e-5, atol=1e-5)


def test_empty_batch_is_a_no_op_and_errors_are_specific():
    acc = HessianAccumulator(4)
    acc.add(torch.empty(0, 4))
    assert acc.n_tokens == 0
    with pytest.raises(ValueError, match="no input rows"):
        acc.hessian()
    with pytest.raises(ValueError, match="5 features, accumulator expects 4"):
        acc.add(torch.randn(3, 5))
    with pytest.raises(TypeError, match="float32 or float64"):
        HessianAccumulator(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="max_rows"):
        HessianAccumulator(4, max_rows=-1)
    assert acc.sample() is None


def _indexed_rows(n: int) -> torch.Tensor:
    """Rows whose first feature is their global index, so a sample says where it came from."""
    x = torch.zeros(n, 2)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def test_sample_fills_then_stays_at_max_rows():
    acc = HessianAccumulator(2, max_rows=5)
    acc.add(_indexed_rows(3))
    assert torch.equal(acc.sample()[:, 0], torch.tensor([0.0, 1.0, 2.0]))
    acc.add(_indexed_rows(100)[3:])
    s = acc.sample()
    assert s.shape == (5, 2) and len(set(s[:, 0].tolist())) == 5


@pytest.mark.parametrize("batch", [3, 37, 5000])
def test_sample_is_uniform_over_the_stream(batch):
    """Mean sampled index of a uniform sample of 0..n-1 is (n-1)/2; a sample biased to
    early or late rows (e.g. no replacement after the fill) lands far from it."""
    n, m = 3000, 200
    x = _indexed_rows(n)
    means = []
    for seed in range(3):
        acc = HessianAccumulator(2, max_rows=m, seed=seed)
        for s in range(0, n, batch):
            acc.add(x[s:s + batch])
        idx = acc.sample()[:, 0]
        assert len(set(idx.tolist())) == m  # no row twice
        means.append(idx.mean().item())
    # std of one mean ~ 866/sqrt(200) = 61; of the average of 3 ~ 35.
    assert abs(sum(means) / 3 - (n - 1) / 2) < 175


def test_sample_is_reproducible_and_seed_dependent():
    x = _indexed_rows(3000)

    def sample(seed: int) -> torch.Tensor:
        acc = HessianAccumulator(2, max_rows=50, seed=seed)
        for s in range(0, 3000, 128):
            acc.add(x[s:s + 128])
        return acc.sample()

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_sampling_uses_no_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    acc = HessianAccumulator(2, max_rows=4)
    acc.add(_indexed_rows(1000))
    assert torch.equal(torch.rand(3), expected)
