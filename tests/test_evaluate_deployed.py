"""`facediag evaluate BUNDLE --as-station`: the deployed decision, evaluated.

Real components: a bundle exported from MobileFaceNet (fixture weights) with a head
fitted on Yale glasses / no-glasses crops, the YuNet fixture detector, ONNX Runtime,
Yale photos and MJPG videos made from them. Expected values come from outside the
code under test: the station's own ``decide`` on the same probabilities, ONNX Runtime
run directly on the station front-end's crop, the station built by ``build_station``
on the same video, and figures worked out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facediag.edge.errors import ConfigError, FacediagError, ModelFileError
from tests.conftest import fixture_path

THRESHOLDS = {"glasses": 0.4}


@pytest.fixture(scope="module")
def yunet() -> Path:
    return fixture_path("models/face_detection_yunet_2026may.onnx")


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory) -> Path:
    """The daemon tests' real bundle (healthy vs glasses), with a glasses threshold of 0.4."""
    pytest.importorskip("torch")
    fixture_path("models/mobilefacenet_112x96_casia.ckpt")
    fixture_path("faces/yale")
    from facediag.edge.bundle import load_bundle
    from tests.daemon_helpers import build_test_bundle

    path = build_test_bundle(tmp_path_factory.mktemp("deployed") / "head")
    bundle = load_bundle(path)
    bundle.thresholds = dict(THRESHOLDS)
    bundle.save()
    return path


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Path:
    """test/<class>/ folders: Yale glasses and no-glasses photos (PNG) and one photo with no face (healthy)."""
    import cv2

    from tests.daemon_helpers import yale_photo

    root = tmp_path_factory.mktemp("photos")
    for subject in range(1, 9):
        for condition, label in (("glasses", "glasses"), ("noglasses", "healthy")):
            folder = root / "test" / label
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"s{subject:02d}.png"), yale_photo(f"subject{subject:02d}.{condition}"))
    assert cv2.imwrite(str(root / "test" / "healthy" / "wall.png"), np.full((243, 320, 3), 90, np.uint8))
    return root


def _photos(root: Path, split: str = "test"):  # type: ignore[no-untyped-def]
    from facediag.edge.photos import read_labelled
    from facediag.training.deployed_eval import items_from_photos

    return items_from_photos(read_labelled(folder=root), split)


def _evaluate(bundle: Path, items, kind: str, yunet: Path, **kw):  # type: ignore[no-untyped-def]
    from facediag.training.deployed_eval import StationOverrides, evaluate_deployed

    overrides = StationOverrides(detector="yunet", detector_model=yunet, threads=1, **kw.pop("overrides", {}))
    return evaluate_deployed(bundle, items, kind, overrides=overrides, **kw)


@pytest.fixture(scope="module")
def photo_report(head_bundle: Path, photo_set: Path, yunet: Path) -> dict:
    return _evaluate(head_bundle, _photos(photo_set), "photo", yunet, prevalence=0.05)


# ------------------------------------------------------------------------------------------- photos


def test_photo_decisions_are_the_station_decision_on_the_station_crop(photo_report, head_bundle, photo_set, yunet):
    from facediag.edge.bundle import load_bundle
    from facediag.edge.config import parse_config
    from facediag.edge.engine.onnxruntime import OrtEngine
    from facediag.edge.face.contract import crops_to_input
    from facediag.edge.face.imageio import load_image
    from facediag.edge.screening.decision import decide
    from facediag.edge.station.pipeline import make_front_end

    bundle = load_bundle(head_bundle)
    rows = photo_report["sessions"]
    assert len(rows) == 17 and photo_report["station"]["thresholds"] == THRESHOLDS
    assert photo_report["station"]["precision"] == "fp32"  # ONNX Runtime's "auto" on a CPU
    kinds = [r["decision"] for r in rows]
    assert "refer" in kinds and "no_finding" in kinds, kinds  # the comparison below is not vacuous
    wall = next(r for r in rows if r["item"] == "test/healthy/wall.png")
    assert wall["decision"] == "retake" and wall["retake_cause"] == "no face" and wall["results"] == 0

    cfg = parse_config({"detector": {"name": "yunet", "model_path": str(yunet)}, "api": {"enabled": False}})
    front = make_front_end(cfg, bundle.contract)
    engine = OrtEngine(bundle.model_path("fp32"), threads=1, precision="fp32")
    decided = 0
    for r in rows:
        if not r["probabilities"]:
            continue
        decided += 1
        probs = [r["probabilities"][c] for c in bundle.classes]
        d = decide(probs, bundle.classes, bundle.healthy_class, bundle.thresholds, min_confidence=0.5)
        assert (r["decision"], r["condition"]) == (d.kind, d.condition), r
        # the probabilities are the bundle's model on the station front-end's crop of this photo
        result = front.process(load_image(photo_set / r["item"]))
        direct = np.asarray(engine.infer(crops_to_input([result.crop], bundle.contract)))[0]
        np.testing.assert_allclose(probs, direct, atol=2e-6)
    assert decided >= 12


def test_per_class_rates_sum_to_one_and_match_the_rows(photo_report):
    figures = photo_report["figures"]
    rows = photo_report["sessions"]
    for cls, entry in figures["per_class"].items():
        mine = [r for r in rows if r["true"] == cls]
        assert entry["n"] == len(mine) > 0
        assert sum(entry[d]["value"] for d in ("refer", "no_finding", "retake")) == pytest.approx(1.0)
        for d in ("refer", "no_finding", "retake"):
            assert entry[d]["k"] == sum(r["decision"] == d for r in mine)
    assert figures["retakes"]["total"] == sum(r["decision"] == "retake" for r in rows)
    assert figures["retakes"]["by_cause"].get("no face", 0) >= 1


def test_min_confidence_above_every_probability_makes_every_session_a_retake(photo_report, head_bundle, photo_set, yunet):
    top = max(max(r["probabilities"].values()) for r in photo_report["sessions"] if r["probabilities"])
    assert top < 1.0
    report = _evaluate(head_bundle, _photos(photo_set), "photo", yunet,
                       overrides={"min_confidence": (top + 1.0) / 2})
    rows = report["sessions"]
    assert {r["decision"] for r in rows} == {"retake"}
    with_face = [r for r in rows if r["probabilities"]]
    assert len(with_face) >= 12
    assert all(r["retake_cause"] == "low confidence" and "min_confidence" in r["reason"] for r in with_face)
    for entry in report["figures"]["per_class"].values():
        assert entry["retake"]["value"] == 1.0
    assert report["figures"]["refer_decided"]["sensitivity"]["value"] is None  # nothing decided


def test_the_chosen_precision_variant_is_the_model_that_runs(photo_report, head_bundle, photo_set, yunet, tmp_path):
    import shutil

    from facediag.converters.fp16 import convert_to_fp16
    from facediag.edge.bundle import load_bundle
    from facediag.edge.config import parse_config
    from facediag.edge.engine.onnxruntime import OrtEngine
    from facediag.edge.face.contract import crops_to_input
    from facediag.edge.face.imageio import load_image
    from facediag.edge.station.pipeline import make_front_end

    copy = tmp_path / "bundle"
    shutil.copytree(head_bundle, copy)
    convert_to_fp16(copy / "model.onnx", copy / "model.fp16.onnx")
    bundle = load_bundle(copy)
    bundle.add_precision("fp16", "model.fp16.onnx", {"passed": True})
    report = _evaluate(copy, _photos(photo_set), "photo", yunet, overrides={"precision": "fp16"})
    assert (report["station"]["precision"], report["station"]["model_file"]) == ("fp16", "model.fp16.onnx")
    auto = _evaluate(copy, _photos(photo_set)[:2], "photo", yunet)  # what a CPU station picks: fp32
    assert (auto["station"]["precision"], auto["station"]["model_file"]) == ("fp32", "model.onnx")

    cfg = parse_config({"detector": {"name": "yunet", "model_path": str(yunet)}, "api": {"enabled": False}})
    front = make_front_end(cfg, bundle.contract)
    fp16 = OrtEngine(copy / "model.fp16.onnx", threads=1, precision="fp16")
    fp32_rows = {r["item"]: r for r in photo_report["sessions"]}
    moved = 0.0
    for r in report["sessions"]:
        if not r["probabilities"]:
            continue
        probs = np.array([r["probabilities"][c] for c in bundle.classes])
        crop = front.process(load_image(photo_set / r["item"])).crop
        np.testing.assert_allclose(probs, np.asarray(fp16.infer(crops_to_input([crop], bundle.contract)))[0], atol=2e-6)
        ref = np.array([fp32_rows[r["item"]]["probabilities"][c] for c in bundle.classes])
        moved = max(moved, float(np.abs(probs - ref).max()))
    assert moved > 1e-5  # the FP16 file ran, not the FP32 one


# ------------------------------------------------------------------------------------------- figures


def _row(true: str, decision: str, condition: str | None = None):  # type: ignore[no-untyped-def]
    from facediag.training.deployed_eval import SessionRow

    cause = "quality gates" if decision == "retake" else None
    return SessionRow(f"{true}/{decision}", true, decision, condition, {}, "", cause, 1, 1, 1, 1)


def test_sensitivity_specificity_and_predictive_values_against_a_hand_worked_case():
    from facediag.training.deployed_report import format_markdown, summarize_sessions

    rows = ([_row("healthy", "refer", "a")] * 2 + [_row("healthy", "no_finding")] * 16 + [_row("healthy", "retake")] * 2
            + [_row("a", "refer", "a")] * 6 + [_row("a", "refer", "b")] + [_row("a", "no_finding")] * 2
            + [_row("a", "retake")] + [_row("b", "refer", "b")] * 8 + [_row("b", "no_finding")] + [_row("b", "retake")])
    f = summarize_sessions(rows, ["healthy", "a", "b"], "healthy", prevalence=0.05)
    # decided sessions: conditions 18 (15 referred), healthy 18 (16 not referred)
    sens, spec = f["refer_decided"]["sensitivity"], f["refer_decided"]["specificity"]
    assert (sens["k"], sens["n"], spec["k"], spec["n"]) == (15, 18, 16, 18)
    # Wilson 95% for 15/18, worked by hand: centre (p + z^2/2n)/(1 + z^2/n) = 0.77471, half-width 0.16693
    assert sens["ci95"] == pytest.approx([0.6078, 0.9416], abs=1e-4)
    # all sessions: a retake is not a referral
    all_s = f["refer_all_sessions"]
    assert (all_s["sensitivity"]["k"], all_s["sensitivity"]["n"]) == (15, 20)
    assert (all_s["specificity"]["k"], all_s["specificity"]["n"]) == (18, 20)
    # Bayes at 5%: sens 5/6, spec 8/9 -> PPV = (5/6)(1/20) / ((5/6)(1/20) + (1/9)(19/20)) = 15/53,
    # NPV = (8/9)(19/20) / ((8/9)(19/20) + (1/6)(1/20)) = 304/307
    pv = f["at_prevalence"]
    assert pv["ppv"] == pytest.approx(15 / 53) and pv["npv"] == pytest.approx(304 / 307)
    assert pv["ppv_range"][0] < pv["ppv"] < pv["ppv_range"][1]
    assert pv["npv_range"][0] < pv["npv"] < pv["npv_range"][1]
    healthy = f["per_class"]["healthy"]
    assert (healthy["refer"]["value"], healthy["no_finding"]["value"], healthy["retake"]["value"]) == (0.1, 0.8, 0.1)
    assert f["per_class"]["a"]["refer_for_this_condition"] == 6
    assert f["retakes"]["total"] == 4 and f["retakes"]["by_cause"] == {"quality gates": 4}
    report = {"bundle": "b", "kind": "photo", "healthy_class": "healthy", "figures": f,
              "station": {"backend": "onnxruntime", "precision": "fp32", "good_frames": 1, "min_confidence": 0.5,
                          "thresholds": {}}}
    table = format_markdown(report)
    assert "| healthy | 20 | 10.0% (2/20; 2.8%-30.1%) | 80.0% (16/20;" in table
    assert "PPV 28.3%" in table and "NPV 99.0%" in table


def test_predictive_values_refuse_a_prevalence_outside_0_1():
    from facediag.training.deployed_report import predictive_values

    with pytest.raises(ValueError):
        predictive_values(0.9, 0.9, 1.0)


# ------------------------------------------------------------------------------------------- videos


def _video(path: Path, subject: str) -> Path:
    from tests.daemon_helpers import face_frame, write_video, yale_photo

    frames = [face_frame(yale_photo(subject))] * 24 + [face_frame(None)] * 12
    return write_video(path, frames, fps=15.0)


def test_a_video_session_gives_the_decision_of_the_station_pipeline(head_bundle, yunet, tmp_path):
    from facediag.edge.capture import EndOfStream
    from facediag.edge.config import parse_config
    from facediag.edge.station.builder import build_station
    from facediag.training.deployed_eval import read_labelled_videos

    root = tmp_path / "videos"
    (root / "glasses").mkdir(parents=True)
    (root / "healthy").mkdir()
    _video(root / "glasses" / "s02.avi", "subject02.glasses")
    _video(root / "healthy" / "s03.avi", "subject03.noglasses")
    items = read_labelled_videos(root)
    report = _evaluate(head_bundle, items, "video", yunet, overrides={"good_frames": 5})
    rows = {r["item"]: r for r in report["sessions"]}
    assert set(rows) == {"glasses/s02.avi", "healthy/s03.avi"}
    for name, row in rows.items():
        # the station itself, built from a station config with this video as its file source
        cfg = parse_config({
            "source": {"uri": f"file:{(root / name).resolve()}", "fps": 0.0},
            "detector": {"name": "yunet", "model_path": str(yunet)},
            "engine": {"bundle": str(head_bundle), "backend": "onnxruntime", "threads": 1},
            "screening": {"good_frames": 5}, "results": {"path": str(tmp_path / f"{row['true']}.jsonl")},
            "api": {"enabled": False}, "trust": {"allow_unsigned": True},
        })
        got: list = []
        parts = build_station(cfg, result_sinks=[got.append])
        source, index = parts.capture.source, 0
        source.open()
        try:
            while True:
                try:
                    image = source.read()
                except EndOfStream:
                    break
                parts.pipeline.process(image, index / 15.0)
                index += 1
        finally:
            parts.close()
        assert got, f"the station gave no result for {name}"
        first = got[0]
        assert (row["decision"], row["condition"]) == (first.decision, first.condition)
        assert row["frames_used"] == first.frames_used == 5
        for c, p in first.probabilities.items():
            assert row["probabilities"][c] == pytest.approx(p, abs=1e-6)
        assert row["decision"] != "retake"
    assert rows["glasses/s02.avi"]["decision"] == "refer"


# ------------------------------------------------------------------------------------------- bad input


def _cli(argv: list[str], capsys) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    from facediag.cli import main

    code = main(["evaluate", *argv, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _checkpoint(folder: Path) -> Path:
    """A real (untrained-head) MobileFaceNet checkpoint as `facediag train` writes one."""
    from facediag.training.backbones import get_backbone
    from facediag.training.checkpoint import save_checkpoint
    from facediag.training.classifier import FaceClassifier

    backbone = get_backbone("mobilefacenet", weights=fixture_path("models/mobilefacenet_112x96_casia.ckpt"))
    model = FaceClassifier(backbone, 2, l2_normalize=True, temperature=1.0)
    meta = {"backbone": backbone.backbone_name, "classes": ["healthy", "glasses"], "healthy_class": "healthy",
            "contract": backbone.contract.to_dict(), "strategy": "dtl2", "seed": 0}
    save_checkpoint(folder, model, meta)
    assert (folder / "checkpoint.json").is_file() and not (folder / "bundle.json").exists()
    return folder


def test_bad_inputs_give_clear_errors(head_bundle, photo_set, yunet, tmp_path, capsys, caplog):
    from facediag.training.deployed_eval import LabelledItem, check_bundle_path, check_labels

    with pytest.raises(ModelFileError, match="no such folder"):
        check_bundle_path(tmp_path / "nowhere")
    checkpoint = _checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="is a training checkpoint, not a model bundle.*facediag export"):
        check_bundle_path(checkpoint)
    smile = LabelledItem(photo_set / "x.png", "smile", "test/smile/x.png", "test")
    with pytest.raises(FacediagError, match=r"'smile' \(e.g. test/smile/x.png\) are not classes of this bundle "
                                            r"\(healthy, glasses\)"):
        check_labels([*_photos(photo_set), smile], ["healthy", "glasses"])
    data = ["--data", str(photo_set), "--detector-model", str(yunet)]
    caplog.set_level("ERROR")
    code, _ = _cli([str(checkpoint), "--as-station", *data], capsys)
    assert code == 78 and "is a training checkpoint" in caplog.text
    caplog.clear()
    code, _ = _cli([str(head_bundle), "--as-station", "--val-split", "train", *data], capsys)
    assert code == 78 and "uses the bundle's own thresholds" in caplog.text
    caplog.clear()
    code, _ = _cli([str(head_bundle), "--as-station", "--precision", "int8-cpu", *data], capsys)
    assert code == 78 and "has no such model" in caplog.text
    caplog.clear()
    code, _ = _cli([str(head_bundle), "--videos", str(tmp_path / "none.csv")], capsys)
    assert code == 1 and "no such file or folder" in caplog.text
    caplog.clear()
    (tmp_path / "v.csv").write_text("video,label\nmissing.avi,glasses\n", encoding="utf-8")
    code, _ = _cli([str(head_bundle), "--videos", str(tmp_path / "v.csv")], capsys)
    assert code == 1 and "missing.avi not found" in caplog.text
    caplog.clear()
    code, _ = _cli([str(head_bundle), "--as-station", "--prevalence", "0", *data], capsys)
    assert code == 78 and "--prevalence" in caplog.text


def test_cli_writes_the_report_and_the_table(head_bundle, photo_set, yunet, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _cli([str(head_bundle), "--as-station", "--data", str(photo_set), "--detector-model", str(yunet),
                       "--threads", "1", "--prevalence", "0.05", "--out", str(out)], capsys)
    assert code == 0, text
    doc = json.loads((out / "deployed-report.json").read_text(encoding="utf-8"))
    assert len(doc["sessions"]) == 17 and doc["figures"]["at_prevalence"]["prevalence"] == 0.05
    md = (out / "deployed-report.md").read_text(encoding="utf-8")
    assert "| true class | n | refer | no finding | retake |" in md and "| glasses | 8 |" in md
    assert md.splitlines()[2] in text  # the table is printed too
