"""Declarative architecture adapters: what the sequential driver needs to know
about a Hugging Face causal LM, as data.

An ``ArchSpec`` names, by dotted attribute path from the top-level model:

* ``blocks``: the ``nn.ModuleList`` of decoder blocks;
* ``pre_modules``: modules that run before the blocks (embeddings, positional
  tables, rotary embeddings), moved to the compute device while block inputs
  are captured;
* ``post_modules``: modules after the blocks (final norm, lm_head);
* ``sequential``: the linear layers of one block, by path inside the block, in
  execution order, grouped so that the linears of a group read the same input
  (true-sequential quantization quantizes one group at a time).

Weights of ``nn.Linear`` are ``[out, in]``; GPT-2's ``Conv1D`` stores ``[in, out]``.
``weight_matrix`` / ``set_weight_matrix`` hide the difference: slimq's algorithms
always see float32 ``[out, in]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ArchSpec",
    "ArchMappingError",
    "get_submodule",
    "get_blocks",
    "block_linears",
    "check_arch",
    "weight_matrix",
    "set_weight_matrix",
    "hidden_size_of",
]


class ArchMappingError(ValueError):
    """A model does not have the modules or weight shapes its ``ArchSpec`` names."""


@dataclass(frozen=True)
class ArchSpec:
    """How slimq walks one architecture. Paths are dotted attribute paths.

    Attributes:
        name: adapter name, e.g. ``"llama"``.
        model_types: ``config.model_type`` values this adapter serves.
        blocks: path of the ``nn.ModuleList`` of decoder blocks.
        pre_modules: modules run before the blocks (absent or ``None`` ones are skipped).
        post_modules: modules run after the blocks (absent or ``None`` ones are skipped).
        sequential: linear paths inside a block, grouped, groups in execution order.
        conv1d: linears are ``transformers.pytorch_utils.Conv1D`` (weight ``[in, out]``).
        needs_bos: the model expects a BOS token at the start of every sequence.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    pre_modules: tuple[str, ...]
    post_modules: tuple[str, ...]
    sequential: tuple[tuple[str, ...], ...]
    conv1d: bool = False
    needs_bos: bool = False

    def __post_init__(self) -> None:
        if not self.model_types:
            raise ValueError(f"ArchSpec {self.name!r} needs at least one model_type")
        names = self.linear_names
        if not names:
            raise ValueError(f"ArchSpec {self.name!r} lists no linear layers in `sequential`")
        if len(set(names)) != len(names):
            raise ValueError(f"ArchSpec {self.name!r} lists a linear twice: {names}")

    @property
    def linear_names(self) -> tuple[str, ...]:
        """All linear paths inside a block, flattened in execution order."""
        return tuple(n for group in self.sequential for n in group)


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path`` under ``root``, or ``None`` if absent (or set to None)."""
    mod: object = root
    for part in path.split("."):
        mod = getattr(mod, part, None) if not part.isdigit() else _index(mod, int(part))
        if mod is None:
            return None
    return mod if isinstance(mod, nn.Module) else None


def _index(mod: object, i: int) -> object:
    if isinstance(mod, (nn.ModuleList, nn.Sequential)) and i < len(mod):
        return mod[i]
    return None


def get_blocks(model: nn.Module, arch: ArchSpec) -> nn.ModuleList:
    """The decoder blocks of ``model``; raises ``ArchMappingError`` if ``arch.blocks`` is missing."""
    blocks = get_submodule(model, arch.blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ArchMappingError(
            f"{type(model).__name__}: expected a non-empty nn.ModuleList of decoder blocks at "
            f"{arch.blocks!r} (adapter {arch.name!r}), found {type(blocks).__name__}"
        )
    return blocks


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _in_out(module: nn.Module, arch: ArchSpec, where: str) -> tuple[int, int]:
    """(in_features, out_features) of a linear, checking its kind and 2-D weight."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = None if not isinstance(weight, torch.Tensor) else tuple(weight.shape)
        raise ArchMappingError(f"{where}: expected a 2-D weight, got {shape}")
    if arch.conv1d:
        if not _is_conv1d(module):
            raise ArchMappingError(f"{where}: adapter {arch.name!r} expects Conv1D, got {type(module).__name__}")
        expected, (k, n) = (module.nx, module.nf), weight.shape
    else:
        if not isinstance(module, nn.Linear):
            raise ArchMappingError(f"{where}: adapter {arch.name!r} expects nn.Linear, got {type(module).__name__}")
        expected, (n, k) = (module.in_features, module.out_features), weight.shape
    if (k, n) != expected:
        raise ArchMappingError(f"{where}: weight {tuple(weight.shape)} disagrees with (in, out) = {expected}")
    return k, n


def block_linears(block: nn.Module, arch: ArchSpec) -> dict[str, nn.Module]:
    """``{path inside block: linear module}`` in execution order; raises
    ``ArchMappingError`` naming any missing linear or malformed weight."""
    found: dict[str, nn.Module] = {}
    for name in arch.linear_names:
        module = get_submodule(block, name)
        if module is None:
            raise ArchMappingError(
                f"{type(block).__name__} has no linear {name!r} (adapter {arch.name!r} expects "
                f"{list(arch.linear_names)})"
            )
        _in_out(module, arch, f"{type(block).__name__}.{name}")
        found[name] = module
    return found


def hidden_size_of(model: nn.Module) -> int:
    """The residual-stream width of a (possibly multimodal) causal LM."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def check_arch(model: nn.Module, arch: ArchSpec) -> None:
    """Check every block's linears exist with consistent shapes.

    A linear's in-features must equal the hidden size or the out-features of a
    linear in the previous group (o_proj after q/k/v, down_proj after gate/up);
    the last group must write back to the hidden size. This catches a wrong
    Conv1D flag or a wrong path, which would otherwise quantize the wrong axis.
    """
    hidden = hidden_size_of(model)
    for i, block in enumerate(get_blocks(model, arch)):
        linears = block_linears(block, arch)
        prev_outs: set[int] = set()
        for group in arch.sequential:
            outs = set()
            for name in group:
                k, n = _in_out(linears[name], arch, f"{arch.blocks}.{i}.{name}")
                if k != hidden and k not in prev_outs:
                    raise ArchMappingError(
                        f"{arch.blocks}.{i}.{name}: in_features {k} is neither the hidden size {hidden} "
                        f"nor an out_features of the previous group {sorted(prev_outs)}"
                    )
                outs.add(n)
            prev_outs = outs
        for name in arch.sequential[-1]:
            n = _in_out(linears[name], arch, name)[1]
            if n != hidden:
                raise ArchMappingError(f"{arch.blocks}.{i}.{name}: out_features {n} != hidden size {hidden}")


def weight_matrix(module: nn.Module, arch: ArchSpec) -> torch.Tensor:
    """A float32 copy of the weight as ``[out, in]`` (transposing Conv1D's ``[in, out]``)."""
    w = module.weight.detach()
    return (w.t() if arch.conv1d else w).to(torch.float32).clone()


@torch.no_grad()
def set_weight_matrix(module: nn.Module, W: torch.Tensor, arch: ArchSpec) -> None:
    """Write ``W [out, in]`` (any float dtype) into ``module.weight`` in place, in the
    module's dtype and device (transposed for Conv1D)."""
    target = module.weight
    src = W.t() if arch.conv1d else W
    if tuple(src.shape) != tuple(target.shape):
        raise ValueError(
            f"weight of shape [out, in] = {tuple(W.shape)} does not fit {type(module).__name__} "
            f"weight {tuple(target.shape)} (conv1d={arch.conv1d})"
        )
    target.copy_(src.to(device=target.device, dtype=target.dtype))
