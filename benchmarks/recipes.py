"""Compare DTL2 feature recipes by repeated stratified splits; writes benchmarks/recipes.md.

Every (task, recipe) pair is one ``facediag train --repeats K`` run (the exact
command is printed in the table); this script runs them in-process through
``facediag.training.repeats.run_repeats`` with the same configuration, sharing a
crop cache and a per-recipe feature cache, so each photo is cropped once and each
recipe's features are extracted once.

Tasks: the proxy benchmark (5 classes, and pale_skin vs healthy) and a GENKI-4K
smile subsample made like the proxy (70 photos per class drawn with a fixed seed
from ``train_folder``, 40 train / 30 test per split).

    python benchmarks/recipes.py --fixtures ../shared/fixtures --work runs/recipes [--k 5] [--only TASK/RECIPE ...]

Needs the shared fixtures (photos and the YuNet model). Recipes with a backbone
that is not installed (``dlib``) are skipped with a note. Run one ``--compose``
process at a time per ``--work`` folder: two would each rewrite the shared part
caches with only their own photos (no wrong numbers, just recomputation).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> (backbone / feature recipe, calibration data, what it is)
RECIPES: dict[str, tuple[str, str, str]] = {
    "baseline": ("facenet", "val", "today's default: FaceNet embedding, C by CV on 80% of train, T on a 20% val split"),
    "+cv": ("facenet", "cv", "FaceNet embedding, C and T by 5-fold CV on all training photos (out-of-fold T)"),
    "+taps": ("facenet:taps", "val", "embedding + pooled repeat_1 and block8 activations (each L2-normalised)"),
    "+flip": ("facenet:flip", "val", "embedding averaged over the crop and its mirror image"),
    "taps+flip+cv": ("facenet:taps:flip", "cv", "the three FaceNet changes together"),
    "fusion+cv": ("facenet+dlib", "cv", "FaceNet and dlib embeddings concatenated, CV calibration"),
    "fusion+taps+flip+cv": ("facenet+dlib:taps:flip", "cv", "fusion with taps and flip averaging, CV calibration"),
}

TASKS: dict[str, dict[str, Any]] = {
    "proxy-5class": {"csv": "faces/celeba/proxy_dsf_split.csv", "images": "faces/celeba", "binary": None},
    "proxy-binary": {"csv": "faces/celeba/proxy_dsf_split.csv", "images": "faces/celeba", "binary": ["pale_skin", "healthy"]},
    "genki-smile": {"csv": None, "images": "faces/genki4k", "binary": None},
}

DETECTOR = "models/face_detection_yunet_2026may.onnx"


def genki_csv(fixtures: Path, out: Path, per_class: int = 70, n_train: int = 40, seed: int = 0) -> Path:
    """A proxy-shaped GENKI-4K subsample: ``per_class`` photos per class from train_folder (seeded), 40 train / rest test."""
    from facediag.edge.atomicio import atomic_write_text

    root = fixtures / "faces" / "genki4k"
    rng = random.Random(seed)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label", "split"])
    for folder, label in (("1", "smile"), ("0", "non_smile")):
        files = sorted((root / "train_folder" / folder).glob("*.jpg"))
        for i, f in enumerate(rng.sample(files, per_class)):
            w.writerow([f.relative_to(root).as_posix(), label, "train" if i < n_train else "test"])
    atomic_write_text(out, buf.getvalue())
    return out


def command(task: dict[str, Any], csv_path: str, images: str, backbone: str, cal_data: str, k: int) -> str:
    parts = ["facediag train", f"--csv {csv_path}", f"--images {images}"]
    if task["binary"]:
        parts.append("--binary " + " ".join(task["binary"]))
    parts += [f"--detector-model ../shared/fixtures/{DETECTOR}", f"--backbone {backbone}", "--strategy dtl2",
              f"--calibration-data {cal_data}", "--seed 0", f"--repeats {k}", "--out OUT"]
    return " ".join(parts)


def backbone_available(recipe: str) -> bool:
    from facediag.training.backbones import BACKBONES
    from facediag.training.features import parse_recipe

    try:
        return all(b in BACKBONES for b in parse_recipe(recipe).backbones)
    except Exception:  # unknown backbone name
        return False


def _part_cache(work: Path, name: str) -> tuple[Path, dict[str, np.ndarray]]:
    f = work / "parts" / f"{name}.npz"
    if not f.is_file():
        return f, {}
    with np.load(f, allow_pickle=False) as z:
        return f, {str(k): v for k, v in zip(z["keys"], z["raw"], strict=True)}


def composed_features(work: Path, recipe: str) -> Any:
    """crops -> the recipe's features, composed from each backbone's cached raw part outputs.

    For every backbone of the recipe the tapped part (``TappedBackbone`` after the in-graph
    re-sampling from the first backbone's crop) runs once on each crop and once on its mirror
    image; a recipe then takes the embedding block or all blocks, averages the two views when
    it flips, concatenates the parts and L2-normalises, which is exactly what
    ``FeatureExtractor`` + ``FaceClassifier.embed`` compute (tests/test_recipes.py checks the
    module against its parts), so all recipes of one backbone set cost two passes per photo.
    """
    import torch

    from facediag.edge.face.contract import crops_to_input
    from facediag.training.backbones import get_backbone
    from facediag.training.features import FeatureExtractor, parse_recipe
    from facediag.training.repeats import _crop_key

    spec = parse_recipe(recipe)

    def fn(crops: np.ndarray) -> np.ndarray:
        keys = [_crop_key(c) for c in crops]
        nets = [get_backbone(b) for b in spec.backbones]
        fx = FeatureExtractor(nets, taps=True).eval()
        first = spec.backbones[0]
        blocks = []
        for i, b in enumerate(spec.backbones):
            f, known = _part_cache(work, f"{b}@{first}")
            todo = [j for j, k in enumerate(keys) if k not in known]
            part, rs = fx.parts[i], fx.resamplers[i]
            for s in range(0, len(todo), 16):
                idx = todo[s : s + 16]
                x = torch.from_numpy(crops_to_input(crops[idx], fx.contract))
                with torch.no_grad():
                    a = part(rs(x)).numpy()
                    m = part(rs(x.index_select(3, fx.flip_index))).numpy()
                for j, va, vm in zip(idx, a, m, strict=True):
                    known[keys[j]] = np.stack([va, vm])
            if todo:
                f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                ks = sorted(known)
                np.savez(f, keys=np.array(ks), raw=np.stack([known[k] for k in ks]))
            raw = np.stack([known[k] for k in keys]).astype(np.float64)  # (N, 2 views, D_taps)
            width = part.dims[0] if not spec.taps else sum(part.dims)
            view = raw.mean(axis=1) if spec.flip else raw[:, 0]
            blocks.append(view[:, :width])
        out = np.concatenate(blocks, axis=1)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    return fn


def run_one(fixtures: Path, work: Path, task_name: str, recipe: str, k: int, compose: bool = False) -> dict[str, Any]:
    from facediag.training.repeats import run_repeats
    from facediag.training.train import TrainConfig

    task = TASKS[task_name]
    backbone, cal_data, _ = RECIPES[recipe]
    csv_path = fixtures / task["csv"] if task["csv"] else genki_csv(fixtures, work / "genki_smile.csv")
    out = work / task_name / recipe.replace("+", "plus-")
    cfg = TrainConfig(
        out=out, backbone=backbone, strategy="dtl2", csv_path=csv_path, images_dir=fixtures / task["images"],
        seed=0, cache=work / "crops", detector_model=fixtures / DETECTOR, keep_classes=task["binary"],
        calibration="temperature", calibration_data=cal_data, threads=1, progress=False,
    )
    t0 = time.monotonic()
    doc = run_repeats(cfg, k, feature_cache=work / "features",
                      features_fn=composed_features(work, backbone) if compose else None)
    doc["features"] = "composed from cached parts (benchmarks/recipes.py)" if compose else "the recipe's module"
    doc["wall_seconds"] = round(time.monotonic() - t0, 1)
    rel_csv = "runs/recipes/genki_smile.csv" if not task["csv"] else f"../shared/fixtures/{task['csv']}"
    doc["command"] = command(task, rel_csv, f"../shared/fixtures/{task['images']}", backbone, cal_data, k)
    (out / "repeats.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")  # adds command and wall time
    return doc


def table(work: Path) -> str:
    """benchmarks/recipes.md's table from every repeats.json under ``work``."""
    from facediag.training.repeats import t_interval

    rows = ["| recipe | task | mean top-1 | 95% interval (t, over splits) | per-split top-1 | vs baseline, paired [95%] "
            "| AUC mean [95%] | s | command |",
            "|---|---|---|---|---|---|---|---|---|"]
    for task_name in TASKS:
        base = None
        for recipe in RECIPES:
            f = work / task_name / recipe.replace("+", "plus-") / "repeats.json"
            if not f.is_file():
                continue
            d = json.loads(f.read_text())
            acc = d["summary"]["accuracy"]
            ci = acc["ci95"]
            if recipe == "baseline":
                base = acc["values"]
            diff = "-"
            if base is not None and recipe != "baseline" and len(base) == len(acc["values"]):
                deltas = [a - b for a, b in zip(acc["values"], base, strict=True)]  # the same splits: paired
                dci = t_interval(deltas)
                diff = f"{100 * np.mean(deltas):+.1f} [{100 * dci[0]:+.1f}, {100 * dci[1]:+.1f}]" if dci else "-"
            auc = d["summary"].get("auc")
            auc_s = f"{auc['mean']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}]" if auc and auc["ci95"] else "-"
            per = ", ".join(f"{100 * v:.1f}" for v in acc["values"])
            rows.append(
                f"| {recipe} | {task_name} | {100 * acc['mean']:.1f}% | [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] | {per} | "
                f"{diff} | {auc_s} | {d.get('wall_seconds', d['seconds']['total'])} | `{d.get('command', '')}` |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=REPO.parent / "shared" / "fixtures")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "recipes")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--only", nargs="*", metavar="TASK/RECIPE", help="run only these pairs (default: all)")
    ap.add_argument("--table-only", action="store_true", help="only print the table of the runs already done")
    ap.add_argument("--compose", action="store_true",
                    help="compose each recipe's features from per-backbone parts run once per photo and mirror image "
                    "(equal to the recipe's module; much less compute when several recipes are compared)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.table_only:
        for task_name in TASKS:
            for recipe in RECIPES:
                if args.only and f"{task_name}/{recipe}" not in args.only:
                    continue
                if not backbone_available(RECIPES[recipe][0]):
                    logging.warning("skip %s/%s: backbone not installed", task_name, recipe)
                    continue
                d = run_one(args.fixtures, args.work, task_name, recipe, args.k, compose=args.compose)
                s = d["summary"]["accuracy"]
                logging.info("%s %s: mean top-1 %.3f %s (%.0f s)", task_name, recipe, s["mean"], s["ci95"], d["wall_seconds"])
    sys.stdout.write(table(args.work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
