"""Calibration windows and evaluation token streams.

``tokenizer`` below is a Hugging Face tokenizer, or any callable
``tokenizer(text, add_special_tokens=bool, verbose=False) -> {"input_ids": list[int]}``.
Text is tokenized as GPTQ does (``tokenizer(text)``, special tokens included by default; for most tokenizers that
means one BOS at the start of each tokenized text). Nothing is cached between calls.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from slimq.data.sources import TextSource, load_texts

__all__ = ["get_calibration", "get_eval_tokens", "tokenize"]

log = logging.getLogger(__name__)


def tokenize(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (the whole string at once; no truncation)."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    return list(ids)


def _windows_from_stream(ids: list[int], nsamples: int, seqlen: int, rng: random.Random,
                         what: str) -> list[list[int]]:
    if len(ids) < seqlen:
        raise ValueError(f"{what} has {len(ids)} tokens, fewer than one calibration window of seqlen={seqlen}")
    starts = [rng.randrange(len(ids) - seqlen + 1) for _ in range(nsamples)]
    return [ids[s:s + seqlen] for s in starts]


def _windows_from_documents(source: TextSource, tokenizer: Any, nsamples: int, seqlen: int,
                            rng: random.Random, add_special_tokens: bool) -> list[list[int]] | None:
    """GPTQ's C4 sampling: a uniformly random document with >= seqlen tokens, a uniformly random window in it.

    Equivalent to GPTQ's "draw documents until one is long enough", but a document found too short is not drawn
    again, so this ends after at most one tokenization per document. Returns None when no document is long enough.
    """
    candidates = list(range(len(source.texts)))
    long_docs: dict[int, list[int]] = {}
    windows: list[list[int]] = []
    while len(windows) < nsamples:
        if not candidates:
            return None
        j = rng.randrange(len(candidates))
        i = candidates[j]
        ids = long_docs.get(i)
        if ids is None:
            ids = tokenize(tokenizer, source.texts[i], add_special_tokens=add_special_tokens)
            if len(ids) < seqlen:
                candidates[j] = candidates[-1]
                candidates.pop()
                continue
            long_docs[i] = ids
        start = rng.randrange(len(ids) - seqlen + 1)
        windows.append(ids[start:start + seqlen])
    log.info("calibration: %d windows from %d distinct documents of %s", nsamples, len(long_docs), source.origin)
    return windows


def get_calibration(
    name_or_path: str | Path,
    tokenizer: Any,
    *,
    nsamples: int,
    seqlen: int,
    seed: int,
    data_dir: str | Path | None = None,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """Random calibration windows of ``seqlen`` tokens.

    Sampling follows GPTQ:

    * document datasets (``c4``, ``.jsonl`` files): draw a uniformly random document among those with at least
      ``seqlen`` tokens, then a uniformly random window inside it. If *no* document is that long, all documents
      are concatenated (joined with the dataset separator) and windows drawn from that stream instead (logged).
      For the local C4 sample only its first 512 documents are used; perplexity uses the rest.
    * running-text datasets (``wikitext2``, ``ptb``, ``.txt``, ``.raw``): the split is joined with its separator,
      tokenized once, and windows start at uniformly random offsets. With ``data_dir`` the local wikitext2/ptb
      files are test splits, so a warning says calibration overlaps evaluation.

    Randomness comes only from ``random.Random(seed)``; the global RNGs are untouched, so a seed gives the same
    windows on every run.

    Returns:
        LongTensor ``[nsamples, seqlen]`` of token ids (CPU).

    Raises:
        ValueError: ``nsamples`` or ``seqlen`` < 1, or the data has fewer than ``seqlen`` tokens in total.
        DatasetUnavailableError: see :func:`slimq.data.sources.load_texts`.
    """
    if nsamples < 1:
        raise ValueError(f"nsamples must be >= 1, got {nsamples}")
    if seqlen < 1:
        raise ValueError(f"seqlen must be >= 1, got {seqlen}")
    source = load_texts(name_or_path, purpose="calibration", data_dir=data_dir)
    rng = random.Random(seed)
    windows = None
    if source.documents:
        windows = _windows_from_documents(source, tokenizer, nsamples, seqlen, rng, add_special_tokens)
        if windows is None:
            log.warning("no document of %s has %d tokens; drawing calibration windows from all documents joined "
                        "with %r", source.origin, seqlen, source.separator)
    if windows is None:
        ids = tokenize(tokenizer, source.joined(), add_special_tokens=add_special_tokens)
        windows = _windows_from_stream(ids, nsamples, seqlen, rng, f"calibration text of {source.origin}")
    return torch.tensor(windows, dtype=torch.long)


def get_eval_tokens(
    name_or_path: str | Path,
    tokenizer: Any,
    *,
    data_dir: str | Path | None = None,
    add_special_tokens: bool = True,
) -> torch.Tensor:
    """The evaluation stream of the standard (GPTQ) perplexity protocol, tokenized once.

    The evaluation texts are joined with the dataset's separator (WikiText-2 rows and ``.jsonl`` documents:
    ``"\\n\\n"``; PTB sentences and C4 documents: ``" "``, as GPTQ does; ``.txt``: the file as is) and tokenized as
    one string. C4: the held-out documents of the local sample (documents 512 onwards, all of them; GPTQ instead
    cuts the first 1100 validation documents to 256 x seqlen tokens, which ``max_windows=256`` reproduces for hub
    data). Pass ``add_special_tokens=False`` when the perplexity loop adds its own BOS to every window.

    Returns:
        LongTensor ``[1, T]`` of token ids (CPU).
    """
    source = load_texts(name_or_path, purpose="evaluation", data_dir=data_dir)
    ids = tokenize(tokenizer, source.joined(), add_special_tokens=add_special_tokens)
    if not ids:
        raise ValueError(f"evaluation text of {source.origin} tokenizes to no tokens")
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)
