"""DTL1 before/after on repeated random splits of the proxy benchmark (see benchmarks/dtl1.md).

Each split re-draws, per class, 40 training and 30 test photos out of the 70 of
``proxy_dsf_split.csv`` (seeded), writes that split as a CSV and runs
``facediag train`` in-process with the given flags and ``--seed`` = the split's
seed. Prints one JSON line per run and a summary (mean and a 95% t interval over
splits), and appends the lines to ``--log``.

  python benchmarks/dtl1_splits.py --name before --splits 5 -- --strategy dtl1 --augment 0 --unfreeze 0
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIX = REPO.parent / "shared" / "fixtures"
CSV = FIX / "faces/celeba/proxy_dsf_split.csv"
IMAGES = FIX / "faces/celeba"
YUNET = FIX / "models/face_detection_yunet_2026may.onnx"
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def resplit(rows: list[dict[str, str]], classes: list[str], seed: int, n_train: int = 40) -> list[dict[str, str]]:
    out = []
    for c in classes:
        mine = sorted((r for r in rows if r["label"] == c), key=lambda r: r["image"])
        random.Random(seed * 1009 + len(c)).shuffle(mine)
        out += [{"image": r["image"], "label": c, "split": "train" if i < n_train else "test"} for i, r in enumerate(mine)]
    return out


def mean_ci(xs: list[float]) -> tuple[float, float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, m, m
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    h = T975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))
    return m, m - h, m + h


def summarize(log_path: Path) -> None:
    """Mean and 95% t interval per run name, and the paired difference of each name against "before"."""
    recs = [json.loads(line) for line in log_path.open() if line.strip()]
    by: dict[str, dict[int, float]] = {}
    for r in recs:
        by.setdefault(r["name"], {})[r["split"]] = r["test_accuracy"]
    for name, accs in by.items():
        m, lo, hi = mean_ci(list(accs.values()))
        print(f"{name}: n={len(accs)} mean {m:.4f} [{lo:.4f}, {hi:.4f}] per split {dict(sorted(accs.items()))}")
        if name != "before" and "before" in by:
            common = sorted(set(accs) & set(by["before"]))
            if common:
                d = [accs[k] - by["before"][k] for k in common]
                m, lo, hi = mean_ci(d)
                print(f"  {name} - before (paired, splits {common}): {m:+.4f} [{lo:+.4f}, {hi:+.4f}]")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize", type=Path, metavar="JSONL", help="only summarise a log of earlier runs")
    ap.add_argument("--name")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--binary", nargs=2, default=["pale_skin", "healthy"])
    ap.add_argument("--log", type=Path, default=Path("dtl1_runs.jsonl"), help="append one JSON line per run here")
    ap.add_argument("--keep", type=Path, help="keep the checkpoints under this folder")
    ap.add_argument("train_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.summarize:
        summarize(a.summarize)
        return 0
    if not a.name:
        ap.error("--name is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from facediag.commands import train as train_cmd

    rows = list(csv.DictReader(CSV.open()))
    extra = [x for x in a.train_args if x != "--"]
    accs = []
    for seed in range(a.first, a.first + a.splits):
        with tempfile.TemporaryDirectory() as tmp:
            split_csv = Path(tmp) / f"split{seed}.csv"
            with split_csv.open("w", newline="") as fh:
                w = csv.DictWriter(fh, ["image", "label", "split"])
                w.writeheader()
                w.writerows(resplit(rows, a.binary, seed))
            out = (a.keep / f"{a.name}-split{seed}") if a.keep else Path(tmp) / "ckpt"
            argv = ["--csv", str(split_csv), "--images", str(IMAGES), "--binary", *a.binary, "--backbone", "facenet",
                    "--detector-model", str(YUNET), "--seed", str(seed), "--out", str(out), *extra]
            p = argparse.ArgumentParser()
            train_cmd.add_arguments(p)
            t0 = time.monotonic()
            train_cmd.run(p.parse_args(argv))
            from facediag.training.checkpoint import read_meta

            m = read_meta(out)["metrics"]
            rec = {"name": a.name, "split": seed, "test_accuracy": m["test"]["accuracy"], "test_n": m["test"]["n"],
                   "val_accuracy": m["val"]["accuracy"], "best_epoch": m.get("history", {}).get("best_epoch"),
                   "epochs_run": m.get("history", {}).get("epochs_run"), "seconds": round(time.monotonic() - t0, 1),
                   "args": extra}
            accs.append(rec["test_accuracy"])
            line = json.dumps(rec)
            print(line, flush=True)
            with a.log.open("a") as fh:
                fh.write(line + "\n")
    m, lo, hi = mean_ci(accs)
    print(f"SUMMARY {a.name}: mean test top-1 {m:.4f}, 95% t-interval [{lo:.4f}, {hi:.4f}] over {len(accs)} splits "
          f"{[round(x, 4) for x in accs]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
