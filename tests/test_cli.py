"""CLI: user mistakes end in one line on stderr, exit code 2, and no output directory."""
from __future__ import annotations

from pathlib import Path

import pytest

from slimq.cli import EXIT_USER_ERROR, main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _run(capsys, argv):
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--bits", "9"], "bits must lie in 1..8"),
        (["--bits", "0"], "bits must lie in 1..8"),
        (["--group-size", "0"], "group_size must be -1"),
        (["--group-size", "-2"], "group_size must be -1"),
        (["--method", "awq"], "unknown method"),
        (["--method", "gptq", "--bits", "2.5"], "integer bits"),
        (["--nsamples", "0"], "nsamples"),
        (["--sqc-grid", "1,2"], "expected 3"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, capsys, extra, needle):
    out = tmp_path / "q"
    code, err = _run(capsys, ["quantize", "some/model", "--out", str(out), *extra])
    assert code == EXIT_USER_ERROR
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_model_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "q"
    code, err = _run(capsys, ["quantize", str(tmp_path / "nope"), "--method", "rtn", "--out", str(out)])
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1 and "error" in err
    assert not out.exists()


def test_existing_output_dir_needs_force(tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    code, err = _run(capsys, ["quantize", "x", "--out", str(out)])
    assert code == EXIT_USER_ERROR and "--force" in err


def test_eval_missing_dataset_file(tmp_path, capsys):
    code, err = _run(capsys, ["eval", "x", "--ppl", str(tmp_path / "missing.txt")])
    assert code == EXIT_USER_ERROR and len(err.splitlines()) == 1
