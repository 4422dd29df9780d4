"""Gates that cannot hide flips (issue 10): agreement on all photos and on non-ties, the sample-size
refusal, the paired accuracy drop, streamed histogram calibration, and old verdict records.

Every expected figure here is worked out by hand in the comments (or by SciPy where it has the
function), never read back from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facediag.converters.agreement import agreement_lower_bound, paired_accuracy, photos_needed, read_verdict
from facediag.converters.compare import (
    PRECISION_GATE,
    Criteria,
    Labels,
    compare,
    gate_criteria,
    verify_criteria,
)
from tests.colour_model import celeba_inputs, make_colour_bundle

# --------------------------------------------------------------------------- all rows vs non-ties

# Eight reference rows, margins (top-1 minus top-2) by hand; ties are margins below 0.01.
REF = np.array(
    [
        [0.80, 0.15, 0.05],  # 0: margin 0.65, class 0
        [0.10, 0.70, 0.20],  # 1: margin 0.50, class 1
        [0.495, 0.500, 0.005],  # 2: margin 0.005 -> tie, class 1
        [0.30, 0.30, 0.40],  # 3: margin 0.10, class 2
        [0.336, 0.334, 0.330],  # 4: margin 0.002 -> tie, class 0
        [0.60, 0.30, 0.10],  # 5: margin 0.30, class 0
        [0.2, 0.2, 0.6],  # 6: margin 0.40, class 2
        [0.4975, 0.0050, 0.4975 + 1e-9],  # 7: margin 1e-9 -> tie, class 2
    ]
)
CAND = np.array(
    [
        [0.80, 0.15, 0.05],  # 0 agrees
        [0.50, 0.40, 0.10],  # 1 flips to 0 (non-tie disagreement)
        [0.505, 0.490, 0.005],  # 2 flips to 0 (tie flip)
        [0.30, 0.30, 0.40],  # 3 agrees
        [0.330, 0.340, 0.330],  # 4 flips to 1 (tie flip)
        [0.20, 0.70, 0.10],  # 5 flips to 1 (non-tie disagreement)
        [0.2, 0.2, 0.6],  # 6 agrees
        [0.49, 0.01, 0.50],  # 7 agrees (tie, no flip)
    ]
)


def test_agreement_on_all_photos_and_on_non_ties_is_counted_by_hand() -> None:
    v = compare(CAND, REF, Criteria(PRECISION_GATE))
    a = v.agreement
    # Non-ties: rows 0, 1, 3, 5, 6 -> 5 rows, rows 1 and 5 differ -> 3 agree.
    assert (a["non_ties"]["images"], a["non_ties"]["agreeing"], a["non_ties"]["disagreeing"]) == (5, 3, 2)
    assert a["non_ties"]["rate"] == pytest.approx(3 / 5) == v.top1_agreement
    # All rows: 8, of which rows 1, 2, 4, 5 differ -> 4 agree.
    assert (a["all"]["images"], a["all"]["agreeing"]) == (8, 4)
    assert a["all"]["rate"] == pytest.approx(4 / 8) == v.top1_agreement_all
    # Ties: rows 2, 4, 7; rows 2 and 4 flipped.
    assert (a["ties"], a["tie_flips"]) == (3, 2) == (v.near_ties, v.near_tie_flips)
    assert v.disagreements == [1, 5]
    record = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert record["agreement"]["non_ties"]["agreeing"] == 3 and record["agreement"]["all"]["agreeing"] == 4
    assert record["agreement"]["bound"] == "clopper-pearson one-sided"


def test_flips_hidden_among_ties_fail_the_all_photos_criterion() -> None:
    # 400 rows: 300 clear (margin 0.6) that all agree, 100 near-ties (margin 0.004) of which 20 flip.
    ref = np.tile([[0.8, 0.2]], (400, 1))
    ref[300:] = [0.502, 0.498]
    cand = ref.copy()
    cand[300:320] = [0.49, 0.51]
    v = compare(cand, ref, gate_criteria(min_agreement=0.99))
    # Non-ties: 300 of 300 agree, lower bound 0.05 ** (1 / 300) = 0.99006 > 0.99: that part passes.
    assert v.top1_agreement == 1.0 and v.agreement["non_ties"]["lower_bound"] == pytest.approx(0.05 ** (1 / 300))
    # All rows: 380 / 400 = 0.95 < 0.99 - 0.02 = 0.97.
    assert v.top1_agreement_all == pytest.approx(0.95) and v.criteria.min_agreement_all == pytest.approx(0.97)
    assert not v.passed and len(v.failures) == 1
    assert "over all 400 inputs 0.9500 is below 0.97" in v.failures[0]
    assert "20 changed class, 20 of them among 100 reference near-ties" in v.failures[0]
    # Without the all-photos criterion (a raw Criteria) the same flips would pass unseen.
    assert compare(cand, ref, Criteria(PRECISION_GATE, min_agreement=0.99, confidence=0.95)).passed


# --------------------------------------------------------------------------- the sample-size refusal


def test_clopper_pearson_bound_matches_the_closed_form_and_scipy() -> None:
    # No disagreement: P(all n agree | p) = p ** n = 0.05 -> p = 0.05 ** (1 / n).
    for n in (1, 10, 43, 298, 299, 1000):
        assert agreement_lower_bound(n, n) == pytest.approx(0.05 ** (1 / n), abs=1e-12)
    # One disagreement out of 2: P(X >= 1 | p) = 1 - (1 - p) ** 2 = 0.05 -> p = 1 - sqrt(0.95).
    assert agreement_lower_bound(1, 2) == pytest.approx(1 - math.sqrt(0.95), abs=1e-10)
    assert agreement_lower_bound(0, 5) == 0.0 and agreement_lower_bound(0, 0) == 0.0
    stats = pytest.importorskip("scipy.stats")
    for n, k in ((43, 3), (80, 6), (300, 2), (1000, 17), (5, 4), (150, 14)):
        assert agreement_lower_bound(n - k, n) == pytest.approx(stats.beta.ppf(0.05, n - k, k + 1), abs=1e-9)
        assert agreement_lower_bound(n - k, n, 0.99) == pytest.approx(stats.beta.ppf(0.01, n - k, k + 1), abs=1e-9)


def test_photos_needed_at_the_boundary() -> None:
    # 0.05 ** (1 / n) > 0.99  <=>  n > ln 0.05 / ln 0.99 = 298.07  ->  299.
    assert math.log(0.05) / math.log(0.99) == pytest.approx(298.07, abs=0.01)
    assert photos_needed(0.99) == 299
    assert photos_needed(0.95) == 59  # ln 0.05 / ln 0.95 = 58.4
    assert photos_needed(1.0) is None
    stats = pytest.importorskip("scipy.stats")
    # With one disagreement: the smallest n whose beta quantile exceeds 0.99, found by scanning with SciPy.
    n1 = next(n for n in range(2, 2000) if stats.beta.ppf(0.05, n - 1, 2) > 0.99)
    assert photos_needed(0.99, disagreements=1) == n1
    assert stats.beta.ppf(0.05, n1 - 2, 2) <= 0.99


def _clear_rows(n: int, flips: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ref = np.tile([[0.9, 0.05, 0.05]], (n, 1))
    cand = ref.copy()
    cand[:flips] = [0.05, 0.9, 0.05]
    return cand, ref


def test_too_few_photos_are_refused_with_the_number_needed() -> None:
    criteria = gate_criteria(min_agreement=0.99)
    cand, ref = _clear_rows(298)
    short = compare(cand, ref, criteria)
    assert short.top1_agreement == 1.0 and not short.passed
    (reason,) = short.failures
    assert "too few photos" in reason and "298 non-tie input(s) with 0 disagreement(s)" in reason
    assert "at least 299 non-tie photos" in reason and f"{0.05 ** (1 / 298):.4f}" in reason
    assert short.agreement["photos_needed"]["with_no_disagreement"] == 299
    cand, ref = _clear_rows(299)
    assert compare(cand, ref, criteria).passed
    # Near-ties do not count as photos that show agreement: 299 rows with one tie are 298 non-ties.
    ref_tie = ref.copy()
    ref_tie[0] = [0.497, 0.5, 0.003]
    assert not compare(ref_tie.copy(), ref_tie, criteria).passed
    # One disagreement: the boundary moves to photos_needed(0.99, 1), checked against SciPy above.
    n1 = photos_needed(0.99, disagreements=1)
    assert n1 is not None
    below = compare(*_clear_rows(n1 - 1, flips=1), criteria)
    assert not below.passed and f"{n1} if 1 flip as here" in below.failures[0]
    assert compare(*_clear_rows(n1, flips=1), criteria).passed
    # --confidence 0: the point estimate alone, as before (10 agreeing photos pass 0.99).
    assert compare(*_clear_rows(10), gate_criteria(min_agreement=0.99, confidence=0)).passed
    # verify uses the same rule.
    refused = compare(*_clear_rows(100), verify_criteria("fp16"))
    assert not refused.passed and "too few photos" in refused.failures[0]


def test_a_point_estimate_below_the_criterion_says_so_not_too_few() -> None:
    v = compare(*_clear_rows(1000, flips=20), gate_criteria(min_agreement=0.99))
    assert not v.passed and "is below 0.99" in v.failures[0] and "20 of 1000" in v.failures[0]
    assert not any("too few" in f for f in v.failures)


# --------------------------------------------------------------------------- the paired accuracy drop


def test_accuracy_drop_is_paired_and_counted_by_hand() -> None:
    # Six labelled rows (rows 2..7 of 8). Reference picks [1, 2, 0, 0, 2, 2]; candidate picks [0, 2, 1, 1, 2, 2].
    ref = np.eye(3)[[0, 0, 1, 2, 0, 0, 2, 2]] * 0.8 + 0.2 / 3
    cand = np.eye(3)[[0, 0, 0, 2, 1, 1, 2, 2]] * 0.8 + 0.2 / 3
    truth = np.array([1, 2, 1, 0, 1, 2])
    # Reference right: [T, T, F, T, F, T] = 4/6; candidate right: [F, T, T, F, F, T] = 3/6.
    # lost (ref right, cand wrong): rows 0 and 3 -> 2; gained: row 2 -> 1; drop = (2 - 1) / 6 = 16.67 points.
    v = compare(cand, ref, gate_criteria(min_agreement=0.0, max_drop_points=10.0, confidence=0),
                labels=Labels(truth, start=2, source="hand"))
    acc = v.accuracy
    assert acc is not None and acc["labelled_images"] == 6
    assert acc["accuracy_reference"] == pytest.approx(4 / 6) and acc["accuracy"] == pytest.approx(3 / 6)
    assert acc["accuracy_paired"] == {"both_right": 2, "lost": 2, "gained": 1, "both_wrong": 1}
    assert acc["accuracy_drop_points"] == pytest.approx(100 / 6)
    assert not v.passed and "accuracy drop 16.67 points exceeds 10.00 (2 labelled photo(s) lost, 1 gained" in v.failures[0]
    assert paired_accuracy(np.array([True, False]), np.array([False, True]))["accuracy_drop_points"] == 0.0


def test_gate_labels_join_held_out_and_validation_labels() -> None:
    from facediag.converters.gate import LabelledInputs, gate_labels

    heldout = np.zeros((3, 3, 4, 4), np.float32)
    val = LabelledInputs(np.zeros((2, 3, 4, 4), np.float32), np.array([1, 0]), source="val.csv")
    both = gate_labels(heldout, np.array([2, 2, 0]), val)
    assert both is not None and both.start == 0 and both.values.tolist() == [2, 2, 0, 1, 0]
    only_val = gate_labels(heldout, None, val)
    assert only_val is not None and only_val.start == 3 and only_val.values.tolist() == [1, 0]
    partial = gate_labels(heldout, np.array([2, 2]), val)  # not one per held-out row: held-out labels unused
    assert partial is not None and partial.start == 3
    assert gate_labels(heldout, None, None) is None


def test_calibration_set_labels_become_class_indices() -> None:
    from facediag.calibration.calibration_set import CalibrationSet, Item

    items = [Item("a", "0" * 64, "pale", "calib", False), Item("b", "1" * 64, "healthy", "holdout", False),
             Item("c", "2" * 64, "pale", "holdout", False)]
    cset = CalibrationSet(Path("."), np.zeros((3, 3, 4, 4), np.float32), items)
    assert cset.class_indices(["healthy", "pale"], split="holdout").tolist() == [0, 1]
    assert cset.class_indices(["healthy", "pale"]).tolist() == [1, 0, 1]
    assert cset.class_indices(["healthy", "round"]) is None  # a label that is no class of the bundle
    items[0].label = None
    assert cset.class_indices(["healthy", "pale"]) is None


# --------------------------------------------------------------------------- the gate on real runtimes


def _conv_model(path: Path, seed: int = 0) -> Path:
    """A small real conv net (Conv-Relu-Conv-GAP-Gemm-Softmax) on 112x96 crops, as an ONNX file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.05, (8, 3, 3, 3)), "b1": np.zeros(8),
        "w2": rng.normal(0, 0.2, (16, 8, 3, 3)), "b2": rng.normal(0, 0.1, 16),
        "wf": rng.normal(0, 0.3, (16, 3)), "bf": np.zeros(3), "s": np.array(1 / 255.0),
    }
    nodes = [
        helper.make_node("Mul", ["input", "s"], ["x0"], name="scale"),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 96])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _crops(n: int, offset: int = 0) -> np.ndarray:
    return celeba_inputs(n, offset)


@pytest.fixture()
def small_bundle(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    return make_colour_bundle(tmp_path, _conv_model)


def test_the_gate_refuses_an_identical_model_on_too_few_photos(small_bundle: Path) -> None:
    """Real ONNX Runtime: the same model as candidate agrees everywhere, yet 40 photos cannot show 99 %."""
    import shutil

    from facediag.converters.gate import GateFailed, gate_and_add
    from facediag.edge.bundle import load_bundle

    x = _crops(40)
    candidate = small_bundle / ".model.fp16.onnx.candidate"
    shutil.copy(small_bundle / "model.onnx", candidate)
    before = (small_bundle / "bundle.json").read_bytes()
    with pytest.raises(GateFailed, match="too few photos") as err:
        gate_and_add(load_bundle(small_bundle), "fp16", candidate, x, gate_criteria())
    verdict = err.value.result
    n = verdict.agreement["non_ties"]["images"]
    assert verdict.top1_agreement == 1.0 and verdict.agreement["non_ties"]["lower_bound"] == pytest.approx(0.05 ** (1 / n))
    assert "at least 299 non-tie photos" in str(err.value)
    assert not candidate.exists() and (small_bundle / "bundle.json").read_bytes() == before
    # Criteria that 40 photos can show (0.05 ** (1 / 40) = 0.928 > 0.9): accepted, the record carries the figures.
    shutil.copy(small_bundle / "model.onnx", candidate)
    held_labels = np.zeros(len(x), np.int64)
    gate_and_add(load_bundle(small_bundle), "fp16", candidate, x, gate_criteria(min_agreement=0.9),
                 heldout_labels=held_labels)
    gate = load_bundle(small_bundle).precisions["fp16"].gate
    assert gate["passed"] and gate["criteria"]["confidence"] == 0.95 and gate["criteria"]["min_agreement_all"] == 0.88
    assert gate["agreement"]["all"]["images"] == 40 and gate["labelled_images"] == 40
    assert gate["accuracy_paired"]["lost"] == gate["accuracy_paired"]["gained"] == 0


def test_verify_cli_refuses_too_few_crops_and_says_how_many(small_bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from facediag.cli import main
    from facediag.converters.gate import gate_and_add
    from facediag.edge.bundle import load_bundle

    x = _crops(40)
    candidate = small_bundle / ".model.fp16.onnx.candidate"
    shutil.copy(small_bundle / "model.onnx", candidate)
    gate_and_add(load_bundle(small_bundle), "fp16", candidate, x, gate_criteria(min_agreement=0.9))
    crops = tmp_path / "crops.npy"
    np.save(crops, x)
    argv = ["verify", str(small_bundle), "--allow-unsigned", "--precision", "fp16", "--backend", "onnxruntime",
            "--inputs", str(crops), "--no-record"]
    capsys.readouterr()
    assert main(argv) == 1
    out = capsys.readouterr().out
    record = json.loads(out[out.index("{"):])
    assert record["top1_agreement"] == 1.0 and not record["passed"]
    assert "too few photos" in record["failures"][0] and "at least 299 non-tie photos" in record["failures"][0]
    assert main([*argv, "--min-agreement", "0.9"]) == 0  # 0.05 ** (1 / 40) = 0.928 > 0.9


# --------------------------------------------------------------------------- streamed calibration


def _ort_all_at_once(model: Path, x: np.ndarray, method: object, options: dict, tmp: Path) -> dict:
    """ORT's own calibrator, every batch collected in one collect_data call (the pre-streaming way)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    from facediag.calibration.readers import OrtCalibrationReader

    cal = create_calibrator(model, None, augmented_model_path=str(tmp / "aug.onnx"), calibrate_method=method,
                            providers=["CPUExecutionProvider"], extra_options=options)
    cal.collect_data(OrtCalibrationReader(x, batch_size=len(x)))  # one batch: ORT's histograms of all rows
    return dict(cal.compute_data().items())


@pytest.mark.parametrize("method_name, options", [
    ("Entropy", {}), ("Percentile", {}), ("Percentile", {"symmetric": False}), ("Percentile", {"percentile": 99.9}),
])
def test_streamed_histograms_give_ort_all_at_once_ranges(tmp_path: Path, method_name: str, options: dict) -> None:
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import CalibrationMethod

    from facediag.calibration.readers import OrtCalibrationReader
    from facediag.calibration.streaming import streamed_histogram_ranges

    model = _conv_model(tmp_path / "m.onnx")
    x = _crops(43)  # 43 = 5 batches of 8 + a short one of 3: every row is streamed
    method = CalibrationMethod[method_name]
    expected = _ort_all_at_once(model, x, method, options, tmp_path)
    got = dict(streamed_histogram_ranges(model, OrtCalibrationReader(x, batch_size=8), method, options).items())
    assert got.keys() == expected.keys() and len(got) >= 8
    for name, data in expected.items():
        assert got[name].range_value[0] == pytest.approx(float(data.range_value[0]), rel=1e-6, abs=1e-7), name
        assert got[name].range_value[1] == pytest.approx(float(data.range_value[1]), rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_streamed_quantisation_writes_the_same_scales(tmp_path: Path, method: str) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from facediag.calibration.readers import OrtCalibrationReader
    from facediag.converters.quantize import QuantSettings, can_stream_histograms, quantize_onnx

    if not can_stream_histograms():
        pytest.skip("this onnxruntime takes no calibration cache: quantize falls back to ORT's own collection")
    model = _conv_model(tmp_path / "m.onnx", seed=1)
    x = _crops(40, offset=100)
    params = {}
    for stream in (True, False):
        out = tmp_path / f"q{stream}.onnx"
        how = quantize_onnx(model, out, OrtCalibrationReader(x, batch_size=8), QuantSettings("cpu", method=method),
                            stream=stream)
        assert how["range_collection"] == ("streamed two-pass histograms" if stream else "all batches at once")
        params[stream] = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer
                          if t.name.endswith(("_scale", "_zero_point"))}
    assert params[True].keys() == params[False].keys() and len(params[True]) >= 10
    for name, value in params[False].items():
        np.testing.assert_allclose(params[True][name], value, rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- older verdict records

OLD_GATE = {  # a gate record as release 0.1 wrote it: no agreement block, no confidence in the criteria
    "format": "facediag-verdict/1", "kind": "precision-gate", "passed": True, "candidate": "int8-cpu (onnxruntime CPU)",
    "reference": "fp32 (onnxruntime CPU)", "inputs": "calibration held-out rows", "images": 43,
    "top1_agreement": 1.0, "top1_agreement_all": 0.9302, "near_ties": 4, "near_tie_flips": 3,
    "max_prob_diff": 0.2, "mean_prob_diff": 0.01, "nonfinite_rows": 0, "disagreements": [],
    "criteria": {"kind": "precision-gate", "min_agreement": 0.99, "max_prob_diff": None,
                 "max_accuracy_drop_points": 1.0, "tie_margin": 0.01},
    "failures": [], "checked_utc": "2026-01-01T00:00:00Z",
}


def test_old_verdict_records_still_read(small_bundle: Path) -> None:
    from facediag.edge.bundle import load_bundle

    old = read_verdict(OLD_GATE)
    # 43 - 4 ties = 39 non-ties, all agreeing; 0.9302 * 43 = 40 agreeing over all rows.
    assert old["agreement"]["non_ties"]["images"] == 39 and old["agreement"]["non_ties"]["agreeing"] == 39
    assert old["agreement"]["all"]["agreeing"] == 40 and old["agreement"]["recorded_before_bounds"] is True
    # What that old gate could not show: 39 photos bound agreement at 0.05 ** (1 / 39) = 0.926 only.
    assert old["agreement"]["non_ties"]["lower_bound"] == pytest.approx(0.05 ** (1 / 39))
    assert read_verdict({})["passed"] is False
    new = compare(*_clear_rows(5), Criteria(PRECISION_GATE)).to_dict()
    assert read_verdict(new)["agreement"] == new["agreement"]
    # The station's readers only need "passed": an old record in bundle.json still loads.
    bundle = load_bundle(small_bundle)
    (small_bundle / "model.int8-cpu.onnx").write_bytes((small_bundle / "model.onnx").read_bytes())
    bundle.add_precision("int8-cpu", "model.int8-cpu.onnx", dict(OLD_GATE), target="cpu")
    assert load_bundle(small_bundle).precisions["int8-cpu"].gate["top1_agreement_all"] == 0.9302


def test_old_and_new_verify_records_round_trip_through_an_engine_manifest(tmp_path: Path) -> None:
    from facediag.edge.engine.manifest import EngineManifest

    new = compare(*_clear_rows(400), verify_criteria("fp16")).to_dict()
    old = {**OLD_GATE, "kind": "device-verify"}
    for record in (old, new):
        manifest = EngineManifest(
            engine_file="model.fp16.engine", engine_sha256="e" * 64, onnx_file="model.fp16.onnx", onnx_sha256="a" * 64,
            precision="fp16", tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability=(8, 7),
            input_name="input", input_shapes={"min": [1, 3, 112, 96], "opt": [1, 3, 112, 96], "max": [8, 3, 112, 96]},
            verify=record,
        )
        path = tmp_path / "model.fp16.engine.json"
        manifest.save(path)
        loaded = EngineManifest.load(path).verify or {}
        assert loaded.get("passed") is True  # all the station's engine selection reads
        assert read_verdict(loaded)["agreement"]["non_ties"]["images"] == (39 if record is old else 400)
