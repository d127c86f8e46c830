"""Real SmolLM2-135M linear-layer inputs for tests, captured once and cached.

Shared by ``test_gptq.py`` and ``test_slim_real.py``. The inputs come from
WikiText-2 test text run through the local SmolLM2-135M (see
``slimq.models.loading``); tests skip when the model cannot be loaded.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

__all__ = ["cached_linear_inputs", "capture_linear_inputs", "one_thread"]

_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-test.raw"
_TEXT_CHARS = 60000  # ~15k tokens


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: on a shared 2-core machine extra threads only
    spin on these small problems (measured 5x slower with 2 threads under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Stop(Exception):
    """Raised after the captured layer: nothing behind it is needed."""


def capture_linear_inputs(layer: int, linears: tuple[str, ...], seq: int, n_seqs: int) -> dict[str, torch.Tensor]:
    """Weights and inputs of ``linears`` of decoder layer ``layer`` of SmolLM2-135M.

    Runs ``n_seqs`` sequences of ``seq`` WikiText-2 tokens one at a time (so the
    tokens of sequence ``i`` come before those of ``i + 1``), on one thread, and stops
    each forward after layer ``layer``.

    Returns:
        ``{name}.W`` float32 ``[N, K]`` and ``{name}.X`` float32 ``[n_seqs * seq, K]``
        for each ``name`` in ``linears`` (a submodule path inside the layer, e.g.
        ``"mlp.up_proj"``).
    """
    if not _TEXT.is_file():
        pytest.skip(f"real text not found: {_TEXT}")
    loading = pytest.importorskip("slimq.models.loading")
    try:
        model, tok = loading.load_model("smollm2-local", dtype=torch.float32)
    except loading.ModelLoadError as e:
        pytest.skip(f"SmolLM2 not available: {e}")
    ids = tok(_TEXT.read_text()[:_TEXT_CHARS], return_tensors="pt").input_ids[0]
    if ids.numel() < seq * n_seqs:
        raise ValueError(f"seq * n_seqs must be at most {ids.numel()} tokens, got {seq} * {n_seqs}")
    ids = ids[: seq * n_seqs].view(n_seqs, seq)
    block = model.model.layers[layer]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in linears}

    def stop(*_):
        raise _Stop

    hooks = [block.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: out[name].append(args[0].reshape(-1, args[0].shape[-1]).detach()))
        for name in linears] + [block.register_forward_hook(stop)]
    try:
        with one_thread(), torch.no_grad():
            for row in ids:
                try:
                    model(row[None])
                except _Stop:
                    pass
    finally:
        for h in hooks:
            h.remove()
    acts = {f"{name}.X": torch.cat(out[name]) for name in linears}
    acts.update({f"{name}.W": block.get_submodule(name).weight.detach().float().clone() for name in linears})
    return acts


def cached_linear_inputs(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, *, tag: str,
                         layer: int, linears: tuple[str, ...], seq: int, n_seqs: int) -> dict[str, torch.Tensor]:
    """:func:`capture_linear_inputs`, cached in pytest's cache dir under ``slimq_{tag}``.

    The first run loads the model; later ones read a file. Under
    ``-p no:cacheprovider`` the cache lives in a per-session temporary folder.
    """
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    folder = cache.mkdir(f"slimq_{tag}") if cache is not None else tmp_path_factory.mktemp(f"slimq_{tag}")
    path = folder / f"layer{layer}_seq{seq}x{n_seqs}_{'+'.join(linears)}_v2.pt"
    if path.is_file():
        return torch.load(path)
    acts = capture_linear_inputs(layer, linears, seq, n_seqs)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(acts, tmp)
    tmp.replace(path)  # a reader never sees a half-written file
    return acts
