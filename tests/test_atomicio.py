"""The one atomic-write module: text, JSON options and writers that only take a path, on real files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from facediag.edge.atomicio import atomic_path, atomic_write_json, atomic_write_text, stale_temporaries


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_text_is_replaced_whole_with_its_mode(tmp_path):
    path = tmp_path / "note.txt"
    atomic_write_text(path, "première\n")
    atomic_write_text(path, "zweite Fassung\n", mode=0o600)
    assert path.read_bytes() == b"zweite Fassung\n"
    assert (path.stat().st_mode & 0o777) == 0o600
    atomic_write_text(path, "Ä", encoding="latin-1")
    assert path.read_bytes() == b"\xc4"
    assert _leftovers(tmp_path) == []


def test_json_defaults_are_stable_and_options_pass_through(tmp_path):
    path = tmp_path / "doc.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_json(path, {"b": 1, "a": "é"}, indent=None, sort_keys=False, ensure_ascii=True)
    assert path.read_text() == '{"b": 1, "a": "\\u00e9"}\n'
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": math.nan}, allow_nan=False)
    assert json.loads(path.read_text()) == {"b": 1, "a": "é"}, "a refused document leaves the old file"
    assert _leftovers(tmp_path) == []


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with atomic_path(path, mode=0o640) as temp:
        assert temp.parent == path.parent and temp != path and temp.exists()
        with open(temp, "wb") as fh:  # what a library such as safetensors does with the name
            fh.write(b"new weights")
        assert path.read_bytes() == b"old", "the final name changes only at the end"
    assert path.read_bytes() == b"new weights" and (path.stat().st_mode & 0o777) == 0o640
    assert _leftovers(tmp_path) == []


def test_atomic_path_keeps_the_old_file_on_an_error_or_an_empty_write(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good model")
    with pytest.raises(RuntimeError, match="converter crashed"):
        with atomic_path(path) as temp:
            temp.write_bytes(b"half a mod")
            raise RuntimeError("converter crashed")
    with pytest.raises(OSError, match="nothing was written"):
        with atomic_path(path):
            pass
    assert path.read_bytes() == b"good model"
    assert _leftovers(tmp_path) == [] and stale_temporaries(path) == []


def test_atomic_path_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "no" / "such.bin"):
            pass
    assert not os.path.exists(tmp_path / "no")


def test_promote_replaces_the_final_file_in_one_step(tmp_path: Path) -> None:
    from facediag.edge.atomicio import promote

    final = tmp_path / "model.fp16.onnx"
    final.write_bytes(b"old")
    candidate = tmp_path / ".candidate.tmp"
    candidate.write_bytes(b"new model")
    promote(candidate, final)
    assert final.read_bytes() == b"new model" and not candidate.exists()
    with pytest.raises(FileNotFoundError):  # nothing to promote: the final file stays as it was
        promote(candidate, final)
    assert final.read_bytes() == b"new model"
