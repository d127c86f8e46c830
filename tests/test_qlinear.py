"""QuantLinear: buffers named as in checkpoints, forward equals the dequantized matmul."""
from __future__ import annotations

import pytest
import torch

from slimq.kernels import BackendUnavailableError
from slimq.nn import QuantLinear, set_backend, share_workspace
from test_packing import random_qt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", [3, "mixed", "rows"])
def test_forward_equals_dequantized_matmul(dtype, bits):
    n, k, gs = 45, 160, 32
    b = {3: 3, "mixed": torch.tensor([1, 2, 3, 4, 2]), "rows": torch.randint(2, 4, (n, 1)).expand(n, 5)}[bits]
    qt = random_qt(n, k, gs, b)
    bias = torch.randn(n)
    layer = QuantLinear.from_quantized(qt, bias, dtype=dtype)
    x = torch.randn(2, 7, k).to(dtype)
    y = layer(x)
    ref = x.double() @ qt.dequantize(torch.float64).T + bias.to(dtype).double()
    assert y.dtype == dtype and y.shape == (2, 7, n)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert ((y.double() - ref).abs().max() / ref.abs().max()) < tol
    assert torch.equal(layer.dequantize(), qt.dequantize())


def test_state_dict_names_match_layout():
    qt = random_qt(8, 96, 32, torch.randint(1, 4, (8, 3)))
    layer = QuantLinear.from_quantized(qt, torch.zeros(8))
    names = set(layer.state_dict())
    assert {"col_perm", "row_perm", "bias"} <= names
    assert all(n in {"col_perm", "row_perm", "bias"} or n.split(".")[0].startswith("seg") for n in names)
    for i, m in enumerate(layer.segment_meta):
        n_planes = {1: 1, 2: 1, 3: 2}[m["bits"]]
        assert {f"seg{i}.plane{p}" for p in range(n_planes)} | {f"seg{i}.scales", f"seg{i}.zeros"} <= names
    no_rows = QuantLinear.from_quantized(random_qt(8, 96, 32, 4))
    assert "row_perm" not in no_rows.state_dict() and "bias" not in no_rows.state_dict()


def test_empty_skeleton_loads_with_assign():
    qt = random_qt(20, 100, 32, torch.tensor([2, 3, 2, 8]))
    src = QuantLinear.from_quantized(qt, torch.randn(20), dtype=torch.float32)
    skel = QuantLinear.empty(src.meta(), dtype=torch.float32)
    assert all(t.is_meta for t in skel.state_dict().values())
    assert {k: tuple(v.shape) for k, v in skel.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in src.state_dict().items()}
    skel.load_state_dict(src.state_dict(), assign=True)
    x = torch.randn(3, 100)
    assert torch.equal(skel(x), src(x))


def test_backend_choice():
    layer = QuantLinear.from_quantized(random_qt(4, 64, 32, 4), backend="reference")
    assert layer(torch.randn(1, 64)).shape == (1, 4)
    with pytest.raises(BackendUnavailableError, match="nonexistent"):
        set_backend(layer, "nonexistent", "cpu")
    layer.backend = "nonexistent"
    with pytest.raises(BackendUnavailableError):
        layer(torch.randn(1, 64))


def test_share_workspace_on_cpu_and_errors():
    model = torch.nn.Sequential(QuantLinear.from_quantized(random_qt(8, 64, 32, 2)),
                                QuantLinear.from_quantized(random_qt(64, 8, 8, 3)))
    assert share_workspace(model, 4, "cpu") is None  # the reference backend needs no scratch
    x = torch.randn(3, 64)
    assert model(x).shape == (3, 64)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        share_workspace(model, 0, "cpu")
    model[1].backend = "triton"
    with pytest.raises(ValueError, match="different backends"):
        share_workspace(model, 4, "cpu")


def test_triton_prepare_keeps_the_permutation_facts():
    """The triton backend's ``prepare`` checks ``col_perm`` once (identity, whole-block run) and keeps the answers
    on the layer's view, where a call under CUDA-graph capture finds them instead of assuming the slow case."""
    pytest.importorskip("triton")
    import slimq.kernels.triton  # noqa: F401 - registers the backend
    from slimq.kernels import REGISTRY
    layer = QuantLinear.from_quantized(random_qt(8, 256, 128, torch.tensor([2, 3])))
    p = layer.packed
    assert p.perm_identity is None and p.perm_run is None
    REGISTRY.get("triton").prepare(p)
    assert p.perm_identity is not None and p.perm_run >= 128


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_shared_workspace_prepares_a_first_call_in_a_capture():
    """After ``share_workspace`` a layer's first call may be inside a capture and still read ``x`` itself."""
    from slimq.kernels.triton import resolve_config
    layer = QuantLinear.from_quantized(random_qt(2048, 8192, 128, 2), dtype=torch.float16).cuda()
    share_workspace(layer, 16, "cuda")
    x = torch.randn(1, 8192, dtype=torch.float16, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cfg = resolve_config(x, layer.packed)
    assert cfg.path == "mv" and cfg.direct


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 4, 16, 100])
def test_gpu_shared_workspace_graph_capture(m):
    """With a shared workspace a layer call allocates only its output and replays in a graph."""
    qt = random_qt(384, 576, 64, torch.tensor([2, 3, 1, 2, 2, 3, 2, 1, 2]))
    layers = torch.nn.Sequential(QuantLinear.from_quantized(qt, dtype=torch.float16),
                                 QuantLinear.from_quantized(random_qt(576, 384, 128, 2), dtype=torch.float16)).cuda()
    ws = share_workspace(layers, 128, "cuda")
    assert ws is not None and layers[0].workspace is ws and layers[1].workspace is ws
    x = torch.randn(m, 576, dtype=torch.float16, device="cuda")
    layers(x)  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layers(x)
    x.copy_(torch.randn_like(x))
    ref = (layers[1].dequantize().cuda().float() @ (layers[0].dequantize().cuda().float() @ x.float().t())).t()
    g.replay()
    torch.cuda.synchronize()
    assert float((y.float() - ref).norm() / ref.norm()) < 5e-3


def test_extra_repr_shows_bits():
    layer = QuantLinear.from_quantized(random_qt(4, 64, 32, torch.tensor([2, 4])))
    r = repr(layer)
    assert "avg_bits=3.000" in r and "2b:50%" in r and "4b:50%" in r


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 16, 300])
def test_gpu_auto_backend_matches_reference(m):
    from slimq.kernels import select_backend

    qt = random_qt(300, 576, 64, torch.tensor([2, 3, 4, 3, 2, 1, 8, 4, 3]))
    layer = QuantLinear.from_quantized(qt, torch.randn(300), dtype=torch.float16).cuda()
    x = torch.randn(m, 576, dtype=torch.float16, device="cuda")
    y = layer(x)
    assert layer._backend_for(x.device).name == select_backend("auto", "cuda").name
    set_backend(layer, "reference", "cuda")
    ref = layer(x)
    assert ((y.float() - ref.float()).abs().max() / ref.float().abs().max()) < 2e-3


def test_packed_view_cache_follows_buffers():
    qt = random_qt(6, 64, 32, 3)
    layer = QuantLinear.from_quantized(qt, dtype=torch.float32)
    assert layer.packed is layer.packed
    layer.to(torch.float64)  # replaces the buffers' tensors
    assert layer.packed.segments[0].scales is layer.seg0.scales
    other = QuantLinear.from_quantized(random_qt(6, 64, 32, 3, seed=1), dtype=torch.float32)
    layer.load_state_dict(other.state_dict(), assign=True)
    assert layer.packed.col_perm is layer.col_perm and layer.packed.segments[0].planes[0] is layer.seg0.plane0


@pytest.mark.parametrize("cast", ["bf16", "float", "half"])
def test_dtype_casts_keep_scales_float16(cast):
    qt = random_qt(6, 64, 32, torch.tensor([2, 4]))
    layer = QuantLinear.from_quantized(qt, torch.randn(6), dtype=torch.float32)
    want = {"bf16": torch.bfloat16, "float": torch.float32, "half": torch.float16}[cast]
    {"bf16": lambda m: m.to(torch.bfloat16), "float": lambda m: m.float(), "half": lambda m: m.half()}[cast](layer)
    assert layer.bias.dtype == want
    for i in range(len(layer.segment_meta)):
        seg = getattr(layer, f"seg{i}")
        assert seg.scales.dtype == torch.float16 and seg.zeros.dtype == torch.float16
        assert seg.plane0.dtype == torch.int32
    assert layer.col_perm.dtype == torch.int32
    assert torch.equal(layer.dequantize(), qt.dequantize())
