"""The registries (detectors, capture sources, backbones, training strategies, engine backends).

Every registered entry's spec is checked here, so adding a detector, a source kind or a
backbone is its module plus, at most, one test of its behaviour. The "small entry" tests
register a detector, a source and a backbone inside the test and see them reach config
validation, ``facediag.cli.build_parser()``'s choices and ``--help`` text, and the
factories; they unregister afterwards.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facediag.edge.capture.base import (
    SOURCES,
    SourceKind,
    SourceOptions,
    SourceSpec,
    make_source,
    parse_source_uri,
)
from facediag.edge.config import parse_config_text, registry_help
from facediag.edge.errors import ConfigError, ModelFileError
from facediag.edge.face.contract import PreprocessContract
from facediag.edge.face.detector import DETECTORS, Detector, DetectorSpec, make_detector
from facediag.edge.face.types import Face
from facediag.edge.registry import Registry, UnknownEntryError, load_factory
from facediag.training.backbones import BACKBONES, BackboneSpec, backbone_contract
from facediag.training.strategies import STRATEGIES, SplitData, StrategyInput, get_strategy, load_checkpoint


def _engine_backends() -> Registry[Any]:
    from facediag.edge.engine.backends import ENGINE_BACKENDS

    return ENGINE_BACKENDS


REGISTRIES = {
    "detector": lambda: DETECTORS,
    "source": lambda: SOURCES,
    "backbone": lambda: BACKBONES,
    "strategy": lambda: STRATEGIES,
    "engine backend": _engine_backends,
}


# --------------------------------------------------------------------------- the generic registry


class _Spec:
    def __init__(self, name: str, summary: str = "a thing") -> None:
        self.name, self.summary = name, summary

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec) and (self.name, self.summary) == (other.name, other.summary)

    def __hash__(self) -> int:
        return hash(self.name)


def test_registry_refuses_duplicates_and_explains_unknown_names() -> None:
    reg: Registry[_Spec] = Registry("widget")
    reg.register(_Spec("alpha"))
    reg.register(_Spec("beta", "the second one"))
    reg.register(_Spec("alpha"))  # the same spec again (a module imported twice): no-op
    with pytest.raises(ValueError, match="'alpha' is already registered"):
        reg.register(_Spec("alpha", "another alpha"))
    with pytest.raises(ValueError, match="non-empty name"):
        reg.register(_Spec(" gamma"))
    assert reg.names() == ("alpha", "beta") and len(reg) == 2 and "beta" in reg and "gamma" not in reg
    with pytest.raises(UnknownEntryError) as info:
        reg.get("alpah")
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == "unknown widget 'alpah' (did you mean 'alpha'?): choose one of alpha, beta"
    with pytest.raises(ConfigError, match="choose one of alpha, beta$"):
        reg.get("zzz")  # nothing close: no suggestion
    assert reg.help_text().splitlines() == ["  alpha  a thing", "  beta   the second one"]


def test_registered_context_cleans_up_and_missing_builtin_modules_are_skipped() -> None:
    reg: Registry[_Spec] = Registry("widget", builtin_modules=("facediag.no_such_module_here",))
    assert reg.names() == ()  # the missing module is skipped, not an ImportError
    with reg.registered(_Spec("temp")):
        assert reg.names() == ("temp",)
    assert reg.names() == ()
    with pytest.raises(ConfigError, match=r"unknown widget 'temp': choose one of \(none registered\)"):
        reg.unregister("temp")


def test_load_factory_resolves_strings_lazily_and_rejects_malformed_ones() -> None:
    assert load_factory("facediag.edge.face.detector:make_detector") is make_detector
    assert load_factory(make_detector) is make_detector
    for bad in ("facediag.edge.face.detector", "a:b:c", ":make_detector"):
        with pytest.raises(ValueError, match="module:function"):
            load_factory(bad)
    with pytest.raises(ValueError, match="not a callable"):
        load_factory("facediag.edge.face.detector:DETECTORS")


# --------------------------------------------------------------------------- every entry is well-formed


def _entries() -> Iterator[tuple[str, str]]:
    for kind, get in REGISTRIES.items():
        for name in get().names():
            yield kind, name


@pytest.mark.parametrize(("kind", "name"), list(_entries()))
def test_every_registered_spec_is_well_formed(kind: str, name: str) -> None:
    if kind == "backbone":  # backbone factories are PyTorch modules: a station-only install has no torch
        pytest.importorskip("torch", reason="backbones need torch (the train extra)")
    spec = REGISTRIES[kind]().get(name)
    assert spec.name == name and name == name.strip().lower()
    assert spec.summary and "\n" not in spec.summary and spec.summary == spec.summary.strip()
    factory = getattr(spec, "factory", None) or getattr(spec, "open", None)
    if factory is not None:
        assert callable(load_factory(factory)), f"{kind} {name}: factory {factory!r} does not resolve"
    check = {
        "detector": _check_detector,
        "source": _check_source,
        "backbone": _check_backbone,
        "strategy": _check_strategy,
    }.get(kind)
    if check is not None:
        check(spec)


def _check_detector(spec: DetectorSpec) -> None:
    assert spec.min_face_px >= 1 and 0.0 <= spec.default_score_threshold <= 1.0
    assert "score_threshold" in spec.options
    if spec.needs_model_file:  # the advice when it is missing names where to get it
        assert spec.model_hint
        with pytest.raises(ConfigError, match=f"the {spec.name} detector needs its model file"):
            make_detector(spec.name)
    # the station config accepts it by name
    assert parse_config_text(f'[detector]\nname = "{spec.name}"').detector.name == spec.name


def _check_source(spec: SourceKind) -> None:
    for example in spec.examples:  # each example URI parses to this kind (and validates in the config)
        if "<" in example or example.endswith("..."):
            continue  # a template such as 'gst:<pipeline> ! appsink'
        assert parse_source_uri(example).kind == spec.name, example
        assert parse_config_text(f"[source]\nuri = {json.dumps(example)}").source.uri == example
    for prefix in spec.prefixes:
        assert parse_source_uri(prefix + "0").kind == spec.name or spec.parse is not None


def _check_backbone(spec: BackboneSpec) -> None:
    assert spec.embedding_dim >= 1 and spec.weights_source
    assert backbone_contract(spec.name) == spec.contract
    assert spec.contract.height >= 32 and spec.contract.width >= 32
    for ref in (spec.state_adapter, spec.pretrained_weights, spec.pretrained_check, spec.random_init):
        if ref is not None:
            assert callable(load_factory(ref))


def _check_strategy(spec: Any) -> None:
    from dataclasses import fields

    from facediag.training.train import TrainConfig

    assert set(spec.options) <= {f.name for f in fields(TrainConfig)}
    strategy = get_strategy(spec.name)
    assert strategy.spec is spec
    for method in ("contract", "weights_info", "fit", "load"):
        assert callable(getattr(strategy, method))
    contract = strategy.contract("facenet")
    assert isinstance(contract, PreprocessContract)
    info = strategy.weights_info("facenet", None)
    assert {"kind", "path", "sha256"} <= set(info)
    assert (info["kind"] == "built-in") == (spec.uses_backbone and spec.pretrained)


# --------------------------------------------------------------------------- the command line


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]  # type: ignore[no-any-return]


def _choices(parser: argparse.ArgumentParser, command: str, dest: str) -> tuple[str, ...]:
    sub = _subparser(parser, command)
    return tuple(next(a for a in sub._actions if a.dest == dest).choices or ())


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    from facediag.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_cli_choices_come_from_the_registries() -> None:
    from facediag.cli import build_parser

    parser = build_parser()
    for command in ("crop", "train", "evaluate"):
        assert _choices(parser, command, "detector") == ("auto", *DETECTORS.names())
    assert _choices(parser, "train", "backbone") == BACKBONES.names()
    assert _choices(parser, "train", "strategy") == STRATEGIES.names()


# --------------------------------------------------------------------------- a small detector


class _CentreDetector:
    """Reports one face in the middle of every frame (enough to see the registry at work)."""

    name = "centre"

    def __init__(self, score: float) -> None:
        self.score = score

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        box = (w * 0.25, h * 0.25, w * 0.75, h * 0.75)
        eyes = [(w * 0.4, h * 0.4), (w * 0.6, h * 0.4), (w * 0.5, h * 0.5), (w * 0.42, h * 0.62), (w * 0.58, h * 0.62)]
        return [Face(box=box, landmarks=np.asarray(eyes, np.float32), score=self.score)]


def _make_centre(model_path: Path | None, score_threshold: float | None) -> _CentreDetector:
    return _CentreDetector(0.5 if score_threshold is None else score_threshold)


CENTRE = DetectorSpec(name="centre", summary="test detector: one face in the middle of every frame",
                      factory=_make_centre, min_face_px=16, needs_model_file=False, default_score_threshold=0.5)


def test_a_detector_registered_in_a_test_reaches_config_cli_and_factory(capsys: pytest.CaptureFixture[str]) -> None:
    from facediag.cli import build_parser

    assert "centre" not in DETECTORS
    with DETECTORS.registered(CENTRE):
        cfg = parse_config_text('[detector]\nname = "centre"\nscore_threshold = 0.8')
        detector = make_detector(cfg.detector.name, cfg.detector.model_path, cfg.detector.score_threshold)
        assert isinstance(detector, Detector) and isinstance(detector, _CentreDetector) and detector.score == 0.8
        faces = detector.detect(np.zeros((40, 80, 3), np.uint8))
        assert [f.box for f in faces] == [(20.0, 10.0, 60.0, 30.0)]
        parser = build_parser()
        assert "centre" in _choices(parser, "crop", "detector")
        assert parser.parse_args(["crop", "--detector", "centre", "in.jpg", "out"]).detector == "centre"
        help_text = " ".join(_help("crop", capsys).split())
        assert "centre: test detector: one face in the middle of every frame (faces from ~16 px)" in help_text
    # gone again: config, CLI and factory all refuse it, naming the valid names
    with pytest.raises(ConfigError) as info:
        parse_config_text('[detector]\nname = "centre"')
    assert str(info.value) == "detector.name must be one of 'yunet', 'mtcnn' (got 'centre')"
    with pytest.raises(ConfigError, match="unknown detector 'centre'.*choose one of yunet, mtcnn"):
        make_detector("centre")
    assert "centre" not in _choices(build_parser(), "crop", "detector")


def test_unknown_detector_names_get_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('[detector]\nname = "yunett"')
    assert str(info.value) == "detector.name must be one of 'yunet', 'mtcnn' (got 'yunett'; did you mean 'yunet'?)"
    with pytest.raises(ConfigError, match=r"unknown detector 'MTCNN' \(did you mean 'mtcnn'\?\)"):
        make_detector("MTCNN")


# --------------------------------------------------------------------------- a small capture source


class _CounterSource:
    """Frames whose pixels hold the frame number; ``count`` frames, then EndOfStream."""

    def __init__(self, count: int, uri: str, size: tuple[int, int]) -> None:
        self.uri, self.count, self.size, self.sent = uri, count, size, 0

    def open(self) -> None:
        self.sent = 0

    def read(self) -> np.ndarray | None:
        from facediag.edge.capture import EndOfStream

        if self.sent >= self.count:
            raise EndOfStream(self.uri)
        self.sent += 1
        return np.full((self.size[1], self.size[0], 3), self.sent, np.uint8)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"counter ({self.count} frames)"


def _make_counter(spec: SourceSpec, options: SourceOptions) -> _CounterSource:
    return _CounterSource(int(spec.target), options.uri, (options.width or 8, options.height or 6))


COUNTER = SourceKind(name="counter", summary="test source: numbered grey frames", factory=_make_counter,
                     examples=("counter:3",), prefixes=("counter:",), options=("width", "height"))


def test_a_source_registered_in_a_test_reaches_config_and_make_source() -> None:
    from facediag.edge.capture import EndOfStream, FrameSource

    with SOURCES.registered(COUNTER):
        assert parse_source_uri("counter:3?width=4&height=2") == SourceSpec("counter", "3", {"width": "4", "height": "2"})
        assert parse_config_text('[source]\nuri = "counter:3"').source.uri == "counter:3"
        assert "counter    test source: numbered grey frames" in registry_help()
        source = make_source("counter:2?width=4&height=2")
        assert isinstance(source, FrameSource)
        source.open()
        frames = [source.read(), source.read()]
        assert [f.shape for f in frames if f is not None] == [(2, 4, 3), (2, 4, 3)]
        assert [int(f[0, 0, 0]) for f in frames if f is not None] == [1, 2]
        with pytest.raises(EndOfStream):
            source.read()
        with pytest.raises(ConfigError, match="unknown option"):
            make_source("counter:2?colour=1")
    with pytest.raises(ConfigError, match="source.uri 'counter:3' is not a source this station knows") as info:
        parse_config_text('[source]\nuri = "counter:3"')
    assert "'v4l2:/dev/video0'" in str(info.value) and "counter" not in str(info.value).split("Use one of")[1]


def test_source_kinds_refuse_specs_that_could_never_be_selected() -> None:
    with pytest.raises(ValueError, match="can never be selected"):
        SourceKind(name="nothing", summary="x", factory=_make_counter, examples=("x",))
    with pytest.raises(ValueError, match="lower case"):
        SourceKind(name="loud", summary="x", factory=_make_counter, examples=("LOUD:1",), prefixes=("LOUD:",))


# --------------------------------------------------------------------------- a small backbone


TINY_CONTRACT = PreprocessContract("arcface_112x112", "RGB", "mean_std", (127.5,) * 3, (127.5,) * 3)


def _tiny_backbone() -> Any:
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        contract = TINY_CONTRACT
        embedding_dim = 8
        backbone_name = "tinynet"

        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(12, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(x / 255.0), 1))

    return TinyNet()


TINY = BackboneSpec(name="tinynet", summary="test backbone: pooled pixels -> 8-d", contract=TINY_CONTRACT,
                    embedding_dim=8, weights_source="none: random weights only (a test)", factory=_tiny_backbone)


def test_a_backbone_registered_in_a_test_reaches_the_cli_and_the_strategies(capsys: pytest.CaptureFixture[str]) -> None:
    from facediag.cli import build_parser

    with BACKBONES.registered(TINY):
        parser = build_parser()
        assert "tinynet" in _choices(parser, "train", "backbone")
        args = parser.parse_args(["train", "--backbone", "tinynet", "--strategy", "scratch", "--data", "d", "--out", "o"])
        assert (args.backbone, args.strategy) == ("tinynet", "scratch")
        assert "tinynet        test backbone: pooled pixels -> 8-d" in _help("train", capsys)
        assert get_strategy("dtl2").contract("tinynet") == TINY_CONTRACT
        assert get_strategy("dtl2").weights_info("tinynet", None)["source"] == TINY.weights_source
        with pytest.raises(ConfigError, match="no pretrained weights for backbone 'tinynet'.*random weights only"):
            from facediag.training.backbones import get_backbone

            get_backbone("tinynet")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--backbone", "tinynet", "--data", "d", "--out", "o"])
    assert "tinynet" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown backbone 'tinynet'"):
        get_strategy("dtl2").contract("tinynet")


def test_a_registered_backbone_builds_and_runs() -> None:
    torch = pytest.importorskip("torch")
    from facediag.training.backbones import get_backbone
    from facediag.training.classifier import FaceClassifier

    with BACKBONES.registered(TINY):
        net = get_backbone("tinynet", pretrained=False)
        assert not net.training and net.backbone_name == "tinynet"
        model = FaceClassifier(net, 3)
        probs = model(torch.zeros((2, 3, 112, 112)))
        assert probs.shape == (2, 3) and torch.allclose(probs.sum(dim=1), torch.ones(2))


def test_a_backbone_whose_module_disagrees_with_its_spec_is_refused() -> None:
    pytest.importorskip("torch")
    from facediag.training.backbones import get_backbone

    liar = BackboneSpec(name="liar", summary="says 16-d, builds 8-d", contract=TINY_CONTRACT, embedding_dim=16,
                        weights_source="none", factory=_tiny_backbone)
    with BACKBONES.registered(liar), pytest.raises(RuntimeError, match="registry says"):
        get_backbone("liar", pretrained=False)


# --------------------------------------------------------------------------- strategies and checkpoints


def _dsift_input(seed: int = 0) -> tuple[StrategyInput, dict[str, SplitData]]:
    """Two classes of synthetic 112x112 crops that dense SIFT can tell apart (stripes vs. checks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112]
    patterns = [((xx // 8) % 2) * 200, (((xx // 8) + (yy // 8)) % 2) * 200]

    def crops(n: int) -> SplitData:
        labels = np.arange(n) % 2
        imgs = [np.clip(patterns[c] + rng.normal(0, 25, (112, 112)), 0, 255) for c in labels]
        return SplitData(np.repeat(np.asarray(imgs, np.uint8)[..., None], 3, axis=3), labels.astype(np.int64))

    train, val = crops(12), crops(6)
    strategy = get_strategy("dsift")
    inp = StrategyInput(classes=["stripes", "checks"], contract=strategy.contract("any"), train=train, val=val,
                        seed=seed, hyperparameters={"svm_c": 1.0}, make_backbone=lambda pretrained: None,
                        healthy_class="stripes", progress=False)
    return inp, {"train": train, "val": val}


def test_dsift_goes_through_the_strategy_interface_and_its_checkpoint_loads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sklearn")
    import functools

    from facediag.training.checkpoint import load_classifier, read_checkpoint_meta
    from facediag.training.strategies import dsift

    # the real trainer with a small vocabulary and grid, to stay quick
    small = functools.partial(dsift.train_dsift, vocab_size=16, grid=dsift.GridParams((32, 32), 4, (8,), (1,)))
    monkeypatch.setattr(dsift, "train_dsift", small)
    inp, splits = _dsift_input()
    strategy = get_strategy("dsift")
    fitted = strategy.fit(inp, splits, "temperature")
    raw, calibrated = fitted.scores["val"]
    assert raw.shape == (6, 2) and np.allclose(calibrated * fitted.model.temperature, raw)
    assert float(np.mean(raw.argmax(axis=1) == splits["val"].labels)) == 1.0  # stripes vs checks is easy
    run_meta = {"metrics": {"val": {"n": 6}}, "data": {"source": "synthetic"}}
    fitted.save(tmp_path / "ck", run_meta)

    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.strategy == "dsift" and loaded.classes == ["stripes", "checks"]
    probs = loaded.predict_proba(splits["val"].crops)
    assert np.allclose(probs, fitted.model.predict_proba(splits["val"].crops))
    meta = read_checkpoint_meta(tmp_path / "ck")
    assert meta.strategy == "dsift" and meta.healthy_class == "stripes" and meta.metrics == {"val": {"n": 6}}
    assert meta.extra["files"] == {"weights": "dsift.npz"}
    with pytest.raises(ModelFileError, match="dsift checkpoint .*not a neural network.*load_checkpoint"):
        load_classifier(tmp_path / "ck")


def _valid_meta_doc() -> dict[str, Any]:
    return {
        "format": "facediag-checkpoint", "format_version": 1, "backbone": "facenet", "classes": ["a", "b"],
        "healthy_class": "a", "contract": PreprocessContract("facenet_160x160", "RGB", "prewhiten").to_dict(),
        "strategy": "dtl2", "hyperparameters": {"svm_c": 0.1}, "seed": 0, "versions": {}, "metrics": {},
        "temperature": 1.5, "thresholds": None, "head": {"num_classes": 2, "l2_normalize": True},
        "calibration": {"method": "temperature"},
    }


def test_checkpoint_meta_round_trips_and_keeps_unknown_fields() -> None:
    from facediag.training.checkpoint import CheckpointMeta

    doc = _valid_meta_doc()
    meta = CheckpointMeta.from_dict(doc)
    assert meta.classes == ("a", "b") and meta.temperature == 1.5 and meta.extra == {"calibration": doc["calibration"]}
    assert meta.to_dict() == doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 2}, "format_version 2; this facediag reads version 1; it was written by a newer facediag"),
        ({"format_version": "1"}, "format_version '1'; this facediag reads version 1"),
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"classes": "a,b"}, "field 'classes' must be a list of at least two class names"),
        ({"classes": ["a", "a"]}, "field 'classes' has duplicate names"),
        ({"healthy_class": "c"}, "field 'healthy_class' ('c') is not one of the classes"),
        ({"temperature": "1.5"}, "field 'temperature' must be a positive number"),
        ({"temperature": 0}, "field 'temperature' must be a positive number"),
        ({"seed": 1.5}, "field 'seed' must be an integer"),
        ({"backbone": ""}, "field 'backbone' must be a non-empty string"),
        ({"contract": {"template": "nope"}}, "field 'contract' is invalid"),
        ({"metrics": [1]}, "field 'metrics' must be an object"),
        ({"thresholds": {"a": 2}}, "threshold 'a': 2 must be a probability"),
    ],
)
def test_checkpoint_meta_refuses_wrong_types_and_versions(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    from facediag.training.checkpoint import read_meta

    doc = {**_valid_meta_doc(), **change}
    (tmp_path / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError) as info:
        read_meta(tmp_path)
    assert message in str(info.value) and "checkpoint.json" in str(info.value)


def test_checkpoint_meta_refuses_missing_keys(tmp_path: Path) -> None:
    from facediag.training.checkpoint import read_meta

    doc = _valid_meta_doc()
    del doc["temperature"], doc["strategy"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="missing key\\(s\\) strategy, temperature"):
        read_meta(tmp_path)


def test_a_checkpoint_of_an_unknown_strategy_says_so(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text(json.dumps({**_valid_meta_doc(), "strategy": "quantum"}))
    with pytest.raises(ModelFileError, match="strategy 'quantum', which this installation of facediag does not have"):
        load_checkpoint(tmp_path)
