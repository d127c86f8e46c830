"""Registry from ``config.model_type`` to ``ArchSpec``."""
from __future__ import annotations

from typing import Any

from slimq.models import gemma, gemma2, gemma3, gpt2, gpt_neox, llama, mistral, opt, qwen2, qwen3
from slimq.models.base import ArchSpec

__all__ = ["UnsupportedArchitectureError", "ARCHS", "get_arch", "supported_model_types"]


class UnsupportedArchitectureError(ValueError):
    """No adapter serves this ``model_type``."""


ARCHS: tuple[ArchSpec, ...] = (
    llama.SPEC, mistral.SPEC, qwen2.SPEC, qwen3.SPEC, gemma.SPEC, gemma2.SPEC,
    gemma3.SPEC, gemma3.SPEC_MULTIMODAL, opt.SPEC, gpt2.SPEC, gpt_neox.SPEC,
)

_BY_TYPE: dict[str, ArchSpec] = {t: spec for spec in ARCHS for t in spec.model_types}
if len(_BY_TYPE) != sum(len(s.model_types) for s in ARCHS):
    raise RuntimeError("two adapters claim the same model_type")


def supported_model_types() -> tuple[str, ...]:
    """Sorted ``model_type`` values slimq can quantize."""
    return tuple(sorted(_BY_TYPE))


def _model_type(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise TypeError(f"expected a model, a config or a model_type string, got {type(obj).__name__}")
    return model_type


def get_arch(model_or_config: Any) -> ArchSpec:
    """The adapter for a model, its config, or a ``model_type`` string.

    Raises ``UnsupportedArchitectureError`` naming the type and the supported ones.
    """
    model_type = _model_type(model_or_config)
    spec = _BY_TYPE.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )
    return spec
