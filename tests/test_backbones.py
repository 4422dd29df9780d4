"""Backbone registry, strict checkpoint loading, and the MobileFaceNet / iResNet / VGG families.

Big networks (iResNet-100, VGG-16) are built on the meta device where only key
names and shapes matter, and run at full size at most once.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from facediag.edge.errors import ConfigError, ModelFileError
from facediag.edge.face.contract import TEMPLATES, apply_scaling, crops_to_input
from facediag.training.backbones import BACKBONES, available_pretrained, backbone_contract, get_backbone
from facediag.training.backbones.iresnet import IResNet
from facediag.training.backbones.loading import check_state_dict, load_strict, read_state_dict
from facediag.training.backbones.mobilefacenet import MobileFaceNet
from facediag.training.backbones.vgg import VGG16, from_torchvision_layout
from tests.conftest import fixture_path

MFN_CKPT = "models/mobilefacenet_112x96_casia.ckpt"


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return get_backbone(name, pretrained=False)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give BNs non-trivial statistics so that a round trip that lost them would show in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _record_input(store: dict[str, torch.Tensor]):  # noqa: ANN202
    """A forward hook that keeps a layer's input (and returns None, so the output is untouched)."""

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        store["in"] = args[0].detach().clone()

    return hook


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_agreed_backbones_with_their_contracts() -> None:
    assert {"facenet", "mobilefacenet", "iresnet50", "iresnet100", "vgg16", "vggface"} <= set(BACKBONES)
    expected = {
        "facenet": ("facenet_160x160", 512, "prewhiten"),
        "mobilefacenet": ("sphereface_112x96", 128, "mean_std"),
        "iresnet50": ("arcface_112x112", 512, "mean_std"),
        "iresnet100": ("arcface_112x112", 512, "mean_std"),
        "vggface": ("vggface_224x224", 4096, "mean_std"),
        "vgg16": ("vggface_224x224", 4096, "mean_std"),
    }
    for name, (template, dim, scaling) in expected.items():
        spec = BACKBONES[name]
        assert (spec.contract.template, spec.embedding_dim, spec.contract.scaling) == (template, dim, scaling)
        assert backbone_contract(name) == spec.contract
        assert spec.description and spec.weights_source
    assert backbone_contract("facenet").colour_order == "RGB"
    # arcface_torch normalises with (x/255 - 0.5)/0.5
    assert (
        backbone_contract("iresnet50").mean == (127.5,) * 3
        and backbone_contract("iresnet50").std == (127.5,) * 3
    )


def test_unknown_backbone_is_a_config_error_listing_valid_names() -> None:
    for call in (
        lambda: get_backbone("resnet18"),
        lambda: backbone_contract("x"),
        lambda: available_pretrained("x"),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        for name in BACKBONES:
            assert name in str(info.value)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet50", "iresnet100", "vggface", "vgg16"])
def test_pretrained_without_weights_says_where_to_get_them(name: str) -> None:
    assert available_pretrained(name) is False
    with pytest.raises(ConfigError) as info:
        get_backbone(name)
    message = str(info.value)
    assert "--weights" in message and name in message and "pretrained=False" in message


@pytest.mark.parametrize("name", ["facenet", "mobilefacenet", "iresnet50", "iresnet100", "vggface", "vgg16"])
def test_built_backbones_carry_contract_dim_and_name(name: str) -> None:
    model = _meta(name)
    assert model.backbone_name == name
    assert model.contract == BACKBONES[name].contract
    assert model.embedding_dim == BACKBONES[name].embedding_dim
    assert not model.training
    # the in-graph scaling is the first child and adds nothing to the checkpoint layout
    first_name, first = next(iter(model.named_children()))
    assert type(first).__name__ == "ContractScaling" and first.kind == model.contract.scaling
    assert not any(k.startswith(first_name + ".") for k in model.state_dict())


# --------------------------------------------------------------------------- safe, strict loading


def test_legacy_fixture_checkpoint_reads_with_weights_only(tmp_path: Path) -> None:
    path = fixture_path(MFN_CKPT)
    with path.open("rb") as fh:
        assert fh.read(2) != b"PK"  # legacy pickle format, not a zip archive
    state = read_state_dict(path)  # unwraps {"epoch", "net_state_dict"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert _shapes(MobileFaceNet()) == {k: tuple(v.shape) for k, v in state.items()}


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # noqa: ANN204 - what an attacker would put in a checkpoint
            return (Path.touch, (marker,))

    for legacy in (True, False):
        path = tmp_path / f"evil_{legacy}.pth"
        torch.save(
            {"state_dict": {"w": torch.zeros(1)}, "x": Payload()},
            path,
            _use_new_zipfile_serialization=not legacy,
        )
        with pytest.raises(ModelFileError, match="weights_only"):
            read_state_dict(path)
        assert not marker.exists()


def test_unreadable_files_give_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelFileError):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nodict.pth")
    with pytest.raises(ModelFileError, match="state dict"):
        read_state_dict(tmp_path / "nodict.pth")


def test_key_and_shape_errors_name_the_keys() -> None:
    model = _meta("iresnet50")
    good = model.state_dict()

    missing = {k: v for k, v in good.items() if k != "layer3.7.conv2.weight"}
    with pytest.raises(ModelFileError, match=r"missing key\(s\): layer3\.7\.conv2\.weight"):
        check_state_dict(model, missing, "ckpt")

    extra = dict(good, **{"head.kernel": torch.zeros(2, device="meta")})
    with pytest.raises(ModelFileError, match=r"unexpected key\(s\): head\.kernel"):
        check_state_dict(model, extra, "ckpt")

    wrong = dict(good, **{"fc.weight": torch.zeros(512, 512 * 4 * 4, device="meta")})
    with pytest.raises(ModelFileError) as info:
        check_state_dict(model, wrong, "ckpt")
    assert (
        "fc.weight" in str(info.value)
        and "(512, 8192)" in str(info.value)
        and "(512, 25088)" in str(info.value)
    )

    # an r50 checkpoint offered to r100: the missing blocks are named
    with pytest.raises(ModelFileError, match=r"layer2\.4\."):
        check_state_dict(_meta("iresnet100"), good, "r50.pth")

    # BN counters are optional (checkpoints converted from other frameworks lack them)
    no_counters = {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")}
    assert set(check_state_dict(model, no_counters, "ckpt")) == set(good)


# --------------------------------------------------------------------------- MobileFaceNet


def test_mobilefacenet_loads_fixture_strictly_and_scales_inside() -> None:
    model = get_backbone("mobilefacenet", weights=fixture_path(MFN_CKPT))
    ref = read_state_dict(fixture_path(MFN_CKPT))
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, 3, 112, 96)).astype(np.float32)
    seen = {}
    handle = model.conv1.conv.register_forward_hook(_record_input(seen))
    with torch.no_grad():
        emb = model(torch.from_numpy(x))
    handle.remove()
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()
    np.testing.assert_allclose(seen["in"].numpy(), apply_scaling(x, model.contract), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="112x96"):
        model(torch.zeros(1, 3, 112, 112))


def _wild_pairs() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[dict[str, str]]]:
    import cv2

    from facediag.edge.face.imageio import load_image
    from facediag.edge.face.yunet import YuNetDetector

    folder = fixture_path("faces/wild/master.csv").parent
    detector = YuNetDetector(fixture_path("models/face_detection_yunet_2026may.onnx"))
    with (folder / "master.csv").open() as fh:
        pairs = list(csv.DictReader(fh))
    faces = {}
    for name in sorted({p["file_x"] for p in pairs} | {p["file_y"] for p in pairs}):
        image = load_image(folder / name)
        scale = min(1.0, 800 / max(image.shape[:2]))  # detect on a smaller copy, align on the full photo
        small = (
            cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        )
        found = detector.detect(small)
        assert found, f"no face found in {name}"
        faces[name] = (image, max(found, key=lambda f: f.area).landmarks / scale)
    return faces, pairs


def test_mobilefacenet_separates_same_and_different_people_with_rgb_input() -> None:
    from sklearn.metrics import roc_auc_score

    from facediag.edge.face.align import align_face

    faces, pairs = _wild_pairs()
    model = get_backbone("mobilefacenet", weights=fixture_path(MFN_CKPT))

    def similarities(colour_order: str) -> np.ndarray:
        contract = dataclasses.replace(model.contract, colour_order=colour_order)
        names = list(faces)
        batch = crops_to_input([align_face(*faces[n], contract) for n in names], contract)
        with torch.no_grad():
            emb = torch.nn.functional.normalize(model(torch.from_numpy(batch)), dim=1).numpy()
        index = {n: i for i, n in enumerate(names)}
        return np.array([emb[index[p["file_x"]]] @ emb[index[p["file_y"]]] for p in pairs])

    same = np.array([p["Decision"] == "Yes" for p in pairs])
    assert 10 < same.sum() < len(same) - 10
    rgb = similarities(model.contract.colour_order)
    assert model.contract.colour_order == "RGB"
    assert roc_auc_score(same, rgb) >= 0.99
    assert rgb[same].mean() - rgb[~same].mean() > 0.5
    # The evidence for RGB: swapped channels make most same-person pairs less similar.
    bgr = similarities("BGR")
    assert (rgb[same] > bgr[same]).mean() >= 0.65


# --------------------------------------------------------------------------- iResNet (arcface_torch layout)


def test_iresnet_state_dict_has_arcface_torch_layout() -> None:
    for name, depths in (("iresnet50", (3, 4, 14, 3)), ("iresnet100", (3, 13, 30, 3))):
        shapes = _shapes(_meta(name))
        assert shapes["conv1.weight"] == (64, 3, 3, 3)
        assert shapes["bn1.running_var"] == (64,) and shapes["prelu.weight"] == (64,)
        for layer, (blocks, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True), start=1):
            found = {int(k.split(".")[1]) for k in shapes if k.startswith(f"layer{layer}.")}
            assert found == set(range(blocks)), (name, layer)
            prev = 64 if layer == 1 else width // 2
            assert shapes[f"layer{layer}.0.bn1.weight"] == (prev,)
            assert shapes[f"layer{layer}.0.conv1.weight"] == (width, prev, 3, 3)
            assert shapes[f"layer{layer}.0.downsample.0.weight"] == (width, prev, 1, 1)
            assert shapes[f"layer{layer}.0.downsample.1.running_mean"] == (width,)
            assert shapes[f"layer{layer}.{blocks - 1}.prelu.weight"] == (width,)
            assert shapes[f"layer{layer}.{blocks - 1}.bn3.bias"] == (width,)
            assert f"layer{layer}.1.downsample.0.weight" not in shapes
        assert shapes["bn2.weight"] == (512,)
        assert shapes["fc.weight"] == (512, 512 * 7 * 7) and shapes["fc.bias"] == (512,)
        assert shapes["features.weight"] == (512,) and shapes["features.running_var"] == (512,)
    # published sizes: r50 ~43.6 M, r100 ~65.2 M parameters
    assert abs(sum(p.numel() for p in _meta("iresnet50").parameters()) / 1e6 - 43.6) < 0.1
    assert abs(sum(p.numel() for p in _meta("iresnet100").parameters()) / 1e6 - 65.2) < 0.1


def test_iresnet50_round_trip_through_an_arcface_torch_style_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = IResNet("iresnet50").eval()
    _randomise_batchnorm(source)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")  # what arcface_torch writes
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32))
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        expected = source(x)
        loaded = get_backbone("iresnet50", weights=tmp_path / "backbone.pth")
        handle = loaded.conv1.register_forward_hook(_record_input(seen))
        got = loaded(x)
        handle.remove()
    assert got.shape == (2, 512)
    assert torch.equal(got, expected)
    np.testing.assert_allclose(
        seen["in"].numpy(), apply_scaling(x.numpy(), loaded.contract), rtol=1e-6, atol=1e-6
    )


def test_nested_and_ddp_prefixed_state_dicts_load(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = MobileFaceNet()
    _randomise_batchnorm(source, seed=3)
    nested = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 20}
    torch.save(nested, tmp_path / "nested.pt")
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "flat.safetensors"))
    for name in ("nested.pt", "flat.safetensors"):
        loaded = get_backbone("mobilefacenet", weights=tmp_path / name)
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)


def test_file_with_wrong_keys_is_refused_by_name(tmp_path: Path) -> None:
    state = MobileFaceNet().state_dict()
    state["linear1.conv.weight"] = state["linear1.conv.weight"][:64]
    del state["blocks.14.conv.7.weight"]
    state["classifier.weight"] = torch.zeros(10, 128)
    torch.save({"epoch": 1, "net_state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(ModelFileError) as info:
        get_backbone("mobilefacenet", weights=tmp_path / "bad.ckpt")
    message = str(info.value)
    for part in (
        "blocks.14.conv.7.weight",
        "linear1.conv.weight",
        "(64, 512, 1, 1)",
        "classifier.weight",
        "bad.ckpt",
    ):
        assert part in message


# --------------------------------------------------------------------------- VGG-16 / VGG-Face


def test_vgg_state_dict_has_vggface_port_layout() -> None:
    face, imagenet = _shapes(_meta("vggface")), _shapes(_meta("vgg16"))
    convs = [f"conv{g}_{i}" for g, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    assert set(face) == {
        f"{layer}.{p}" for layer in convs + ["fc6", "fc7", "fc8"] for p in ("weight", "bias")
    }
    assert face["conv1_1.weight"] == (64, 3, 3, 3) and face["conv5_3.weight"] == (512, 512, 3, 3)
    assert face["conv3_1.weight"] == (256, 128, 3, 3) and face["conv4_3.bias"] == (512,)
    assert face["fc6.weight"] == (4096, 512 * 7 * 7) and face["fc7.weight"] == (4096, 4096)
    assert face["fc8.weight"] == (2622, 4096) and imagenet["fc8.weight"] == (1000, 4096)
    # torchvision's VGG-16 names map onto the same layout
    tv = {}
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    for idx, layer in zip(conv_idx, convs, strict=True):
        tv[f"features.{idx}.weight"] = torch.empty(imagenet[f"{layer}.weight"], device="meta")
        tv[f"features.{idx}.bias"] = torch.empty(imagenet[f"{layer}.bias"], device="meta")
    for idx, layer in ((0, "fc6"), (3, "fc7"), (6, "fc8")):
        tv[f"classifier.{idx}.weight"] = torch.empty(imagenet[f"{layer}.weight"], device="meta")
        tv[f"classifier.{idx}.bias"] = torch.empty(imagenet[f"{layer}.bias"], device="meta")
    assert set(check_state_dict(_meta("vgg16"), from_torchvision_layout(tv), "tv")) == set(imagenet)
    # ...and a VGG-Face file (2622 identities) is not mistaken for ImageNet VGG-16
    with pytest.raises(ModelFileError, match=r"fc8\.weight.*\(2622, 4096\)"):
        check_state_dict(_meta("vgg16"), _meta("vggface").state_dict(), "vgg_face_dag.pth")


def test_vggface_round_trip_and_fc7_embedding() -> None:
    """The one full-size VGG run: 2 x 145 M parameters, one 224x224 image."""
    torch.manual_seed(0)
    source = VGG16("vggface").eval()
    fresh = VGG16("vggface").eval()
    load_strict(fresh, source.state_dict(), "in-memory")
    x = torch.from_numpy(np.random.default_rng(2).uniform(0, 255, (1, 3, 224, 224)).astype(np.float32))
    seen = {}
    handle = fresh.conv1_1.register_forward_hook(_record_input(seen))
    with torch.no_grad():
        expected, got = source(x), fresh(x)
    handle.remove()
    assert got.shape == (1, 4096) and (got >= 0).all()  # fc7 after its ReLU
    assert torch.equal(got, expected)
    np.testing.assert_allclose(
        seen["in"].numpy(), apply_scaling(x.numpy(), fresh.contract), rtol=1e-5, atol=1e-4
    )
    assert TEMPLATES[fresh.contract.template][:2] == (224, 224)
    del source, fresh


def test_contract_round_trips_through_dict() -> None:
    for name in BACKBONES:
        contract = backbone_contract(name)
        assert type(contract).from_dict(contract.to_dict()) == contract
