"""Median ms per 640x480 frame for YuNet and MTCNN detection, and for alignment.

    python benchmarks/bench_face.py [--fixtures ../shared/fixtures] [--repeat 50] [--threads 2]

Frames are real photos from the fixtures resized (letterboxed) to 640x480. Figures are printed,
never asserted: shared machines are noisy, so compare medians measured side by side in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facediag.edge.face.align import align_face  # noqa: E402
from facediag.edge.face.contract import PreprocessContract  # noqa: E402
from facediag.edge.face.imageio import load_image  # noqa: E402


def to_640x480(image: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    s = min(640 / w, 480 / h)
    small = cv2.resize(image, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((480, 640, 3), np.uint8)
    y, x = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas


def time_ms(fn, frames: list[np.ndarray], repeat: int) -> list[float]:
    for f in frames[:3]:
        fn(f)  # warm-up
    out = []
    for i in range(repeat):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        fn(f)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(args.threads)
    wild = args.fixtures / "faces" / "wild"
    if not wild.is_dir():
        print(f"needs {wild} (the shared fixtures)", file=sys.stderr)
        return 2
    frames = [to_640x480(load_image(p)) for p in sorted(wild.glob("img*.jpg"))[:10]]
    rows = []
    detectors = {}
    yunet_path = args.fixtures / "models" / "face_detection_yunet_2026may.onnx"
    from facediag.edge.face.yunet import YuNetDetector

    detectors["yunet"] = YuNetDetector(yunet_path)
    try:
        from facediag.edge.face.mtcnn import MTCNNDetector

        detectors["mtcnn"] = MTCNNDetector()
    except Exception as exc:  # noqa: BLE001 - report and go on with the others
        print(f"mtcnn unavailable: {exc}", file=sys.stderr)
    for name, det in detectors.items():
        times = time_ms(det.detect, frames, args.repeat)
        rows.append((f"detect {name}", times))
    faces = [detectors["yunet"].detect(f)[0] for f in frames]
    for template in ("arcface_112x112", "facenet_160x160"):
        contract = PreprocessContract(template)
        pairs = list(zip(frames, faces, strict=True))
        times = time_ms(lambda fp, c=contract: align_face(fp[0], fp[1].landmarks, c), pairs, args.repeat)  # type: ignore[misc]
        rows.append((f"align {template}", times))
    print(f"{'stage (640x480 frame)':<28}{'median ms':>10}{'p90 ms':>10}")
    for name, times in rows:
        q = statistics.quantiles(times, n=10)
        print(f"{name:<28}{statistics.median(times):>10.2f}{q[-1]:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
