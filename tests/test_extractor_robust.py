"""Adversarially trained extractors (Perceptual-Rec's defences): Madry PGD training and Free
Adversarial Training on a tiny world, the ``training`` setting of the extractor config, and the
published robust ResNet50 checkpoint layouts (MadryLab ``robustness``, Free-AT)."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
import torchvision

from aipray.config import build_dataclass
from aipray.models.extractor import ExtractorConfig, build_extractor, make_extractor, make_spec
from aipray.models.extractor.robust import fit_robust_classifier, pgd, robust_accuracy
from aipray.models.nets import IMAGENET_MEAN, IMAGENET_STD
from aipray.params import SettingError

EPS = 16.0  # 0..255 pixel units: large enough to fool standard training on the tiny world


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def bands(n: int, seed: int, k: int = 3, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``[n, 3, size, size]`` of ``k`` classes: uniform noise in
    [0.25, 0.75] with class ``c``'s third of the rows brightened by 0.35 (≈ 89/255), a robust
    cue ε = 16 cannot erase, beside which the noise offers plenty of brittle ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.uniform(0.25, 0.75, size=(n, 3, size, size))
    for c in range(k):
        x[labels == c, :, c * size // k : (c + 1) * size // k, :] += 0.35
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def world() -> dict:
    images, labels = bands(300, 0)
    test_images, test_labels = bands(300, 1)
    return {
        "images": images,
        "labels": labels,
        "test": torch.from_numpy(test_images).float() / 255.0,
        "test_labels": torch.from_numpy(test_labels),
        "trained": {},
    }


def trained(world: dict, training: str) -> tuple[torch.nn.Module, dict, float, float]:
    """The extractor ``make_extractor`` pretrains with ``training`` on the tiny world (once per
    module), its info, and its clean and PGD-ε accuracy on fresh images."""
    if training not in world["trained"]:
        cfg = ExtractorConfig(
            width=0.125,
            epochs=8,
            batch_size=32,
            lr=1e-3,
            training=training,
            adv_eps=EPS,
            adv_steps=5,
        )
        ext, info = make_extractor(cfg, world["images"], world["labels"], device="cpu", seed=0)
        x, y = world["test"], world["test_labels"]
        clean = robust_accuracy(ext, x, y, eps=0.0, steps=0)
        robust = robust_accuracy(ext, x, y, eps=EPS, steps=10)
        world["trained"][training] = (ext, info, clean, robust)
    return world["trained"][training]


# --- training on a tiny world ---------------------------------------------------------------------
def test_standard_training_is_fooled(world):
    _, info, clean, robust = trained(world, "standard")
    assert info["training"] == "standard" and "robust_holdout_accuracy" not in info
    assert clean > 0.9
    assert robust < 0.2  # PGD at ε = 16 fools the standard extractor


@pytest.mark.parametrize("training", ["adversarial", "free"])
def test_robust_training_raises_robust_accuracy(world, training):
    _, _, _, standard_robust = trained(world, "standard")
    ext, info, clean, robust = trained(world, training)
    chance = 1 / 3
    assert clean > chance + 0.3
    assert robust > standard_robust + 0.4
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    # What was done is recorded, with the held-out robustness of the kept epoch.
    assert info["source"] == "pretrain" and info["training"] == training
    assert info["adv_eps"] == EPS and info["adv_steps"] == 5
    assert info["adv_step_size"] == pytest.approx(2.5 * EPS / 5)
    best = info["history"][info["best_epoch"] - 1]
    assert info["robust_holdout_accuracy"] == best["robust_holdout_accuracy"]
    assert info["holdout_accuracy"] == best["holdout_accuracy"]
    assert set(best) == {"epoch", "loss", "holdout_accuracy", "robust_holdout_accuracy"}
    # Free-AT replays each batch m = 4 times in ceil(8 / 4) epochs: same gradient budget.
    assert info["epochs_run"] == (2 if training == "free" else 8) == len(info["history"])
    assert ("free_replays" in info) == (training == "free")
    json.dumps(info)


def test_free_training_is_reproducible_and_divides_epochs():
    images, labels = bands(60, 3)

    def run() -> tuple[dict, list]:
        torch.manual_seed(0)
        spec = make_spec("alexnet", 3, layout="aipray", input_size=None, image_size=16, width=0.1)
        model = build_extractor(spec)
        result = fit_robust_classifier(
            model,
            images,
            labels,
            method="free",
            eps=8,
            steps=2,
            replays=2,
            epochs=5,
            batch_size=16,
            lr=1e-3,
            device="cpu",
            seed=4,
        )
        return model.state_dict(), result.history

    (state_a, hist_a), (state_b, hist_b) = run(), run()
    assert len(hist_a) == math.ceil(5 / 2)
    assert hist_a == hist_b
    assert all(torch.equal(v, state_b[k]) for k, v in state_a.items())
    with pytest.raises(ValueError, match="method"):
        fit_robust_classifier(
            build_extractor(
                make_spec("alexnet", 3, layout="aipray", input_size=None, image_size=16, width=0.1)
            ),
            images,
            labels,
            method="trades",
            eps=8,
            steps=2,
            epochs=1,
            batch_size=16,
            lr=1e-3,
            device="cpu",
        )


def test_pgd_stays_in_the_ball_and_in_pixels():
    torch.manual_seed(0)
    spec = make_spec("alexnet", 3, layout="aipray", input_size=None, image_size=16, width=0.1)
    model = build_extractor(spec).eval()
    x = torch.rand(4, 3, 16, 16)
    x[0] = 0.0  # at the box's edge: the clip to [0, 1] must hold
    y = torch.tensor([0, 1, 2, 0])
    before = x.clone()
    adv = pgd(model, x, y, eps=8, steps=3, step_size=3, random_start=True)
    assert torch.equal(x, before)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert robust_accuracy(model, x, y, eps=0, steps=0) == float(
        (model(x).argmax(1) == y).float().mean()
    )


# --- the config -----------------------------------------------------------------------------------
def test_imagenet_weights_are_standard_only():
    with pytest.raises(SettingError) as err:
        ExtractorConfig(weights="imagenet", training="adversarial")
    message = str(err.value)
    assert "\n" not in message and message.startswith("ExtractorConfig.training: 'adversarial'")
    assert "standard with weights: imagenet" in message
    with pytest.raises(SettingError, match="adv_eps"):
        ExtractorConfig(training="free", adv_eps=0)
    with pytest.raises(SettingError, match="training"):
        ExtractorConfig(training="trades")


def test_fingerprints():
    # Standard configs keep the fingerprints they had before the training setting existed.
    assert ExtractorConfig().fingerprint() == {
        "arch": "alexnet",
        "weights": "pretrain",
        "input_size": 0,
        "preprocess": "resize",
        "width": 1.0,
        "epochs": 10,
        "lr": 0.001,
        "batch_size": 64,
    }
    assert ExtractorConfig(arch="resnet50", weights="imagenet").fingerprint() == {
        "arch": "resnet50",
        "weights": "imagenet",
        "input_size": 0,
        "preprocess": "resize",
    }
    assert ExtractorConfig(adv_eps=8, adv_steps=3).fingerprint() == ExtractorConfig().fingerprint()

    prints = [
        ExtractorConfig(training=t).fingerprint() for t in ("standard", "adversarial", "free")
    ]
    assert prints[0] != prints[1] != prints[2] != prints[0]
    assert prints[1]["training"] == "adversarial" and prints[1]["adv_eps"] == 4.0
    assert prints[1]["adv_step_size"] == pytest.approx(2.5 * 4 / 7)
    assert prints[2]["free_replays"] == 4
    adv = ExtractorConfig(training="adversarial")
    assert ExtractorConfig(training="adversarial", adv_eps=8).fingerprint() != adv.fingerprint()
    assert ExtractorConfig(training="adversarial", adv_steps=3).fingerprint() != adv.fingerprint()
    # The step is resolved: null and the same explicit step are the same training.
    same = ExtractorConfig(training="adversarial", adv_step_size=2.5 * 4 / 7)
    assert same.fingerprint() == adv.fingerprint()
    free = ExtractorConfig(training="free")
    assert ExtractorConfig(training="free", free_replays=8).fingerprint() != free.fingerprint()


def test_training_is_a_sweep_axis_and_declared_for_checkpoints(tmp_path):
    configs, _ = build_dataclass(
        ExtractorConfig,
        {"training": ["standard", "adversarial", "free"]},
        "s.yaml: extractor",
        allow_axes=True,
    )
    assert [c.training for c in configs] == ["standard", "adversarial", "free"]
    file = tmp_path / "imagenet_linf_4.pt"
    file.write_bytes(b"weights")
    declared = ExtractorConfig(arch="resnet50", weights=str(file), training="adversarial")
    plain = ExtractorConfig(arch="resnet50", weights=str(file))
    assert declared.fingerprint()["training"] == "adversarial"
    assert "adv_eps" not in declared.fingerprint() and "training" not in plain.fingerprint()
    missing = ExtractorConfig(weights=str(tmp_path / "model_best.pth.tar"), training="free")
    assert [k for k, _, _ in missing.file_checks()] == ["weights"]
    with pytest.raises(FileNotFoundError, match=r"model_best\.pth\.tar"):
        make_extractor(missing, None, None)


# --- published robust ResNet50 checkpoints --------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return torchvision.models.resnet50(weights=None).state_dict()


def robustness_layout(state: dict[str, torch.Tensor]) -> dict:
    """MadryLab ``robustness`` release (``imagenet_linf_4.pt``): the net under ``module.model.``,
    the attacker's copy under ``module.attacker.model.`` (here sharing storage except for a
    zeroed head, so that taking the wrong copy shows), the normaliser, optimiser and schedule."""
    model = {f"module.model.{k}": v for k, v in state.items()}
    attacker = {f"module.attacker.model.{k}": v for k, v in state.items()}
    attacker["module.attacker.model.fc.weight"] = torch.zeros_like(state["fc.weight"])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalizers = {
        "module.normalizer.new_mean": mean,
        "module.normalizer.new_std": std,
        "module.attacker.normalize.new_mean": mean,
        "module.attacker.normalize.new_std": std,
    }
    optimizer = {
        "state": {},
        "param_groups": [
            {"lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4, "params": list(range(161))}
        ],
    }
    schedule = {"step_size": 30, "gamma": 0.1, "base_lrs": [0.1], "last_epoch": 89}
    return {
        "model": {**model, **attacker, **normalizers},
        "optimizer": optimizer,
        "schedule": schedule,
        "epoch": 90,
    }


def free_at_layout(state: dict[str, torch.Tensor]) -> dict:
    """Free-AT's ``model_best.pth.tar``: DataParallel keys under ``module.``."""
    return {
        "epoch": 23,
        "arch": "resnet50",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "best_prec1": torch.tensor(60.206),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
    }


@pytest.mark.parametrize(
    ("name", "layout", "training", "prefix", "meta"),
    [
        (
            "imagenet_linf_4.pt",
            robustness_layout,
            "adversarial",
            "module.model.",
            {"checkpoint_epoch": 90},
        ),
        ("model_best.pth.tar", free_at_layout, "free", "module.", {"checkpoint_arch": "resnet50"}),
    ],
    ids=["robustness", "free-at"],
)
def test_published_robust_checkpoints_load(
    tmp_path, resnet_state, name, layout, training, prefix, meta
):
    file = tmp_path / name
    torch.save(layout(resnet_state), file)
    cfg = ExtractorConfig(arch="resnet50", weights=str(file), training=training, input_size=64)
    ext, info = make_extractor(cfg, None, None)
    loaded = ext.net.state_dict()
    assert loaded.keys() == resnet_state.keys()
    for k, v in loaded.items():
        assert torch.equal(v, resnet_state[k]), k
    assert info["training"] == training and info["key_prefix"] == prefix
    assert info["source"] == "checkpoint" and info["path"] == str(file)
    assert all(info[k] == v for k, v in meta.items())
    json.dumps(info)
    assert ext.num_classes == 1000 and ext.spec["labels"] == "imagenet1k"
    with torch.no_grad():
        assert ext.features(torch.rand(2, 3, 64, 64)).shape == (2, 2048)


def test_checkpoint_with_another_head_and_mismatches(tmp_path, resnet_state):
    torch.manual_seed(3)
    ten = torchvision.models.resnet50(weights=None, num_classes=10).state_dict()
    file = tmp_path / "ten.pth.tar"
    torch.save(free_at_layout(ten), file)
    ext, _ = make_extractor(ExtractorConfig(arch="resnet50", weights=str(file)), None, None)
    assert ext.num_classes == 10 and ext.class_names[0] == "class 0"
    assert torch.equal(ext.net.fc.weight, ten["fc.weight"])

    def error(obj: object, name: str, arch: str = "resnet50") -> str:
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(ValueError) as err:
            make_extractor(ExtractorConfig(arch=arch, weights=str(path)), None, None)
        message = str(err.value)
        assert name in message and "\n" not in message
        return message

    no_layer4 = {k: v for k, v in resnet_state.items() if not k.startswith("layer4.")}
    message = error(robustness_layout(no_layer4), "truncated_linf_4.pt")
    assert "missing" in message and "layer4.0." in message and "expected its 320 tensors" in message
    head = dict(resnet_state, **{"fc.weight": torch.zeros(1000, 512)})  # a ResNet18-sized head
    message = error(head, "wrong_head.pth")
    assert "fc.weight: expected (1000, 2048), found (1000, 512)" in message
    alexnet = torchvision.models.alexnet(weights=None).state_dict()
    message = error({"state_dict": alexnet}, "alexnet_as_resnet.pth")
    assert "neither a torchvision resnet50 state dict" in message and "features.0.weight" in message
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "ten.pth.tar").read_bytes()[:4096])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pt"):
        make_extractor(ExtractorConfig(arch="resnet50", weights=str(cut)), None, None)
