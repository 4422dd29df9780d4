"""Figures of a deployed-decision evaluation (``facediag.training.deployed_eval``): rates, intervals, the table.

From the station's session rows (one per photo or video):

- per true class, the share of sessions that ended refer / no finding / retake (each
  with a 95% Wilson interval; the three add up to 1), and for a condition how many
  referrals named that very condition;
- "refer" as a test for "has a condition" (every class but the healthy one):
  sensitivity = referred condition sessions / condition sessions, specificity =
  healthy sessions not referred / healthy sessions; once over the *decided*
  sessions (retakes left out: what the decision does when it is made) and once over
  *all* sessions (a retake counts as not referred: what one visit achieves);
- PPV and NPV at a prevalence the user gives (Bayes' formula on the decided
  sensitivity and specificity); their range is the PPV/NPV at the corners of the two
  Wilson intervals (both rise with sensitivity and specificity), a conservative band;
- how many sessions were retakes and why (no face, quality gates and which ones,
  low confidence, no decision, session ended early).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from facediag.training.deployed_eval import SessionRow
from facediag.training.stats import wilson_interval

DECISIONS = ("refer", "no_finding", "retake")
LABELS = {"refer": "refer", "no_finding": "no finding", "retake": "retake"}


def _proportion(k: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"k": k, "n": n, "value": None, "ci95": None}
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "value": k / n, "ci95": [lo, hi]}


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float | None, float | None]:
    """(PPV, NPV) at ``prevalence`` by Bayes' formula; None where the denominator is 0."""
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prevalence}")
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    tn = specificity * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else None
    npv = tn / (tn + fn) if tn + fn > 0 else None
    return ppv, npv


def _per_class(rows: list[SessionRow], classes: list[str], healthy: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in classes:
        mine = [r for r in rows if r.true == c]
        counts = Counter(r.decision for r in mine)
        entry: dict[str, Any] = {"n": len(mine)}
        for d in DECISIONS:
            entry[d] = _proportion(counts.get(d, 0), len(mine))
        if c != healthy:
            entry["refer_for_this_condition"] = sum(1 for r in mine if r.decision == "refer" and r.condition == c)
        out[c] = entry
    return out


def _refer_test(rows: list[SessionRow], healthy: str, decided_only: bool) -> dict[str, Any]:
    use = [r for r in rows if r.decision != "retake"] if decided_only else rows
    sick = [r for r in use if r.true != healthy]
    well = [r for r in use if r.true == healthy]
    return {
        "sessions": "decided (retakes left out)" if decided_only else "all (a retake counts as not referred)",
        "sensitivity": _proportion(sum(r.decision == "refer" for r in sick), len(sick)),
        "specificity": _proportion(sum(r.decision != "refer" for r in well), len(well)),
    }


def _at_prevalence(test: dict[str, Any], prevalence: float) -> dict[str, Any]:
    sens, spec = test["sensitivity"], test["specificity"]
    if sens["value"] is None or spec["value"] is None:
        return {"prevalence": prevalence, "ppv": None, "npv": None, "note": "needs condition and healthy sessions"}
    ppv, npv = predictive_values(sens["value"], spec["value"], prevalence)
    low = predictive_values(sens["ci95"][0], spec["ci95"][0], prevalence)
    high = predictive_values(sens["ci95"][1], spec["ci95"][1], prevalence)
    return {
        "prevalence": prevalence, "from": "decided sessions",
        "ppv": ppv, "ppv_range": [low[0], high[0]], "npv": npv, "npv_range": [low[1], high[1]],
        "range": "PPV/NPV at the corners of the sensitivity and specificity Wilson intervals",
    }


def _retakes(rows: list[SessionRow]) -> dict[str, Any]:
    retakes = [r for r in rows if r.decision == "retake"]
    gates: Counter[str] = Counter()
    for r in retakes:
        gates.update(r.rejections)
    return {
        "total": len(retakes),
        "share": _proportion(len(retakes), len(rows)),
        "by_cause": dict(Counter(r.retake_cause or "?" for r in retakes).most_common()),
        "rejected_frames_by_gate": dict(gates.most_common()),
        "examples": [{"item": r.item, "reason": r.reason} for r in retakes[:20]],
    }


def summarize_sessions(rows: list[SessionRow], classes: list[str], healthy: str,
                       prevalence: float | None = None) -> dict[str, Any]:
    """The deployed-decision figures (see the module docstring) of ``rows``."""
    if healthy not in classes:
        raise ValueError(f"healthy class {healthy!r} is not one of {classes}")
    decided = _refer_test(rows, healthy, decided_only=True)
    figures: dict[str, Any] = {
        "sessions": len(rows),
        "per_class": _per_class(rows, classes, healthy),
        "refer_decided": decided,
        "refer_all_sessions": _refer_test(rows, healthy, decided_only=False),
        "retakes": _retakes(rows),
        "intervals": {"level": 0.95, "proportions": "wilson"},
    }
    if prevalence is not None:
        figures["at_prevalence"] = _at_prevalence(decided, prevalence)
    return figures


# --------------------------------------------------------------------------------------------- text


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _prop(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "n/a (0)"
    lo, hi = p["ci95"]
    return f"{_pct(p['value'])} ({p['k']}/{p['n']}; {_pct(lo)}-{_pct(hi)})"


def format_markdown(report: dict[str, Any]) -> str:
    """The deployed-decision table and figures as Markdown (also readable in a terminal)."""
    f = report["figures"]
    st = report["station"]
    thresholds = ", ".join(f"{c} {t:.3f}" for c, t in st["thresholds"].items()) or "none (0.5 each)"
    lines = [
        f"Deployed decision: {report['bundle']} ({st['backend']} {st['precision']}), {f['sessions']} "
        f"{report['kind']} sessions, good_frames {st['good_frames']}, min_confidence {st['min_confidence']:g}, "
        f"thresholds: {thresholds}",
        "",
        "| true class | n | refer | no finding | retake |",
        "|---|---|---|---|---|",
    ]
    for c, e in f["per_class"].items():
        cells = [_prop(e[d]) for d in DECISIONS]
        if "refer_for_this_condition" in e and e["refer"]["k"]:
            cells[0] += f", {e['refer_for_this_condition']} for {c}"
        lines.append(f"| {c} | {e['n']} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in ("refer_decided", "refer_all_sessions"):
        t = f[key]
        lines.append(f"- refer vs {report['healthy_class']}, {t['sessions']}: sensitivity {_prop(t['sensitivity'])}, "
                     f"specificity {_prop(t['specificity'])}")
    pv = f.get("at_prevalence")
    if pv is not None:
        if pv["ppv"] is None and pv["npv"] is None:
            lines.append(f"- at prevalence {_pct(pv['prevalence'])}: PPV/NPV n/a ({pv.get('note', '')})")
        else:
            lines.append(
                f"- at prevalence {_pct(pv['prevalence'])} (decided sessions): PPV {_pct(pv['ppv'])} "
                f"(range {_pct(pv['ppv_range'][0])}-{_pct(pv['ppv_range'][1])}), NPV {_pct(pv['npv'])} "
                f"(range {_pct(pv['npv_range'][0])}-{_pct(pv['npv_range'][1])})")
    else:
        lines.append("- PPV/NPV: give --prevalence (the share of screened people who have a condition)")
    rt = f["retakes"]
    causes = ", ".join(f"{k} {v}" for k, v in rt["by_cause"].items()) or "none"
    gates = ", ".join(f"{k} x{v}" for k, v in rt["rejected_frames_by_gate"].items())
    lines.append(f"- retakes: {rt['total']} of {f['sessions']} ({causes})" + (f"; frames rejected by: {gates}" if gates else ""))
    lines.append("- intervals: 95% Wilson; the PPV/NPV range uses the corners of the sensitivity/specificity intervals")
    return "\n".join(lines) + "\n"


def write_deployed_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """``deployed-report.json`` (figures + one row per session) and ``deployed-report.md`` (the table)."""
    from facediag.edge.atomicio import atomic_write_json, atomic_write_text
    from facediag.training.report import json_safe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"deployed-report.json": out / "deployed-report.json", "deployed-report.md": out / "deployed-report.md"}
    atomic_write_json(paths["deployed-report.json"], json_safe(report), allow_nan=False, sort_keys=False)
    atomic_write_text(paths["deployed-report.md"], format_markdown(report))
    return paths
