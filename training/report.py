"""The evaluation report: report.json, four PNG plots, and a text table for the terminal.

Input is the dict from ``facediag.training.metrics.summarize`` (with the 95% intervals of
``facediag.training.stats.summary_intervals`` when present) plus whatever context the
caller adds (model id, split, skipped photos, thresholds, per-photo ``predictions``). Plots are
scikit-learn's displays (ConfusionMatrixDisplay, RocCurveDisplay, PrecisionRecallDisplay,
CalibrationDisplay) on matplotlib's Agg backend, so they work on a headless workstation or CI:
confusion_matrix.png (counts beside the row-normalised matrix), roc.png (the thresholds'
operating points marked), pr.png and reliability.png (top-1 confidence).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import atomic_write_bytes

log = logging.getLogger(__name__)

PLOT_FILES = ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats (invalid JSON) with None, recursively; numpy values become Python ones, paths strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON (no NaN, keys in the caller's order) atomically (``facediag.edge.atomicio``)."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically, then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _class_labels(summary: dict[str, Any]) -> list[str]:
    return [str(c) for c in summary["classes"]]


def confusion_figure(summary: dict[str, Any]) -> Any:
    """Counts (left) and the row-normalised matrix (right: each true class's row sums to 1), scikit-learn displays."""
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    classes = _class_labels(summary)
    cm = np.asarray(summary["confusion_matrix"], dtype=np.int64)
    rows = summary.get("confusion_matrix_normalized")
    if rows is None:  # a report from before the normalised matrix was stored
        from facediag.training.metrics import normalized_confusion_matrix

        rows = normalized_confusion_matrix(cm)
    norm = np.array([r if r is not None else [np.nan] * len(classes) for r in rows], dtype=np.float64)
    size = max(4.0, 0.9 * len(classes) + 2.5)
    fig, (ax_n, ax_r) = plt.subplots(1, 2, figsize=(2 * size + 1.0, size))
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(
        ax=ax_n, cmap="Blues", values_format="d", colorbar=False, xticks_rotation=45)
    ax_n.set_title(f"counts (n={int(cm.sum())}, top-1 {_pct(summary.get('top1')).strip()})")
    ConfusionMatrixDisplay(norm, display_labels=classes).plot(
        ax=ax_r, cmap="Blues", values_format=".2f", colorbar=True, xticks_rotation=45, im_kw={"vmin": 0.0, "vmax": 1.0})
    ax_r.set_title("normalised by true class (rows sum to 1)")
    for ax in (ax_n, ax_r):
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    fig.tight_layout()
    return fig


def plot_confusion_matrix(summary: dict[str, Any], path: Path) -> None:
    """``confusion_figure`` written as a PNG."""
    _save_figure(confusion_figure(summary), path)


OPERATING_POINT_GID = "operating-point:"  # gid of the marker of a class's threshold on the ROC plot


def roc_figure(summary: dict[str, Any]) -> Any:
    """One-vs-rest ROC per class (scikit-learn's RocCurveDisplay), the thresholds' operating points marked.

    A class with a threshold in ``summary["at_thresholds"]`` gets a marker at (1 - specificity,
    sensitivity) of "probability >= threshold" on the evaluated photos: a vertex of its curve.
    """
    import numpy as np
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    at = summary.get("at_thresholds") or {}
    for name, roc in summary["roc"].items():
        if roc is None:
            continue
        auc = summary["per_class"][name]["auc"]
        # arrays, not lists: newer scikit-learn reads lists as several curves
        RocCurveDisplay(fpr=np.asarray(roc["fpr"], dtype=np.float64), tpr=np.asarray(roc["tpr"], dtype=np.float64),
                        roc_auc=auc).plot(ax=ax, name=str(name))
        colour = ax.get_lines()[-1].get_color()
        point = at.get(name) or {}
        sens, spec = point.get("sensitivity"), point.get("specificity")
        if sens is None or spec is None:
            continue
        ax.plot([1.0 - spec], [sens], marker="o", markersize=9, markerfacecolor="none", markeredgewidth=2,
                linestyle="none", color=colour, gid=f"{OPERATING_POINT_GID}{name}",
                label=f"{name} at threshold {point['threshold']:.3f} (sens {sens:.2f}, spec {spec:.2f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC, one class vs the rest; circles: chosen thresholds")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def plot_roc(summary: dict[str, Any], path: Path) -> None:
    """``roc_figure`` written as a PNG."""
    _save_figure(roc_figure(summary), path)


def pr_figure(summary: dict[str, Any]) -> Any:
    """One-vs-rest precision-recall curve per class (scikit-learn's PrecisionRecallDisplay), AP in the legend."""
    import numpy as np
    from sklearn.metrics import PrecisionRecallDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    n = max(1, int(summary["n"]))
    for name, pr in (summary.get("pr") or {}).items():
        if pr is None:
            continue
        ap = summary["per_class"][name].get("average_precision")
        PrecisionRecallDisplay(precision=np.asarray(pr["precision"], dtype=np.float64),
                               recall=np.asarray(pr["recall"], dtype=np.float64), average_precision=ap).plot(
            ax=ax, name=str(name))
        prevalence = summary["per_class"][name]["support"] / n
        ax.axhline(prevalence, linestyle=":", linewidth=1, color=ax.get_lines()[-1].get_color())
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title("precision-recall, one class vs the rest (dotted: prevalence)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=7)
    else:  # a report written before the curves were stored
        ax.text(0.5, 0.5, "no precision-recall curves in this report", ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_pr(summary: dict[str, Any], path: Path) -> None:
    """``pr_figure`` written as a PNG."""
    _save_figure(pr_figure(summary), path)


def reliability_figure(summary: dict[str, Any]) -> Any:
    """Reliability diagram of the top-1 confidence (scikit-learn's CalibrationDisplay) and the samples per bin.

    Each point is one non-empty bin at (mean top-1 confidence, share right); the ECE in the title
    is the count-weighted mean of the vertical gaps drawn, so it is read off this very plot.
    """
    import numpy as np
    from sklearn.calibration import CalibrationDisplay

    plt = _pyplot()
    rel = summary["reliability"]
    edges = np.asarray(rel["edges"], dtype=np.float64)
    count = np.asarray(rel["count"], dtype=np.int64)
    filled = [i for i, k in enumerate(count) if k > 0 and rel["accuracy"][i] is not None]
    acc = np.array([rel["accuracy"][i] for i in filled], dtype=np.float64)
    conf = np.array([rel["confidence"][i] for i in filled], dtype=np.float64)
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    CalibrationDisplay(acc, conf, np.repeat(conf, count[filled])).plot(ax=ax, name="top-1 class")
    ax.vlines(conf, np.minimum(acc, conf), np.maximum(acc, conf), colors="red", alpha=0.5, label="gap")
    ece = summary.get("ece")
    ax.set_title(f"reliability (ECE {ece:.3f}, {summary['ece_bins']} equal-width bins)" if ece is not None
                 else "reliability")
    ax.set_ylabel("share right (top-1 is the true class)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(edges[:-1], count, width=np.diff(edges), align="edge", edgecolor="black")
    ax_count.set_xlabel("top-1 confidence")
    ax_count.set_ylabel("photos")
    fig.tight_layout()
    return fig


def plot_reliability(summary: dict[str, Any], path: Path) -> None:
    """``reliability_figure`` written as a PNG."""
    _save_figure(reliability_figure(summary), path)


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100.0 * v:5.1f}%"


def _f(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def _ci(v: list[float] | None) -> str:
    return "    n/a    " if not v or v[0] is None or v[1] is None else f"[{v[0]:.3f}-{v[1]:.3f}]"


def _interval_lines(m: dict[str, Any], width: int) -> list[str]:
    """Per class, the 95% intervals (Wilson; AUC: bootstrap) when the summary carries them."""
    if "top1_ci95" not in m:
        return []
    lines = [f"95% intervals (proportions: Wilson; AUC: stratified bootstrap, {m.get('intervals', {}).get('resamples', '?')} "
             "resamples)"]
    for name in m["classes"]:
        r = m["per_class"][name]
        lines.append(f"{name:<{width}}  prec {_ci(r.get('precision_ci95'))}  sens {_ci(r.get('sensitivity_ci95'))}  "
                     f"spec {_ci(r.get('specificity_ci95'))}  AUC {_ci(r.get('auc_ci95'))}")
    return lines


def _average_lines(m: dict[str, Any]) -> list[str]:
    """Balanced accuracy and the macro / weighted precision, recall and F1, with their intervals when present."""
    av = m.get("averages")
    if not av:  # a report from before these were stored
        return []
    lines = [f"balanced accuracy {_f(m.get('balanced_accuracy'))} {_ci(m.get('balanced_accuracy_ci95'))}   "
             f"macro AP {_f(m.get('macro_average_precision'))}"]
    for kind in ("macro", "weighted"):
        a = av.get(kind) or {}
        lines.append(f"{kind:<8}  " + "   ".join(
            f"{label} {_f(a.get(stat))} {_ci(a.get(stat + '_ci95'))}"
            for stat, label in (("precision", "prec"), ("recall", "recall"), ("f1", "F1"))))
    return lines


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table: overall figures, then one row per class."""
    m = report["metrics"] if "metrics" in report else report
    lines = []
    head = [f"model {report.get('model_id', '?')}", f"split {report.get('split', '?')}", f"n={m['n']}"]
    skipped = report.get("skipped")
    if skipped:
        head.append(f"skipped {skipped.get('total', 0)} (no usable face)")
        left_out = sum((skipped.get("label_not_in_model") or {}).values())
        if left_out:
            head.append(f"left out {left_out} (class not in the model)")
    lines.append("  ".join(head))
    lines.append(
        f"top-1 {_pct(m['top1'])}{' ' + _ci(m['top1_ci95']) if 'top1_ci95' in m else ''}   macro F1 {_f(m['macro_f1'])}   macro AUC {_f(m['macro_auc'])}   "
        f"ECE {_f(m['ece'])} ({m['ece_bins']} bins)"
    )
    lines.extend(_average_lines(m))
    thresholds = report.get("thresholds") or {}
    at = m.get("at_thresholds") or {}
    width = max([len("class")] + [len(c) for c in m["classes"]])
    header = (f"{'class':<{width}}  {'n':>4}  {'prec':>6}  {'sens':>6}  {'spec':>6}  {'F1':>6}  {'AUC':>6}"
              f"  {'AP':>6}  {'thr':>6}  {'sens@t':>6}  {'spec@t':>6}")
    lines.append(header)
    lines.append("-" * len(header))
    for name in m["classes"]:
        r = m["per_class"][name]
        t = at.get(name, {})
        thr = thresholds.get(name)
        lines.append(
            f"{name:<{width}}  {r['support']:>4}  {_f(r['precision']):>6}  {_f(r['sensitivity']):>6}  "
            f"{_f(r['specificity']):>6}  {_f(r['f1']):>6}  {_f(r['auc']):>6}  {_f(r.get('average_precision')):>6}  "
            f"{_f(thr):>6}  {_f(t.get('sensitivity')):>6}  {_f(t.get('specificity')):>6}"
        )
    lines.extend(_interval_lines(m, width))
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json and the plots (``PLOT_FILES``) into out_dir (created if needed); returns name -> path.

    ``report`` must hold ``metrics`` (from ``summarize``); everything else in it
    (model id, split, thresholds, skipped counts) goes into report.json as is.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = report["metrics"]
    paths = {"report.json": out / "report.json"}
    write_json(paths["report.json"], report)
    if summary["n"] == 0:
        log.warning("no samples: plots not written")
        return paths
    for name, fn in zip(PLOT_FILES, (plot_confusion_matrix, plot_roc, plot_pr, plot_reliability), strict=True):
        paths[name] = out / name
        fn(summary, paths[name])
    log.info("wrote report to %s", out)
    return paths
