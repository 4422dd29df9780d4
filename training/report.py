"""The evaluation report: report.json, three PNG plots, and a text table for the terminal.

Input is the dict from ``facediag.training.metrics.summarize`` (with the 95% intervals of
``facediag.training.stats.summary_intervals`` when present) plus whatever context the
caller adds (model id, split, skipped photos, thresholds, per-photo ``predictions``). Plots use
matplotlib's Agg backend, so they work on a headless workstation or CI.
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

PLOT_FILES = ("confusion_matrix.png", "roc.png", "reliability.png")


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


def plot_confusion_matrix(summary: dict[str, Any], path: Path) -> None:
    """Counts with row-normalised colour (each true class's row sums to 1 in colour)."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(summary["confusion_matrix"], dtype=np.float64)
    classes = summary["classes"]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.9 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {_pct(summary.get('top1')).strip()})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    _save_figure(fig, path)


def plot_roc(summary: dict[str, Any], path: Path) -> None:
    """One-vs-rest ROC curve per class, AUC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for name, roc in summary["roc"].items():
        if roc is None:
            continue
        auc = summary["per_class"][name]["auc"]
        ax.plot(roc["fpr"], roc["tpr"], linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_reliability(summary: dict[str, Any], path: Path) -> None:
    """Accuracy per confidence bin against the diagonal; bar width = bin width, counts below."""
    plt = _pyplot()
    rel = summary["reliability"]
    edges = rel["edges"]
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.0), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    lefts = edges[:-1]
    width = edges[1] - edges[0]
    acc = [a if a is not None else 0.0 for a in rel["accuracy"]]
    conf = [c if c is not None else 0.0 for c in rel["confidence"]]
    ax.bar(lefts, acc, width=width, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
    ax.bar(lefts, [c - a for a, c in zip(acc, conf, strict=True)], bottom=acc, width=width, align="edge",
           color="red", alpha=0.25, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = summary.get("ece")
    ax.set_title(f"reliability (ECE {ece:.3f}, {summary['ece_bins']} bins)" if ece is not None else "reliability")
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(lefts, rel["count"], width=width, align="edge", edgecolor="black")
    ax_count.set_xlabel("top-1 confidence")
    ax_count.set_ylabel("samples")
    ax_count.set_xlim(0, 1)
    fig.tight_layout()
    _save_figure(fig, path)


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
    thresholds = report.get("thresholds") or {}
    at = m.get("at_thresholds") or {}
    width = max([len("class")] + [len(c) for c in m["classes"]])
    header = (f"{'class':<{width}}  {'n':>4}  {'prec':>6}  {'sens':>6}  {'spec':>6}  {'F1':>6}  {'AUC':>6}"
              f"  {'thr':>6}  {'sens@t':>6}  {'spec@t':>6}")
    lines.append(header)
    lines.append("-" * len(header))
    for name in m["classes"]:
        r = m["per_class"][name]
        t = at.get(name, {})
        thr = thresholds.get(name)
        lines.append(
            f"{name:<{width}}  {r['support']:>4}  {_f(r['precision']):>6}  {_f(r['sensitivity']):>6}  "
            f"{_f(r['specificity']):>6}  {_f(r['f1']):>6}  {_f(r['auc']):>6}  "
            f"{_f(thr):>6}  {_f(t.get('sensitivity')):>6}  {_f(t.get('specificity')):>6}"
        )
    lines.extend(_interval_lines(m, width))
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write report.json and the three plots into out_dir (created if needed); returns name -> path.

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
    for name, fn in zip(PLOT_FILES, (plot_confusion_matrix, plot_roc, plot_reliability), strict=True):
        paths[name] = out / name
        fn(summary, paths[name])
    log.info("wrote report to %s", out)
    return paths
