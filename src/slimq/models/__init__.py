"""Architecture adapters (``ArchSpec``), their registry, and model loading."""
from slimq.models.base import (
    ArchMappingError,
    ArchSpec,
    block_linears,
    check_arch,
    get_blocks,
    get_submodule,
    hidden_size_of,
    set_weight_matrix,
    weight_matrix,
)
from slimq.models.loading import ModelLoadError, load_model, local_smollm2_gguf
from slimq.models.registry import ARCHS, UnsupportedArchitectureError, get_arch, supported_model_types

__all__ = [
    "ARCHS",
    "ArchMappingError",
    "ArchSpec",
    "ModelLoadError",
    "UnsupportedArchitectureError",
    "block_linears",
    "check_arch",
    "get_arch",
    "get_blocks",
    "get_submodule",
    "hidden_size_of",
    "load_model",
    "local_smollm2_gguf",
    "set_weight_matrix",
    "supported_model_types",
    "weight_matrix",
]
