"""``facediag compare REPORT_A REPORT_B``: a paired test of two evaluations on the same photos.

The statistics are ``facediag.training.stats``; this module reads the two reports,
matches their per-photo predictions by path, and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

NAME = "compare"
HELP = "paired comparison of two evaluation reports on the same photos (McNemar, bootstrap difference)"
DESCRIPTION = """\
Compare two `facediag evaluate` reports (report.json, or the folder holding it)
made on the SAME photos, matched by each photo's path relative to the dataset root.
Refuses when the two reports scored different photos or disagree on a photo's
true class.

Prints each model's top-1 accuracy with its 95% Wilson interval, the discordant
counts (b: A right and B wrong, c: A wrong and B right), the two-sided exact
McNemar p-value, and accuracy(A) - accuracy(B) with a 95% paired bootstrap
interval (--resamples, --seed). --json prints the same as one JSON object.
"""

log = logging.getLogger("facediag.compare")

_SHOW = 5  # example photos named in a refusal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("report_a", type=Path, metavar="REPORT_A", help="report.json of model A (or its folder)")
    parser.add_argument("report_b", type=Path, metavar="REPORT_B", help="report.json of model B (or its folder)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def load_predictions(path: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """(model id, photo -> (true class, predicted class)) from a report.json; clear errors otherwise."""
    from facediag.edge.errors import ConfigError

    file = path / "report.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such report; give a report.json written by `facediag evaluate`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: not a readable JSON report ({exc})") from None
    rows = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"{file} has no per-photo predictions; re-run `facediag evaluate` with this version")
    out: dict[str, tuple[str, str]] = {}
    for i, row in enumerate(rows):
        try:
            photo, true, pred = str(row["photo"]), str(row["true"]), str(row["predicted"])
        except (TypeError, KeyError):
            raise ConfigError(f"{file}: prediction {i} lacks photo / true / predicted") from None
        if photo in out:
            raise ConfigError(f"{file}: photo {photo!r} appears twice in the predictions")
        out[photo] = (true, pred)
    return str(data.get("model_id", file)), out


def _check_same_photos(a: dict[str, tuple[str, str]], b: dict[str, tuple[str, str]]) -> list[str]:
    """The common photos, sorted; raises FacediagError when the sets or the true classes differ."""
    from facediag.edge.errors import FacediagError

    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise FacediagError(
            f"the reports scored different photos ({len(only_a)} only in A, e.g. {only_a[:_SHOW]}; "
            f"{len(only_b)} only in B, e.g. {only_b[:_SHOW]}): a paired test needs the same photos. "
            "Evaluate both models on the same data and split (photos without a usable face differ per model "
            "only when their front-ends differ)"
        )
    photos = sorted(a)
    if not photos:
        raise FacediagError("the reports hold no predictions")
    differ = [p for p in photos if a[p][0] != b[p][0]]
    if differ:
        raise FacediagError(f"the reports disagree on the true class of {len(differ)} photo(s), e.g. {differ[:_SHOW]}")
    return photos


def compare_reports(path_a: Path, path_b: Path, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The comparison as a JSON-ready dict."""
    import numpy as np

    from facediag.edge.errors import ConfigError
    from facediag.training.stats import mcnemar_exact, paired_bootstrap_difference, wilson_interval

    if resamples < 1:
        raise ConfigError(f"--resamples must be >= 1, got {resamples}")
    id_a, a = load_predictions(path_a)
    id_b, b = load_predictions(path_b)
    photos = _check_same_photos(a, b)
    ca = np.array([a[p][0] == a[p][1] for p in photos])
    cb = np.array([b[p][0] == b[p][1] for p in photos])
    n = len(photos)
    n_b = int(np.sum(ca & ~cb))
    n_c = int(np.sum(~ca & cb))
    diff = paired_bootstrap_difference(ca, cb, resamples=resamples, seed=seed)

    def side(model_id: str, path: Path, correct: np.ndarray) -> dict[str, Any]:
        k = int(correct.sum())
        return {"report": str(path), "model_id": model_id, "correct": k, "accuracy": k / n,
                "accuracy_ci95": list(wilson_interval(k, n))}

    return {
        "n": n,
        "a": side(id_a, path_a, ca),
        "b": side(id_b, path_b, cb),
        "a_right_b_wrong": n_b,
        "a_wrong_b_right": n_c,
        "mcnemar_exact_p": mcnemar_exact(n_b, n_c),
        "difference_a_minus_b": diff.to_dict(),
    }


def format_comparison(r: dict[str, Any]) -> str:
    """The comparison as a few lines of text."""
    lines = [f"photos compared: {r['n']}"]
    for key in ("a", "b"):
        s = r[key]
        lo, hi = s["accuracy_ci95"]
        lines.append(f"{key.upper()} {s['model_id']}: top-1 {100 * s['accuracy']:.1f}% "
                     f"({s['correct']}/{r['n']}; 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    d = r["difference_a_minus_b"]
    lines.append(f"A right, B wrong: {r['a_right_b_wrong']}   A wrong, B right: {r['a_wrong_b_right']}   "
                 f"McNemar exact p = {r['mcnemar_exact_p']:.4g}")
    lines.append(f"accuracy A - B: {100 * d['difference']:+.1f} points (95% paired bootstrap CI "
                 f"{100 * d['interval'][0]:+.1f} to {100 * d['interval'][1]:+.1f}, {d['resamples']} resamples, "
                 f"seed {d['seed']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = compare_reports(args.report_a, args.report_b, resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_comparison(result))
    return 0
