"""Architecture adapters: resolution, mapping checks, weight access, and the
sequential driver end to end on a tiny random model of every architecture."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from slimq.models import (
    ArchMappingError,
    ArchSpec,
    UnsupportedArchitectureError,
    block_linears,
    check_arch,
    get_arch,
    get_blocks,
    get_submodule,
    set_weight_matrix,
    supported_model_types,
    weight_matrix,
)
from slimq.models.tiny import TINY_VOCAB, tiny_config, tiny_model, tiny_model_types
from slimq.quant.sequential import quantize_blocks

from _plain_rtn import rtn

ALL_TYPES = tiny_model_types()
# Modules of a multimodal model that a text-only quantization run never touches.
_UNUSED = {"gemma3": ("model.vision_tower", "model.multi_modal_projector")}


def test_every_supported_type_has_a_tiny_model():
    assert set(supported_model_types()) == set(ALL_TYPES)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_adapter_resolves_and_maps(model_type):
    model = tiny_model(model_type)
    arch = get_arch(model)
    assert model_type in arch.model_types
    assert get_arch(model.config) is arch and get_arch(model_type) is arch
    check_arch(model, arch)
    blocks = get_blocks(model, arch)
    assert len(blocks) == 2
    for block in blocks:
        linears = block_linears(block, arch)
        assert tuple(linears) == arch.linear_names
        for module in linears.values():
            # weight_matrix is [out, in] whatever the storage: it must reproduce the module.
            W = weight_matrix(module, arch)
            x = torch.randn(5, W.shape[1])
            bias = module.bias if module.bias is not None else 0.0
            torch.testing.assert_close(x @ W.T + bias, module(x))


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_spec_covers_every_parameter(model_type):
    """Blocks, pre- and post-modules account for every weight and buffer, so moving
    the pre-modules to the compute device is enough to run the embeddings there."""
    model = tiny_model(model_type)
    arch = get_arch(model)
    prefixes = (arch.blocks,) + arch.pre_modules + arch.post_modules + _UNUSED.get(model_type, ())
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    stray = [n for n in names if not any(n == p or n.startswith(p + ".") for p in prefixes)]
    assert not stray
    assert all(get_submodule(model, p) is not None for p in arch.post_modules if "embed_out" not in p
               and "project_out" not in p)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_driver_end_to_end_with_rtn(model_type):
    model = tiny_model(model_type)
    reference = copy.deepcopy(model)
    arch = get_arch(model)
    ids = torch.randint(3, TINY_VOCAB - 4, (3, 16), generator=torch.Generator().manual_seed(0))
    results = quantize_blocks(model, arch, ids, lambda job: rtn(job.W), progress=False)
    expected = [f"{arch.blocks}.{i}.{n}" for i in range(2) for n in arch.linear_names]
    assert sorted(results) == sorted(expected)
    # RTN ignores H, so the driver must equal quantizing each weight in isolation.
    for name, qt in results.items():
        ref_module = get_submodule(reference, name)
        torch.testing.assert_close(qt.dequantize(), rtn(weight_matrix(ref_module, arch)).dequantize())
        set_weight_matrix(ref_module, qt.dequantize(), arch)
        torch.testing.assert_close(weight_matrix(get_submodule(model, name), arch), qt.dequantize())
    with torch.no_grad():
        logits = model(ids).logits
        ref_logits = reference(ids).logits
    assert logits.shape == (3, 16, TINY_VOCAB) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, ref_logits)
    assert all("forward" not in b.__dict__ for b in get_blocks(model, arch))


def test_unknown_model_type_lists_supported():
    with pytest.raises(UnsupportedArchitectureError, match="'falcon'.*gpt2.*llama"):
        get_arch("falcon")
    assert issubclass(UnsupportedArchitectureError, ValueError)
    with pytest.raises(TypeError, match="model_type"):
        get_arch(42)


def test_missing_linear_is_named():
    model = tiny_model("llama")
    arch = get_arch(model)
    model.model.layers[1].self_attn.k_proj = nn.Identity()
    with pytest.raises(ArchMappingError, match="self_attn.k_proj"):
        check_arch(model, arch)


def test_wrong_shapes_are_caught():
    model = tiny_model("llama")
    arch = get_arch(model)
    model.model.layers[0].mlp.down_proj = nn.Linear(96, 64, bias=False)  # expects in = 128
    with pytest.raises(ArchMappingError, match=r"model.layers.0.mlp.down_proj: in_features 96"):
        check_arch(model, arch)
    model = tiny_model("llama")
    model.model.layers[1].mlp.down_proj = nn.Linear(128, 32, bias=False)  # must write back 64
    with pytest.raises(ArchMappingError, match=r"model.layers.1.mlp.down_proj: out_features 32 != hidden"):
        check_arch(model, arch)


def test_wrong_conv1d_flag_is_caught():
    model = tiny_model("gpt2")
    arch = dataclasses.replace(get_arch(model), conv1d=False)
    with pytest.raises(ArchMappingError, match="expects nn.Linear, got Conv1D"):
        check_arch(model, arch)


def test_missing_blocks_path():
    model = tiny_model("llama")
    arch = dataclasses.replace(get_arch(model), blocks="model.decoder.layers")
    with pytest.raises(ArchMappingError, match="model.decoder.layers"):
        get_blocks(model, arch)


def test_set_weight_matrix_transposes_conv1d_and_checks_shape():
    model = tiny_model("gpt2")
    arch = get_arch(model)
    c_fc = model.transformer.h[0].mlp.c_fc  # Conv1D weight [in=64, out=256]
    W = torch.randn(256, 64)
    set_weight_matrix(c_fc, W, arch)
    assert torch.equal(c_fc.weight, W.T)
    assert torch.equal(weight_matrix(c_fc, arch), W)
    with pytest.raises(ValueError, match=r"\(64, 256\)"):
        set_weight_matrix(c_fc, W.T, arch)


def test_set_weight_matrix_casts_to_module_dtype():
    module = nn.Linear(8, 4).to(torch.float16)
    W = torch.randn(4, 8, dtype=torch.float32)
    set_weight_matrix(module, W, get_arch("llama"))
    assert module.weight.dtype == torch.float16 and torch.equal(module.weight, W.half())


def test_archspec_rejects_duplicates_and_empty():
    with pytest.raises(ValueError, match="twice"):
        ArchSpec("x", ("x",), "layers", (), (), (("a", "b"), ("a",)))
    with pytest.raises(ValueError, match="no linear"):
        ArchSpec("x", ("x",), "layers", (), (), ())


def test_needs_bos_marks_the_gemma_family():
    assert {t for t in ALL_TYPES if get_arch(t).needs_bos} == {"gemma", "gemma2", "gemma3_text", "gemma3"}


def test_tiny_config_unknown():
    with pytest.raises(ValueError, match="no tiny config"):
        tiny_config("falcon")
