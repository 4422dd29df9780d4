"""Shared test helpers: where the fixtures are, and skipping when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def fixture_path(relative: str) -> Path:
    """Path of a file under ../shared/fixtures; skips the test with a reason when it is absent."""
    path = FIXTURES / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/fixtures/{relative} (the shared fixtures are not beside this checkout)")
    return path


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip("needs ../shared/fixtures (the shared fixtures are not beside this checkout)")
    return FIXTURES


# CI machines are shared and noisy: property tests check correctness, never speed.
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The daemon tests' real bundle (tests.daemon_helpers.build_test_bundle), a private copy per module.
    Modules with bundles of their own define their own ``bundle_dir``."""
    from tests.daemon_helpers import build_test_bundle

    return build_test_bundle(tmp_path_factory.mktemp("station_bundle"))


@pytest.fixture(scope="module")
def yunet() -> Path:
    """The YuNet detector model from the fixtures (skips without them)."""
    return fixture_path("models/face_detection_yunet_2026may.onnx")


from hypothesis import settings as _hyp_settings  # noqa: E402

# Under CI (CI=true) the examples are derived from each test's name, so a red CI run can be re-run and
# read; a developer's runs stay random and keep exploring.
_hyp_settings.register_profile("facediag", deadline=None, max_examples=60,
                               derandomize=bool(__import__("os").environ.get("CI")))
_hyp_settings.load_profile("facediag")


# Issue 11: the fault and fuzz suite (tests/test_faults_*.py) is counted per area in the summary.
def pytest_runtest_logreport(report) -> None:
    from tests.faults_report import record

    record(report)


def pytest_runtest_setup(item) -> None:
    from tests.faults_report import note_fuzz

    note_fuzz(item)


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.faults_report import summary_lines

    lines = summary_lines()
    if lines:
        terminalreporter.write_sep("-", "fault and fuzz suite, per area (issue 11)")
        for line in lines:
            terminalreporter.write_line(line)
