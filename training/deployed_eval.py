"""Score a model bundle exactly as a station runs it: the library behind ``facediag evaluate BUNDLE --as-station``.

Nothing of the decision path is re-implemented here. The station's own parts are
assembled the way ``facediag.edge.station.builder.build_station`` assembles them
(``load_bundle``, ``make_front_end`` from ``[detector]``/``[quality]``,
``select_engine`` with ONNX Runtime on this CPU host and the configured
precision, ``warm_up``) and every frame goes through
``facediag.edge.station.pipeline.ScreeningPipeline.process``: detection, subject
choice, alignment, quality gates, the session tracker (N good frames within the
window), one batch of inference, the mean of the probabilities and
``facediag.edge.screening.decision.decide`` with the bundle's thresholds and
``screening.min_confidence``. What the pipeline hands to its result callback is
the station's ``ScreeningResult``, recorded here as one session row.

- A labelled **photo** is one session of one frame (``good_frames`` is 1 for photos):
  no face -> retake (no result at all, as at a station), a failed quality gate ->
  retake naming the gate, else the decision on that frame's probabilities.
- A labelled **video** is one session: every frame is decoded by the station's file
  source (``file:`` URI, unthrottled) and processed on the video's own clock (frame
  index / file frame rate), as ``facediag bench`` does; no frame is dropped, so the
  result does not depend on this machine's speed. The video's decision is the first
  result the station gave; how many it gave is recorded.

Statistics and the report are in ``facediag.training.deployed_report``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facediag.edge.errors import ConfigError, FacediagError, ModelFileError
from facediag.edge.photos import SPLITS, LabelledPhoto

if TYPE_CHECKING:
    from facediag.edge.bundle import Bundle
    from facediag.edge.config import StationConfig
    from facediag.edge.engine.select import EnginePlan
    from facediag.edge.screening.record import ScreeningResult
    from facediag.edge.station.pipeline import ScreeningPipeline

log = logging.getLogger(__name__)

NO_FACE = "no face found"
DEFAULT_VIDEO_FPS = 30.0  # the clock of a file whose frame rate OpenCV cannot read (as facediag bench)

# Why a session ended as a retake, by kind (the full reason is kept per row).
CAUSE_NO_FACE = "no face"
CAUSE_QUALITY = "quality gates"
CAUSE_CONFIDENCE = "low confidence"
CAUSE_NO_DECISION = "no decision (model or record)"
CAUSE_SESSION = "session ended early"


@dataclass(frozen=True)
class LabelledItem:
    """One labelled photo or video: its path, true class, split and name relative to the data root."""

    path: Path
    label: str
    name: str
    split: str = "train"


@dataclass
class SessionRow:
    """One session's outcome as the station decided it."""

    item: str  # path relative to the data root
    true: str
    decision: str  # refer | no_finding | retake
    condition: str | None
    probabilities: dict[str, float]
    reason: str
    retake_cause: str | None
    frames_seen: int
    good_frames: int
    frames_used: int
    results: int  # how many results the station gave for this item (videos can give several)
    rejections: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StationOverrides:
    """Command-line values that replace the station config's (None: keep the config's)."""

    precision: str | None = None
    threads: int | None = None
    min_confidence: float | None = None
    good_frames: int | None = None
    detector: str | None = None
    detector_model: Path | None = None


# --------------------------------------------------------------------------------------------- data


def is_bundle(path: Path) -> bool:
    return (Path(path) / "bundle.json").is_file()


def check_bundle_path(path: Path) -> None:
    """A bundle folder, or a ConfigError that says what was given instead."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such folder; give a model bundle folder (from `facediag export`)")
    if not path.is_dir():
        raise ModelFileError(f"{path} is a file; give the bundle FOLDER that holds bundle.json")
    if (path / "checkpoint.json").is_file() and not is_bundle(path):
        raise ConfigError(
            f"{path} is a training checkpoint, not a model bundle: the station runs bundles, so --as-station "
            f"scores one; export it first (`facediag export {path} BUNDLE --images PHOTOS`), or leave out "
            "--as-station and the station-only options to evaluate the checkpoint itself"
        )
    if not is_bundle(path):
        raise ModelFileError(f"{path} has no bundle.json: not a model bundle (make one with `facediag export`)")


def items_from_photos(photos: list[LabelledPhoto], split: str | None) -> list[LabelledItem]:
    """The photos of ``split`` (None: all) as labelled items."""
    chosen = [p for p in photos if split is None or p.split == split]
    if not chosen:
        present = sorted({p.split for p in photos})
        raise FacediagError(f"no photos in split {split!r}; splits present: {', '.join(present)} (use --split)")
    return [LabelledItem(p.path, p.label, p.name or p.path.name, p.split) for p in chosen]


def _video_suffixes() -> frozenset[str]:
    from facediag.edge.capture.base import VIDEO_EXTENSIONS

    return VIDEO_EXTENSIONS


def read_labelled_videos(source: Path, root: Path | None = None, split: str | None = None) -> list[LabelledItem]:
    """Videos from a CSV ``video,label[,split]`` (paths relative to ``root``, default the CSV's folder) or
    from a folder of class sub-folders (optionally ``<split>/<class>/``). ``split`` filters when the data
    says splits (a CSV split column, split folders); sets without splits are used whole."""
    source = Path(source)
    if not source.exists():
        raise FacediagError(f"--videos {source}: no such file or folder")
    if source.is_file():
        items = _videos_from_csv(source, Path(root) if root else source.parent)
        has_splits = any(i.split != "" for i in items)
    else:
        items, has_splits = _videos_from_folder(source)
    if has_splits and split is not None:
        chosen = [i for i in items if i.split == split]
        if not chosen:
            present = sorted({i.split for i in items})
            raise FacediagError(f"--videos {source}: no videos in split {split!r}; splits present: {', '.join(present)}")
        items = chosen
    if not items:
        raise FacediagError(f"--videos {source}: no videos found (suffixes {', '.join(sorted(_video_suffixes()))})")
    return items


def _videos_from_csv(path: Path, root: Path) -> list[LabelledItem]:
    items: list[LabelledItem] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"video", "label"} - set(reader.fieldnames or [])
        if missing:
            raise FacediagError(f"{path}: header must name the columns video,label[,split]; missing "
                                f"{', '.join(sorted(missing))}")
        for lineno, row in enumerate(reader, start=2):
            video, label = (row.get("video") or "").strip(), (row.get("label") or "").strip()
            split = (row.get("split") or "").strip().lower()
            if not video or not label:
                raise FacediagError(f"{path.name} line {lineno}: empty video or label ({row})")
            if split and split not in SPLITS:
                raise FacediagError(f"{path.name} line {lineno}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
            if not (root / video).is_file():
                raise FacediagError(f"{path.name} line {lineno}: video {video} not found under {root}")
            items.append(LabelledItem(root / video, label, video, split))
    return items


def _videos_from_folder(root: Path) -> tuple[list[LabelledItem], bool]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in dirs if d.name in SPLITS]
    layout = [(d.name, d) for d in split_dirs] if split_dirs else [("", root)]
    suffixes = _video_suffixes()
    items = [
        LabelledItem(f, cdir.name, f.relative_to(root).as_posix(), split)
        for split, base in layout
        for cdir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
        for f in sorted(cdir.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in suffixes
    ]
    return items, bool(split_dirs)


def check_labels(items: list[LabelledItem], classes: list[str]) -> None:
    """Every true label must be one of the bundle's classes (a clear error naming both otherwise)."""
    unknown = sorted({i.label for i in items} - set(classes))
    if unknown:
        example = next(i.name for i in items if i.label in unknown)
        raise FacediagError(
            f"label(s) {', '.join(repr(u) for u in unknown)} (e.g. {example}) are not classes of this bundle "
            f"({', '.join(classes)}); rename them in the data or leave those rows out"
        )


# --------------------------------------------------------------------------------------------- the station


def station_config(bundle: Path, config_path: Path | None, overrides: StationOverrides) -> StationConfig:
    """The station config the evaluation runs with: ``config_path``'s (or the defaults), this bundle,
    ONNX Runtime on the CPU, and the command line's overrides."""
    from facediag.edge.config import load_config, parse_config
    from facediag.edge.face.detector import auto_detector_name

    o = overrides
    if config_path is not None:
        cfg = load_config(config_path)
    else:
        name = o.detector if o.detector not in (None, "auto") else auto_detector_name(o.detector_model)
        det: dict[str, Any] = {"name": name}
        if o.detector_model is not None:
            det["model_path"] = str(Path(o.detector_model).resolve())
        cfg = parse_config({"detector": det, "api": {"enabled": False}, "trust": {"allow_unsigned": True}})
    if config_path is not None and (o.detector is not None or o.detector_model is not None):
        raise ConfigError("--detector/--detector-model and --station-config both say which detector: the station "
                          "config's [detector] is used; leave out the detector options")
    screening = cfg.screening
    if o.min_confidence is not None:
        screening = replace(screening, min_confidence=o.min_confidence)
    if o.good_frames is not None:
        screening = replace(screening, good_frames=o.good_frames)
    engine = replace(cfg.engine, bundle=str(Path(bundle).resolve()), backend="onnxruntime",
                     precision=o.precision or cfg.engine.precision,
                     threads=o.threads if o.threads is not None else cfg.engine.threads)
    return replace(cfg, engine=engine, screening=screening)


@dataclass
class DeployedStation:
    """The station's bundle, engine plan and one screening pipeline per item kind (photo / video)."""

    config: StationConfig
    bundle: Bundle
    plan: EnginePlan
    photo_pipeline: ScreeningPipeline
    video_pipeline: ScreeningPipeline
    collected: list[ScreeningResult]
    close: Callable[[], None]


def open_station(cfg: StationConfig) -> DeployedStation:
    """The station's parts as ``build_station`` makes them, without capture, API, or results file."""
    from facediag.edge import precision as precision_table
    from facediag.edge.bundle import load_bundle
    from facediag.edge.engine.select import select_engine
    from facediag.edge.station.pipeline import ScreeningPipeline, check_detector, make_front_end, warm_up

    bundle = load_bundle(cfg.engine.bundle)
    front_end = make_front_end(cfg, bundle.contract)
    check_detector(front_end, cfg.detector.name, cfg.detector.model_path)
    engine, plan = select_engine(bundle, precision_table.ONNXRUNTIME, cfg.engine.precision,
                                 threads=cfg.engine.threads, providers=cfg.engine.providers)
    try:
        warm_up(engine, bundle.contract, cfg.screening.good_frames, bundle.num_classes)
    except Exception:
        engine.close()
        raise
    collected: list[ScreeningResult] = []
    session = cfg.screening.to_session_config()

    def pipeline(good_frames: int) -> ScreeningPipeline:
        return ScreeningPipeline(front_end, engine, bundle, replace(session, good_frames=good_frames),
                                 precision=plan.precision, on_result=collected.append)

    return DeployedStation(cfg, bundle, plan, pipeline(1), pipeline(session.good_frames), collected, engine.close)


def retake_cause(result: ScreeningResult | None, needed: int) -> str | None:
    """Why a session is a retake, by kind; None for refer / no finding."""
    if result is None:
        return CAUSE_NO_FACE
    if result.decision != "retake":
        return None
    if result.probabilities:
        return CAUSE_CONFIDENCE  # decide() had probabilities and found the top class below min_confidence
    if result.reason.startswith("no decision"):
        return CAUSE_NO_DECISION
    if result.quality.good_frames < needed and result.quality.rejected_frames > 0:
        return CAUSE_QUALITY
    return CAUSE_SESSION


def _row(item: LabelledItem, results: list[ScreeningResult], needed: int, frames: int) -> SessionRow:
    if not results:
        return SessionRow(item.name, item.label, "retake", None, {}, NO_FACE, CAUSE_NO_FACE, frames, 0, 0, 0)
    r = results[0]
    return SessionRow(
        item.name, item.label, r.decision, r.condition, dict(r.probabilities), r.reason, retake_cause(r, needed),
        r.quality.frames_seen, r.quality.good_frames, r.frames_used, len(results), dict(r.quality.rejections),
    )


def run_photo(station: DeployedStation, item: LabelledItem) -> SessionRow:
    """One photo as one session of one frame through the station's pipeline."""
    from facediag.edge.face.imageio import load_image

    pipeline = station.photo_pipeline
    image = load_image(item.path)
    station.collected.clear()
    pipeline.process(image, 0.0)
    pipeline.finish(0.0, "the photo ended")
    return _row(item, list(station.collected), 1, 1)


def run_video(station: DeployedStation, item: LabelledItem) -> SessionRow:
    """One video as one session: every frame through the station's file source and pipeline."""
    from facediag.edge.capture import EndOfStream, make_source

    pipeline = station.video_pipeline
    source = make_source(f"file:{Path(item.path).resolve()}", loop=False, fps=0.0)
    station.collected.clear()
    frames, now = 0, 0.0
    source.open()
    try:
        period = 1.0 / (getattr(source, "file_fps", None) or DEFAULT_VIDEO_FPS)
        while True:
            try:
                image = source.read()
            except EndOfStream:
                break
            if image is None:
                break
            now = frames * period
            pipeline.process(image, now)
            frames += 1
    finally:
        source.close()
    pipeline.finish(now, "the video ended")
    return _row(item, list(station.collected), pipeline.session_config.good_frames, frames)


def run_sessions(station: DeployedStation, items: list[LabelledItem], kind: str,
                 progress: bool = False) -> list[SessionRow]:
    """Every item through the station (``kind`` "photo" or "video"), in order."""
    from tqdm import tqdm

    run = run_photo if kind == "photo" else run_video
    rows = []
    t0 = time.perf_counter()
    for item in tqdm(items, desc=f"{kind} sessions", unit=kind, disable=not progress, leave=False):
        rows.append(run(station, item))
    log.info("%d %s sessions in %.1f s", len(rows), kind, time.perf_counter() - t0)
    return rows


def evaluate_deployed(
    bundle_path: Path,
    items: list[LabelledItem],
    kind: str,
    *,
    config_path: Path | None = None,
    overrides: StationOverrides | None = None,
    prevalence: float | None = None,
    data_source: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The deployed-decision report (``deployed-report.json``'s content) of ``items`` ("photo" or "video")."""
    from facediag.edge.version import __version__
    from facediag.training.deployed_report import summarize_sessions

    if kind not in ("photo", "video"):
        raise ValueError(f"kind must be photo or video, got {kind!r}")
    if prevalence is not None and not 0.0 < prevalence < 1.0:
        raise ConfigError(f"--prevalence must be a share between 0 and 1 (e.g. 0.05 for 5%), got {prevalence}")
    check_bundle_path(bundle_path)
    cfg = station_config(bundle_path, config_path, overrides or StationOverrides())
    station = open_station(cfg)
    try:
        bundle = station.bundle
        check_labels(items, list(bundle.classes))
        rows = run_sessions(station, items, kind, progress)
    finally:
        station.close()
    pipeline = station.photo_pipeline if kind == "photo" else station.video_pipeline
    sc = pipeline.session_config
    return {
        "facediag_version": __version__,
        "bundle": str(bundle_path),
        "kind": kind,
        "classes": list(bundle.classes),
        "healthy_class": bundle.healthy_class,
        "data": dict(data_source or {}),
        "station": {
            "config": str(config_path) if config_path else None,
            "backend": station.plan.backend, "precision": station.plan.precision, "engine_reason": station.plan.reason,
            "model_file": station.plan.path.name, "thresholds": dict(bundle.thresholds),
            "good_frames": sc.good_frames, "window_s": sc.window_s, "min_confidence": sc.min_confidence,
            "detector": cfg.detector.name, "quality": dict(cfg.quality.__dict__),
        },
        "figures": summarize_sessions(rows, list(bundle.classes), bundle.healthy_class, prevalence),
        "sessions": [r.to_dict() for r in rows],
    }
