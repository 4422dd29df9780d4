"""`facediag demo` on a station-only install (no torch) names the extra it needs instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_demo_without_torch_names_the_train_extra(tmp_path):
    # A station-only install: torch is absent. A folder first on the path whose `torch` fails to import
    # the way a missing module does (ModuleNotFoundError) stands in for that.
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}", FACEDIAG_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "facediag", "demo", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'facediag[train]'" in proc.stderr and "torch" in proc.stderr
