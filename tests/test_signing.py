"""Signed bundles (issue 12): keygen, sign, and refusal of unsigned, untrusted and tampered bundles by the
library, by `facediag build` / `verify`, and by the real daemon (a subprocess, exit 78)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.colour_model import H, W, write_colour_classifier
from tests.conftest import REPO

CLASSES = ["healthy", "pale_skin", "round_face"]


# ------------------------------------------------------------------ helpers
def make_bundle(folder: Path) -> Path:
    from facediag.edge.bundle import create_bundle
    from facediag.edge.face.contract import PreprocessContract
    from facediag.edge.hashing import sha256_bytes

    folder.mkdir(parents=True)
    write_colour_classifier(folder / "model.onnx", centres=(0.5, 0.45, 0.4))
    create_bundle(folder, classes=CLASSES, healthy_class="healthy",
                  contract=PreprocessContract(template="sphereface_112x96"),
                  thresholds={"pale_skin": 0.5, "round_face": 0.5}, fp32_file="model.onnx",
                  fp32_gate={"passed": True}, source_checkpoint={"path": "ckpt", "sha256": sha256_bytes(b"c")},
                  creator="facediag test")
    write_colour_classifier(folder / "model.fp16.onnx", centres=(0.5, 0.45, 0.4))  # a float32 graph standing in for the fp16 file: verify compares them
    from facediag.edge.bundle import load_bundle

    load_bundle(folder).add_precision("fp16", "model.fp16.onnx", {"passed": True})
    return folder


def _facediag(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facediag", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def _sign(bundle: Path, key: Path) -> None:
    proc = _facediag("sign", str(bundle), "--key", str(key))
    assert proc.returncode == 0, proc.stderr


def _rehash_with_other_model(bundle: Path) -> None:
    """What an attacker with write access does: swap the model and rewrite bundle.json's hashes consistently."""
    from facediag.edge.bundle import load_bundle
    from facediag.edge.hashing import sha256_file

    write_colour_classifier(bundle / "model.onnx", centres=(0.5, 0.45, 0.4), extra_bias=(5.0, 0.0, 0.0))
    b = load_bundle(bundle, verify_files=False)
    b.files["model.onnx"] = sha256_file(bundle / "model.onnx")
    b.save()
    load_bundle(bundle)  # the bundle itself is consistent again: only the signature can tell


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(private key, its .pub, another key's .pub) made with the real CLI."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("vendor", "other"):
        proc = _facediag("keygen", "--out", str(d / name), "--comment", f"{name} test key")
        assert proc.returncode == 0, proc.stderr
    return d / "vendor", d / "vendor.pub", d / "other.pub"


# ------------------------------------------------------------------ keys and signatures
def test_keygen_writes_a_private_key_only_its_owner_reads(keys, tmp_path):
    from facediag.edge.signing import parse_public_key

    private, public, other = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    pub = parse_public_key(public.read_text())
    assert public.read_text().split()[1] == pub.key_id and public.read_text().rstrip().endswith("vendor test key")
    assert pub.key_id != parse_public_key(other.read_text()).key_id
    again = _facediag("keygen", "--out", str(private))
    assert again.returncode == 78 and "never overwrites" in again.stderr
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_signed_bundle_is_accepted_only_with_its_key(keys, tmp_path):
    from facediag.edge.signing import BundleTrustError, check_bundle_signature, load_trusted_keys

    private, public, other = keys
    bundle = make_bundle(tmp_path / "b")
    proc = _facediag("sign", str(bundle), "--key", str(private))
    assert proc.returncode == 0, proc.stderr
    sig = json.loads((bundle / "bundle.sig").read_text())
    doc = json.loads((bundle / "bundle.json").read_text())
    assert sig["bundle_sha256"] == doc["bundle_sha256"] and sig["algorithm"] == "ed25519"
    trusted = load_trusted_keys([str(public)])
    check = check_bundle_signature(bundle, trusted)
    assert check.signed and check.key_id == trusted[0].key_id == sig["key_id"]
    # the inline form of the key, as a config would hold it, works the same
    assert check_bundle_signature(bundle, load_trusted_keys([public.read_text().strip()])).signed
    with pytest.raises(BundleTrustError, match=f"signed by key {sig['key_id']}, which this station does not trust"):
        check_bundle_signature(bundle, load_trusted_keys([str(other)]))
    with pytest.raises(BundleTrustError, match="does not trust"):
        check_bundle_signature(bundle, [])


def test_unsigned_bundle_is_refused_unless_explicitly_allowed(keys, tmp_path):
    from facediag.edge.signing import BundleTrustError, check_bundle_signature, load_trusted_keys

    bundle = make_bundle(tmp_path / "b")
    trusted = load_trusted_keys([str(keys[1])])
    with pytest.raises(BundleTrustError, match=r"not signed \(bundle.sig is missing\)"):
        check_bundle_signature(bundle, trusted)
    allowed = check_bundle_signature(bundle, trusted, allow_unsigned=True)
    assert not allowed.signed and "allow_unsigned" in allowed.detail


def test_tampering_is_refused_naming_the_file(keys, tmp_path):
    from facediag.edge.errors import BundleError
    from facediag.edge.signing import BundleTrustError, check_bundle_signature, load_trusted_keys

    private, public, _ = keys
    trusted = load_trusted_keys([str(public)])
    # a model swapped in place (bundle.json untouched): the file is named
    swapped = make_bundle(tmp_path / "swapped")
    _sign(swapped, private)
    write_colour_classifier(swapped / "model.onnx", centres=(0.5, 0.45, 0.4), extra_bias=(5.0, 0.0, 0.0))
    with pytest.raises(BundleError, match="model.onnx is corrupted or was modified"):
        check_bundle_signature(swapped, trusted, allow_unsigned=True)
    # a model swapped and re-hashed into bundle.json: bundle.json is named, even with unsigned bundles allowed
    rehashed = make_bundle(tmp_path / "rehashed")
    _sign(rehashed, private)
    _rehash_with_other_model(rehashed)
    with pytest.raises(BundleTrustError, match="bundle.json was changed after it was signed"):
        check_bundle_signature(rehashed, trusted, allow_unsigned=True)
    # the signature itself altered
    forged = make_bundle(tmp_path / "forged")
    _sign(forged, private)
    sig = json.loads((forged / "bundle.sig").read_text())
    raw = bytearray(__import__("base64").b64decode(sig["signature"]))
    raw[0] ^= 1
    sig["signature"] = __import__("base64").b64encode(bytes(raw)).decode()
    (forged / "bundle.sig").write_text(json.dumps(sig))
    with pytest.raises(BundleTrustError, match="does not verify"):
        check_bundle_signature(forged, trusted)


def test_bad_trusted_key_entries_are_config_errors(tmp_path):
    from facediag.edge.errors import ConfigError
    from facediag.edge.signing import load_trusted_keys

    with pytest.raises(ConfigError, match="cannot be read"):
        load_trusted_keys([str(tmp_path / "missing.pub")])
    with pytest.raises(ConfigError, match="32 bytes"):
        load_trusted_keys(["ed25519:AAAA"])
    (tmp_path / "x.pub").write_text("ssh-ed25519 AAAA user@host\n")
    with pytest.raises(ConfigError, match="not a facediag public key"):
        load_trusted_keys(["x.pub"], base_dir=tmp_path)


# ------------------------------------------------------------------ build / verify refuse
def test_build_and_verify_refuse_unsigned_and_rehashed_bundles(keys, tmp_path):
    private, public, _ = keys
    bundle = make_bundle(tmp_path / "b")
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).uniform(0, 255, (4, 3, H, W)).astype(np.float32))
    verify = ("verify", str(bundle), "--precision", "fp16", "--backend", "onnxruntime", "--inputs", str(inputs))
    for cmd in (("build", str(bundle), "--precision", "fp16"), verify):
        proc = _facediag(*cmd)
        assert proc.returncode == 78 and "is not signed" in proc.stderr, proc.stderr
    _sign(bundle, private)
    # 4 inputs cannot show 99% agreement at 95% confidence; this test is about trust, so judge the point estimate.
    ok = _facediag(*verify, "--trusted-key", str(public), "--no-record", "--confidence", "0")
    assert ok.returncode == 0, ok.stderr
    _rehash_with_other_model(bundle)
    for cmd in (("build", str(bundle), "--precision", "fp16"), verify):
        proc = _facediag(*cmd, "--trusted-key", str(public))
        assert proc.returncode == 78 and "bundle.json was changed after it was signed" in proc.stderr, proc.stderr


def test_build_config_trust_section_is_used(keys, tmp_path):
    private, public, _ = keys
    bundle = make_bundle(tmp_path / "bundle")
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[engine]\nbundle = "bundle"\nbackend = "tensorrt"\n\n[trust]\nkeys = ["{public}"]\n')
    proc = _facediag("build", "--config", str(cfg))
    assert proc.returncode == 78 and "is not signed" in proc.stderr, proc.stderr
    _sign(bundle, private)
    proc = _facediag("build", "--config", str(cfg))
    # past the signature check: only the missing TensorRT stops it now
    assert "is not signed" not in proc.stderr and "TensorRT" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the real daemon
@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> Path:
    from tests.daemon_helpers import visits_video, yale_photo

    photos = [yale_photo("subject01.normal"), yale_photo("subject02.glasses")]
    return visits_video(tmp_path_factory.mktemp("sig_video") / "visits.avi", photos, hold=30, gap=20)


def _run_daemon(tmp_path: Path, bundle: Path, video: Path, trust: str, extra: str = "", wait_results: bool = False):
    from tests.conftest import fixture_path
    from tests.daemon_helpers import (
        free_port,
        read_lines,
        start_daemon,
        stop_daemon,
        wait_until,
        write_station_config,
    )

    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_station_config(tmp_path, uri=f"file:{video}", bundle=bundle,
                                  yunet=fixture_path("models/face_detection_yunet_2026may.onnx"), port=port,
                                  loop=True, trust=trust, extra=extra)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, tmp_path / "cwd", None, log_path=log)
    try:
        if not wait_results:
            return proc.wait(60), log.read_text(), [], None
        results = tmp_path / "state" / "results.jsonl"
        lines = wait_until(lambda: len(read_lines(results)) >= 1 and read_lines(results), 90)
        from tests.daemon_helpers import TOKEN, api_get

        code, body = api_get(port, "/status", TOKEN)
        status = json.loads(body) if code == 200 else None
    finally:
        if proc.poll() is None:
            stop_daemon(proc)
    return proc.returncode, log.read_text(), lines or [], status


def test_daemon_refuses_unsigned_and_rehashed_bundles(keys, tmp_path, face_video):
    private, public, _ = keys
    bundle = make_bundle(tmp_path / "bundle")
    code, log, _, _ = _run_daemon(tmp_path / "unsigned", bundle, face_video, trust=f'keys = ["{public}"]')
    assert code == 78, log
    assert "is not signed" in log and "allow_unsigned" in log
    _sign(bundle, private)
    _rehash_with_other_model(bundle)
    code, log, _, _ = _run_daemon(tmp_path / "rehashed", bundle, face_video,
                                  trust=f'keys = ["{public}"]\nallow_unsigned = true')
    assert code == 78, log
    assert "bundle.json was changed after it was signed" in log
    assert not (tmp_path / "rehashed" / "state" / "results.jsonl").exists()


def test_daemon_runs_a_signed_bundle_and_names_its_station(keys, tmp_path, face_video):
    private, public, _ = keys
    bundle = make_bundle(tmp_path / "bundle")
    _sign(bundle, private)
    inline = public.read_text().split()[0]
    code, log, lines, status = _run_daemon(tmp_path / "run", bundle, face_video, trust=f'keys = ["{inline}"]',
                                           extra='[station]\nid = "clinic-a.kiosk_7"\n', wait_results=True)
    assert lines, log
    assert all(r["station_id"] == "clinic-a.kiosk_7" for r in lines)
    assert status is not None and status["bundle_signature"]["signed"] is True
    assert status["bundle_signature"]["key_id"] == public.read_text().split()[1]
    assert code == 0, log


# ------------------------------------------------------------------ station id
@pytest.mark.parametrize("value", ["", "a/b", "site+1", "k#1", "has space", "x" * 65, "-lead"])
def test_station_id_is_validated(value):
    from facediag.edge.config import parse_config
    from facediag.edge.errors import ConfigError

    with pytest.raises(ConfigError, match="station.id"):
        parse_config({"station": {"id": value}})


def test_station_id_defaults_to_a_valid_host_name():
    import socket

    from facediag.edge.config import STATION_ID_PATTERN, parse_config

    sid = parse_config({}).station.id
    assert STATION_ID_PATTERN.match(sid)
    assert sid.lower() in socket.gethostname().lower() or sid == "station"
    assert parse_config({"station": {"id": "Kiosk-01"}}).station.id == "Kiosk-01"
