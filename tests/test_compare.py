"""The one comparison layer: hand-checked figures, one tie rule, one verdict from export, gate and verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facediag.converters.compare import (
    DEVICE_VERIFY,
    EXPORT_PARITY,
    PRECISION_GATE,
    VERDICT_FORMAT,
    Criteria,
    Labels,
    compare,
    gate_criteria,
    verify_criteria,
)
from facediag.edge.errors import ConfigError, FacediagError
from tests.colour_model import (
    celeba_inputs,
    colour_weights,
    make_colour_bundle,
    write_colour_classifier,
)

# Reference rows, each with its top-1 margin worked out by hand:
REF = np.array(
    [
        [0.70, 0.20, 0.10],  # margin 0.50: decisive, class 0
        [0.10, 0.60, 0.30],  # margin 0.30: decisive, class 1
        [0.500, 0.495, 0.005],  # margin 0.005: a near-tie
        [0.30, 0.30, 0.40],  # margin 0.10: decisive, class 2
        [0.45, 0.25, 0.30],  # margin 0.15: decisive, class 0
    ]
)
CAND = np.array(
    [
        [0.69, 0.21, 0.10],  # agrees, |diff| 0.01
        [0.40, 0.35, 0.25],  # flips a decisive row to class 0, |diff| 0.30 (the largest)
        [0.490, 0.505, 0.005],  # flips the near-tie, |diff| 0.01
        [0.28, 0.30, 0.42],  # agrees, |diff| 0.02
        [0.45, 0.25, 0.30],  # identical
    ]
)


def test_ties_are_left_out_of_agreement_and_counted() -> None:
    v = compare(CAND, REF, Criteria(PRECISION_GATE))
    assert v.images == 5 and v.near_ties == 1 and v.near_tie_flips == 1
    assert v.top1_agreement == pytest.approx(3 / 4)  # decisive rows 0, 1, 3, 4; row 1 flipped
    assert v.top1_agreement_all == pytest.approx(3 / 5)  # rows 1 and 2 differ
    assert v.disagreements == [1]  # the near-tie's flip is not a disagreement
    assert v.max_prob_diff == pytest.approx(0.30)
    assert v.mean_prob_diff == pytest.approx((0.02 + 0.60 + 0.02 + 0.04 + 0.0) / 15)
    assert v.passed  # no limit set: everything is reported only


def test_tie_margin_decides_which_rows_are_near_ties() -> None:
    # With a margin of 0.2 rows 3 (0.10) and 4 (0.15) become near-ties too; both agree, row 1 still flips.
    v = compare(CAND, REF, Criteria(PRECISION_GATE, tie_margin=0.2))
    assert v.near_ties == 3 and v.top1_agreement == pytest.approx(1 / 2)
    # With margin 0 nothing is a tie: the near-tie's flip now counts against the candidate.
    v0 = compare(CAND, REF, Criteria(PRECISION_GATE, tie_margin=0.0))
    assert v0.near_ties == 0 and v0.top1_agreement == pytest.approx(3 / 5) and v0.disagreements == [1, 2]


def test_limits_fail_with_a_reason_each() -> None:
    v = compare(CAND, REF, Criteria(DEVICE_VERIFY, min_agreement=0.8, max_prob_diff=0.25))
    assert not v.passed and len(v.failures) == 2
    assert "top-1 agreement 0.7500 is below 0.8" in v.failures[0] and "1 of 4 decisive" in v.failures[0]
    assert "0.3 exceeds 0.25" in v.failures[1]
    assert compare(CAND, REF, Criteria(DEVICE_VERIFY, min_agreement=0.75, max_prob_diff=0.31)).passed


def test_a_near_tie_flip_alone_does_not_fail_agreement_but_its_probability_move_counts() -> None:
    cand = REF.copy()
    cand[2] = [0.490, 0.505, 0.005]  # only the near-tie flips, by 0.01
    assert compare(cand, REF, Criteria(DEVICE_VERIFY, min_agreement=1.0, max_prob_diff=0.01 + 1e-9)).passed
    cand[2] = [0.30, 0.695, 0.005]  # the same flip, but a 0.2 probability move
    failed = compare(cand, REF, Criteria(DEVICE_VERIFY, min_agreement=1.0, max_prob_diff=0.05))
    assert not failed.passed and failed.top1_agreement == 1.0 and "exceeds 0.05" in failed.failures[0]


def test_labels_give_the_accuracy_drop() -> None:
    # Labels for rows 1..4: true classes 1, 0, 2, 0. The reference picks 1, 0, 2, 0 (all right); the
    # candidate picks 0, 1, 2, 0 (two right): a drop of 50 points.
    labels = Labels(np.array([1, 0, 2, 0]), start=1, source="hand")
    v = compare(CAND, REF, Criteria(PRECISION_GATE, max_drop_points=10.0), labels=labels)
    assert v.accuracy is not None
    assert v.accuracy["accuracy_reference"] == pytest.approx(1.0) and v.accuracy["accuracy"] == pytest.approx(0.5)
    assert v.accuracy["accuracy_drop_points"] == pytest.approx(50.0) and v.accuracy["labelled_images"] == 4
    assert not v.passed and "accuracy drop 50.00 points" in v.failures[0]
    assert v.to_dict()["accuracy_drop_points"] == pytest.approx(50.0)


def test_nan_rows_fail_and_never_reach_json_as_infinity() -> None:
    cand = CAND.copy()
    cand[0, 1] = np.nan
    v = compare(cand, REF, Criteria(DEVICE_VERIFY, min_agreement=0.0, max_prob_diff=1.0))
    assert not v.passed and v.nonfinite_rows == 1 and "NaN" in v.failures[0]
    assert 0 in v.disagreements  # a NaN row counts as decisive and wrong
    record = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert record["max_prob_diff"] is None and record["passed"] is False


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(FacediagError, match="output shape"):
        compare(CAND[:, :2], REF, Criteria(DEVICE_VERIFY))
    with pytest.raises(ConfigError, match="no inputs"):
        compare(CAND[:0], REF[:0], Criteria(DEVICE_VERIFY))
    bad_ref = REF.copy()
    bad_ref[1, 1] = np.inf
    with pytest.raises(FacediagError, match="cannot be a reference"):
        compare(CAND, bad_ref, Criteria(DEVICE_VERIFY))
    for kwargs in ({"tie_margin": 1.0}, {"min_agreement": 1.01}, {"max_prob_diff": -0.1}, {"max_drop_points": -1}):
        with pytest.raises(ConfigError):
            Criteria(PRECISION_GATE, **kwargs)


def test_verify_criteria_take_the_precision_tables_default() -> None:
    from facediag.edge import precision as precision_table

    for row in precision_table.PRECISIONS:
        assert verify_criteria(row.name).max_prob_diff == row.verify_max_prob_diff
    assert verify_criteria("fp16", max_prob_diff=0.5).max_prob_diff == 0.5
    g = gate_criteria()
    assert (g.min_agreement, g.max_drop_points, g.max_prob_diff, g.tie_margin) == (0.99, 1.0, None, 0.01)


# --------------------------------------------------------------------------- the three callers, real runtimes



def _crops(n: int) -> np.ndarray:
    return celeba_inputs(n)


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    pytest.importorskip("onnxruntime")
    return make_colour_bundle(tmp_path)


def _expected_agreement(shift: float, x: np.ndarray, margin: float = 0.01) -> float:
    """The agreement figure worked out in numpy, independently of ONNX Runtime and of compare()."""

    def probs(s: float) -> np.ndarray:
        w, b = colour_weights(s)
        z = (x.astype(np.float64) / 255.0).mean(axis=(2, 3)) @ w + b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ref, cand = probs(0.0), probs(shift)
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= margin
    return float(np.mean(ref.argmax(1)[decisive] == cand.argmax(1)[decisive]))


def test_gate_and_verify_record_the_same_verdict(bundle_dir: Path) -> None:
    """fp16 gate and verify of the same file on the same crops: one verdict type, the same agreement figure."""
    from facediag.converters.gate import gate_and_add
    from facediag.converters.verify import verify_bundle
    from facediag.edge.bundle import load_bundle

    x = _crops(40)
    shift = 0.3
    expected = _expected_agreement(shift, x)
    assert 0.0 < expected < 1.0  # the shifted model really flips some decisive crops
    candidate = bundle_dir / ".model.fp16.onnx.candidate"
    write_colour_classifier(candidate, shift=shift)
    bundle = load_bundle(bundle_dir)
    criteria = gate_criteria(min_agreement=0.0, max_drop_points=100.0)
    gated = gate_and_add(bundle, "fp16", candidate, x, criteria, settings={"tool": "test"})
    gate = load_bundle(bundle_dir).precisions["fp16"].gate
    verified = verify_bundle(bundle_dir, "fp16", x, backend="onnxruntime", min_agreement=0.0, max_prob_diff=1.0)
    assert gated.top1_agreement == pytest.approx(expected) == verified.top1_agreement
    assert gated.near_ties == verified.near_ties and gated.max_prob_diff == pytest.approx(verified.max_prob_diff)
    record = verified.to_dict()
    assert gate["format"] == record["format"] == VERDICT_FORMAT
    assert (gate["kind"], record["kind"]) == (PRECISION_GATE, DEVICE_VERIFY)
    shared = set(gate) & set(record)
    assert {"passed", "top1_agreement", "near_ties", "max_prob_diff", "criteria", "failures"} <= shared
    assert gate["settings"] == {"tool": "test"} and gate["heldout_images"] == 40
    # Verify's default limits are stricter than the gate's lowered ones here: it fails, naming why.
    strict = verify_bundle(bundle_dir, "fp16", x, backend="onnxruntime")
    assert not strict.passed and strict.top1_agreement == pytest.approx(expected)


def test_export_parity_is_the_same_verdict(bundle_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from facediag.converters.export import ExportError, parity

    class Colour(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w, b = colour_weights(0.0)
            self.w, self.b = torch.from_numpy(w), torch.from_numpy(b)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax((x / 255.0).mean(dim=(2, 3)) @ self.w + self.b, dim=1)

    x = _crops(12)
    record = parity(Colour(), bundle_dir / "model.onnx", x, tolerance=1e-4)
    assert record["format"] == VERDICT_FORMAT and record["kind"] == EXPORT_PARITY and record["passed"]
    assert record["reference"] == "pytorch" and record["images"] == 12 and record["max_prob_diff"] <= 1e-4
    write_colour_classifier(bundle_dir / "shifted.onnx", shift=0.3)
    with pytest.raises(ExportError, match="differ by"):
        parity(Colour(), bundle_dir / "shifted.onnx", x, tolerance=1e-4)
