"""Histogram calibration (entropy, percentile) in bounded memory: two streamed passes over the batches.

ONNX Runtime's ``HistogramCalibrater.collect_data`` keeps every intermediate tensor of every
calibration batch in a list and histograms them all at once at the end; on 300 FaceNet crops that
peaked at 7.7 GiB. The histograms themselves are small (a few thousand bins per tensor), so this
module builds them from one batch at a time:

1. pass one runs the calibration model (ORT's own augmented graph, every tensor to calibrate made an
   output) batch by batch and keeps, per tensor, the minimum and maximum (and the smallest and
   largest absolute value);
2. pass two runs it again and adds each batch's histogram over the *final* range, which is the range
   the all-at-once histogram uses.

A histogram over a fixed range is a sum of per-batch histograms over that range, so both passes
together give ORT's all-at-once histograms exactly (the same bins, the same counts), for the three
shapes its ``HistogramCollector`` uses: values in ``[-t, t]`` with ``t = max(|min|, |max|)``
(entropy, asymmetric percentile) and absolute values in ``[min |x|, max |x|]`` (symmetric
percentile). ORT's own code then turns them into ranges (``compute_collection_result``), so the
thresholds are ORT's too; they reach ``quantize_static`` as a calibration cache
(``calibration_cache_path``, ONNX Runtime >= 1.32). Peak memory is one input's activations (``rows_per_run``), not the whole set's.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _batches(reader: Any) -> Iterator[dict[str, np.ndarray]]:
    reader.rewind()
    while True:
        batch = reader.get_next()
        if not batch:
            return
        yield batch


def _outputs(session: Any, reader: Any, wanted: set[str], rows: int) -> Iterator[dict[str, np.ndarray]]:
    """``{tensor: flat float array}`` for the tensors to calibrate, ``rows`` inputs at a time.

    Each calibration batch is run in slices of ``rows``: a histogram over a fixed range does not depend
    on how the rows are grouped, and every tensor of the graph is an output, so a slice's outputs are
    the memory that counts.
    """
    names = [o.name for o in session.get_outputs()]
    for batch in _batches(reader):
        size = len(next(iter(batch.values())))
        for start in range(0, size, rows):
            outs = session.run(None, {k: v[start : start + rows] for k, v in batch.items()})
            yield {n: np.asarray(a).reshape(-1) for n, a in zip(names, outs, strict=True) if n in wanted}
            del outs


class _Extremes:
    """Per-tensor running min, max, and min/max of |x| (pass one)."""

    def __init__(self) -> None:
        self.lo: dict[str, Any] = {}
        self.hi: dict[str, Any] = {}
        self.abs_lo: dict[str, Any] = {}
        self.abs_hi: dict[str, Any] = {}

    def add(self, name: str, flat: np.ndarray) -> None:
        if flat.size == 0:
            return
        lo, hi = np.nanmin(flat), np.nanmax(flat)
        absolute = np.abs(flat)
        alo, ahi = absolute.min(), absolute.max()
        if name in self.lo:
            lo, hi = min(self.lo[name], lo), max(self.hi[name], hi)
            alo, ahi = min(self.abs_lo[name], alo), max(self.abs_hi[name], ahi)
        self.lo[name], self.hi[name], self.abs_lo[name], self.abs_hi[name] = lo, hi, alo, ahi


def _histograms(
    session: Any, reader: Any, tensors: set[str], num_bins: int, absolute: bool, rows: int
) -> dict[str, tuple]:
    """ORT ``HistogramCollector.histogram_dict`` entries, built in two streamed passes."""
    ext = _Extremes()
    for outputs in _outputs(session, reader, tensors, rows):
        for name, flat in outputs.items():
            ext.add(name, flat)
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for outputs in _outputs(session, reader, tensors, rows):
        for name, flat in outputs.items():
            if name not in ext.lo:
                continue
            if absolute:  # ORT: np.histogram(|x|, bins) over [min |x|, max |x|], edges in the data's dtype
                hist, e = np.histogram(np.abs(flat), bins=num_bins, range=(ext.abs_lo[name], ext.abs_hi[name]))
                e = e.astype(flat.dtype)
            else:  # ORT: np.histogram(x, bins, range=(-t, t)), t = max(|min|, |max|) in the data's dtype
                t = np.array(max(abs(ext.lo[name]), abs(ext.hi[name])), dtype=flat.dtype)
                bounds: Any = (-t, t)  # 0-d arrays of the data's dtype, exactly as ORT passes them
                hist, e = np.histogram(flat, num_bins, range=bounds)
            counts[name] = hist if name not in counts else counts[name] + hist
            edges.setdefault(name, e)
    out: dict[str, tuple] = {}
    for name, hist in counts.items():
        lo, hi = ext.lo[name], ext.hi[name]
        if absolute:
            out[name] = (hist, edges[name], lo, hi)
        else:
            out[name] = (hist, edges[name], lo, hi, np.array(max(abs(lo), abs(hi)), dtype=edges[name].dtype))
    return out


def _lean_session(model_path: str) -> Any:
    """A CPU session without ORT's memory arena and memory patterns: they would keep the largest
    slice's activations allocated for the whole run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def streamed_histogram_ranges(
    model_path: str | Path, reader: Any, method: Any, extra_options: dict[str, Any], rows_per_run: int = 1
) -> Any:
    """ORT ``TensorsData`` for ``method`` (Entropy or Percentile) from ``reader``, ``rows_per_run`` inputs'
    activations in memory at a time.

    ``reader`` must be rewindable (``rewind()``, ``get_next()``): it is read twice. ``extra_options``
    are the calibrator options ``quantize_static`` would pass (``symmetric``, ``percentile``, ...).
    """
    from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData, create_calibrator

    if not hasattr(reader, "rewind"):
        raise TypeError("streamed calibration reads the calibration data twice: the reader needs rewind()")
    if rows_per_run < 1:
        raise ValueError(f"rows_per_run must be >= 1, got {rows_per_run}")
    with tempfile.TemporaryDirectory(prefix="facediag-calib-") as tmp:
        augmented = str(Path(tmp) / "augmented.onnx")
        calibrator = create_calibrator(  # ORT's own choice of tensors and settings, and its augmented graph
            Path(model_path), None, augmented_model_path=augmented,
            calibrate_method=method, providers=["CPUExecutionProvider"], extra_options=extra_options,
        )
        collector = HistogramCollector(
            method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
            scenario=calibrator.scenario,
        )
        tensors = set(calibrator.tensors_to_calibrate)
        del calibrator  # it holds the model, the augmented model and a session of it: a copy each
        gc.collect()
        absolute = collector.method == "percentile" and bool(collector.symmetric)
        session = _lean_session(augmented)  # gives its memory back between runs
        hist = _histograms(session, reader, tensors, int(collector.num_bins), absolute, rows_per_run)
        del session
    if not hist:
        raise ValueError("no calibration data: the reader gave no batch")
    collector.histogram_dict = hist
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):  # ORT prints its progress; facediag's stdout is for results
        result = collector.compute_collection_result()
    log.debug("onnxruntime: %s", chatter.getvalue().strip())
    log.info("streamed %s histograms of %d tensors", calibrator_method_name(method), len(hist))
    return TensorsData(method, result)


def calibrator_method_name(method: Any) -> str:
    return str(getattr(method, "name", method)).lower()
