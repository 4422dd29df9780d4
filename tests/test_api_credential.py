"""The API token through systemd's LoadCredential= (issue 12): $CREDENTIALS_DIRECTORY/api.token wins over
api.token_file, so /etc/facediag/api.token can stay root-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from facediag.edge.errors import ConfigError
from facediag.edge.service.api import load_token

TOKEN_A = "credential-token-" + "a" * 30
TOKEN_B = "file-token-" + "b" * 30


def test_credential_is_preferred_to_the_token_file(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api.token").write_text(TOKEN_A + "\n")
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN_B)
    assert load_token(token_file, env={"CREDENTIALS_DIRECTORY": str(creds)}) == TOKEN_A
    assert load_token(tmp_path / "absent", env={"CREDENTIALS_DIRECTORY": str(creds)}) == TOKEN_A
    assert load_token(token_file, env={}) == TOKEN_B
    # a credentials folder without api.token (another unit's credentials): the file is used
    assert load_token(token_file, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")}) == TOKEN_B
    (creds / "api.token").write_text("short")
    with pytest.raises(ConfigError, match="at least"):
        load_token(token_file, env={"CREDENTIALS_DIRECTORY": str(creds)})


def test_daemon_serves_with_the_credential_token(tmp_path):
    from tests.conftest import REPO, fixture_path
    from tests.daemon_helpers import (
        api_get,
        free_port,
        stop_daemon,
        visits_video,
        write_station_config,
        yale_photo,
    )
    from tests.test_signing import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    video = visits_video(tmp_path / "v.avi", [yale_photo("subject01.normal")], hold=20, gap=5)
    port = free_port()
    config = write_station_config(tmp_path, uri=f"file:{video}", bundle=bundle,
                                  yunet=fixture_path("models/face_detection_yunet_2026may.onnx"), port=port)
    (tmp_path / "api.token").unlink()  # only the credential exists, as with a root-only /etc/facediag/api.token
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api.token").write_text(TOKEN_A + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(PYTHONPATH=str(REPO), CREDENTIALS_DIRECTORY=str(creds))
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "facediag", "run", "--config", str(config)], cwd=tmp_path,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        code = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                code, body = api_get(port, "/status", TOKEN_A)
                break
            except OSError:
                time.sleep(0.2)
        assert code == 200, log.read_text()
        assert json.loads(body)["config_path"] == str(config)
        assert api_get(port, "/status", TOKEN_B)[0] == 401
    finally:
        stop_daemon(proc)
