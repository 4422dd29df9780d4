"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the kiosk tests.

No Selenium Manager: the browser and the driver are given by path and SE_OFFLINE is set,
so nothing is downloaded. Tests skip with the reason when either is missing.
Screenshots go to $FACEDIAG_TEST_ARTIFACTS (CI keeps it), else test-output/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FACEDIAG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FACEDIAG_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--no-default-browser-check", "--lang=en-US")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("FACEDIAG_TEST_ARTIFACTS") or REPO / "test-output") / "kiosk"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def require_browser() -> None:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.skip(f"{what} not found at {path}: apt-get install chromium chromium-driver")


def axe_path() -> Path:
    """axe-core's axe.min.js: $FACEDIAG_AXE_JS (CI: npm's axe-core 4.x), node_modules/axe-core in the repository
    (`npm install --no-save axe-core@4`), else the copy in the axe-selenium-python wheel (axe-core 3.1, older
    rules; the dev extra installs it)."""
    candidates = [Path(p) for p in (os.environ.get("FACEDIAG_AXE_JS"),) if p]
    candidates.append(REPO / "node_modules" / "axe-core" / "axe.min.js")
    try:
        import axe_selenium_python

        candidates.append(Path(axe_selenium_python.__file__).parent / "node_modules" / "axe-core" / "axe.min.js")
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip("axe-core not found: set FACEDIAG_AXE_JS, `npm install --no-save axe-core@4`, or "
                "pip install -e '.[dev]' (axe-selenium-python ships axe.min.js)")


def axe_script() -> str:
    return axe_path().read_text(encoding="utf-8")


class Browser:
    def __init__(self, width: int = 800, height: int = 480) -> None:
        require_browser()
        os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="fd-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in CHROMIUM_ARGS:
            opts.add_argument(arg)
        opts.add_argument(f"--user-data-dir={self.profile}")
        opts.add_argument(f"--window-size={width},{height}")
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)
        self.viewport(width, height)

    def viewport(self, width: int, height: int) -> None:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def js(self, script: str, *args: object) -> object:
        return self.driver.execute_script(script, *args)

    def state(self) -> str:
        return str(self.js("return document.body.dataset.state || ''"))

    def wait(self, predicate, timeout: float, interval: float = 0.05, what: str = ""):
        from tests.daemon_helpers import wait_until

        value = wait_until(predicate, timeout, interval)
        if value:
            return value
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}; page state "
                             f"{self.state()!r}")

    def wait_state(self, state: str, timeout: float = 30.0) -> None:
        self.wait(lambda: self.state() == state, timeout, what=f"data-state={state}")

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def axe(self) -> list[dict]:
        """axe-core run inside the page; the violations of impact serious or critical."""
        self.js(axe_script())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));"
        )
        assert isinstance(result, list)
        print(f"axe-core {self.js('return axe.version')} ({axe_path()}): {len(result)} violation(s) of any impact")
        return [v for v in result if v.get("impact") in ("serious", "critical")]

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
