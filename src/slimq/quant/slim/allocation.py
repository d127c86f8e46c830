"""Salience-Determined Bit Allocation (SBA) for one linear layer.

The paper's search (Huang et al., 2024, sec. 3.2): sort the column groups by
salience; for ``k = 0 .. G//2`` give the ``k`` least salient groups ``N-1`` bits and
the ``k`` most salient ``N+1`` (the rest ``N``), quantize, score by the KL divergence
between ``softmax(X W^T)`` and ``softmax(X W_q^T)`` over output features on sampled
input rows ``X``, keep the best ``k``. Here:

* **Start allocation and budget.** The target may be fractional (e.g. 2.5): with
  ``N = floor(target)``, a share of groups starts at ``N+1``. The budget is counted in
  bits over columns, so a short last group weighs what it holds. Groups with the
  full column count are *movable*; a group of another size (the short last group) is
  *fixed* at ``N`` or ``N+1`` by the budget solver and never moved, so every move
  below trades bits between equal-size groups and the average stays exact. The
  realised average is the **largest achievable one not above the target**
  (``N*K + a*gs + [short at N+1]*r`` bits over ``K`` columns, ``a`` full groups of ``gs``
  columns, short group of ``r``); for an integer target it is the target itself.
  Example: ``K=576``, ``gs=128`` (4 full groups + 64), target 2.5: 1/2 of 576 = 288
  extra bit-columns is not reachable (256 or 320), so 256: average ``2.444``.
* **Moves.** An allocation is *monotone*: groups sorted by ascending salience get
  non-decreasing widths from the level set ``{N + o : o in palette}`` (clipped to
  1..8; at ``N = 1`` the ``-1`` offset, i.e. 0 bits, is dropped, and ``N + 1 > 8`` is
  dropped at ``N = 8``: then no move exists and the allocation is uniform). It is
  fully described by how many movable groups sit at each level. A *pair move*
  demotes the least salient group of one level by one bit and promotes the most
  salient group of a level at least as wide by one bit: the bit sum is unchanged and
  the spread (sum of squared widths) grows, so every path is finite.
* **Search.** From the start allocation, repeatedly score every pair move and take
  the best (even when it scores worse, to see past local bumps), recording the
  score of every allocation on the path; the best allocation seen wins. With the
  paper's palette ``(-1, 0, 1)`` there is exactly one move per step, so the path is
  the paper's ``k = 0, 1, ..., G//2`` line search (``k = 0`` included, which the
  authors' code never scores). Wider palettes such as ``(-1, 0, 1, 2)`` get a few
  candidate moves per step.
* **Scoring.** Candidates are quantized with RTN at each width once (``wq[b]``) and
  assembled per group by indexing. The layer output is updated incrementally:
  a move changes two groups, so ``Y += X[:, cols] (wq[new] - wq[old])[:, cols]^T``.

Pure: tensors in, tensors out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Sequence

import torch

__all__ = ["MIN_BITS", "MAX_BITS", "Budget", "SBAResult", "plan_budget", "level_widths",
           "required_widths", "start_allocation", "output_kl", "sba_search"]

MIN_BITS, MAX_BITS = 1, 8
_TOL = 1e-9


@dataclass(frozen=True)
class Budget:
    """Where the bits go before any move.

    Attributes:
        target: requested average bits.
        base: ``N = floor(target)``.
        counts: column count of every group ``[G]``.
        movable: groups of the full column count (the ones SBA moves), ascending index.
        fixed_bits: width of every other group (the short last group), by group index.
        n_up: how many movable groups start at ``N + 1`` (the most salient ones).
        total_bits: bit-columns of the allocation, ``sum_g counts[g] * bits[g]``.
    """

    target: float
    base: int
    counts: tuple[int, ...]
    movable: tuple[int, ...]
    fixed_bits: Mapping[int, int]
    n_up: int
    total_bits: int

    @property
    def avg_bits(self) -> float:
        return self.total_bits / sum(self.counts)


@dataclass
class SBAResult:
    """Outcome of ``sba_search``.

    Attributes:
        bits: int8 ``[G]`` chosen width per group (as numbered by ``g_idx``).
        steps: pair moves from the start allocation to the chosen one (the paper's
            ``k`` for palette ``(-1, 0, 1)``).
        path_scores: KL of the allocation after each step, ``path_scores[0]`` the start.
        n_scored: candidate allocations scored.
        ranked: distinct scored allocations ``(score, moves, bits int8 [G])``, best first
            (ties: fewer moves first).
    """

    bits: torch.Tensor
    steps: int
    path_scores: list[float]
    n_scored: int
    ranked: list[tuple[float, int, torch.Tensor]] = field(default_factory=list)


def _check_target(target: float) -> None:
    if not (math.isfinite(target) and MIN_BITS <= target <= MAX_BITS):
        raise ValueError(f"target bits must lie in {MIN_BITS}..{MAX_BITS}, got {target}")


def plan_budget(target: float, counts: Sequence[int]) -> Budget:
    """Split the budget of ``target`` average bits over groups with ``counts [G]`` columns.

    Movable groups are those with the largest column count; the rest (in practice
    the short last group) are fixed. Chooses the largest total not above
    ``target * K`` bit-columns (ties: more movable groups at ``N+1``).
    """
    _check_target(target)
    counts = tuple(int(c) for c in counts)
    if not counts or min(counts) < 1:
        raise ValueError(f"group column counts must be >= 1, got {counts}")
    k = sum(counts)
    base = min(int(math.floor(target + _TOL)), MAX_BITS)
    full = max(counts)
    movable = tuple(g for g, c in enumerate(counts) if c == full)
    fixed = [g for g, c in enumerate(counts) if c != full]
    if len(fixed) > 12:
        raise ValueError(f"{len(fixed)} groups are not of the full size {full}; "
                         "expected at most a short last group")
    extra = (target - base) * k + _TOL * k
    best: tuple[int, int, tuple[int, ...]] | None = None  # (extra bits, n_up, fixed groups up)
    for r in range(len(fixed) + 1):
        for up in combinations(fixed, r):
            rest = extra - sum(counts[g] for g in up)
            if rest < 0:
                continue
            n_up = min(int(rest // full), len(movable))
            cand = (n_up * full + sum(counts[g] for g in up), n_up, up)
            if best is None or cand[:2] > best[:2]:
                best = cand
    assert best is not None  # r = 0, n_up = 0 always fits
    fixed_bits = {g: base + (g in best[2]) for g in fixed}
    return Budget(target=float(target), base=base, counts=counts, movable=movable,
                  fixed_bits=fixed_bits, n_up=best[1], total_bits=base * k + best[0])


def level_widths(base: int, palette: Sequence[int], fractional: bool) -> list[int]:
    """Sorted widths ``{base + o : o in palette}`` clipped to 1..8, plus ``base + 1``
    when the budget puts groups there (``fractional``)."""
    widths = {base + o for o in palette} | {base}
    if fractional:
        widths.add(base + 1)
    return sorted(w for w in widths if MIN_BITS <= w <= MAX_BITS)


def required_widths(target: float, palette: Sequence[int], counts: Sequence[int]) -> list[int]:
    """The widths ``sba_search`` needs quantized weights ``wq[b]`` for, for groups with
    ``counts [G]`` columns."""
    budget = plan_budget(target, counts)
    return level_widths(budget.base, palette, budget.n_up > 0)


def _fill(order: torch.Tensor, level_counts: Sequence[int], widths: Sequence[int]) -> torch.Tensor:
    """int64 ``[F]`` width per movable group: ``order`` (movable positions by ascending
    salience) filled level by level with ``level_counts`` groups."""
    per_rank = torch.repeat_interleave(torch.tensor(widths), torch.tensor(level_counts))
    out = torch.empty_like(per_rank)
    out[order] = per_rank
    return out


def _pair_moves(level_counts: tuple[int, ...], widths: Sequence[int]) -> list[tuple[int, ...]]:
    """Level counts reachable by one pair move (demote the least salient group of level
    ``i`` by one bit, promote the most salient group of a level ``j`` with
    ``widths[j] >= widths[i]`` by one bit)."""
    out = []
    n = len(widths)
    for i in range(1, n):
        if widths[i] - widths[i - 1] != 1:
            continue
        for j in range(i, n - 1):
            if widths[j + 1] - widths[j] != 1:
                continue
            c = list(level_counts)
            c[i] -= 1
            c[i - 1] += 1
            c[j] -= 1
            c[j + 1] += 1
            if min(c) >= 0:
                out.append(tuple(c))
    return out


def start_allocation(budget: Budget, group_sal: torch.Tensor) -> torch.Tensor:
    """int8 ``[G]`` allocation before any move: ``N`` everywhere, ``N+1`` for the fixed
    groups the budget lifts and for the ``budget.n_up`` most salient movable groups."""
    widths = level_widths(budget.base, (0,), budget.n_up > 0)
    counts = [len(budget.movable) - budget.n_up, budget.n_up] if budget.n_up else [len(budget.movable)]
    return _assemble(budget, group_sal, counts, widths)


def _movable_order(budget: Budget, group_sal: torch.Tensor) -> torch.Tensor:
    sal = group_sal.double().cpu()[list(budget.movable)]
    return torch.sort(sal, stable=True).indices


def _assemble(budget: Budget, group_sal: torch.Tensor, level_counts: Sequence[int],
              widths: Sequence[int]) -> torch.Tensor:
    bits = torch.empty(len(budget.counts), dtype=torch.int8)
    for g, b in budget.fixed_bits.items():
        bits[g] = b
    bits[list(budget.movable)] = _fill(_movable_order(budget, group_sal), level_counts, widths).to(torch.int8)
    return bits


def output_kl(logp_ref: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over rows of ``KL(softmax(ref) || softmax(logits))`` over the last dim;
    ``logp_ref`` float64 log-probabilities ``[m, N]``, ``logits`` ``[m, N]``."""
    logq = torch.log_softmax(logits.double(), dim=-1)
    return float((logp_ref.exp() * (logp_ref - logq)).sum(dim=-1).mean())


class _KL:
    """``output_kl`` against fixed reference logits ``[m, N]``, using
    ``KL = sum p log p - sum p y + logsumexp(y)`` (``sum p = 1``): one exp pass per
    candidate, all in float64."""

    def __init__(self, ref_logits: torch.Tensor):
        logp = torch.log_softmax(ref_logits.double(), dim=-1)
        self.p = logp.exp()
        self.neg_entropy = (self.p * logp).sum(dim=-1)

    def __call__(self, logits: torch.Tensor) -> float:
        y = logits.double()
        return float((self.neg_entropy - (self.p * y).sum(dim=-1) + torch.logsumexp(y, dim=-1)).mean())


class _Scorer:
    """Layer outputs of candidate allocations on ``X [m, K]``, updated incrementally."""

    def __init__(self, W: torch.Tensor, X: torch.Tensor, g_idx: torch.Tensor, wq: Mapping[int, torch.Tensor],
                 bits: torch.Tensor):
        self.X = X.float()
        self.kl = _KL(self.X @ W.float().T)
        self.g_idx = g_idx.long().to(W.device)
        self.cols = [torch.nonzero(self.g_idx == g).flatten() for g in range(len(bits))]
        self.wq = wq
        self.bits = bits.clone()
        colbits = bits.to(W.device).long()[self.g_idx]
        Wc = torch.zeros_like(W, dtype=torch.float32)
        for b, w in wq.items():
            Wc = torch.where(colbits == b, w, Wc)
        self.Y = self.X @ Wc.T

    def moved(self, new_bits: torch.Tensor) -> torch.Tensor:
        """Outputs ``[m, N]`` under ``new_bits [G]`` (from the current ones)."""
        changed = torch.nonzero(new_bits != self.bits).flatten().tolist()
        if not changed:
            return self.Y
        idx = torch.cat([self.cols[g] for g in changed])
        dW = torch.cat([self.wq[int(new_bits[g])].index_select(1, self.cols[g])
                        - self.wq[int(self.bits[g])].index_select(1, self.cols[g]) for g in changed], dim=1)
        return torch.addmm(self.Y, self.X.index_select(1, idx), dW.T)

    def score(self, Y: torch.Tensor) -> float:
        return self.kl(Y)


def sba_search(W: torch.Tensor, X: torch.Tensor, group_sal: torch.Tensor, g_idx: torch.Tensor,
               target: float, palette: Sequence[int], wq: Mapping[int, torch.Tensor]) -> SBAResult:
    """Search a monotone, budget-exact allocation of widths to the groups of ``W [N, K]``.

    Args:
        X: float ``[m, K]`` sampled layer inputs.
        group_sal: ``[G]`` group salience (``group_salience``).
        g_idx: int ``[K]`` group of each column.
        target: average bits (1..8, may be fractional; see module doc for rounding).
        palette: contiguous offsets from ``N`` that groups may take, containing 0.
        wq: for every width in ``level_widths(...)``, float32 ``[N, K]`` weights
            quantized at that width in every group (RTN); ``required_widths`` lists them.

    Returns an ``SBAResult``; the allocation's column-weighted average is
    ``plan_budget(target, counts).avg_bits`` exactly.
    """
    counts = torch.bincount(g_idx.long().cpu(), minlength=len(group_sal)).tolist()
    budget = plan_budget(target, counts)
    widths = level_widths(budget.base, palette, budget.n_up > 0)
    missing = [b for b in widths if b not in wq]
    if missing:
        raise ValueError(f"wq lacks quantized weights for widths {missing} (needs {widths})")
    f = len(budget.movable)
    state = tuple(f - budget.n_up if w == budget.base else (budget.n_up if w == budget.base + 1 else 0)
                  for w in widths)
    bits = _assemble(budget, group_sal, state, widths)
    scorer = _Scorer(W, X, g_idx, wq, bits)
    seen = {state: (scorer.score(scorer.Y), 0, bits)}  # level counts -> (score, moves, bits)
    path = [seen[state][0]]
    while True:
        cands = []
        for nxt in _pair_moves(state, widths):
            nbits = _assemble(budget, group_sal, nxt, widths)
            Y = scorer.moved(nbits)
            s = scorer.score(Y)
            seen.setdefault(nxt, (s, len(path), nbits))
            cands.append((s, nxt, nbits, Y))
        if not cands:
            break
        s, state, scorer.bits, scorer.Y = min(cands, key=lambda c: c[0])
        path.append(s)
    ranked = sorted(seen.values(), key=lambda v: v[:2])  # ties: fewer moves first
    best_score, depth, best_bits = ranked[0]
    _check_exact(best_bits, counts, budget)
    return SBAResult(bits=best_bits, steps=depth, path_scores=path, n_scored=len(seen), ranked=ranked)


def _check_exact(bits: torch.Tensor, counts: Sequence[int], budget: Budget) -> None:
    total = sum(int(b) * c for b, c in zip(bits.tolist(), counts))
    assert total == budget.total_bits, (total, budget.total_bits)
