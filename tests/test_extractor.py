"""The feature extractor: layouts against torchvision, pixel-space gradients, weights sources.

Nothing here reaches the network: sockets are disabled and torch's hub cache points at a
temporary folder; the ImageNet success path reads a randomly initialised state dict saved under
the cache file name torchvision's weights URL gives.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from aipray.config import ConfigError, build_dataclass
from aipray.data.synthetic import render_item
from aipray.models.extractor import (
    Extractor,
    ExtractorConfig,
    WeightsUnavailableError,
    build_extractor,
    class_names,
    extract_features,
    imagenet_class_names,
    imagenet_weights_file,
    load_extractor,
    make_extractor,
    make_spec,
    popular_class,
    predict_classes,
    read_extractor_info,
    save_extractor,
)

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these small tensors gain nothing from more, and on a shared machine
    spinning OpenMP threads make the file ten times slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No network, and a private, empty torch hub cache."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)


@pytest.fixture(scope="module")
def resnet_state_file(tmp_path_factory) -> Path:
    """A randomly initialised torchvision ResNet50 state dict on disk (shared: ~100 MB)."""
    torch.manual_seed(1)
    file = tmp_path_factory.mktemp("resnet") / "resnet50-random.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), file)
    return file


def small_spec(num_classes: int = 5, image_size: int = 32) -> dict:
    return make_spec(
        "alexnet",
        num_classes,
        layout="aipray",
        input_size=image_size,
        image_size=image_size,
        width=0.25,
        labels="categories",
        class_names=[f"c{i}" for i in range(num_classes)],
    )


def _same_outputs(a: Extractor, b: Extractor, x: torch.Tensor) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a.features(x), b.features(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# --- config ---------------------------------------------------------------------------------------
def test_config_cross_checks_and_fingerprint(tmp_path):
    assert ExtractorConfig().file_checks() == []
    assert ExtractorConfig(arch="resnet50", weights="imagenet").file_checks() == []
    missing = ExtractorConfig(weights=str(tmp_path / "nope.pt"))
    assert [k for k, _, _ in missing.file_checks()] == ["weights"]
    assert [k for k, _, _ in ExtractorConfig(weights=str(tmp_path)).file_checks()] == ["weights"]
    with pytest.raises(ConfigError, match="input_size"):
        ExtractorConfig(input_size=8)

    with pytest.raises(ConfigError) as err:
        build_dataclass(ExtractorConfig, {"weights": "nope.pt"}, "sweep.yaml: extractor")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("sweep.yaml: extractor.weights: ")
    assert "pretrain, surrogate, clip, imagenet or the path of an existing checkpoint" in message
    with pytest.raises(ConfigError, match=r"extractor\.arch"):
        build_dataclass(ExtractorConfig, {"arch": "vgg16"}, "sweep.yaml: extractor")

    # A relative path is made absolute; the fingerprint follows the file's content.
    file = tmp_path / "w.pt"
    file.write_bytes(b"one")
    cfg = ExtractorConfig(weights=str(file))
    assert cfg.cross_checks() == [] and Path(cfg.weights).is_absolute()
    first = cfg.fingerprint()
    file.write_bytes(b"two")
    assert cfg.fingerprint() != first
    # Pretraining settings do not matter for ImageNet weights, download never does.
    a = ExtractorConfig(weights="imagenet", epochs=3, download=False).fingerprint()
    assert a == ExtractorConfig(weights="imagenet", epochs=7).fingerprint()


# --- layouts --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "dim"),
    [
        (make_spec("alexnet", 7, input_size=224), 4096),
        (make_spec("resnet50", 7, input_size=224), 2048),
        (small_spec(7), 1024),
    ],
    ids=["alexnet", "resnet50", "alexnet-pretrain-layout"],
)
def test_feature_and_logit_shapes(spec, dim):
    ext = build_extractor(spec).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = ext.features_and_logits(x)
    assert ext.feature_dim == dim and ext.num_classes == 7
    assert feats.shape == (2, dim) and logits.shape == (2, 7)
    assert json.loads(json.dumps(ext.spec)) == ext.spec


def test_alexnet_features_are_torchvision_fc7_after_relu():
    ext = build_extractor(make_spec("alexnet", 10, input_size=64)).eval()
    tv = torchvision.models.alexnet(weights=None, num_classes=10).eval()
    tv.load_state_dict(ext.net.state_dict())
    x = torch.rand(2, 3, 32, 32)

    def by_hand(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = (images - MEAN) / STD
        h = torch.flatten(tv.avgpool(tv.features(h)), 1)
        fc6 = torch.relu(tv.classifier[1](h))
        fc7 = torch.relu(tv.classifier[4](fc6))
        return fc7, tv((images - MEAN) / STD)

    with torch.no_grad():
        resized = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
        for images, expected_input in ((x, resized), (resized, resized)):
            fc7, logits = by_hand(expected_input)
            torch.testing.assert_close(ext.features(images), fc7)
            torch.testing.assert_close(ext(images), logits)
            assert (fc7 >= 0).all() and (fc7 > 0).any()


def test_resnet50_features_are_torchvision_avgpool():
    ext = build_extractor(make_spec("resnet50", 6, input_size=64)).eval()
    tv = torchvision.models.resnet50(weights=None, num_classes=6).eval()
    tv.load_state_dict(ext.net.state_dict())
    pooled: list[torch.Tensor] = []
    tv.avgpool.register_forward_hook(lambda m, i, out: pooled.append(out))
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits = tv((x - MEAN) / STD)
        torch.testing.assert_close(ext.features(x), torch.flatten(pooled[0], 1))
        torch.testing.assert_close(ext(x), logits)


@pytest.mark.parametrize(
    "spec",
    [
        small_spec(),
        make_spec("alexnet", 4, input_size=64),
        make_spec("alexnet", 4, input_size=64, preprocess="resize_crop"),
    ],
    ids=["pretrain-layout", "torchvision-resize", "torchvision-resize-crop"],
)
def test_gradients_reach_pixels_and_inputs_stay(spec):
    ext = build_extractor(spec).eval().requires_grad_(False)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    before = x.detach().clone()
    ext.features(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(x.detach(), before)
    x.grad = None
    ext(x)[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0


def test_normalisation_is_inside():
    ext = build_extractor(small_spec()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        inside = ext.features(x)
        by_hand = ext.net.fc(ext.net.conv((x - MEAN) / STD))
        raw = ext.net.fc(ext.net.conv(x))
    torch.testing.assert_close(inside, by_hand)
    assert not torch.allclose(inside, raw)
    with pytest.raises(TypeError, match="float images"):
        ext.features((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ext.features(x[:, :1])


# --- rebuilding, saving, loading ------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec", [small_spec(), make_spec("resnet50", 3, input_size=None)], ids=["alexnet", "resnet50"]
)
def test_spec_rebuild_and_state_dict_roundtrip(spec):
    ext = build_extractor(spec).eval()
    spec_json = json.loads(json.dumps(ext.spec))
    torch.manual_seed(123)  # a different random init: only the state dict may make them equal
    rebuilt = build_extractor(spec_json)
    rebuilt.load_state_dict(ext.state_dict())
    _same_outputs(ext, rebuilt, torch.rand(2, 3, 32, 32))
    assert rebuilt.class_names == class_names(spec)


def test_save_load_roundtrip_and_checkpoint_path(tmp_path):
    ext = build_extractor(small_spec(4))
    save_extractor(ext, tmp_path / "ext", {"source": "pretrain", "holdout_accuracy": 0.5})
    loaded = load_extractor(tmp_path / "ext")
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.spec == ext.spec and loaded.class_names == ["c0", "c1", "c2", "c3"]
    assert read_extractor_info(tmp_path / "ext")["holdout_accuracy"] == 0.5
    x = torch.rand(2, 3, 32, 32)
    _same_outputs(ext, loaded, x)

    # The saved folder, or its model.pt, is a valid extractor.weights (e.g. adversarially trained).
    for weights in (tmp_path / "ext", tmp_path / "ext" / "model.pt"):
        cfg = ExtractorConfig(weights=str(weights))
        assert cfg.cross_checks() == []
        again, info = make_extractor(cfg, None, None, device="cpu")
        assert info["source"] == "checkpoint" and info["checkpoint"] == "aipray-extractor"
        assert len(info["sha256"]) == 64
        _same_outputs(ext, again, x)
    with pytest.raises(ValueError, match="holds a alexnet extractor"):
        make_extractor(ExtractorConfig(arch="resnet50", weights=str(tmp_path / "ext")), None, None)


def test_torchvision_state_dict_checkpoint(tmp_path, resnet_state_file):
    state = torch.load(resnet_state_file, weights_only=True)
    # Wrapped and prefixed as the robustness library saves adversarially trained models: the
    # network's own entries are found by the shortest prefix before the head's name.
    wrapped = tmp_path / "robust.pt"
    inner = {f"module.model.{k}": v for k, v in state.items()}
    inner["module.attacker.model.fc.weight"] = torch.zeros_like(state["fc.weight"])
    inner["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    torch.save({"model": inner, "epoch": 3}, wrapped)
    ext, info = make_extractor(ExtractorConfig(arch="resnet50", weights=str(wrapped)), None, None)
    assert info["checkpoint"] == "torchvision" and ext.num_classes == 1000
    assert ext.input_size == (224, 224)
    for k, v in ext.net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert ext.class_names[:2] == ["tench", "goldfish"]
    assert not any(p.requires_grad for p in ext.parameters())
    with pytest.raises(ValueError, match="neither a torchvision alexnet state dict"):
        make_extractor(ExtractorConfig(arch="alexnet", weights=str(resnet_state_file)), None, None)


# --- ImageNet weights through torch's hub cache ---------------------------------------------------
def test_imagenet_weights_from_hub_cache(tmp_path, resnet_state_file):
    file = imagenet_weights_file("resnet50")
    assert file == tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    file.parent.mkdir(parents=True)
    file.symlink_to(resnet_state_file)
    cfg = ExtractorConfig(arch="resnet50", weights="imagenet", download=False, input_size=64)
    ext, info = make_extractor(cfg, None, None, device="cpu")
    state = torch.load(resnet_state_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in ext.net.state_dict().items())
    assert info["source"] == "imagenet" and info["file"] == str(file)
    assert info["weights"] == "ResNet50_Weights.IMAGENET1K_V1"
    assert ext.spec["labels"] == "imagenet1k" and ext.class_names == imagenet_class_names()
    assert ext.input_size == (64, 64)
    assert not ext.training


def test_imagenet_weights_missing_offline(tmp_path, monkeypatch):
    expected = imagenet_weights_file("alexnet")
    cfg = ExtractorConfig(arch="alexnet", weights="imagenet", download=False)
    with pytest.raises(WeightsUnavailableError) as err:
        make_extractor(cfg, None, None)
    message = str(err.value)
    assert "\n" not in message
    assert "alexnet-owt-7be5be79.pth" in message and str(expected) in message
    assert "downloading is disabled" in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert "extractor.weights" in message

    def no_download(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    cfg = ExtractorConfig(arch="alexnet", weights="imagenet", download=True)
    with pytest.raises(WeightsUnavailableError, match="downloading it failed") as err:
        make_extractor(cfg, None, None)
    assert "name resolution" in str(err.value) and "\n" not in str(err.value)
    assert not expected.exists()


# --- pretraining on item categories ---------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes() -> tuple[np.ndarray, np.ndarray]:
    """200 product images of 4 shapes (random hue and texture), 32×32, shuffled."""
    rng = np.random.default_rng(0)
    cats = np.repeat(np.arange(4), 50)
    images = np.stack(
        [render_item(int(c), rng.uniform(), int(rng.integers(4)), rng, 32) for c in cats]
    )
    order = rng.permutation(cats.size)
    return images[order], cats[order]


def test_pretrain_alexnet_beats_chance(shapes):
    images, cats = shapes
    cats_with_unknown = cats.copy()
    cats_with_unknown[:5] = -1  # unknown categories are skipped
    cfg = ExtractorConfig(width=0.25, epochs=10, batch_size=32, lr=2e-3)
    names = ["circle", "square", "triangle", "diamond"]
    ext, info = make_extractor(
        cfg, images, cats_with_unknown, device="cpu", seed=0, category_names=names
    )
    assert info["source"] == "pretrain" and info["n_images"] == 195
    assert info["holdout_accuracy"] > info["chance_accuracy"] + 0.25
    assert ext.class_names == names and ext.spec["layout"] == "aipray"
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    pred = predict_classes(ext, images)
    assert (pred == cats).mean() > 0.6
    read_only = images[:10].copy()
    read_only.setflags(write=False)  # as a memory-mapped catalog
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats = extract_features(ext, read_only, batch_size=4)
    assert feats.shape == (10, ext.feature_dim)
    with torch.no_grad():
        torch.testing.assert_close(feats, ext.features(torch.from_numpy(images[:10]) / 255.0))
    weights = np.zeros(len(images))
    weights[np.flatnonzero(pred == 2)[:1]] = 5.0
    assert popular_class(ext, images, weights) == 2
    assert popular_class(ext, images) == int(np.bincount(pred).argmax())
    json.dumps(info)


def test_pretrain_resnet50_smoke(shapes):
    images, cats = shapes[0][:9], shapes[1][:9]
    cfg = ExtractorConfig(arch="resnet50", epochs=1, batch_size=7)
    ext, info = make_extractor(cfg, images, cats, device="cpu", seed=0)
    # 9 images (1 held out) would leave a last training batch of one (BatchNorm): one is dropped,
    # and one step of 7 images trains.
    assert info["n_images"] == 8 and len(info["history"]) == 1
    assert ext.feature_dim == 2048 and ext.num_classes == 4
    assert ext.input_size == (32, 32) and ext.class_names == [f"class {i}" for i in range(4)]
    with pytest.raises(ValueError, match="two categories"):
        make_extractor(cfg, images[:3], np.zeros(3, dtype=np.int64))
