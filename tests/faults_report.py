"""The fault and fuzz suite's per-area count (issue 11), printed at the end of every pytest run.

Each ``tests/test_faults_<area>.py`` is one area (station, results, images, inputs, privacy); a
test marked ``faults`` counts once per outcome, and a Hypothesis test's example budget is shown
beside it, so CI's log says e.g. ``images: 12 passed (fuzz: 300 examples)``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

_OUTCOMES: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_FUZZ: dict[str, int] = defaultdict(int)


def area_of(nodeid: str) -> str | None:
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if not name.startswith("test_faults_"):
        return None
    area = name[len("test_faults_"):]
    return area[:-3] if area.endswith(".py") else area  # not str.removesuffix: .ci/py38 runs this on 3.8


def record(report: Any) -> None:
    area = area_of(report.nodeid)
    if area is None or (report.when != "call" and not (report.when == "setup" and report.outcome != "passed")):
        return
    _OUTCOMES[area][report.outcome] += 1


def note_fuzz(item: Any) -> None:
    area = area_of(item.nodeid)
    inner = getattr(getattr(item, "obj", None), "hypothesis", None)
    if area is None or inner is None:
        return
    examples = getattr(getattr(item.obj, "_hypothesis_internal_use_settings", None), "max_examples", 0)
    _FUZZ[area] += int(examples or 0)


def summary_lines() -> list[str]:
    lines = []
    for area in sorted(_OUTCOMES):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_OUTCOMES[area].items()))
        fuzz = f" (fuzz budget: {_FUZZ[area]} examples)" if _FUZZ.get(area) else ""
        lines.append(f"  {area}: {counts}{fuzz}")
    return lines
