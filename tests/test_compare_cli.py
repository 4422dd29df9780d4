"""`facediag compare`: two hand-written report.json files, through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facediag.cli import main

CLASSES = ["healthy", "sick"]


def _row(photo: str, true: str, predicted: str) -> dict:
    p_sick = 0.9 if predicted == "sick" else 0.1
    return {"photo": photo, "true": true, "predicted": predicted,
            "probabilities": {"healthy": 1 - p_sick, "sick": p_sick}}


def _write(path: Path, model_id: str, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({"model_id": model_id, "predictions": rows}), encoding="utf-8")
    return path / "report.json"


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """20 photos; A right on 18, B right on 10; A right & B wrong on 9, A wrong & B right on 1."""
    rows_a, rows_b = [], []
    for i in range(20):
        true = CLASSES[i % 2]
        wrong = CLASSES[1 - i % 2]
        a_right = i != 0 and i != 1  # A wrong on photos 0, 1
        b_right = i in (0,) or i >= 11  # B right on 0 and 11..19
        rows_a.append(_row(f"test/{true}/p{i:02d}.jpg", true, true if a_right else wrong))
        rows_b.append(_row(f"test/{true}/p{i:02d}.jpg", true, true if b_right else wrong))
    rows_b.reverse()  # order in the file must not matter
    return _write(tmp_path / "a", "model-a", rows_a), _write(tmp_path / "b", "model-b", rows_b)


def test_compare_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _pair(tmp_path)
    assert main(["-q", "compare", str(a), str(b.parent), "--json"]) == 0  # a file or its folder
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 20
    assert out["a"]["correct"] == 18 and out["b"]["correct"] == 10
    assert out["a"]["model_id"] == "model-a"
    assert out["a_right_b_wrong"] == 9 and out["a_wrong_b_right"] == 1
    assert out["mcnemar_exact_p"] == pytest.approx(22 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    # Wilson 18/20 at z = 1.96: centre (0.9 + 3.8416/40) / 1.19208, half 1.96/1.19208 * sqrt(0.0045 + 3.8416/1600)
    centre = (0.9 + 0.09604) / 1.19208
    half = 1.96 / 1.19208 * (0.0045 + 0.002401) ** 0.5
    assert out["a"]["accuracy_ci95"] == pytest.approx([centre - half, centre + half], abs=1e-12)
    d = out["difference_a_minus_b"]
    assert d["difference"] == pytest.approx(0.4)
    assert d["interval"][0] < 0.4 < d["interval"][1] and d["interval"][0] > 0  # 9 vs 1 discordant: A clearly ahead
    assert d["resamples"] == 1000


def test_compare_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _pair(tmp_path)
    assert main(["-q", "compare", str(a), str(b), "--resamples", "200", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    assert "90.0%" in text and "50.0%" in text and "McNemar exact p = 0.02148" in text and "+40.0 points" in text


def test_compare_refuses_different_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    a, b = _pair(tmp_path)
    rows = json.loads(b.read_text())["predictions"]
    rows[0]["photo"] = "test/sick/other.jpg"
    _write(b.parent, "model-b", rows)
    assert main(["-q", "compare", str(a), str(b), "--json"]) == 1
    assert capsys.readouterr().out == ""
    assert "different photos" in caplog.text and "other.jpg" in caplog.text

    rows = json.loads(a.read_text())["predictions"]  # same photos, one true class changed
    rows[3]["true"] = "sick" if rows[3]["true"] == "healthy" else "healthy"
    c = _write(tmp_path / "c", "model-c", rows)
    assert main(["-q", "compare", str(a), str(c)]) == 1
    assert "true class" in caplog.text


def test_compare_refuses_reports_without_predictions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, _ = _pair(tmp_path)
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"model_id": "x", "metrics": {}}), encoding="utf-8")
    assert main(["-q", "compare", str(a), str(old)]) == 78
    assert "no per-photo predictions" in caplog.text
    assert main(["-q", "compare", str(a), str(tmp_path / "missing.json")]) == 78
