"""`facediag bench VIDEO --bundle B`: the station's pipeline on a video file, timed stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facediag.edge.config import StationConfig

NAME = "bench"
HELP = "time the station pipeline on a video: per-stage ms, fps, CPU, memory, time to ready"
DESCRIPTION = (
    "Runs the daemon's screening pipeline (the same code as `facediag run`) on VIDEO. First unthrottled: frames "
    "are decoded and processed one after the other as fast as the machine allows (no frame is dropped), which "
    "gives the capacity in frames per second. With --fps it also replays the file paced at that rate through the "
    "daemon's own capture thread and latest-frame hand-off, like a camera, which gives the CPU share at that "
    "rate and the frames dropped. Prints per-stage median and p99 ms (capture = decode in the unthrottled run, "
    "hand-off latency in the paced run; detect; align = alignment + quality gates; infer = one batch of "
    "good_frames crops; decide), end-to-end fps, dropped frames, peak RSS, CPU %% of one core (process CPU time / "
    "wall time) and time to ready. Results go to a temporary file; no image is written."
)

STAGES = ("capture", "detect", "align", "infer", "decide")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file to replay (e.g. 640x480 MJPG .avi or .mp4)")
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--detector", choices=("yunet", "mtcnn"), default=None,
                        help="face detector (default: yunet when --detector-model is given, else mtcnn)")
    parser.add_argument("--detector-model", type=Path, default=None, help="YuNet ONNX file")
    from facediag.edge import precision as precision_table

    parser.add_argument("--precision", choices=precision_table.for_runtime(precision_table.ONNXRUNTIME),
                        default=precision_table.REFERENCE, help="bundle model run by ONNX Runtime (default fp32)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    parser.add_argument("--fps", type=float, default=None, help="also run paced at this source rate (e.g. 30)")
    parser.add_argument("--good-frames", type=int, default=8, help="crops per screening decision (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def _percentiles(values: list[float]) -> dict[str, float | int]:
    import numpy as np

    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000.0
    return {"n": int(a.size), "median_ms": round(float(np.median(a)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)


def _config(args: argparse.Namespace, results: Path, fps: float) -> StationConfig:
    from facediag.edge.config import parse_config

    detector = args.detector or ("yunet" if args.detector_model else "mtcnn")
    det: dict[str, Any] = {"name": detector}
    if args.detector_model:
        det["model_path"] = str(args.detector_model.resolve())
    engine: dict[str, Any] = {"bundle": str(args.bundle.resolve()), "backend": "onnxruntime", "precision": args.precision}
    if args.threads:
        engine["threads"] = args.threads
    return parse_config({
        "source": {"uri": f"file:{args.video.resolve()}", "loop": False, "fps": float(fps), "stall_s": 10.0},
        "detector": det,
        "engine": engine,
        "screening": {"good_frames": args.good_frames},
        "results": {"path": str(results)},
        "api": {"enabled": False},
        # A timing tool, not a station: it runs the bundle it is given, signed or not.
        "trust": {"allow_unsigned": True},
    })


def _unthrottled(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Decode and process every frame back to back in this thread (capture = decode time)."""
    import time

    from facediag.edge.capture import EndOfStream
    from facediag.edge.station.builder import build_station
    from facediag.edge.station.status import process_age_s

    cfg = _config(args, work / "unthrottled.jsonl", 0.0)
    t0 = time.monotonic()
    started_wall = time.time()
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    frame_s: list[float] = []
    # The station's own parts; its capture thread is never started: frames are read here, one by one.
    parts = build_station(cfg, stage_sinks=[lambda s, v: stages[s].append(v)], wall_of=lambda t: started_wall + t)
    engine, plan, pipeline, source = parts.engine, parts.plan, parts.pipeline, parts.capture.source
    source.open()
    # Sessions run on the video's own clock (frame index / file rate): unthrottled replay is faster than
    # real time, and a person's 1.5 s absence must still end their session as it would on a camera.
    period = 1.0 / (getattr(source, "file_fps", None) or 30.0)
    index = 0
    perf = time.perf_counter
    ready_s = ready_age = None
    shape = None
    wall0, cpu0 = time.monotonic(), _cpu_s()
    try:
        while True:
            a = perf()
            try:
                image = source.read()
            except EndOfStream:
                break
            b = perf()
            if image is None:
                break
            if ready_s is None:
                ready_s = time.monotonic() - t0
                ready_age = process_age_s()
                shape = image.shape
            stages["capture"].append(b - a)
            pipeline.process(image, index * period)
            index += 1
            frame_s.append(perf() - a)
    finally:
        parts.close()
    wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
    n = len(frame_s)
    total = sum(frame_s)
    staged = {s: sum(v) for s, v in stages.items()}
    other = max(0.0, total - sum(staged.values()))
    return {
        "mode": "unthrottled",
        "frames": n,
        "frame_size": None if shape is None else f"{shape[1]}x{shape[0]}",
        "fps": round(n / wall, 1) if wall > 0 else None,
        "dropped_frames": 0,
        "cpu_percent_of_one_core": round(100.0 * cpu / wall, 1) if wall > 0 else None,
        "cpu_ms_per_frame": round(1000.0 * cpu / n, 2) if n else None,
        "time_to_first_frame_ready_s": None if ready_s is None else round(ready_s, 3),
        "process_start_to_ready_s": None if ready_age is None else round(ready_age, 3),
        "stages": {s: _percentiles(v) for s, v in stages.items()},
        "frame_ms_median": _percentiles(frame_s).get("median_ms"),
        "share_of_frame_time": {
            **{s: round(staged[s] / total, 4) for s in STAGES}, "other": round(other / total, 4),
        } if total > 0 else {},
        "non_model_overhead": round((staged["align"] + staged["decide"] + other) / total, 4) if total > 0 else None,
        "engine": f"{engine.backend} {plan.precision}",
        "results": pipeline.counters.results,
        "inferences": pipeline.counters.inferences,
    }


def _paced(args: argparse.Namespace, work: Path, fps: float) -> dict[str, Any]:
    """The daemon's Station (capture thread + latest-frame box) with the file replayed at ``fps``."""
    import time

    from facediag.edge.station.builder import build_station
    from facediag.edge.station.station import Station

    cfg = _config(args, work / "paced.jsonl", fps)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    wall0, cpu0 = time.monotonic(), _cpu_s()
    parts = build_station(cfg, stage_sinks=[lambda s, v: stages[s].append(v)])
    station = Station(parts, env={}, install_signal_handlers=False)
    station.run()
    wall, cpu = time.monotonic() - wall0, _cpu_s() - cpu0
    stats = parts.capture.supervisor.stats()
    n = parts.pipeline.counters.frames
    return {
        "mode": f"paced at {fps:g} fps",
        "frames": n,
        "frames_captured": stats.frames_captured,
        "fps": round(n / wall, 1) if wall > 0 else None,
        "dropped_frames": stats.frames_dropped,
        "cpu_percent_of_one_core": round(100.0 * cpu / wall, 1) if wall > 0 else None,
        "cpu_ms_per_frame": round(1000.0 * cpu / n, 2) if n else None,
        "time_to_ready_s": None if station.ready_after_s is None else round(station.ready_after_s, 3),
        "stages": {s: _percentiles(v) for s, v in stages.items()},
        "engine": f"{parts.engine.backend} {parts.plan.precision}",
        "results": parts.pipeline.counters.results,
    }


def _table(report: dict[str, Any]) -> str:
    lines = [f"bench {report['video']} | bundle {report['bundle']} | detector {report['detector']} | "
             f"precision {report['precision']} | threads {report['threads'] or 'default'}"]
    for run in report["runs"]:
        lines.append(f"-- {run['mode']}: {run['frames']} frames, {run['fps']} fps end to end, "
                     f"{run['dropped_frames']} dropped, CPU {run['cpu_percent_of_one_core']}% of one core "
                     f"({run['cpu_ms_per_frame']} ms CPU per frame), "
                     f"engine {run['engine']}, {run['results']} results")
        for stage in STAGES:
            st = run["stages"][stage]
            if st.get("n"):
                lines.append(f"   {stage:8s} median {st['median_ms']:8.2f} ms   p99 {st['p99_ms']:8.2f} ms   (n={st['n']})")
        if "non_model_overhead" in run and run["non_model_overhead"] is not None:
            share = run["share_of_frame_time"]
            lines.append("   share of frame time: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items())
                         + f"; non-model overhead (align + decide + other) {100 * run['non_model_overhead']:.1f}%")
        if "time_to_ready_s" in run:
            lines.append(f"   time to READY (setup + first frame): {run['time_to_ready_s']} s")
        if "time_to_first_frame_ready_s" in run:
            lines.append(f"   time to ready (setup + first frame): {run['time_to_first_frame_ready_s']} s")
    lines.append(f"peak RSS {report['peak_rss_mb']} MB; process start to bench ready {report['process_start_to_ready_s']} s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from facediag.edge.errors import ConfigError

    if not args.video.is_file():
        raise ConfigError(f"video {args.video} does not exist")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError("--fps must be > 0 (leave it out for the unthrottled run only)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    with tempfile.TemporaryDirectory(prefix="facediag-bench-") as tmp:
        work = Path(tmp)
        runs = [_unthrottled(args, work)]
        if args.fps:
            runs.append(_paced(args, work, args.fps))
    report = {
        "video": str(args.video),
        "bundle": str(args.bundle),
        "detector": args.detector or ("yunet" if args.detector_model else "mtcnn"),
        "precision": args.precision,
        "threads": args.threads,
        "runs": runs,
        "peak_rss_mb": _peak_rss_mb(),
        "process_start_to_ready_s": runs[0]["process_start_to_ready_s"],
    }
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0
