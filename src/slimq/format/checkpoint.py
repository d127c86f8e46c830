"""Quantized checkpoints: safetensors tensors + ``config.json`` with a versioned
``quantization_config``. No pickle anywhere.

A checkpoint directory holds

* ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards plus
  ``model.safetensors.index.json``, the Hugging Face naming): the model's
  non-quantized tensors in the model dtype and, for every quantized linear
  ``name``, the packed tensors of layout ``slimq.segmented-bitplane.v1``
  (``{name}.col_perm``, ``{name}.seg{i}.plane{p}``, ... see ``slimq.format.layout``);
* ``config.json``: the transformers model config plus ``quantization_config``::

    {"quant_method": "slimq", "format_version": 1, "layout": "slimq.segmented-bitplane.v1",
     "slimq_version": ..., "dtype": "float16", "config": {QuantConfig.to_dict() ...},
     "linears": {name: {"in_features", "out_features", "bias", "row_perm", "conv1d",
                        "segments": [{"r0", "r1", "c0", "c1", "bits", "group_size"}, ...],
                        "group_bits": [G ints] | "bit_patterns": [[G ints], ...] + "rows_per_pattern"}},
     "tied": {alias: source}, "checksums": {file: sha256}, "file_sizes": {file: bytes}}

* tokenizer and generation-config files when given.

Saving writes into a temporary directory beside ``out_dir`` and renames it, so a
crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slimq.format.layout import LAYOUT_NAME, PackedLinear
from slimq.format.packing import check_packed, pack
from slimq.quant.result import QuantizedTensor

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "DEFAULT_MAX_SHARD_BYTES",
    "CheckpointError",
    "CheckpointWriter",
    "save_quantized",
    "load_quantized",
    "read_quantization_config",
    "verify_checkpoint",
    "linear_kind",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUANT_METHOD = "slimq"
DEFAULT_MAX_SHARD_BYTES = 2 * 2 ** 30
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_HASH_BLOCK = 2 ** 22


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, tampered with, or not a slimq checkpoint."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def linear_kind(module: nn.Module) -> tuple[str, int, int]:
    """``("linear" | "conv1d", out_features, in_features)`` of a quantizable module.

    GPT-2's ``Conv1D`` stores ``W^T [in, out]``; slimq always means ``W [out, in]``.
    """
    if isinstance(module, nn.Linear):
        return "linear", module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "weight") and module.weight.dim() == 2:
        k, n = module.weight.shape
        return "conv1d", n, k
    raise TypeError(f"only nn.Linear and transformers' Conv1D can be quantized, got {type(module).__name__}")


def _bits_meta(qt: QuantizedTensor) -> dict[str, Any]:
    """The per-group bit allocation: ``group_bits`` [G], or the row patterns when bits vary along rows."""
    bits = qt.bits.to(torch.int64).cpu()
    patterns, inverse = torch.unique(bits, dim=0, return_inverse=True)
    if patterns.shape[0] == 1:
        return {"group_bits": patterns[0].tolist()}
    return {"bit_patterns": patterns.tolist(),
            "rows_per_pattern": torch.bincount(inverse, minlength=patterns.shape[0]).tolist()}


class CheckpointWriter:
    """Streams tensors into safetensors shards in a temporary directory beside
    ``out_dir``; :meth:`finish` writes ``config.json`` and renames it into place.

    Use as a context manager (an exception removes the temporary directory), or
    call :meth:`abort` yourself. Tensors are moved to CPU as they are added; at
    most one shard (``max_shard_bytes``) is held in memory at a time.
    """

    def __init__(self, out_dir: str | Path, *, force: bool = False,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not force:
            raise FileExistsError(f"{self.out_dir} exists; pass force=True to replace it")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FileExistsError(f"{self.out_dir} exists and is not a directory")
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.force = force
        self.max_shard_bytes = max_shard_bytes
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".tmp", dir=self.out_dir.parent))
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._names: set[str] = set()
        self.total_bytes = 0
        self.linears: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` under ``name`` (stored as is: cast it first if needed)."""
        if name in self._names:
            raise ValueError(f"tensor {name!r} was already added")
        t = tensor.detach().to("cpu").contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # safetensors refuses tensors that share storage with others
        nbytes = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._names.add(name)
        self._pending[name] = t
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def add_linear(self, name: str, packed: PackedLinear, bias: torch.Tensor | None = None,
                   extra: dict[str, Any] | None = None) -> None:
        """Queue the tensors of one packed linear and record its metadata (plus ``extra``)."""
        check_packed(packed)
        self.add_tensor(f"{name}.col_perm", packed.col_perm.to(torch.int32))
        if packed.row_perm is not None:
            self.add_tensor(f"{name}.row_perm", packed.row_perm.to(torch.int32))
        for i, s in enumerate(packed.segments):
            for p, plane in enumerate(s.planes):
                self.add_tensor(f"{name}.seg{i}.plane{p}", plane)
            self.add_tensor(f"{name}.seg{i}.scales", s.scales.to(torch.float16))
            self.add_tensor(f"{name}.seg{i}.zeros", s.zeros.to(torch.float16))
        if bias is not None:
            self.add_tensor(f"{name}.bias", bias)
        self.linears[name] = {
            "in_features": packed.in_features, "out_features": packed.out_features,
            "bias": bias is not None, "row_perm": packed.row_perm is not None,
            "segments": [s.meta() for s in packed.segments], **(extra or {}),
        }

    def add_quantized(self, name: str, qt: QuantizedTensor, bias: torch.Tensor | None = None, *,
                      conv1d: bool = False) -> None:
        """Pack ``qt`` (``W [out, in]``) and queue it as linear ``name`` with its bit allocation."""
        self.add_linear(name, pack(qt.to("cpu")), bias, {"conv1d": conv1d, **_bits_meta(qt)})

    def _flush(self) -> None:
        fname = f"shard-{len(self._shards):05d}.tmp"
        save_file(self._pending, str(self._tmp / fname), metadata={"format": "pt"})
        self._shards.append((fname, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def _finalize_shards(self) -> dict[str, str]:
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (tmp_name, keys), final in zip(self._shards, names):
            os.replace(self._tmp / tmp_name, self._tmp / final)
            weight_map.update({k: final for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self._tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))
        return {f: _sha256(self._tmp / f) for f in names}

    def finish(self, model_config: dict[str, Any], quant_config: dict[str, Any], *, dtype: torch.dtype,
               tied: dict[str, str] | None = None, tokenizer: Any = None, generation_config: Any = None) -> Path:
        """Write the shards, ``config.json`` (``model_config`` + quantization_config), the
        tokenizer and generation config, then move everything to ``out_dir``."""
        import slimq

        checksums = self._finalize_shards()
        qc = {
            "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "layout": LAYOUT_NAME,
            "slimq_version": slimq.__version__, "dtype": _dtype_name(dtype), "config": dict(quant_config),
            "linears": self.linears, "tied": dict(tied or {}), "checksums": checksums,
            "file_sizes": {f: (self._tmp / f).stat().st_size for f in checksums},
        }
        cfg = dict(model_config)
        cfg["quantization_config"] = qc
        (self._tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(self._tmp))
        if generation_config is not None:
            generation_config.save_pretrained(str(self._tmp))
        return self._move_into_place()

    def _move_into_place(self) -> Path:
        trash = None
        if self.out_dir.exists():
            if not self.force:
                raise FileExistsError(f"{self.out_dir} appeared while saving; pass force=True to replace it")
            trash = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", suffix=".old", dir=self.out_dir.parent))
            os.replace(self.out_dir, trash / "old")
        os.replace(self._tmp, self.out_dir)
        if trash is not None:
            shutil.rmtree(trash)
        log.info("wrote %s (%.1f MB of tensors)", self.out_dir, self.total_bytes / 1e6)
        return self.out_dir

    def abort(self) -> None:
        """Drop everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)


# --- save ---------------------------------------------------------------------------------------

def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: source}`` for state-dict entries that are the very same tensor (tied weights)."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, t in state.items():
        if t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen:
            out[k] = seen[key]
        else:
            seen[key] = k
    return out


def _check_targets(model: nn.Module, qtensors: dict[str, QuantizedTensor]) -> dict[str, tuple[nn.Module, str]]:
    modules = dict(model.named_modules())
    out = {}
    for name, qt in qtensors.items():
        if name not in modules:
            raise ValueError(f"quantized tensor {name!r} names no module of the model")
        kind, n, k = linear_kind(modules[name])
        if tuple(qt.shape) != (n, k):
            raise ValueError(f"{name}: QuantizedTensor is {tuple(qt.shape)}, the {kind} is [out={n}, in={k}]")
        out[name] = (modules[name], kind)
    return out


def save_quantized(model: nn.Module, qtensors: dict[str, QuantizedTensor], quant_config: dict[str, Any] | Any,
                   out_dir: str | Path, tokenizer: Any = None, *, force: bool = False,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Save ``model`` with the linears named in ``qtensors`` replaced by packed tensors.

    ``quant_config``: a ``QuantConfig`` or a JSON-ready dict (stored verbatim under
    ``quantization_config.config``). Non-quantized tensors are stored in the model
    dtype; tied weights once. ``model`` is not modified. Raises FileExistsError if
    ``out_dir`` exists and not ``force``. Returns ``out_dir``.
    """
    if hasattr(quant_config, "to_dict"):
        quant_config = quant_config.to_dict()
    targets = _check_targets(model, qtensors)
    dtype = _model_dtype(model)
    state = model.state_dict()
    quantized_keys = {f"{n}.{p}" for n in qtensors for p in ("weight", "bias")}
    tied = _aliases(state)
    config = model.config.to_dict()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and any(module is head for module, _ in targets.values()):
        config["tie_word_embeddings"] = False  # a packed head cannot share the embedding matrix
    for alias, source in list(tied.items()):
        if alias in quantized_keys or source in quantized_keys:
            del tied[alias]  # a quantized weight cannot stay tied; the other copy is stored on its own
            config["tie_word_embeddings"] = False
            log.info("untying %s from %s: one of them is quantized", alias, source)
    with CheckpointWriter(out_dir, force=force, max_shard_bytes=max_shard_bytes) as writer:
        for key, t in state.items():
            if key in quantized_keys or key in tied:
                continue
            writer.add_tensor(key, t.to(dtype) if t.is_floating_point() else t)
        for name, qt in qtensors.items():
            module, kind = targets[name]
            bias = getattr(module, "bias", None)
            writer.add_quantized(name, qt, None if bias is None else bias.to(dtype), conv1d=kind == "conv1d")
        return writer.finish(config, quant_config, dtype=dtype, tied=tied, tokenizer=tokenizer,
                             generation_config=getattr(model, "generation_config", None))


# --- load ---------------------------------------------------------------------------------------

def read_quantization_config(path: str | Path) -> dict[str, Any]:
    """The ``quantization_config`` of checkpoint ``path``, checked for method, version and layout."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        qc = json.loads(cfg_path.read_text()).get("quantization_config")
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{path} is not a slimq checkpoint (quantization_config.quant_method != 'slimq')")
    if qc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {qc.get('format_version')}; "
                              f"this slimq reads version {FORMAT_VERSION}")
    if qc.get("layout") != LAYOUT_NAME:
        raise CheckpointError(f"{path} uses layout {qc.get('layout')!r}; this slimq reads {LAYOUT_NAME!r}")
    for key in ("linears", "checksums", "dtype"):
        if key not in qc:
            raise CheckpointError(f"{path}: quantization_config lacks {key!r}")
    return qc


def verify_checkpoint(path: str | Path, qc: dict[str, Any] | None = None) -> list[Path]:
    """Check every listed safetensors file exists, has its recorded size and sha256.

    Returns the files in order; raises :class:`CheckpointError` naming the first bad one.
    """
    path = Path(path)
    qc = qc if qc is not None else read_quantization_config(path)
    files = []
    for fname, digest in sorted(qc["checksums"].items()):
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        size, expect = f.stat().st_size, qc.get("file_sizes", {}).get(fname)
        if expect is not None and size != expect:
            raise CheckpointError(f"{f} is truncated or padded: {size} bytes, expected {expect}")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f} fails its sha256 checksum (corrupted or modified)")
        files.append(f)
    return files


def _build_skeleton(path: Path, qc: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """The model with parameters on the meta device (non-persistent buffers such as rotary
    frequencies are computed for real: they are not in the checkpoint) and QuantLinear skeletons."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from slimq.nn.qlinear import QuantLinear

    config = AutoConfig.from_pretrained(str(path))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, **{dtype_kw: dtype})
    for name, meta in qc["linears"].items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear_kind(getattr(parent, child))  # raises unless it is a Linear/Conv1D
        setattr(parent, child, QuantLinear.empty(meta, dtype=dtype, device="meta"))
    return model


def _read_tensors(files: list[Path], device: str, dtype: torch.dtype, packed_prefixes: tuple[str, ...]
                  ) -> dict[str, torch.Tensor]:
    state = {}
    for f in files:
        with safe_open(str(f), framework="pt", device=str(device)) as sf:
            for key in sf.keys():
                t = sf.get_tensor(key)
                is_packed = key.startswith(packed_prefixes) and not key.endswith(".bias")
                if t.is_floating_point() and not is_packed and t.dtype != dtype:
                    t = t.to(dtype)
                state[key] = t
    return state


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    for alias, source in tied.items():
        parent_name, _, attr = alias.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, model.get_parameter(source))


def load_quantized(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   backend: str = "auto", verify: bool = True, tokenizer: bool = True) -> tuple[nn.Module, Any]:
    """Load a slimq checkpoint: ``(model, tokenizer or None)``, model in eval mode on ``device``.

    Checksums are verified first (``verify``). The skeleton is built on the meta
    device, quantized linears become :class:`~slimq.nn.QuantLinear` skeletons and
    tensors are loaded with ``assign=True``, so peak memory is about the checkpoint
    size. ``dtype`` (default: the saved one) applies to non-quantized tensors and
    biases; ``backend`` is set on every QuantLinear and checked for ``device``.
    ``tokenizer=False`` skips loading the tokenizer (the second item is then None).
    """
    from slimq.nn.qlinear import set_backend

    path = Path(path)
    qc = read_quantization_config(path)
    files = verify_checkpoint(path, qc) if verify else [path / f for f in sorted(qc["checksums"])]
    dtype = dtype or getattr(torch, qc["dtype"])
    model = _build_skeleton(path, qc, dtype)
    prefixes = tuple(f"{n}." for n in qc["linears"])
    state = _read_tensors(files, str(device), dtype, prefixes)
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if unexpected:
        raise CheckpointError(f"{path}: tensors the model does not have: {sorted(unexpected)[:10]}")
    tied = qc.get("tied", {})
    _retie(model, tied)
    still_meta = sorted(n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta)
    if still_meta:
        raise CheckpointError(f"{path}: tensors missing from the checkpoint: {still_meta[:10]}")
    model.to(device)
    set_backend(model, backend, device)
    model.eval()
    return model, _load_tokenizer(path) if tokenizer else None


def _load_tokenizer(path: Path) -> Any:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
