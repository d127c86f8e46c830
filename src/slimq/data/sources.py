"""Where calibration and evaluation text comes from.

A dataset is named (``wikitext2``, ``ptb``, ``c4``) or given as a local file path. Names resolve to

(a) local files when ``data_dir`` is given, laid out as in ``shared/data``::

        wikitext2 -> <data_dir>/wikitext2-test.raw           (WikiText-2 raw test split, one dataset row a line)
        ptb       -> <data_dir>/ptb-test.txt                 (PTB test sentences, one a line)
        c4        -> <data_dir>/c4-validation-sample.jsonl   (C4 en validation shard 0 documents, {"text": ...})

(b) otherwise the Hugging Face ``datasets`` hub ids GPTQ uses (calibration on a train split, evaluation on
    test/validation), when ``datasets`` is importable and the hub is reachable;

(c) otherwise :class:`DatasetUnavailableError`, naming the local file to pass instead.

Every source is a :class:`TextSource`: a sequence of texts plus how to join them into one evaluation stream
(the per-dataset separator of the standard GPTQ protocol) and whether the texts are whole documents
(C4: calibration windows are drawn inside single documents) or rows of one running text (WikiText-2, PTB).

Calibration and evaluation text are kept apart where the data allows it:

* ``c4`` from the local sample: the first :data:`C4_LOCAL_CALIB_DOCS` documents calibrate, the rest evaluate.
* ``c4`` from the hub: calibration on ``en/c4-train.00000-of-01024``, evaluation on the first
  :data:`C4_HUB_EVAL_DOCS` documents of ``en/c4-validation.00000-of-00008`` (GPTQ's ``valdata[:1100]``).
* ``wikitext2`` / ``ptb`` from the hub: calibration on the train split, evaluation on the test split.
* ``wikitext2`` / ``ptb`` from the local test files: there is no train split, so both purposes read the test
  file; a warning says that calibration and evaluation overlap.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DatasetUnavailableError",
    "TextSource",
    "Purpose",
    "DATASET_NAMES",
    "LOCAL_FILES",
    "C4_LOCAL_CALIB_DOCS",
    "C4_HUB_EVAL_DOCS",
    "load_texts",
    "read_wikitext_rows",
    "read_ptb_rows",
    "read_jsonl_texts",
]

log = logging.getLogger(__name__)

Purpose = Literal["calibration", "evaluation"]
_PURPOSES = ("calibration", "evaluation")

C4_LOCAL_CALIB_DOCS = 512
C4_HUB_EVAL_DOCS = 1100


class DatasetUnavailableError(ValueError):
    """A named dataset can be neither read from ``data_dir`` nor loaded through Hugging Face ``datasets``."""


@dataclass(frozen=True)
class TextSource:
    """Texts of one dataset split, ready to tokenize.

    Attributes:
        name: dataset name (``wikitext2``) or, for a local file, the file's stem.
        texts: rows or documents, in dataset order (a list, or a lazy view over a hub dataset).
        separator: what joins ``texts`` into the evaluation stream (WikiText-2: ``"\\n\\n"``; PTB and C4: ``" "``).
        documents: True when each text is a whole document (calibration windows are drawn inside one document,
            as GPTQ does for C4); False when texts are rows of one running text (windows are drawn from the
            joined stream, as GPTQ does for WikiText-2 and PTB).
        origin: file path or hub id, for messages.
    """

    name: str
    texts: Sequence[str]
    separator: str
    documents: bool
    origin: str

    def joined(self) -> str:
        """The whole split as one string: ``separator.join(texts)``."""
        return self.separator.join(self.texts[i] for i in range(len(self.texts)))


# --------------------------------------------------------------------------------------------------- local files


def _read_text_file(path: Path) -> str:
    if not path.is_file():
        raise DatasetUnavailableError(f"dataset file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"dataset file {path} is empty (no non-whitespace text)")
    return text


def read_wikitext_rows(path: str | Path) -> list[str]:
    """Rows of a WikiText raw file as the Hugging Face ``wikitext`` dataset holds them.

    The dataset keeps each line with its trailing newline, and turns whitespace-only lines into ``""``;
    ``"\\n\\n".join(rows)`` then reproduces the standard evaluation text byte for byte.
    """
    text = _read_text_file(Path(path))
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def read_ptb_rows(path: str | Path) -> list[str]:
    """Sentences of a PTB text file as ``ptb_text_only`` holds them: one a line, stripped."""
    text = _read_text_file(Path(path))
    return [line.strip() for line in text.splitlines()]


def read_jsonl_texts(path: str | Path, field: str = "text") -> list[str]:
    """The ``field`` of each JSON object in a JSON-lines file (blank lines skipped)."""
    path = Path(path)
    raw = _read_text_file(path)
    texts = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field {field!r}")
        texts.append(obj[field])
    if not any(t.strip() for t in texts):
        raise ValueError(f"dataset file {path} has no non-empty {field!r} values")
    return texts


# ------------------------------------------------------------------------------------------- Hugging Face hub


@dataclass(frozen=True)
class _HubSplit:
    """Arguments of one ``datasets.load_dataset`` call and the text field to read."""

    path: str
    config: str | None
    split: str
    field: str
    data_files: tuple[tuple[str, str], ...] | None = None
    limit: int | None = None  # keep only the first `limit` rows


class _HubColumn(Sequence):
    """Lazy read-only view of one text column of a hub dataset (C4 train shard 0 holds ~356k documents)."""

    def __init__(self, ds: Any, field: str, length: int):
        self._ds, self._field, self._len = ds, field, length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not -self._len <= i < self._len:
            raise IndexError(i)
        return self._ds[i % self._len][self._field]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def _load_hub(split: _HubSplit, fallback_hint: str) -> Sequence[str]:
    """Load one split through ``datasets``; any failure becomes a one-line DatasetUnavailableError."""
    try:
        import datasets
    except ImportError:
        raise DatasetUnavailableError(
            f"Hugging Face `datasets` is not installed (pip install 'slimq[datasets]'); {fallback_hint}"
        ) from None
    kwargs: dict[str, Any] = {"split": split.split}
    if split.data_files is not None:
        kwargs["data_files"] = dict(split.data_files)
    args = (split.path,) if split.config is None else (split.path, split.config)
    try:
        ds = datasets.load_dataset(*args, **kwargs)
    # The hub path raises a zoo of types (OSError, ConnectionError, httpx/requests errors, DatasetNotFoundError,
    # ValueError on offline mode ...); all of them mean "not available here", and the cause stays chained.
    except Exception as exc:  # noqa: BLE001
        raise DatasetUnavailableError(
            f"could not load {split.path!r} split {split.split!r} through `datasets` ({_one_line(exc)}); "
            f"{fallback_hint}"
        ) from exc
    n = len(ds) if split.limit is None else min(len(ds), split.limit)
    return _HubColumn(ds, split.field, n)


# ----------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class _DatasetSpec:
    """How one named dataset resolves, for both purposes."""

    local_file: str
    reader: str  # "wikitext" | "ptb" | "jsonl"
    separator: str
    documents: bool
    hub_calibration: _HubSplit
    hub_evaluation: _HubSplit
    # Local file: which texts each purpose reads (None: all, and calibration overlaps evaluation).
    local_calibration: slice | None = None
    local_evaluation: slice | None = None


_C4_TRAIN = (("train", "en/c4-train.00000-of-01024.json.gz"),)
_C4_VALIDATION = (("validation", "en/c4-validation.00000-of-00008.json.gz"),)

_REGISTRY: dict[str, _DatasetSpec] = {
    "wikitext2": _DatasetSpec(
        local_file="wikitext2-test.raw", reader="wikitext", separator="\n\n", documents=False,
        hub_calibration=_HubSplit("wikitext", "wikitext-2-raw-v1", "train", "text"),
        hub_evaluation=_HubSplit("wikitext", "wikitext-2-raw-v1", "test", "text"),
    ),
    "ptb": _DatasetSpec(
        local_file="ptb-test.txt", reader="ptb", separator=" ", documents=False,
        hub_calibration=_HubSplit("ptb_text_only", "penn_treebank", "train", "sentence"),
        hub_evaluation=_HubSplit("ptb_text_only", "penn_treebank", "test", "sentence"),
    ),
    "c4": _DatasetSpec(
        local_file="c4-validation-sample.jsonl", reader="jsonl", separator=" ", documents=True,
        hub_calibration=_HubSplit("allenai/c4", None, "train", "text", data_files=_C4_TRAIN),
        hub_evaluation=_HubSplit("allenai/c4", None, "validation", "text", data_files=_C4_VALIDATION,
                                 limit=C4_HUB_EVAL_DOCS),
        local_calibration=slice(0, C4_LOCAL_CALIB_DOCS),
        local_evaluation=slice(C4_LOCAL_CALIB_DOCS, None),
    ),
}

DATASET_NAMES = tuple(_REGISTRY)
LOCAL_FILES = {name: spec.local_file for name, spec in _REGISTRY.items()}

_READERS = {"wikitext": read_wikitext_rows, "ptb": read_ptb_rows, "jsonl": read_jsonl_texts}


def _from_local_dir(name: str, spec: _DatasetSpec, data_dir: Path, purpose: Purpose) -> TextSource:
    path = data_dir / spec.local_file
    if not path.is_file():
        raise DatasetUnavailableError(f"{name}: expected {spec.local_file} in data_dir, not found: {path}")
    texts = _READERS[spec.reader](path)
    part = spec.local_calibration if purpose == "calibration" else spec.local_evaluation
    if part is None:
        if purpose == "calibration":
            log.warning("calibrating on %s, the same file %s perplexity is evaluated on: calibration and "
                        "evaluation overlap (there is no train split locally; calibrate on c4 to keep them apart)",
                        path, name)
    else:
        n_all, texts = len(texts), texts[part]
        if not any(t.strip() for t in texts):
            raise ValueError(f"{name}: {path} holds {n_all} documents, none in the {purpose} part "
                             f"[{part.start}:{part.stop}]")
    return TextSource(name, texts, spec.separator, spec.documents, str(path))


def _from_path(path: Path) -> TextSource:
    """Any local file: ``.raw`` (WikiText rows, joined "\\n\\n"), ``.txt`` (the text as is), ``.jsonl`` (documents)."""
    suffix = path.suffix.lower()
    if suffix == ".raw":
        return TextSource(path.stem, read_wikitext_rows(path), "\n\n", False, str(path))
    if suffix == ".txt":
        return TextSource(path.stem, [_read_text_file(path)], "", False, str(path))
    if suffix == ".jsonl":
        return TextSource(path.stem, read_jsonl_texts(path), "\n\n", True, str(path))
    raise ValueError(f"unsupported dataset file suffix {path.suffix!r} for {path}: expected .txt, .raw or .jsonl")


def load_texts(name_or_path: str | Path, *, purpose: Purpose, data_dir: str | Path | None = None) -> TextSource:
    """Resolve a dataset name or local file to the texts for ``purpose`` ("calibration" or "evaluation").

    Names (case-insensitive): ``wikitext2``, ``ptb``, ``c4`` (see the module docstring for how they resolve and how
    calibration and evaluation documents are kept apart). Anything else must be an existing ``.txt``, ``.raw`` or
    ``.jsonl`` file; a local file serves both purposes whole.

    Raises:
        DatasetUnavailableError: a name resolves neither to ``data_dir`` nor to the hub.
        ValueError: unknown name / missing or unsupported file, empty file, or an empty purpose split.
    """
    if purpose not in _PURPOSES:
        raise ValueError(f"purpose must be one of {_PURPOSES}, got {purpose!r}")
    key = str(name_or_path).lower()
    spec = _REGISTRY.get(key) if isinstance(name_or_path, str) else None
    if spec is None:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ValueError(f"unknown dataset {str(name_or_path)!r}: expected one of {', '.join(DATASET_NAMES)} "
                             f"or the path of an existing .txt, .raw or .jsonl file")
        return _from_path(path)
    if data_dir is not None:
        return _from_local_dir(key, spec, Path(data_dir).expanduser(), purpose)
    hint = (f"pass data_dir=<folder holding {spec.local_file}> (CLI: --data-dir) or the path of a local "
            f"{spec.local_file} file")
    hub = spec.hub_calibration if purpose == "calibration" else spec.hub_evaluation
    texts = _load_hub(hub, f"{key}: {hint}")
    origin = f"hf:{hub.path}" + (f"/{hub.config}" if hub.config else "") + f"[{hub.split}]"
    return TextSource(key, texts, spec.separator, spec.documents, origin)
