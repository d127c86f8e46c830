"""Streaming second-moment statistics of a linear layer's inputs.

GPTQ's layer-wise objective ``||W X^T - W_hat X^T||^2`` has Hessian
``H = 2/n * sum_t x_t^T x_t`` over all ``n`` input rows (tokens) ``x_t [in]``.
``HessianAccumulator`` keeps it as a running mean, so it never holds the
activations and never grows large sums, and can also keep a uniform reservoir
sample of input rows (SliM-LLM scores candidate bit allocations on real rows).
"""
from __future__ import annotations

import math

import torch

__all__ = ["HessianAccumulator"]


class HessianAccumulator:
    """Accumulates ``H = 2/n * X^T X`` over rows of ``X`` fed in batches.

    Args:
        n_features: input width ``in`` of the layer.
        dtype: accumulation dtype, ``torch.float32`` (default) or ``torch.float64``.
        device: where ``H`` and the sample live.
        max_rows: size of the reservoir sample of input rows (0: keep none).
        seed: seed of the private ``torch.Generator`` that drives the reservoir.
    """

    def __init__(self, n_features: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", max_rows: int = 0, seed: int = 0) -> None:
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"accumulation dtype must be float32 or float64, got {dtype}")
        if max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {max_rows}")
        self.n_features = n_features
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_rows = max_rows
        self._H = torch.zeros(n_features, n_features, dtype=dtype, device=self.device)
        self._n = 0
        self._gen = torch.Generator().manual_seed(seed)
        self._sample = torch.empty(0, n_features, dtype=torch.float32, device=self.device)

    @property
    def n_tokens(self) -> int:
        """Rows seen so far."""
        return self._n

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Feed input rows ``x [..., in]`` (any float dtype, any device)."""
        if x.shape[-1] != self.n_features:
            raise ValueError(f"input rows have {x.shape[-1]} features, accumulator expects {self.n_features}")
        rows = x.detach().reshape(-1, self.n_features).to(device=self.device, dtype=self.dtype)
        m = rows.shape[0]
        if m == 0:
            return
        if self.max_rows:
            self._reservoir(rows.to(torch.float32))
        total = self._n + m
        # Running mean: H_new = n/(n+m) H + 2/(n+m) sum x^T x, with sqrt folded into x.
        self._H.mul_(self._n / total)
        scaled = rows * math.sqrt(2.0 / total)
        self._H.addmm_(scaled.t(), scaled)
        self._n = total

    def _reservoir(self, rows: torch.Tensor) -> None:
        """Algorithm R, vectorised: row ``t`` (0-based, global) replaces a uniform
        slot with probability ``max_rows / (t + 1)``; on collisions the later row wins."""
        fill = min(self.max_rows - self._sample.shape[0], rows.shape[0])
        if fill > 0:
            self._sample = torch.cat([self._sample, rows[:fill]])
        rest = rows[fill:]
        if rest.shape[0] == 0:
            return
        t = torch.arange(self._n + fill, self._n + rows.shape[0], dtype=torch.float64)
        slot = (torch.rand(t.shape, generator=self._gen, dtype=torch.float64) * (t + 1)).floor().long()
        hit = slot < self.max_rows
        if not bool(hit.any()):
            return
        slots, pos = slot[hit], torch.nonzero(hit).squeeze(1)
        winner = torch.full((self.max_rows,), -1, dtype=torch.long)
        winner.scatter_reduce_(0, slots, pos, reduce="amax")
        taken = torch.nonzero(winner >= 0).squeeze(1)
        self._sample[taken.to(self.device)] = rest[winner[taken].to(self.device)]

    def hessian(self) -> torch.Tensor:
        """``H`` as float32 ``[in, in]`` (a copy); raises if no rows were fed."""
        if self._n == 0:
            raise ValueError("no input rows were accumulated; H is undefined")
        return self._H.to(torch.float32, copy=True)

    def sample(self) -> torch.Tensor | None:
        """Float32 ``[m, in]`` reservoir sample, ``m = min(max_rows, n_tokens)``; ``None`` if ``max_rows == 0``."""
        return self._sample.clone() if self.max_rows else None
