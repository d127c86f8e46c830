"""Perplexity under the standard (GPTQ) protocol.

The token stream is cut into non-overlapping windows of ``seqlen`` tokens; the tail that does not fill a window is
dropped. Each window is one independent forward pass (no state carried over); inside a window every position after
the first predicts the next token. Perplexity is ``exp(mean NLL)`` over all predicted tokens of all windows.
Logits are cast to float32 before the log-softmax and NLL sums are accumulated in float64, so fp16/bf16 models are
scored as precisely as their logits allow.

Models that need a BOS token at the start of every sequence (Gemma) take ``bos_token_id``: each window is then BOS
followed by ``seqlen - 1`` stream tokens, all of which are predicted (the BOS itself is not).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from slimq.data import get_eval_tokens

__all__ = ["DEFAULT_EVAL_SEQLEN", "PPLResult", "perplexity", "evaluate_ppl"]

log = logging.getLogger(__name__)

DEFAULT_EVAL_SEQLEN = 2048


@dataclass(frozen=True)
class PPLResult:
    """Perplexity of one token stream.

    Attributes:
        ppl: ``exp(nll_mean)`` (``inf`` when that overflows, ``nan`` when logits were not finite).
        nll_mean: mean negative log-likelihood per predicted token, in nats.
        tokens: number of predicted tokens counted.
        windows: number of windows evaluated.
        seconds: wall time of the evaluation loop.
    """

    ppl: float
    nll_mean: float
    tokens: int
    windows: int
    seconds: float


def _check_args(tokens: torch.Tensor, seqlen: int, max_windows: int | None, batch_size: int) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, T], got {list(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _window_batch(stream: torch.Tensor, first: int, count: int, span: int, bos_token_id: int | None) -> torch.Tensor:
    """Windows ``first .. first+count-1`` of ``span`` stream tokens each, BOS-prefixed when asked: ``[count, seqlen]``."""
    batch = stream[first * span:(first + count) * span].view(count, span)
    if bos_token_id is not None:
        bos = torch.full((count, 1), bos_token_id, dtype=batch.dtype, device=batch.device)
        batch = torch.cat([bos, batch], dim=1)
    return batch


def _batch_nll_sum(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the NLL of tokens 1.. given their prefixes; float64 scalar on the batch's device."""
    logits = model(input_ids=batch, use_cache=False).logits  # [b, seqlen, vocab], model dtype
    total = torch.zeros((), dtype=torch.float64, device=batch.device)
    # One row at a time keeps the float32 copy of the logits at seqlen x vocab.
    for row in range(batch.shape[0]):
        nll = F.cross_entropy(logits[row, :-1].float(), batch[row, 1:], reduction="sum")
        total += nll.double()
    return total


def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    seqlen: int = DEFAULT_EVAL_SEQLEN,
    max_windows: int | None = None,
    device: str | torch.device | None = None,
    bos_token_id: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> PPLResult:
    """Perplexity of a causal LM on a token stream (see the module docstring for the protocol).

    Args:
        model: a causal LM called as ``model(input_ids=[b, seqlen] long, use_cache=False).logits`` ->
            ``[b, seqlen, vocab]``. Run in eval mode (a model in training mode is switched and switched back).
        tokens: LongTensor ``[1, T]`` (e.g. from :func:`slimq.data.get_eval_tokens`). With ``bos_token_id`` it
            should not already start with BOS.
        seqlen: tokens per forward pass, BOS included.
        max_windows: evaluate only the first K windows.
        device: where inputs go; default the device of the model's first parameter. The model is not moved.
        bos_token_id: prefix every window with this token (windows then hold ``seqlen - 1`` stream tokens).
        batch_size: windows per forward pass.
        progress: show a tqdm bar.

    Raises:
        ValueError: bad shapes or arguments, or fewer stream tokens than one window.
    """
    _check_args(tokens, seqlen, max_windows, batch_size)
    span = seqlen - 1 if bos_token_id is not None else seqlen
    n_windows = tokens.shape[1] // span
    if n_windows == 0:
        raise ValueError(f"token stream has {tokens.shape[1]} tokens, fewer than one window of {span} "
                         f"(seqlen={seqlen}{', BOS added per window' if bos_token_id is not None else ''})")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if bos_token_id is not None and int(tokens[0, 0]) == bos_token_id:
        log.warning("token stream already starts with BOS id %d and BOS is added per window: the first window "
                    "holds it twice (tokenize with add_special_tokens=False)", bos_token_id)
    device = torch.device(device) if device is not None else _model_device(model)
    stream = tokens[0].to(device=device, dtype=torch.long)

    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.inference_mode(), tqdm(total=n_windows, disable=not progress, desc="perplexity",
                                          unit="window") as bar:
            for first in range(0, n_windows, batch_size):
                count = min(batch_size, n_windows - first)
                total += _batch_nll_sum(model, _window_batch(stream, first, count, span, bos_token_id))
                bar.update(count)
        nll_sum = total.item()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0

    n_tokens = n_windows * (seqlen - 1)
    nll_mean = nll_sum / n_tokens
    if not math.isfinite(nll_mean):
        log.warning("perplexity: non-finite mean NLL (%s): the model produced non-finite logits", nll_mean)
    ppl = math.exp(nll_mean) if nll_mean < 709.0 or math.isnan(nll_mean) else math.inf
    return PPLResult(ppl=ppl, nll_mean=nll_mean, tokens=n_tokens, windows=n_windows, seconds=seconds)


def _result_key(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix else name.lower()


def evaluate_ppl(
    model: torch.nn.Module,
    tokenizer: Any,
    datasets: list[str],
    *,
    seqlen: int = DEFAULT_EVAL_SEQLEN,
    max_windows: int | None = None,
    data_dir: str | Path | None = None,
    bos_token_id: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict[str, PPLResult]:
    """Perplexity on each dataset (name or local file), keyed by dataset name or by the file's stem.

    With ``bos_token_id`` the streams are tokenized without special tokens and BOS is added per window.
    """
    keys = [_result_key(str(d)) for d in datasets]
    if len(set(keys)) != len(keys):
        raise ValueError(f"datasets give duplicate result keys {keys}: rename the files or drop repeats")
    results: dict[str, PPLResult] = {}
    for name, key in zip(datasets, keys):
        tokens = get_eval_tokens(name, tokenizer, data_dir=data_dir, add_special_tokens=bos_token_id is None)
        res = perplexity(model, tokens, seqlen=seqlen, max_windows=max_windows, device=device,
                         bos_token_id=bos_token_id, batch_size=batch_size, progress=progress)
        log.info("%s: ppl %.4f over %d tokens in %d windows (%.1f s)", key, res.ppl, res.tokens, res.windows,
                 res.seconds)
        results[key] = res
    return results
