"""Thin orchestration: ``quantize`` / ``save`` / ``load`` / ``evaluate``.

Everything here wires the pure pieces together (model loading, calibration data,
the sequential driver, a method from the registry, the checkpoint format); no
algorithm lives in this file.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimq.config import QuantConfig

__all__ = ["QuantizationResult", "quantize", "load", "evaluate", "default_device", "is_quantized_dir"]

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(device: str) -> torch.dtype:
    # CPU matmuls in float16 are slow and lossy; GPUs run float16 natively.
    return torch.float16 if str(device).startswith("cuda") else torch.float32


@dataclass
class QuantizationResult:
    """A quantized model in memory: the fake-quantized model plus every layer's codes."""

    model: Any
    tokenizer: Any
    config: QuantConfig
    qtensors: dict
    seconds: float
    source: str
    layer_info: dict = field(default_factory=dict)

    def allocation(self) -> dict[str, list[int]]:
        """Per linear, the bit-width of every column group (row 0's, which SliM shares by all rows)."""
        return {name: qt.bits[0].tolist() for name, qt in self.qtensors.items()}

    def avg_bits(self) -> float:
        """Weight bits averaged over all quantized weights (codes only)."""
        num = sum(qt.avg_bits() * qt.codes.numel() for qt in self.qtensors.values())
        den = sum(qt.codes.numel() for qt in self.qtensors.values())
        return num / max(den, 1)

    def save(self, out_dir: str | Path, *, force: bool = False) -> Path:
        from slimq.format.checkpoint import save_quantized

        meta = self.config.to_dict()
        meta["source_model"] = self.source
        meta["seconds"] = self.seconds
        salience = {n: qt.info["group_salience"] for n, qt in self.qtensors.items() if "group_salience" in qt.info}
        if salience:  # drawn by `slimq report`
            meta["group_salience"] = salience
        out = Path(out_dir)
        save_quantized(self.model, self.qtensors, meta, out, self.tokenizer, force=force)
        if self.config.method == "slim":  # reusable with `--allocation` / SlimOptions.allocation_file
            from slimq.quant.slim.io import save_allocation

            save_allocation(out / "allocation.json", {n: qt.bits[0] for n, qt in self.qtensors.items()},
                            {"source_model": self.source, "target_bits": self.config.bits,
                             "group_size": self.config.group_size})
        return out


def _quantize_rtn_direct(model, arch, config: QuantConfig, progress: bool) -> dict:
    """RTN needs no calibration: quantize every block's linears in place."""
    from tqdm.auto import tqdm

    from slimq.models import block_linears, get_blocks, set_weight_matrix, weight_matrix
    from slimq.quant.methods import get_method
    from slimq.quant.sequential import LinearJob

    method = get_method("rtn")
    out = {}
    blocks = get_blocks(model, arch)
    for i, block in enumerate(tqdm(blocks, desc="rtn", disable=not progress)):
        for name, module in block_linears(block, arch).items():
            W = weight_matrix(module, arch)
            full_name = f"{arch.blocks}.{i}.{name}"
            qt = method(LinearJob(full_name, i, W, None, None, 0), config, None)
            set_weight_matrix(module, qt.dequantize(), arch)
            out[full_name] = qt
    return out


def quantize(
    model: str | Any,
    config: QuantConfig,
    *,
    tokenizer: Any = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    allocation: dict[str, Any] | None = None,
    progress: bool = True,
) -> QuantizationResult:
    """Quantize ``model`` (a hub id, local dir, ``.gguf`` file, or a loaded model) with ``config``.

    ``allocation`` (linear name -> bit-width per column group) fixes SliM-LLM's
    bit allocation instead of searching it. Returns the fake-quantized model and codes.
    """
    from slimq.models import get_arch
    from slimq.models.loading import load_model
    from slimq.quant.methods import NEEDS_HESSIAN, NEEDS_SAMPLES, get_method

    from slimq.data import load_texts

    device = device or default_device()
    if NEEDS_HESSIAN[config.method]:  # fail on bad calibration data before the (slow) model load
        load_texts(config.calib.dataset, purpose="calibration", data_dir=data_dir)
    source = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "<model>")
    if isinstance(model, str):
        model, tok = load_model(model, dtype=_default_dtype(device))
        tokenizer = tokenizer or tok
    arch = get_arch(model)
    if allocation is None and config.method == "slim" and config.slim.allocation_file:
        from slimq.quant.slim.io import load_allocation

        allocation, _ = load_allocation(config.slim.allocation_file)
    t0 = time.perf_counter()
    model.eval()
    if not NEEDS_HESSIAN[config.method]:
        qtensors = _quantize_rtn_direct(model, arch, config, progress)
    else:
        from slimq.data import get_calibration
        from slimq.quant.sequential import quantize_blocks

        c = config.calib
        calib = get_calibration(c.dataset, tokenizer, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed,
                                data_dir=data_dir)
        method = get_method(config.method)

        def quantize_linear(job):
            alloc = None
            if allocation is not None:
                if job.name not in allocation:
                    raise ValueError(f"allocation has no entry for layer {job.name}")
                alloc = torch.as_tensor(allocation[job.name], dtype=torch.int64)
            return method(job, config, alloc)

        qtensors = quantize_blocks(
            model, arch, calib, quantize_linear, device=device,
            true_sequential=config.gptq.true_sequential,
            max_sample_rows=2048 if NEEDS_SAMPLES[config.method] else 0,
            seed=c.seed, progress=progress,
            # GPUs have memory for several 2048-token samples per forward; CPUs gain nothing.
            batch_size=8 if str(device).startswith("cuda") else 1,
        )
    seconds = time.perf_counter() - t0
    info = {name: dict(qt.info) for name, qt in qtensors.items()}
    log.info("quantized %d linears in %.1f s", len(qtensors), seconds)
    return QuantizationResult(model, tokenizer, config, qtensors, seconds, str(source), info)


def is_quantized_dir(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    import json

    try:
        return json.loads(cfg.read_text()).get("quantization_config", {}).get("quant_method") == "slimq"
    except (OSError, ValueError):
        return False


def load(path: str | Path, *, device: str | None = None, backend: str = "auto"):
    """Load a slimq checkpoint directory: returns ``(model, tokenizer)``."""
    from slimq.format.checkpoint import load_quantized

    return load_quantized(Path(path), device=device or default_device(), backend=backend)


def evaluate(
    model: str | Any,
    ppl: list[str] | tuple[str, ...] = ("wikitext2",),
    *,
    tokenizer: Any = None,
    seqlen: int = 2048,
    max_windows: int | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of a model (path, hub id, GGUF, slimq dir, or loaded model) on each dataset.

    Returns ``{"ppl": {name: float}, "tokens": {name: int}, "windows": {...}, "seconds": float}``.
    """
    from slimq.eval.perplexity import evaluate_ppl
    from slimq.models import get_arch
    from slimq.models.loading import load_model

    from slimq.data import load_texts

    device = device or default_device()
    for name in ppl:  # fail on a bad dataset before the (slow) model load
        load_texts(name, purpose="evaluation", data_dir=data_dir)
    t0 = time.perf_counter()
    if isinstance(model, (str, Path)):
        if is_quantized_dir(model):
            model, tokenizer = load(model, device=device)
        else:
            model, tokenizer = load_model(str(model), dtype=_default_dtype(device))
    model.to(device)
    arch = get_arch(model)
    bos = tokenizer.bos_token_id if arch.needs_bos else None
    results = evaluate_ppl(model, tokenizer, list(ppl), seqlen=seqlen, max_windows=max_windows,
                           data_dir=data_dir, bos_token_id=bos, device=device, progress=progress)
    return {
        "ppl": {k: r.ppl for k, r in results.items()},
        "tokens": {k: r.tokens for k, r in results.items()},
        "windows": {k: r.windows for k, r in results.items()},
        "seconds": time.perf_counter() - t0,
    }
