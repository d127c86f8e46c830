"""Allocation files (slimq.quant.slim.io) and report plots (slimq.eval.plots)."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from slimq.quant.slim.io import AllocationFileError, load_allocation, save_allocation


def _alloc() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(3):
        for name, n_groups in (("self_attn.q_proj", 5), ("mlp.down_proj", 12)):
            out[f"model.layers.{i}.{name}"] = torch.randint(1, 4, (n_groups,), generator=g, dtype=torch.int8)
    return out


def test_allocation_round_trip(tmp_path) -> None:
    alloc = _alloc()
    alloc["model.layers.0.mlp.up_proj"] = [2, 3, 1, 8, 7]  # lists are fine too
    meta = {"model": "smollm2", "bits": 2.5, "group_size": 128}
    path = save_allocation(tmp_path / "sub" / "alloc.json", alloc, meta)
    got, got_meta = load_allocation(path)
    assert got_meta == meta
    assert list(got) == list(alloc)
    for name, bits in alloc.items():
        assert got[name].dtype == torch.int8
        assert got[name].tolist() == (bits.tolist() if isinstance(bits, torch.Tensor) else bits)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["alloc.json"]  # no temporary left


def test_save_is_atomic_on_bad_input(tmp_path) -> None:
    path = tmp_path / "alloc.json"
    save_allocation(path, {"a": [2, 2]})
    before = path.read_text()
    with pytest.raises(AllocationFileError, match="outside 1..8"):
        save_allocation(path, {"a": [2, 9]})
    with pytest.raises(AllocationFileError, match="JSON-serialisable"):
        save_allocation(path, {"a": [2, 2]}, {"x": float("nan")})
    with pytest.raises(AllocationFileError, match="integer tensor"):
        save_allocation(path, {"a": torch.tensor([2.0, 3.0])})
    assert path.read_text() == before
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('[1, 2]', "not a slimq allocation file"),
    ('{"format": "other", "version": 1}', "not a slimq allocation file"),
    ('{"format": "slimq.allocation", "version": 99, "allocation": {"a": [2]}}', "version 99"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {}}', "non-empty"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {"a": [2, 2.5]}}', "non-integer"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {"a": [2, 0]}}', "outside 1..8"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {"a": [2, NaN]}}', "non-integer"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {"a": "22"}}', "list of ints"),
    ('{"format": "slimq.allocation", "version": 1, "allocation": {"a": [2]}, "meta": []}', "'meta'"),
])
def test_bad_allocation_files(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AllocationFileError, match=match):
        load_allocation(path)


def test_missing_allocation_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_allocation(tmp_path / "nope.json")


def test_file_format_is_documented_json(tmp_path) -> None:
    path = save_allocation(tmp_path / "a.json", {"x": [1, 2, 3]}, {"k": 1})
    doc = json.loads(path.read_text())
    assert doc == {"format": "slimq.allocation", "version": 1, "meta": {"k": 1}, "allocation": {"x": [1, 2, 3]}}


# --- plots ----------------------------------------------------------------------------

def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_allocation_heatmap(tmp_path) -> None:
    from slimq.eval.plots import plot_allocation_heatmap

    pyplot_before = "matplotlib.pyplot" in sys.modules
    out = plot_allocation_heatmap(_alloc(), tmp_path / "alloc.png", title="test")
    w, h = _png_size(out)
    assert w > 300 and h > 200
    big = {f"model.layers.{i}.{n}": torch.full((9,), 2) for i in range(30) for n in "qkvo"}
    w2, h2 = _png_size(plot_allocation_heatmap(big, tmp_path / "big.png"))
    assert h2 > h
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before  # no pyplot state created
    with pytest.raises(ValueError, match="1..8"):
        plot_allocation_heatmap({"a": [0, 2]}, tmp_path / "x.png")


def test_salience_histogram(tmp_path) -> None:
    from slimq.eval.plots import plot_salience_histogram

    sal = torch.rand(200, dtype=torch.float64) ** 8 * 1e3
    sal[0] = 0.0
    assert _png_size(plot_salience_histogram(sal, tmp_path / "h.png", "one layer"))[0] > 300
    two = {"q_proj": sal, "down_proj": sal * 10}
    assert _png_size(plot_salience_histogram(two, tmp_path / "h2.png", "two layers"))[0] > 300
    with pytest.raises(ValueError, match="finite"):
        plot_salience_histogram(torch.tensor([1.0, float("inf")]), tmp_path / "x.png")
