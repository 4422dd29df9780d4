"""Soak the real daemon: RSS and open file descriptors every 10 s, and the RSS slope after warm-up.

    python benchmarks/soak.py --config station.toml --minutes 30            # a station config of yours
    python benchmarks/soak.py --self-contained --minutes 30                 # builds a test bundle + looping video
    python benchmarks/soak.py --self-contained --minutes 3 --interval 5 --json soak.json

``facediag run`` is started as a subprocess (the source should loop, or the run ends early); every
``--interval`` seconds /proc/<pid>/status (VmRSS) and /proc/<pid>/fd are read, and /status is asked
for the frame count when the API is on. After ``--warmup`` seconds, a least-squares line through
(time, RSS) gives the slope in MB per 10 minutes; fds should stay flat. ``--max-slope`` (MB per 10
min; issue 11 asks for < 1 after warm-up) makes the exit status 1 when exceeded. Linux only
(/proc). ``--self-contained`` needs the test fixtures (../shared/fixtures) and the training extras.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open fds) of ``pid``."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_10_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per 10 minutes (None with fewer than 3)."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mt) * (v - mv) for t, v in points)
    return cov / var * 600.0


def self_contained_config(work: Path) -> Path:
    """A test bundle (fixture MobileFaceNet + fitted head), a looping face video and a config using them."""
    from tests.conftest import fixture_path
    from tests.daemon_helpers import (
        build_test_bundle,
        free_port,
        visits_video,
        write_station_config,
        yale_photo,
    )

    bundle = build_test_bundle(work / "bundle_build")
    photos = [yale_photo(n) for n in ("subject01.normal", "subject02.glasses", "subject03.happy")]
    video = visits_video(work / "visits.avi", photos)
    return write_station_config(work, uri=f"file:{video}", bundle=bundle,
                                yunet=fixture_path("models/face_detection_yunet_2026may.onnx"), port=free_port(),
                                loop=True, source_extra="fps = 15")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="station TOML whose source loops")
    ap.add_argument("--self-contained", action="store_true", help="build a test bundle, video and config")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the slope (default 60)")
    ap.add_argument("--max-slope", type=float, default=None, help="MB per 10 min; exit 1 above it")
    ap.add_argument("--json", type=Path, default=None, help="write the samples and figures here")
    args = ap.parse_args(argv)
    if not (args.config or args.self_contained):
        ap.error("give --config or --self-contained")
    work = Path(tempfile.mkdtemp(prefix="facediag-soak-"))
    config = args.config or self_contained_config(work)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "facediag", "run", "--config", str(config)], cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.minutes * 60:
            if proc.poll() is not None:
                print(f"the daemon exited with {proc.returncode}; see {work / 'daemon.log'}", file=sys.stderr)
                break
            rss, fds = sample(proc.pid)
            t = time.monotonic() - start
            if rss < 1.0:  # the interpreter is still being exec-ed (a few kB)
                time.sleep(min(1.0, args.interval))
                continue
            samples.append({"t_s": round(t, 1), "rss_mb": round(rss, 2), "fds": fds})
            print(f"{t:7.1f} s  RSS {rss:7.1f} MB  fds {fds}", flush=True)
            time.sleep(args.interval)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    after = [(s["t_s"], s["rss_mb"]) for s in samples if s["t_s"] >= args.warmup]
    slope = slope_per_10_min(after)
    fds_after = [int(s["fds"]) for s in samples if s["t_s"] >= args.warmup]
    report = {
        "minutes": round((samples[-1]["t_s"] if samples else 0) / 60, 2), "samples": len(samples),
        "warmup_s": args.warmup, "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_slope_mb_per_10min": None if slope is None else round(slope, 3),
        # a one-off step (an allocator arena, a cache filled once) weighs heavily on a short run: the second half
        # of the samples after warm-up shows whether growth goes on
        "rss_slope_second_half_mb_per_10min": None if (half := slope_per_10_min(after[len(after) // 2:])) is None
        else round(half, 3),
        "fds_min_max_after_warmup": [min(fds_after), max(fds_after)] if fds_after else None,
        "daemon_exit": proc.returncode, "log": str(work / "daemon.log"),
    }
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps({**report, "series": samples}, indent=1))
    if args.max_slope is not None and (slope is None or slope > args.max_slope):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
