"""Checkpoint size and resident memory of slimq checkpoints vs float16.

For each model and bit-width it writes a checkpoint (RTN, group size 128; "16" =
float16, nothing quantized), then loads it with ``slimq.format.checkpoint.load_quantized``
in a fresh Python process and measures the resident-set growth (VmRSS after
loading minus before, from /proc/self/status) and the peak (VmHWM minus the
pre-load RSS). Models:

* ``smollm2``: SmolLM2-135M-Instruct (the local GGUF via ``slimq.models.loading``),
  every decoder-block linear quantized;
* ``llama7b``: the LLaMA-2-7B shape (hidden 4096, MLP 11008, vocab 32000) with
  random weights, written tensor by tensor (one linear in memory at a time);
  ``--layers`` sets how many of its 32 decoder layers to build. Per-layer costs
  are measured as (size at L layers - size at 0 layers) / L when ``--layers``
  is given together with ``--baseline-layers 0``, and extrapolated to 32.

Prints a table and writes JSON (default ``benchmarks/results/memory.json``).
Example: ``python benchmarks/memory.py --models smollm2 llama7b --layers 4``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
GROUP_SIZE = 128

_PROBE = r"""
import gc, json, sys, time
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
import torch, slimq
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from slimq.format.checkpoint import load_quantized
torch.set_num_threads(1)
# warm-up: import the model's modules (and build an empty skeleton) so imports are not counted
cfg = AutoConfig.from_pretrained(sys.argv[1])
del cfg.quantization_config
with torch.device("meta"):
    AutoModelForCausalLM.from_config(cfg)
gc.collect()
before = status()
t0 = time.perf_counter()
model, _ = load_quantized(sys.argv[1], device="cpu", tokenizer=False)
seconds = time.perf_counter() - t0
gc.collect()
loaded = status()
# safetensors maps files lazily: read every byte once, as a forward pass would
unique = {t.untyped_storage().data_ptr(): t for t in model.state_dict().values()}
for t in unique.values():
    t.reshape(-1).view(torch.uint8).max()
touched = status()
print(json.dumps({"before": before, "loaded": loaded, "touched": touched, "load_seconds": seconds,
                  "state_bytes": sum(t.numel() * t.element_size() for t in unique.values())}))
"""


def measure_load(path: Path) -> dict:
    """Load ``path`` in a fresh interpreter; RSS growth and peak in bytes."""
    res = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"loading {path} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    b, lo, to = r["before"], r["loaded"], r["touched"]
    return {"rss_delta": to["VmRSS"] - b["VmRSS"], "rss_delta_untouched": lo["VmRSS"] - b["VmRSS"],
            "anon_delta": to["RssAnon"] - b["RssAnon"], "file_backed_delta": to["RssFile"] - b["RssFile"],
            "peak_delta": to["VmHWM"] - b["VmRSS"], "load_seconds": r["load_seconds"],
            "loaded_state_bytes": r["state_bytes"]}


def _decoder_linears(model) -> dict[str, tuple[torch.nn.Module, bool]]:
    """Qualified name -> (module, is_conv1d) of every decoder-block linear, from slimq's adapters."""
    from slimq.format.checkpoint import linear_kind
    from slimq.models import block_linears, get_arch, get_blocks

    arch = get_arch(model)
    out = {}
    for i, block in enumerate(get_blocks(model, arch)):
        for name, mod in block_linears(block, arch).items():
            out[f"{arch.blocks}.{i}.{name}"] = (mod, linear_kind(mod)[0] == "conv1d")
    return out


def rtn(W: torch.Tensor, bits: int) -> "QuantizedTensor":  # noqa: F821
    """Round-to-nearest with groups of GROUP_SIZE; all groups fitted in one call when they tile K."""
    from slimq.quant.primitives import fit_minmax, make_g_idx, quantize_codes
    from slimq.quant.result import QuantizedTensor
    from slimq.quant.rtn import rtn_quantize

    n, k = W.shape
    if k % GROUP_SIZE:
        return rtn_quantize(W.float(), bits=bits, group_size=GROUP_SIZE)
    g = k // GROUP_SIZE
    rows = W.float().reshape(n * g, GROUP_SIZE)  # one quantizer per (row, group)
    scale, zero = fit_minmax(rows, bits, sym=False)
    codes = quantize_codes(rows, scale, zero, bits).to(torch.uint8).reshape(n, k)
    return QuantizedTensor(codes, scale.reshape(n, g).half(), zero.reshape(n, g).half(),
                           make_g_idx(k, GROUP_SIZE), torch.full((n, g), bits, dtype=torch.int8), GROUP_SIZE)


def write_smollm2(out: Path, bits: int) -> None:
    from slimq.format.checkpoint import save_quantized
    from slimq.models.loading import load_model

    model, tok = load_model("smollm2-local", dtype=torch.float16)
    qts = {}
    if bits < 16:
        for name, (mod, conv1d) in _decoder_linears(model).items():
            W = mod.weight.data.T if conv1d else mod.weight.data
            qts[name] = rtn(W, bits)
    save_quantized(model, qts, {"method": "rtn", "bits": bits, "group_size": GROUP_SIZE}, out, tok, force=True)


def write_llama7b(out: Path, bits: int, layers: int, seed: int = 0) -> None:
    """Random LLaMA-2-7B-shaped checkpoint with ``layers`` decoder layers, streamed tensor by tensor."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from slimq.format.checkpoint import CheckpointWriter

    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers})
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    linears = set(_decoder_linears(skeleton)) if bits < 16 and layers > 0 else set()
    gen = torch.Generator().manual_seed(seed)
    with CheckpointWriter(out, force=True) as w:
        for key, meta in skeleton.state_dict().items():
            module = key.rpartition(".")[0]
            if "norm" in key:
                w.add_tensor(key, torch.ones(meta.shape, dtype=torch.float16))
                continue
            t = torch.randn(meta.shape, generator=gen, dtype=torch.float32) * 0.02
            if module in linears and key.endswith(".weight"):
                w.add_quantized(module, rtn(t, bits))
            else:
                w.add_tensor(key, t.to(torch.float16))
            del t
        w.finish(config.to_dict(), {"method": "rtn", "bits": bits, "group_size": GROUP_SIZE},
                 dtype=torch.float16)


def run_one(model: str, bits: int, workdir: Path, layers: int) -> dict:
    from slimq.format.info import checkpoint_info

    out = workdir / f"{model}-L{layers}-{bits}bit"
    t0 = time.perf_counter()
    if model == "smollm2":  # layers is informational: SmolLM2-135M has 30
        write_smollm2(out, bits)
    else:
        write_llama7b(out, bits, layers)
    write_s = time.perf_counter() - t0
    info = checkpoint_info(out)
    row = {"model": model, "bits": bits, "layers": layers, "write_seconds": write_s,
           "file_bytes": info["file_bytes"], "tensor_bytes": info["tensor_bytes"], "fp16_bytes": info["fp16_bytes"],
           "quantized_weights": info["total"].get("weights", 0),
           "all_in_bits_per_weight": info["total"].get("all_in_bits_per_weight", 16.0)}
    row.update(measure_load(out))
    row["rss_over_tensor_bytes"] = row["rss_delta"] / row["tensor_bytes"]
    shutil.rmtree(out)
    return row


def _per_layer(rows: list[dict]) -> list[dict]:
    """For llama7b rows at two layer counts: per-layer bytes and a 32-layer extrapolation."""
    out = []
    by = {(r["bits"], r["layers"]): r for r in rows if r["model"] == "llama7b"}
    for (bits, layers), r in sorted(by.items()):
        base = by.get((bits, 0))
        if base is None or layers == 0:
            continue
        per = {k: (r[k] - base[k]) / layers for k in ("file_bytes", "tensor_bytes", "rss_delta", "fp16_bytes")}
        out.append({"bits": bits, "measured_layers": layers, **{f"per_layer_{k}": v for k, v in per.items()},
                    **{f"extrapolated_32_{k}": base[k] + 32 * v for k, v in per.items()}})
    return out


def _gb(n: float) -> str:
    return f"{n / 2 ** 30:8.3f}"


def print_table(rows: list[dict], extrap: list[dict]) -> None:
    print(f"{'model':<9}{'L':>3}{'bits':>5}{'all-in b/w':>11}{'file GiB':>10}{'tensors GiB':>12}"
          f"{'RSS +GiB':>10}{'peak +GiB':>10}{'RSS/tensors':>12}{'file/fp16':>10}{'RSS/fp16':>9}{'load s':>8}")
    fp16 = {(r["model"], r["layers"]): r for r in rows if r["bits"] == 16}
    for r in rows:
        ref = fp16.get((r["model"], r["layers"]))
        f_ratio = f"{r['file_bytes'] / ref['file_bytes']:10.3f}" if ref else f"{'-':>10}"
        m_ratio = f"{r['rss_delta'] / ref['rss_delta']:9.3f}" if ref else f"{'-':>9}"
        print(f"{r['model']:<9}{r['layers']:>3}{r['bits']:>5}{r['all_in_bits_per_weight']:>11.3f}{_gb(r['file_bytes']):>10}"
              f"{_gb(r['tensor_bytes']):>12}{_gb(r['rss_delta']):>10}{_gb(r['peak_delta']):>10}"
              f"{r['rss_over_tensor_bytes']:>12.3f}{f_ratio}{m_ratio}{r['load_seconds']:>8.1f}")
    for e in extrap:
        print(f"llama7b {e['bits']:>2}-bit: per layer file {e['per_layer_file_bytes'] / 2 ** 20:.1f} MiB, "
              f"RSS {e['per_layer_rss_delta'] / 2 ** 20:.1f} MiB; extrapolated to 32 layers: "
              f"file {_gb(e['extrapolated_32_file_bytes']).strip()} GiB, RSS {_gb(e['extrapolated_32_rss_delta']).strip()} GiB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "llama7b"], choices=["smollm2", "llama7b"])
    ap.add_argument("--bits", nargs="+", type=int, default=[16, 4, 3, 2])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers of the 7B-shaped model")
    ap.add_argument("--baseline-layers", type=int, default=None,
                    help="also build the 7B shape at this many layers (0 isolates embeddings + head)")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "slimq-memory")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.json")
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in a.models:
        counts = [30] if model == "smollm2" else sorted({a.layers} | ({a.baseline_layers} - {None}))
        for layers in counts:
            for bits in a.bits:
                row = run_one(model, bits, a.workdir, layers)
                rows.append(row)
                print(json.dumps(row), flush=True)
    extrap = _per_layer(rows)
    print_table(rows, extrap)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"group_size": GROUP_SIZE, "rows": rows, "llama7b_per_layer": extrap,
                                 "torch": torch.__version__, "python": sys.version.split()[0]}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
