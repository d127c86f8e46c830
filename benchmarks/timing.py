"""How the benchmarks time one call: median of CUDA-graph replays, the L2 flushed before each replay.

``flush`` says how the L2 is flushed:

* ``"zero"`` (the issue's protocol, the default everywhere): ``triton.testing.do_bench``, which zeroes a
  256 MB buffer before every replay. That leaves the L2 full of *dirty* lines, so the timed call also writes
  them back to DRAM (up to the L2's size) as its own reads evict them: ~50 MB of extra DRAM traffic on an
  H100/H200, small next to an FP16 layer's 470 MB, as large as a 2-bit layer's own 60 MB.
* ``"clean"``: the same loop, but the flush *reads* a 256 MB buffer, so the L2 holds clean lines of that
  buffer (nothing of the layer, nothing to write back): a cold cache as a decode step meets it, whose previous
  kernels read other layers' weights.
* ``"none"``: no flush (the layer may partly sit in L2 from the previous replay).

Under sustained tensor-core load the card's clock follows its power and temperature, so two calls timed one
after the other for 40 ms each can meet different clocks (H200, 28672 x 8192 at 512 tokens: cuBLAS FP16 took
321-346 us in different runs of the same code). :func:`time_graphs` times several calls in alternating rounds
(each round a share of the window, one median per round, the median of those per call), so that a ratio
between them compares calls that met the same conditions.
"""
from __future__ import annotations

import statistics

import torch

FLUSHES = ("zero", "clean", "none")
FLUSH_BYTES = 256 * 1024 * 1024  # the flush buffer (do_bench's size)


def _own_bench(fn, flush, rep_ms: float, warmup_ms: float = 10.0) -> float:
    """``do_bench``'s loop (estimate, warm up, time each run between events, median) with ``flush`` before
    each timed run; milliseconds."""
    flush()
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)
    n_warm, n_rep = max(1, int(warmup_ms / est)), max(1, int(rep_ms / est))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for _ in range(n_warm):
        fn()
    for s, e in zip(starts, ends):
        flush()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def bench(fn, rep_ms: float = 40, flush: str = "zero") -> float:
    """Median milliseconds of ``fn()`` (already a graph replay, or any call) with the L2 flushed as ``flush``."""
    if flush not in FLUSHES:
        raise ValueError(f"flush must be one of {FLUSHES}, got {flush!r}")
    if flush == "zero":
        import triton
        return triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")
    if flush == "none":
        return _own_bench(fn, lambda: None, rep_ms)
    buf = torch.ones(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")
    total = torch.empty((), dtype=torch.float32, device="cuda")
    return _own_bench(fn, lambda: torch.sum(buf, dim=0, out=total), rep_ms)


def time_graphs(fns: dict, rep_ms: float = 40, flush: str = "zero", rounds: int = 5) -> dict:
    """Median microseconds of CUDA-graph replays of each ``fns[name]``, timed in ``rounds`` alternating rounds of
    ``rep_ms / rounds`` each (the median of the round medians): the calls share the clock the card runs at. Each
    round starts one call later (:func:`round_order`): the call timed right after FP16 paid for the clock it left
    (session 16: two identical configs 2-9% apart on 8192 x 8192 at 512-1024 tokens in a fixed order)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    graphs = {}
    for name, fn in fns.items():
        fn()
        torch.cuda.synchronize()
        graphs[name] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[name]):
            fn()
    per_round = {name: [] for name in fns}
    for r in range(rounds):
        for name in round_order(list(graphs), r):
            per_round[name].append(bench(graphs[name].replay, rep_ms / rounds, flush) * 1e3)
    return {name: statistics.median(v) for name, v in per_round.items()}


def round_order(names: list, r: int) -> list:
    """The order of the calls in round ``r``: ``names`` rotated by ``r`` (every call opens some round)."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def time_graph(fn, rep_ms: float = 40, flush: str = "zero") -> float:
    """Median microseconds of CUDA-graph replays of ``fn`` (captured once here), flushed as ``flush``."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ms = bench(g.replay, rep_ms, flush)
    del g
    return ms * 1e3
