"""The researcher's report: averages, balanced accuracy, PR curves, normalised confusion, operating points, reliability.

Each statistic is checked against a case worked out by hand and against scikit-learn
(called here directly, on the same data, never through the code under test). The plots
are read back from the matplotlib figures the report saves (the points drawn) and as PNG
files; report.json is read back by the commands that consume it (compare, export).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_curve as sk_roc_curve

from facediag.training import averages as A
from facediag.training import metrics as M

# Hand-checked case (rows = true class):        tp  predicted  support
#   true 0: predicted 0, 0, 1, 2 -> [2, 1, 1]   2      2          4
#   true 1: predicted 1, 1       -> [0, 2, 0]   2      4          2
#   true 2: predicted 1          -> [0, 1, 0]   0      1          1
# precision [1, 1/2, 0], recall [1/2, 1, 0], F1 2tp/(2tp+fp+fn) = [4/6, 4/6, 0]
Y = np.array([0, 0, 0, 0, 1, 1, 2])
P = np.array([0, 0, 1, 2, 1, 1, 1])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _random_case(seed: int, n: int = 80, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return y, _softmax(rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y])


# --------------------------------------------------------------------------------------- averages


def test_averages_by_hand() -> None:
    got = A.averaged_scores(Y, P)
    assert got["macro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 4 / 9})
    assert got["weighted"] == pytest.approx({"precision": 5 / 7, "recall": 4 / 7, "f1": 4 / 7})
    assert got["balanced_accuracy"] == pytest.approx(0.5)
    cm = np.array([[2, 1, 1], [0, 2, 0], [0, 1, 0]])
    assert M.confusion_matrix(Y, P, 3).tolist() == cm.tolist()
    from_cm = A.from_confusion(cm[None])
    assert from_cm["macro_f1"][0] == pytest.approx(4 / 9) and from_cm["weighted_precision"][0] == pytest.approx(5 / 7)
    assert from_cm["balanced_accuracy"][0] == pytest.approx(0.5)


def test_a_class_predicted_but_never_true_counts_as_zero_in_macro_not_in_balanced_accuracy() -> None:
    # true 0: predicted 0, 2; true 1: predicted 1, 1. Class 2 has no sample but is predicted once.
    y, p = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    got = A.averaged_scores(y, p)
    assert got["macro"]["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert got["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["weighted"]["recall"] == pytest.approx(3 / 4)  # weight 0 for the class without samples
    from_cm = A.from_confusion(M.confusion_matrix(y, p, 3)[None])
    assert from_cm["macro_recall"][0] == pytest.approx(got["macro"]["recall"])
    assert from_cm["balanced_accuracy"][0] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(12))
def test_averages_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 6))
    n = int(rng.integers(3, 40))
    y = rng.integers(0, c, n)
    p = np.where(rng.uniform(size=n) < 0.6, y, rng.integers(0, c, n))  # some classes absent now and then
    got = A.averaged_scores(y, p)
    from_cm = A.from_confusion(M.confusion_matrix(y, p, c)[None])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_ba = balanced_accuracy_score(y, p)
    assert got["balanced_accuracy"] == pytest.approx(expected_ba)
    assert from_cm["balanced_accuracy"][0] == pytest.approx(expected_ba)
    for kind in ("macro", "weighted"):
        expected = precision_recall_fscore_support(y, p, average=kind, zero_division=0)[:3]
        assert [got[kind][s] for s in ("precision", "recall", "f1")] == pytest.approx(list(expected))
        assert [from_cm[f"{kind}_{s}"][0] for s in ("precision", "recall", "f1")] == pytest.approx(list(expected))


def test_per_class_figures_and_confusion_equal_scikit_learn() -> None:
    for seed in range(6):
        y, probs = _random_case(seed, n=50, c=3 + seed % 3)
        pred = probs.argmax(axis=1)
        c = probs.shape[1]
        cm = M.confusion_matrix(y, pred, c)
        assert cm.tolist() == sk_confusion_matrix(y, pred, labels=range(c)).tolist()
        pc = M.per_class_metrics(cm)
        prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=range(c), zero_division=np.nan)
        np.testing.assert_allclose(pc["precision"], prec)
        np.testing.assert_allclose(pc["sensitivity"], rec)
        np.testing.assert_allclose(pc["f1"], f1)
        assert pc["support"].tolist() == support.tolist()
        for k in range(c):
            fpr, tpr, _ = M.roc_curve(y == k, probs[:, k])
            sk_fpr, sk_tpr, _ = sk_roc_curve(y == k, probs[:, k], drop_intermediate=False)
            np.testing.assert_allclose(fpr, sk_fpr)
            np.testing.assert_allclose(tpr, sk_tpr)
            assert M.roc_auc(y == k, probs[:, k]) == pytest.approx(roc_auc_score(y == k, probs[:, k]))


def test_bootstrap_intervals_are_the_percentiles_of_scikit_learn_on_the_same_resamples() -> None:
    y, probs = _random_case(3, n=30, c=3)
    pred = probs.argmax(axis=1)
    resamples, seed = 200, 7
    got = A.bootstrap_averages(y, pred, 3, resamples=resamples, seed=seed)
    rng = np.random.default_rng(seed)  # the same draws, in the same chunks of 100
    values: dict[str, list[float]] = {"balanced_accuracy": [], "macro_f1": [], "weighted_precision": []}
    for _ in range(resamples // 100):
        for counts in rng.multinomial(y.size, np.full(y.size, 1.0 / y.size), size=100):
            yy, pp = np.repeat(y, counts), np.repeat(pred, counts)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values["balanced_accuracy"].append(balanced_accuracy_score(yy, pp))
            values["macro_f1"].append(precision_recall_fscore_support(yy, pp, average="macro", zero_division=0)[2])
            values["weighted_precision"].append(
                precision_recall_fscore_support(yy, pp, average="weighted", zero_division=0)[0])
    for k, v in values.items():
        assert got[k] == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])))
    assert got["balanced_accuracy"][0] < A.averaged_scores(y, pred)["balanced_accuracy"] < got["balanced_accuracy"][1]


def test_summary_carries_the_averages_with_intervals() -> None:
    y, probs = _random_case(1)
    s = M.summarize(y, probs, ["a", "b", "c", "d"])
    A.add_average_intervals(s, y, probs, resamples=300, seed=0)
    json.dumps(s, allow_nan=False)
    pred = probs.argmax(axis=1)
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["averages"]["macro"]["f1"] == pytest.approx(precision_recall_fscore_support(y, pred, average="macro")[2])
    assert s["macro_f1"] == pytest.approx(s["averages"]["macro"]["f1"])  # the older figure is the same average
    lo, hi = s["balanced_accuracy_ci95"]
    assert lo <= s["balanced_accuracy"] <= hi and hi - lo > 0.02
    for kind in ("macro", "weighted"):
        for stat in ("precision", "recall", "f1"):
            lo, hi = s["averages"][kind][f"{stat}_ci95"]
            assert lo <= s["averages"][kind][stat] <= hi


# --------------------------------------------------------------------------------------- PR curves


def test_average_precision_by_hand_and_against_scikit_learn() -> None:
    # Ranked: 0.9 pos (R 1/2, P 1), 0.8 neg, 0.7 pos (R 1, P 2/3), 0.1 neg: AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    pr = M.one_vs_rest_pr(np.array([1, 0, 1, 0]), probs)
    assert pr[1]["average_precision"] == pytest.approx(5 / 6)
    for seed in range(4):
        y, p = _random_case(seed, n=40, c=3)
        for k, curve in enumerate(M.one_vs_rest_pr(y, p)):
            prec, rec, _ = precision_recall_curve(y == k, p[:, k])
            np.testing.assert_allclose(curve["precision"], prec)
            np.testing.assert_allclose(curve["recall"], rec)
            assert curve["average_precision"] == pytest.approx(average_precision_score(y == k, p[:, k]))
    assert M.one_vs_rest_pr(np.array([0, 0, 1]), np.eye(3)[[0, 0, 1]])[2] is None  # class without samples


# --------------------------------------------------------------------------------------- confusion


def test_normalised_confusion_rows_sum_to_one_and_equal_scikit_learn() -> None:
    y, probs = _random_case(5, n=60, c=4)
    probs5 = np.concatenate([probs * 0.9, np.full((60, 1), 0.1)], axis=1)  # class 4: no sample
    s = M.summarize(y, probs5, list("abcde"))
    rows = s["confusion_matrix_normalized"]
    assert rows[4] is None
    for r in rows[:4]:
        assert sum(r) == pytest.approx(1.0)
    expected = sk_confusion_matrix(y, probs5.argmax(1), labels=range(5), normalize="true")
    np.testing.assert_allclose(np.array(rows[:4]), expected[:4])
    # Hand case: true 1 predicted [0, 2, 0] -> row [0, 1, 0]; true 0 -> [2, 1, 1] / 4.
    assert M.normalized_confusion_matrix(M.confusion_matrix(Y, P, 3))[:2] == [[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]]


def test_confusion_plot_shows_counts_beside_rows_that_sum_to_one() -> None:
    from facediag.training.report import confusion_figure

    y, probs = _random_case(2, n=45, c=3)
    s = M.summarize(y, probs, ["a", "b", "c"])
    fig = confusion_figure(s)
    counts, norm = (ax.images[0].get_array() for ax in fig.axes[:2])
    assert np.asarray(counts).tolist() == s["confusion_matrix"]
    np.testing.assert_allclose(np.asarray(norm).sum(axis=1), 1.0)
    shown = [t.get_text() for t in fig.axes[1].texts]
    assert f"{s['confusion_matrix_normalized'][0][0]:.2f}" in shown


# --------------------------------------------------------------------------------------- ROC points


def test_operating_points_are_drawn_at_the_thresholds_fpr_and_tpr() -> None:
    from facediag.training.report import OPERATING_POINT_GID, roc_figure

    y, probs = _random_case(4, n=90, c=3)
    thresholds = {"b": 0.31, "c": 0.55}
    s = M.summarize(y, probs, ["a", "b", "c"], thresholds=thresholds)
    fig = roc_figure(s)
    ax = fig.axes[0]
    marked = {line.get_gid()[len(OPERATING_POINT_GID):]: line for line in ax.get_lines()
              if (line.get_gid() or "").startswith(OPERATING_POINT_GID)}
    assert set(marked) == {"b", "c"}  # "a" has no threshold: no point
    for name, t in thresholds.items():
        k = "abc".index(name)
        called = probs[:, k] >= t
        fpr, tpr = called[y != k].mean(), called[y == k].mean()  # written out, not taken from the summary
        assert marked[name].get_xdata()[0] == pytest.approx(fpr)
        assert marked[name].get_ydata()[0] == pytest.approx(tpr)
        sk_fpr, sk_tpr, _ = sk_roc_curve(y == k, probs[:, k], drop_intermediate=False)
        assert np.any(np.isclose(sk_fpr, fpr) & np.isclose(sk_tpr, tpr))  # a vertex of the class's curve


# --------------------------------------------------------------------------------------- reliability


def test_reliability_bins_are_scikit_learns_calibration_curve_and_ece_is_read_off_it() -> None:
    y, probs = _random_case(6, n=200, c=3)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    rel = M.reliability_bins(y, probs, n_bins=10)
    filled = rel["count"] > 0
    np.testing.assert_allclose(rel["accuracy"][filled], prob_true)
    np.testing.assert_allclose(rel["confidence"][filled], prob_pred)
    assert rel["count"].sum() == 200
    counts = rel["count"][filled]
    assert M.expected_calibration_error(y, probs, 10) == pytest.approx(
        float(np.sum(counts / 200 * np.abs(prob_true - prob_pred))))


def test_reliability_plot_draws_the_calibration_points_and_their_ece() -> None:
    from facediag.training.report import reliability_figure

    y, probs = _random_case(7, n=150, c=2)
    s = M.summarize(y, probs, ["a", "b"], n_bins=8)
    fig = reliability_figure(s)
    ax = fig.axes[0]
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=8)
    curve = [line for line in ax.get_lines() if len(line.get_xdata()) == len(prob_pred) and line.get_marker() != "None"]
    assert curve, "no calibration curve drawn"
    np.testing.assert_allclose(curve[0].get_xdata(), prob_pred)
    np.testing.assert_allclose(curve[0].get_ydata(), prob_true)
    assert f"ECE {s['ece']:.3f}" in ax.get_title()
    bars = [p.get_height() for p in fig.axes[1].patches]
    assert bars == s["reliability"]["count"]


# --------------------------------------------------------------------------------------- files and readers


def _report(seed: int, model_id: str) -> dict:
    from facediag.training.evaluation import prediction_rows
    from facediag.training.stats import summary_intervals

    classes = ["healthy", "pale", "rosy"]
    y, probs = _random_case(0, n=60, c=3)  # the same photos and labels in both reports
    probs = _softmax(np.log(probs) + np.random.default_rng(seed).normal(scale=0.5, size=probs.shape))
    thresholds = {"pale": 0.3, "rosy": 0.35}
    s = M.summarize(y, probs, classes, thresholds=thresholds)
    summary_intervals(s, y, probs, resamples=200)
    A.add_average_intervals(s, y, probs, resamples=200)
    return {"model_id": model_id, "model": {"classes": classes, "healthy_class": "healthy"}, "split": "test",
            "thresholds": thresholds,
            "threshold_selection": {"split": "val", "target_sensitivity": 0.9,
                                    "on_val": {"pale": {"sensitivity": 0.9, "specificity": 0.7},
                                               "rosy": {"sensitivity": 0.9, "specificity": 0.6}}},
            "metrics": s,
            "predictions": prediction_rows([f"test/{i:03d}.jpg" for i in range(60)], y, probs, classes)}


def test_report_files_are_valid_pngs_and_json_the_consumers_read(tmp_path: Path) -> None:
    from PIL import Image

    from facediag.cli import main
    from facediag.commands.compare import load_predictions
    from facediag.converters.threshold_check import check_threshold_specificity
    from facediag.training.report import PLOT_FILES, format_table, write_report

    paths = {}
    for seed, name in ((1, "a"), (2, "b")):
        paths[name] = write_report(tmp_path / name, _report(seed, f"model-{name}"))
    assert set(PLOT_FILES) == {"confusion_matrix.png", "roc.png", "pr.png", "reliability.png"}
    for plot in PLOT_FILES:
        with Image.open(paths["a"][plot]) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
            im.load()
            assert np.unique(np.asarray(im.convert("L"))).size > 10  # something was drawn
    data = json.loads(paths["a"]["report.json"].read_text(), parse_constant=lambda c: pytest.fail(c))
    m = data["metrics"]
    for key in ("top1", "top1_ci95", "macro_f1", "macro_auc", "ece", "confusion_matrix", "per_class", "roc",
                "reliability", "at_thresholds", "balanced_accuracy", "balanced_accuracy_ci95", "averages",
                "confusion_matrix_normalized", "pr", "macro_average_precision"):
        assert key in m, key
    assert {"precision_ci95", "sensitivity_ci95", "specificity_ci95", "auc_ci95", "average_precision"} <= set(
        m["per_class"]["pale"])
    table = format_table(data)
    assert "balanced accuracy" in table and "weighted" in table and " AP " in table
    # The readers: export --thresholds (and its specificity check) and compare.
    from facediag.converters.export import thresholds_from_report

    found, source = thresholds_from_report(paths["a"]["report.json"], ["healthy", "pale", "rosy"], "healthy")
    assert found == {"pale": 0.3, "rosy": 0.35} and "0.9" in source
    record = check_threshold_specificity(paths["a"]["report.json"], found, ["healthy", "pale", "rosy"], "healthy")
    assert record["validation"]["rosy"]["specificity"] == 0.6
    model_id, preds = load_predictions(tmp_path / "a")
    assert model_id == "model-a" and len(preds) == 60
    assert main(["-q", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0


def test_a_report_from_before_the_new_fields_still_plots(tmp_path: Path) -> None:
    from facediag.training.report import format_table, write_report

    report = _report(1, "old")
    m = report["metrics"]
    for key in ("balanced_accuracy", "balanced_accuracy_ci95", "averages", "confusion_matrix_normalized", "pr",
                "macro_average_precision"):
        m.pop(key)
    paths = write_report(tmp_path, report)
    assert {"confusion_matrix.png", "roc.png", "pr.png", "reliability.png"} <= set(paths)
    assert "balanced accuracy" not in format_table(report)
