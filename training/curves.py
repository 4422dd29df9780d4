"""Training curves of the strategies that train by epochs (dtl1, scratch): one CSV row and one plot.

``history["epochs"]`` (built by the training loop) holds one record per epoch;
:func:`write_curves` writes ``curves.csv`` (the columns of :data:`COLUMNS`) and
``curves.png`` (losses, accuracies and learning rates against the epoch, with
the unfreezing stages marked) into the checkpoint folder, atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from facediag.edge.atomicio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CSV_FILE = "curves.csv"
PNG_FILE = "curves.png"
COLUMNS = (
    "epoch", "stage", "unfrozen_blocks", "lr_head", "lr_blocks", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy",
)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def curves_csv(epochs: list[dict[str, Any]]) -> str:
    """The CSV text: a header and one row per epoch (empty cells where a value does not exist)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for rec in epochs:
        w.writerow([_cell(rec.get(c)) for c in COLUMNS])
    return buf.getvalue()


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def curves_png(epochs: list[dict[str, Any]], title: str = "") -> bytes:
    """A PNG of loss, accuracy and learning rate per epoch; vertical lines where a stage begins."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    x = [int(r["epoch"]) for r in epochs]
    fig = Figure(figsize=(10, 3.4), dpi=100)
    axes = fig.subplots(1, 3)
    for key, label, ax in (("loss", "loss", axes[0]), ("accuracy", "accuracy", axes[1])):
        ax.plot(x, [_num(r.get(f"train_{key}")) for r in epochs], marker=".", label="train batches")
        val = [_num(r.get(f"val_{key}")) for r in epochs]
        if any(math.isfinite(v) for v in val):
            ax.plot(x, val, marker=".", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[2].plot(x, [_num(r.get("lr_head")) for r in epochs], label="head")
    blocks = [_num(r.get("lr_blocks")) for r in epochs]
    if any(math.isfinite(v) and v > 0 for v in blocks):
        axes[2].plot(x, blocks, label="last backbone block")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate")
    axes[2].legend(fontsize=8)
    for prev, cur in zip(epochs, epochs[1:], strict=False):
        if cur.get("unfrozen_blocks") != prev.get("unfrozen_blocks"):
            for ax in axes:
                ax.axvline(float(cur["epoch"]) - 0.5, color="grey", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def write_curves(out_dir: str | Path, history: dict[str, Any], title: str = "") -> list[Path]:
    """Write curves.csv and curves.png for ``history["epochs"]``; returns the paths ([] when there are none)."""
    epochs = history.get("epochs") or []
    if not epochs:
        return []
    out = Path(out_dir)
    atomic_write_text(out / CSV_FILE, curves_csv(epochs))
    paths = [out / CSV_FILE]
    try:
        atomic_write_bytes(out / PNG_FILE, curves_png(epochs, title))
        paths.append(out / PNG_FILE)
    except ImportError as e:  # matplotlib is a training dependency; say so rather than fail the run
        log.warning("training curves plot not written (%s); the CSV is in %s", e, out / CSV_FILE)
    return paths
