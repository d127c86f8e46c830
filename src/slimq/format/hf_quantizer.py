"""``transformers`` integration: ``AutoModelForCausalLM.from_pretrained(slimq_dir)``.

:func:`register_with_transformers` (called when ``slimq`` is imported) registers
quant method ``"slimq"`` through transformers' public API
(``transformers.quantizers.register_quantization_config`` / ``register_quantizer``,
added in transformers 4.49; on older versions registration is skipped with a log
line and only ``load_quantized`` can load). Before weights load, the quantizer swaps every linear listed
in ``quantization_config.linears`` for a :class:`~slimq.nn.QuantLinear` skeleton
on the meta device; transformers then loads the packed tensors by name.

Checksums are not verified on this path (transformers opens the files itself);
``slimq.format.checkpoint.load_quantized`` verifies them.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import transformers
from transformers.quantizers import HfQuantizer
from transformers.quantizers import auto as qauto
from transformers.utils.quantization_config import QuantizationConfigMixin

from slimq.format.checkpoint import QUANT_METHOD, linear_kind
from slimq.nn.qlinear import QuantLinear

__all__ = ["register_with_transformers", "SlimqQuantizationConfig", "SlimqHfQuantizer"]

log = logging.getLogger(__name__)


class SlimqQuantizationConfig(QuantizationConfigMixin):
    """The ``quantization_config`` dict of a slimq checkpoint, kept verbatim as attributes."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("quant_method", None)
        self._fields = list(kwargs)
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.quant_method = QUANT_METHOD

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, **{k: getattr(self, k) for k in self._fields}}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()


class SlimqHfQuantizer(HfQuantizer):
    """Loads pre-quantized slimq checkpoints (quantizing inside from_pretrained is not supported)."""

    requires_calibration = True
    requires_parameters_quantization = False  # transformers 4.x: tensors load as they are

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        return None

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        for name, meta in self.quantization_config.linears.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, child)
            linear_kind(old)  # raises unless Linear / Conv1D
            dtype = old.weight.dtype if old.weight.is_floating_point() else torch.float16
            setattr(parent, child, QuantLinear.empty(meta, dtype=dtype, device="meta"))
            # transformers re-initialises modules it thinks incomplete; some _init_weights
            # (GPT-2's) reach into a child's `.weight`, which a QuantLinear does not have.
            # A parent whose own tensors all live in children is complete once loaded.
            if not any(True for _ in parent.parameters(recurse=False)) and \
                    not any(True for _ in parent.buffers(recurse=False)):
                parent._is_hf_initialized = True
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return False  # save with slimq.format.checkpoint, which writes checksums

    @property
    def is_trainable(self) -> bool:
        return False


def register_with_transformers() -> bool:
    """Register quant method ``"slimq"`` with transformers (idempotent).

    Returns False (and logs why) when this transformers has no public
    registration API, in which case ``from_pretrained`` cannot load slimq checkpoints.
    """
    try:
        from transformers.quantizers import register_quantization_config, register_quantizer
    except ImportError as e:
        log.info("transformers %s cannot register quantizers (%s); use slimq.format.checkpoint.load_quantized",
                 transformers.__version__, e)
        return False
    if QUANT_METHOD not in qauto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SlimqQuantizationConfig)
    if QUANT_METHOD not in qauto.AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SlimqHfQuantizer)
    return True
