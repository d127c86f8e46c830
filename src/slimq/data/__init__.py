"""Calibration sampling and evaluation streams (wikitext2, ptb, c4, local .txt/.raw/.jsonl)."""
from slimq.data.loaders import get_calibration, get_eval_tokens, tokenize
from slimq.data.sources import (
    DATASET_NAMES,
    LOCAL_FILES,
    DatasetUnavailableError,
    TextSource,
    load_texts,
)

__all__ = [
    "DATASET_NAMES",
    "LOCAL_FILES",
    "DatasetUnavailableError",
    "TextSource",
    "get_calibration",
    "get_eval_tokens",
    "load_texts",
    "tokenize",
]
