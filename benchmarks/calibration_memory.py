"""Peak memory of INT8 histogram calibration (entropy / percentile): streamed vs all batches at once.

Makes (once, in --work) a FaceNet bundle and a calibration set of --count real aligned crops from
the CelebA fixture photos (YuNet front-end, ``facediag.calibration.calibration_set``), then runs
``quantize_onnx`` in a fresh child process per mode and reads the child's peak resident set size
(``VmHWM`` of its own address space, read at its end; see :func:`peak_rss_kib`):

- ``all-at-once``: ONNX Runtime's own collection (every batch's activations kept, then histogrammed),
  what ``facediag quantize --method entropy`` did before;
- ``streamed``: :mod:`facediag.calibration.streaming` (two passes, one batch of activations at a time),
  what it does now.

A ``baseline`` child loads the same modules, model and calibration set and stops, so the table shows
what calibration itself adds. The two modes' INT8 models are compared scale by scale at the end.

    python benchmarks/calibration_memory.py --work /tmp/calmem --count 300 --method entropy

The model is FaceNet (InceptionResNetV1, 160x160) with its face-recognition weights and an untrained
5-class linear head, exported like a DTL2 checkpoint (backbone -> linear -> softmax): the head does not
change the activations that calibration collects. --checkpoint uses a trained checkpoint instead.
No figure is asserted; the numbers go into benchmarks/calibration_memory.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
CELEBA = FIXTURES / "faces" / "celeba"
YUNET = FIXTURES / "models" / "face_detection_yunet_2026may.onnx"
CLASSES = ["bags_under_eyes", "healthy", "pale_skin", "rosy_cheeks", "round_face"]
MODES = ("baseline", "streamed", "all-at-once")
BATCH = 10

log = logging.getLogger("calibration_memory")


def make_checkpoint(out: Path) -> Path:
    """FaceNet recognition weights + an untrained 5-class head, saved as a facediag checkpoint."""
    import torch

    from facediag.training.backbones import get_backbone
    from facediag.training.checkpoint import save_checkpoint
    from facediag.training.classifier import FaceClassifier

    torch.manual_seed(0)
    bb = get_backbone("facenet", pretrained=True)
    model = FaceClassifier(bb, len(CLASSES)).eval()
    meta = {"backbone": "facenet", "classes": CLASSES, "healthy_class": "healthy", "contract": bb.contract.to_dict(),
            "strategy": "untrained-head", "hyperparameters": {}, "seed": 0, "metrics": {}}
    return save_checkpoint(out, model, meta)


def prepare(work: Path, count: int, checkpoint: Path | None) -> tuple[Path, Path]:
    """(bundle, calibration set) in ``work``, made once."""
    from facediag.calibration.calibration_set import (
        Cropper,
        build_calibration_set,
        collect_inputs,
        list_sources,
    )
    from facediag.converters.export import export_checkpoint
    from facediag.edge.bundle import load_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.face.detector import make_detector
    from facediag.training.checkpoint import load_classifier

    bundle_dir, calib_dir = work / "bundle", work / f"calib{count}"
    sources = list_sources(CELEBA)
    if not (bundle_dir / "bundle.json").is_file():
        ckpt = checkpoint or make_checkpoint(work / "ckpt")
        contract = PreprocessContract.from_dict(load_classifier(ckpt)[1]["contract"])
        parity, _, _ = collect_inputs(sources[:64], contract, Cropper(contract, make_detector("yunet", YUNET)), 16)
        export_checkpoint(ckpt, bundle_dir, parity, force=True)
    bundle = load_bundle(bundle_dir)
    if not (calib_dir / "manifest.json").is_file():  # photos other than the parity ones
        build_calibration_set(bundle, sources[-4 * count:], calib_dir, count=count, holdout=0.0, seed=0,
                              cropper=Cropper(bundle.contract, make_detector("yunet", YUNET)), force=True)
    return bundle_dir, calib_dir


def child(mode: str, bundle_dir: Path, calib_dir: Path, method: str, out: Path) -> None:
    """One measurement: load everything, then (unless baseline) quantise; prints seconds as JSON."""
    from facediag.calibration.calibration_set import load_calibration_set
    from facediag.calibration.readers import OrtCalibrationReader
    from facediag.converters.quantize import QuantSettings, quantize_onnx
    from facediag.edge.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    cset = load_calibration_set(calib_dir, bundle)
    # Batches of 10: 300 rows make 30 equal batches, so both modes see every row (ORT's all-at-once
    # histograms need equal batches; the command streams batches of 8).
    reader = OrtCalibrationReader(cset, batch_size=BATCH, drop_last=True)
    t = time.perf_counter()
    if mode != "baseline":
        quantize_onnx(bundle.model_path("fp32"), out, reader, QuantSettings("cpu", method=method),
                      stream=mode == "streamed")
    peak_kib = peak_rss_kib()
    rows = len(cset.calib_inputs) - len(cset.calib_inputs) % BATCH
    print(json.dumps({"peak_rss_mib": peak_kib / 1024.0, "seconds": time.perf_counter() - t, "rows": rows}))


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: VmHWM of its own address space.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries a forking parent's peak into the child's
    ru_maxrss across exec, so a child of a large parent would report the parent's figure.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure(mode: str, bundle_dir: Path, calib_dir: Path, method: str, out: Path) -> dict[str, float]:
    """Run one mode in a fresh interpreter; its own figures (peak RSS, seconds, rows)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--bundle", str(bundle_dir), "--calib", str(calib_dir),
         "--method", method, "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def compare_scales(a: Path, b: Path) -> float:
    """Largest absolute difference between the two INT8 models' scale and zero-point initialisers."""
    import onnx
    from onnx import numpy_helper

    def params(path: Path) -> dict[str, np.ndarray]:
        model = onnx.load(str(path))
        return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer
                if t.name.endswith(("_scale", "_zero_point"))}

    pa, pb = params(a), params(b)
    if pa.keys() != pb.keys():
        return float("inf")
    return max(float(np.abs(pa[k] - pb[k]).max()) for k in pa)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/facediag-calibration-memory"))
    ap.add_argument("--count", type=int, default=300, help="calibration crops (default 300)")
    ap.add_argument("--method", choices=("entropy", "percentile"), default="entropy")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint instead of FaceNet + head")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated (default {','.join(MODES)})")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.child else logging.INFO, format="%(message)s")
    if args.child:
        child(args.child, args.bundle, args.calib, args.method, args.out)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    bundle_dir, calib_dir = prepare(args.work, args.count, args.checkpoint)
    rows = {}
    for mode in args.modes.split(","):
        rows[mode] = measure(mode, bundle_dir, calib_dir, args.method, args.work / f"int8-{mode}.onnx")
        log.info("%-12s peak RSS %7.0f MiB  %6.1f s  (%d rows)", mode, rows[mode]["peak_rss_mib"],
                 rows[mode]["seconds"], rows[mode]["rows"])
    if {"all-at-once", "streamed"} <= rows.keys():
        diff = compare_scales(args.work / "int8-all-at-once.onnx", args.work / "int8-streamed.onnx")
        rows["scale_max_abs_difference"] = {"value": diff}
        log.info("largest scale / zero-point difference between the two INT8 models: %g", diff)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
