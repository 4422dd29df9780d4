"""DTL1's augmentation, gradual unfreezing, training curves and repeatability, on real face crops.

Real CelebA photos of the proxy benchmark, cropped by the real YuNet detector
with MobileFaceNet's contract, and MobileFaceNet's real weights (small enough
for a few epochs on a CPU).
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fixture_path

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

N_TRAIN, N_VAL = 8, 4  # photos per class


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared, busy CI machine two threads spin against each other (several times slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def backbone():
    from facediag.training.backbones import get_backbone

    return get_backbone("mobilefacenet", weights=fixture_path("models/mobilefacenet_112x96_casia.ckpt"))


@pytest.fixture(scope="module")
def proxy_photos() -> dict[str, list[Path]]:
    """Per class (pale_skin, healthy): the first N_TRAIN + N_VAL training photos of the proxy benchmark."""
    root = fixture_path("faces/celeba")
    rows = list(csv.DictReader(fixture_path("faces/celeba/proxy_dsf_split.csv").open()))
    return {c: [root / r["image"] for r in rows if r["label"] == c and r["split"] == "train"][: N_TRAIN + N_VAL]
            for c in ("pale_skin", "healthy")}


@pytest.fixture(scope="module")
def data(tmp_path_factory, backbone, proxy_photos):
    """(train SplitData, val SplitData) of aligned MobileFaceNet crops."""
    from facediag.training.crop_cache import CropCache, make_cropper
    from facediag.training.strategies import SplitData

    cache = CropCache(tmp_path_factory.mktemp("crops"),
                      make_cropper(None, fixture_path("models/face_detection_yunet_2026may.onnx"), backbone.contract))
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    for label, (cls, photos) in enumerate(proxy_photos.items()):
        for split, chosen in (("train", photos[:N_TRAIN]), ("val", photos[N_TRAIN:])):
            cs = cache.crop_all(chosen, progress=False)
            assert len(cs.kept) >= len(chosen) - 1, (cls, cs.skipped)
            parts[split][0].append(cs.crops)
            parts[split][1].append(np.full(len(cs.kept), label))
    return tuple(SplitData(np.concatenate(c), np.concatenate(y)) for c, y in (parts["train"], parts["val"]))


@pytest.fixture(scope="module")
def batch(data, backbone):
    from facediag.edge.face.contract import crops_to_input

    return torch.from_numpy(crops_to_input(data[0].crops, backbone.contract))


def _gen(seed: int):
    from facediag.training.seeding import torch_generator

    return torch_generator(seed)


# --- augmentation --------------------------------------------------------------------------------


def test_zero_strength_is_the_identity_and_light_changes_pixels(batch):
    from facediag.training.augment import AugmentConfig, augment_batch

    before = batch.clone()
    same = augment_batch(batch, AugmentConfig.light(0.0, flip=False), _gen(0))
    assert same is not batch and torch.equal(same, batch)
    for strength in (0.5, 1.0):
        out = augment_batch(batch, AugmentConfig.light(strength, flip=False), _gen(0))
        assert out.shape == batch.shape and out.dtype == batch.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
        per_photo = (out - batch).abs().flatten(1).mean(1)
        assert bool((per_photo > 0.5).all()), per_photo  # every photo changed
        # light: the face is still the same photo (mean change far below a different face's)
        other = (batch - batch.roll(1, 0)).abs().flatten(1).mean(1)
        assert float(per_photo.mean()) < 0.6 * float(other.mean())
    weak = (augment_batch(batch, AugmentConfig.light(0.25, flip=False), _gen(1)) - batch).abs().mean()
    strong = (augment_batch(batch, AugmentConfig.light(1.0, flip=False), _gen(1)) - batch).abs().mean()
    assert float(weak) < float(strong)
    # each kind alone does something
    for kind in ("brightness", "contrast", "saturation", "rotate_deg", "scale", "shift"):
        cfg = AugmentConfig(flip=False, **{kind: AugmentConfig.light(1.0).to_dict()[kind]})
        assert not torch.equal(augment_batch(batch, cfg, _gen(2)), batch), kind
    assert torch.equal(batch, before)  # the input is never modified in place


def test_flips_are_exact_mirrors_and_both_sides_occur(batch):
    from facediag.training.augment import AugmentConfig, augment_batch

    x = batch.repeat(3, 1, 1, 1)
    before = x.clone()
    out = augment_batch(x, AugmentConfig.light(0.0, flip=True), _gen(5))
    assert torch.equal(x, before)
    mirrored = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0.2 < sum(mirrored) / len(x) < 0.8  # p = 0.5 over 48 photos
    # a real face is not its own mirror image, so "mirrored" and "kept" are not the same thing
    assert not any(m and k for m, k in zip(mirrored, kept, strict=True))


def test_same_generator_seed_same_batch(batch):
    from facediag.training.augment import AugmentConfig, augment_batch

    cfg = AugmentConfig.light(1.0)
    a, b = augment_batch(batch, cfg, _gen(9)), augment_batch(batch, cfg, _gen(9))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment_batch(batch, cfg, _gen(10)))


def test_unreasonable_strength_is_refused():
    from facediag.training.augment import AugmentConfig

    with pytest.raises(ValueError):
        AugmentConfig.light(-1.0)
    with pytest.raises(ValueError):
        AugmentConfig.light(20.0)  # +-200% brightness is not "light"


# --- gradual unfreezing --------------------------------------------------------------------------


def test_unfreeze_schedule_stages():
    from facediag.training.strategies.dtl1 import Stage, unfreeze_schedule

    assert unfreeze_schedule(0, 3, 10, 60) == [Stage(0, 60)]
    assert unfreeze_schedule(2, 0, 10, 60) == [Stage(2, 60)]
    assert unfreeze_schedule(3, 2, 5, 60) == [Stage(0, 5), Stage(1, 2), Stage(2, 2), Stage(3, 2)]
    assert unfreeze_schedule(3, 2, 5, 8) == [Stage(0, 5), Stage(1, 2), Stage(2, 1)]  # capped by --epochs


def _inp(data, backbone, seed=0, progress=False, **hp):
    from facediag.training.strategies import StrategyInput

    return StrategyInput(
        classes=["pale_skin", "healthy"], contract=backbone.contract, train=data[0], val=data[1], seed=seed,
        hyperparameters=hp, make_backbone=lambda pretrained: copy.deepcopy(backbone), progress=progress,
    )


GRADUAL = {"epochs": 5, "head_epochs": 2, "unfreeze_every": 1, "unfreeze": 3, "patience": 100, "augment": 1.0,
           "block_lr_mult": 20.0, "layer_lr_decay": 0.5, "batch_size": 8}


def test_gradual_unfreezing_unfreezes_blocks_in_order_with_lower_rates_for_earlier_blocks(
        data, backbone, monkeypatch, capsys):
    from facediag.training.classifier import FaceClassifier, trailing_blocks
    from facediag.training.strategies import dtl1

    made = []
    real = dtl1.make_optimizer

    def spy(model, blocks, hp, all_layers=False):
        opt = real(model, blocks, hp, all_layers)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        made.append((opt, list(blocks), trainable))
        return opt

    monkeypatch.setattr(dtl1, "make_optimizer", spy)
    hp = {**dtl1.DEFAULTS, **GRADUAL}
    model = FaceClassifier(copy.deepcopy(backbone), 2)
    history = dtl1.fit_sgd(model, _inp(data, backbone, progress=True), hp, unfreeze=3)

    blocks = trailing_blocks(model.backbone)
    assert [r["unfrozen_blocks"] for r in history["epochs"]] == [0, 0, 1, 2, 3]
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3, 4, 5]
    assert len(made) == 4  # one optimizer per stage
    head_lr = hp["lr"] * hp["head_lr_mult"]
    for stage, (opt, chosen, trainable) in enumerate(made):
        assert [id(b) for b in chosen] == [id(b) for b in blocks[len(blocks) - stage:]] if stage else chosen == []
        groups = opt.param_groups
        assert groups[0]["lr"] == pytest.approx(head_lr)
        assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}
        lrs = [g["lr"] for g in groups[1:]]
        assert len(lrs) == stage
        if stage:
            assert lrs[0] == pytest.approx(hp["lr"] * hp["block_lr_mult"])  # the last block
            assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # earlier blocks: lower rates
            for g, b in zip(groups[1:], reversed(chosen), strict=True):  # group k holds block -k
                assert {id(p) for p in g["params"]} == {id(p) for p in b.parameters()}
        # exactly the head and the stage's blocks were trainable
        expected = {id(p) for p in model.head.parameters()} | {id(p) for b in chosen for p in b.parameters()}
        assert trainable == expected
    lr_blocks = [r["lr_blocks"] for r in history["epochs"]]
    assert lr_blocks[:2] == [None, None] and lr_blocks[2] == pytest.approx(hp["lr"] * hp["block_lr_mult"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    err = capsys.readouterr().err
    assert "epochs (best" in err and "5/5" in err  # the epoch bar's final state stays in the log


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_on_a_tiny_gradual_run(data, backbone):
    from facediag.training.classifier import FaceClassifier
    from facediag.training.seeding import seed_everything
    from facediag.training.strategies import dtl1

    hp = {**dtl1.DEFAULTS, **GRADUAL, "epochs": 3, "head_epochs": 1, "unfreeze": 2}
    runs = []
    for seed in (4, 4, 5):
        seed_everything(seed, 1)
        model = FaceClassifier(copy.deepcopy(backbone), 2)
        h = dtl1.fit_sgd(model, _inp(data, backbone, seed=seed), hp, unfreeze=2)
        runs.append((_weights(model), h["train_loss"]))
    (w0, l0), (w1, l1), (w2, l2) = runs
    assert l0 == l1
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert l2 != l0  # another seed: other batches and augmentations


# --- curves --------------------------------------------------------------------------------------


def test_training_writes_curves_csv_and_png(tmp_path, proxy_photos):
    import cv2

    from facediag.training.curves import COLUMNS
    from facediag.training.train import TrainConfig, run_training

    root = tmp_path / "data"
    for cls, photos in proxy_photos.items():
        (root / cls).mkdir(parents=True)
        for p in photos:
            (root / cls / p.name).symlink_to(p)
    cfg = TrainConfig(
        out=tmp_path / "ckpt", backbone="mobilefacenet", strategy="dtl1",
        weights=fixture_path("models/mobilefacenet_112x96_casia.ckpt"), data_dir=root, cache=tmp_path / "cache",
        detector_model=fixture_path("models/face_detection_yunet_2026may.onnx"), progress=False, seed=1,
        epochs=4, head_epochs=2, unfreeze=1, unfreeze_every=2, patience=50, val_fraction=0.34, augment=1.0, threads=1,
    )
    outcome = run_training(cfg)
    history = outcome.meta["metrics"]["history"]
    with (outcome.out_dir / "curves.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == COLUMNS
    assert len(rows) == history["epochs_run"] == 4
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [r["unfrozen_blocks"] for r in rows] == ["0", "0", "1", "1"]
    for r, loss in zip(rows, history["val_loss"], strict=True):
        assert float(r["val_loss"]) == pytest.approx(loss, rel=1e-5)
        assert 0.0 <= float(r["train_accuracy"]) <= 1.0 and 0.0 <= float(r["val_accuracy"]) <= 1.0
    png = (outcome.out_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 500
    assert float(img.std()) > 5  # something is drawn
    assert outcome.meta.get("curves") == ["curves.csv", "curves.png"]
    assert outcome.meta["hyperparameters"]["augmentation"]["rotate_deg"] > 0
