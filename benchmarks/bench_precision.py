"""Latency and accuracy of every precision, side by side, on this CPU.

For each classifier (FaceNet InceptionResNetV1 and MobileFaceNet by default):
PyTorch eager, ONNX Runtime FP32, FP16, INT8-cpu (U8/S8) and INT8-tensorrt
(S8/S8 symmetric), median latency at batch 1 and 8 with a fixed thread count.
Timings are taken in blocks per variant, the variants taking turns over three
passes, so that load from other processes on a shared machine hits every
variant alike.

INT8 ranges come from real aligned crops of the proxy benchmark's train split;
accuracy and top-1 agreement with FP32 are measured on its test split (never
used for calibration) when a trained checkpoint is given with --checkpoint.
Without one, the backbone's face-recognition weights get an untrained 5-class
head: latency is then meaningful, accuracy is not reported.

    python benchmarks/bench_precision.py --checkpoint mobilefacenet=CKPT --checkpoint facenet=CKPT2

Prints a table (and writes it as JSON with --json). No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURES = REPO.parent / "shared" / "fixtures"
PROXY = FIXTURES / "faces" / "celeba" / "proxy_dsf_split.csv"
CELEBA = FIXTURES / "faces" / "celeba"
YUNET = FIXTURES / "models" / "face_detection_yunet_2026may.onnx"
MFN_WEIGHTS = FIXTURES / "models" / "mobilefacenet_112x96_casia.ckpt"
PROXY_CLASSES = ["bags_under_eyes", "healthy", "pale_skin", "rosy_cheeks", "round_face"]

log = logging.getLogger("bench_precision")


def untrained_checkpoint(backbone: str, out: Path) -> Path:
    """A checkpoint folder with the backbone's recognition weights and a random 5-class head (latency only)."""
    import torch

    from facediag.training.backbones import get_backbone
    from facediag.training.checkpoint import save_checkpoint
    from facediag.training.classifier import FaceClassifier

    torch.manual_seed(0)
    weights = MFN_WEIGHTS if backbone == "mobilefacenet" else None
    bb = get_backbone(backbone, weights=weights, pretrained=True)
    model = FaceClassifier(bb, len(PROXY_CLASSES)).eval()
    meta = {"backbone": backbone, "classes": PROXY_CLASSES, "healthy_class": "healthy", "contract": bb.contract.to_dict(),
            "strategy": "untrained-head", "hyperparameters": {}, "seed": 0, "metrics": {}}
    return save_checkpoint(out, model, meta)


def proxy_inputs(contract: object, split: str) -> tuple[np.ndarray, list[str]]:
    from facediag.calibration.calibration_set import Cropper, collect_inputs, list_sources
    from facediag.edge.face.detector import make_detector

    sources = list_sources(CELEBA, PROXY, split=split)
    x, taken, skipped = collect_inputs(sources, contract, Cropper(contract, make_detector("yunet", YUNET)), len(sources))
    if skipped:
        log.info("%s split: %d photos without a face skipped", split, len(skipped))
    return x, [s.label for s, _, _ in taken]


def build_variants(ckpt: Path, work: Path, calib_x: np.ndarray) -> tuple[object, dict[str, Path], dict[str, float]]:
    """Export + FP16 + both INT8 targets (no gate here: the table shows the figures). Returns seconds per step."""
    from facediag.calibration.readers import OrtCalibrationReader
    from facediag.converters.export import export_checkpoint
    from facediag.converters.fp16 import convert_to_fp16
    from facediag.converters.quantize import QuantSettings, quantize_onnx

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    bundle = export_checkpoint(ckpt, work / "bundle", calib_x[:16], force=True)
    seconds["export"] = time.perf_counter() - t
    fp32 = bundle.model_path("fp32")
    files = {"ort-fp32": fp32}
    if bundle.extra.get("export", {}).get("prelu") == "decompose":
        import onnx

        from facediag.converters.export import export_model
        from facediag.training.checkpoint import load_classifier

        # The same model with PReLU as exported by torch, to show what the export-time rewrite buys.
        keep = work / "fp32-prelu.onnx"
        model, _ = load_classifier(ckpt)
        export_model(model, bundle.contract, keep, prelu="keep")
        if any(n.op_type == "PRelu" for n in onnx.load(str(keep)).graph.node):
            files["ort-fp32-prelu"] = keep
    t = time.perf_counter()
    convert_to_fp16(fp32, work / "fp16.onnx")
    seconds["fp16"] = time.perf_counter() - t
    files["ort-fp16"] = work / "fp16.onnx"
    for target in ("cpu", "tensorrt"):
        t = time.perf_counter()
        out = work / f"int8-{target}.onnx"
        quantize_onnx(fp32, out, OrtCalibrationReader(calib_x, batch_size=16), QuantSettings(target))
        seconds[f"int8-{target}"] = time.perf_counter() - t
        files[f"ort-int8-{target}"] = out
    return bundle, files, seconds


def latency_table(model: object, files: dict[str, Path], sample: np.ndarray, threads: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median ms per call for each variant at batch 1 and 8, interleaved rounds."""
    import onnxruntime as ort
    import torch

    runners = {}

    def torch_runner(x: np.ndarray, n: int = threads) -> None:
        torch.set_num_threads(n)
        with torch.no_grad():
            model(torch.from_numpy(x))

    runners["pytorch-eager"] = torch_runner
    if threads > 1:
        # PyTorch's OpenMP barriers stall when other processes hold the cores (seconds per call on a
        # loaded 2-core box); one thread shows what PyTorch itself costs there.
        runners["pytorch-eager-1t"] = lambda x: torch_runner(x, 1)
    for name, path in files.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runners[name] = lambda x, s=sess: s.run(None, {"input": x})
    out: dict[str, dict[int, float]] = {name: {} for name in runners}
    passes = 3
    per_pass = max(1, rounds // passes)
    for batch in (1, 8):
        x = np.ascontiguousarray(sample[:batch])
        times: dict[str, list[float]] = {name: [] for name in runners}
        # Blocks of calls per variant, the variants taking turns over several passes: load from other
        # processes hits every variant alike, and no variant's idle worker threads (ONNX Runtime spins
        # for a while after each run) steal cores from the next call of another variant.
        for _ in range(passes):
            for name, run in runners.items():
                for _ in range(2):  # warm-up of this block
                    run(x)
                for _ in range(per_pass):
                    t = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t)
        for name in runners:
            out[name][batch] = float(np.median(times[name]) * 1000.0)
    return out


def accuracy_rows(model: object, files: dict[str, Path], x: np.ndarray, labels: list[str], classes: list[str], threads: int) -> dict[str, dict[str, float]]:
    from facediag.converters.export import torch_probabilities
    from facediag.edge.engine.onnxruntime import OrtEngine

    y = np.array([classes.index(lab) for lab in labels])
    probs = {"pytorch-eager": torch_probabilities(model, x)}
    probs["pytorch-eager-1t"] = probs["pytorch-eager"]
    for name, path in files.items():
        eng = OrtEngine(path, threads=threads)
        probs[name] = np.concatenate([eng.infer(x[i : i + 32]) for i in range(0, len(x), 32)])
    ref = probs["ort-fp32"]
    rows = {}
    for name, p in probs.items():
        rows[name] = {
            "accuracy": float((p.argmax(1) == y).mean()),
            "agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(p - ref).max()),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["facenet", "mobilefacenet"])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=DIR",
                        help="trained checkpoint for a backbone (enables the accuracy columns)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per variant and batch size (default 30)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not PROXY.is_file():
        print(f"needs the shared fixtures ({PROXY} is absent)", file=sys.stderr)
        return 2
    ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    results = {}
    import onnxruntime
    import torch

    from facediag.training.checkpoint import load_classifier

    for backbone in args.backbones:
        with tempfile.TemporaryDirectory(prefix=f"bench-{backbone}-") as tmp:
            work = Path(tmp)
            ckpt = Path(ckpts[backbone]) if backbone in ckpts else untrained_checkpoint(backbone, work / "ckpt")
            model, meta = load_classifier(ckpt)
            from facediag.edge.face.contract import PreprocessContract

            contract = PreprocessContract.from_dict(meta["contract"])
            calib_x, _ = proxy_inputs(contract, "train")
            test_x, test_labels = proxy_inputs(contract, "test")
            bundle, files, seconds = build_variants(ckpt, work, calib_x)
            lat = latency_table(model, files, test_x, args.threads, args.rounds)
            acc = accuracy_rows(model, files, test_x, test_labels, list(meta["classes"]), args.threads) if backbone in ckpts else {}
            results[backbone] = {"latency_ms": lat, "accuracy": acc, "build_seconds": seconds,
                                 "checkpoint": str(ckpt) if backbone in ckpts else None,
                                 "calibration_images": len(calib_x), "test_images": len(test_x)}
    env = f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, {args.rounds} rounds"
    print(f"\nPrecision benchmark ({env})")
    header = f"{'model':14} {'variant':18} {'b1 ms':>8} {'b8 ms':>8} {'x fp32 b1':>9} {'x fp32 b8':>9} {'acc %':>7} {'agree %':>8} {'max dp':>7}"
    print(header)
    print("-" * len(header))
    for backbone, r in results.items():
        base = r["latency_ms"]["ort-fp32"]
        for name, lat in r["latency_ms"].items():
            a = r["accuracy"].get(name)
            acc_cols = f"{a['accuracy'] * 100:7.1f} {a['agreement'] * 100:8.1f} {a['max_prob_diff']:7.3f}" if a else f"{'-':>7} {'-':>8} {'-':>7}"
            print(f"{backbone:14} {name:18} {lat[1]:8.2f} {lat[8]:8.2f} {base[1] / lat[1]:9.2f} {base[8] / lat[8]:9.2f} {acc_cols}")
        print(f"{'':14} calibration on {r['calibration_images']} proxy-train crops, accuracy on {r['test_images']} proxy-test crops"
              + ("" if r["accuracy"] else " (no --checkpoint: untrained head, accuracy not shown)"))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
