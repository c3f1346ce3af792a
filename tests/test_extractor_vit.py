"""The ViT extractor: torchvision's VisionTransformer, its class token before the head as the
feature, in-process pretraining on the surrogate set, robust training, and its config checks.

Nothing here reaches the network: sockets are disabled and torch's hub cache points at a
temporary folder.
"""

from __future__ import annotations

import itertools
import json
import socket

import numpy as np
import pytest
import torch
import torchvision

from aipray.config import ConfigError, build_dataclass
from aipray.data.surrogate import SurrogateConfig, make_surrogate
from aipray.data.synthetic import render_item
from aipray.models.extractor import (
    ExtractorConfig,
    WeightsUnavailableError,
    build_extractor,
    imagenet_weights_file,
    load_extractor,
    make_extractor,
    make_spec,
    save_extractor,
)
from aipray.models.extractor.network import vit_widths
from aipray.models.nets import IMAGENET_MEAN, IMAGENET_STD, FactorisedHead
from aipray.models.train import classifier_optimizer

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No network, and a private, empty torch hub cache."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)


def vit_spec(num_classes: int = 24, *, factors=(2, 3, 4), size: int = 16, **kw) -> dict:
    kw = {"width": 0.125, "patch_size": 4, "depth": 2} | kw
    return make_spec(
        "vit",
        num_classes,
        layout="aipray",
        input_size=size,
        image_size=size,
        factors=factors,
        labels="surrogate",
        **kw,
    )


def same(a, b, x: torch.Tensor) -> None:
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a.features(x), b.features(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# --- the network ----------------------------------------------------------------------------------
def test_widths_scale_vit_b16_with_heads_of_64():
    assert vit_widths(1.0) == (12, 768, 3072)  # ViT-B
    assert vit_widths(0.25) == (3, 192, 768)  # DeiT-Ti
    assert vit_widths(0.125) == (2, 128, 512)
    assert vit_widths(0.01) == (1, 64, 256)


def test_features_are_torchvisions_class_token_before_the_head():
    torch.manual_seed(0)
    ext = build_extractor(vit_spec(5, factors=None, width=0.25)).eval()
    assert ext.feature_dim == 192 and ext.num_classes == 5
    heads, hidden, mlp = vit_widths(0.25)
    tv = torchvision.models.VisionTransformer(16, 4, 2, heads, hidden, mlp, num_classes=5).eval()
    tv.load_state_dict(ext.net.state_dict())
    seen: list[torch.Tensor] = []
    tv.heads.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        logits = tv((x - MEAN) / STD)
        feats, ours = ext.features_and_logits(x)
    assert feats.shape == (3, 192) and ours.shape == (3, 5)
    torch.testing.assert_close(feats, seen[0])
    torch.testing.assert_close(ours, logits)
    assert json.loads(json.dumps(ext.spec)) == ext.spec


def test_factorised_head_and_imagenet_layout_shapes():
    ext = build_extractor(vit_spec(24)).eval()
    assert isinstance(ext.head, FactorisedHead) and ext.feature_dim == 128
    with torch.no_grad():
        assert ext(torch.rand(2, 3, 16, 16)).shape == (2, 24)
    # torchvision's vit_b_16, as ImageNet weights load into: 768-d pre-logits at 224 px.
    big = build_extractor(make_spec("vit", 7, input_size=224)).eval()
    assert big.feature_dim == 768 and big.head is big.net.heads.head
    with torch.no_grad():
        feats, logits = big.features_and_logits(torch.rand(1, 3, 32, 32))  # resized inside
    assert feats.shape == (1, 768) and logits.shape == (1, 7)


def test_gradients_reach_pixels_and_inputs_stay():
    ext = build_extractor(vit_spec(size=32)).eval().requires_grad_(False)
    x = torch.rand(2, 3, 24, 24, requires_grad=True)  # resized to 32 inside
    before = x.detach().clone()
    feats = ext.features(x)
    # a random direction: the plain sum of a layer norm's output does not depend on its input
    (feats * torch.randn_like(feats)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(x.detach(), before)
    x.grad = None
    ext(x)[:, 3].sum().backward()
    assert x.grad.abs().sum() > 0


def test_spec_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    ext = build_extractor(vit_spec())
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)  # another random init: only the state dict may make them equal
    rebuilt = build_extractor(json.loads(json.dumps(ext.spec)))
    rebuilt.load_state_dict(ext.state_dict())
    same(ext, rebuilt, x)
    save_extractor(ext, tmp_path / "ext", {"source": "surrogate"})
    loaded = load_extractor(tmp_path / "ext")
    assert loaded.spec == ext.spec and not loaded.training
    same(ext, loaded, x)
    again, info = make_extractor(
        ExtractorConfig(arch="vit", weights=str(tmp_path / "ext")), None, None
    )
    assert info["checkpoint"] == "aipray-extractor"
    same(ext, again, x)
    with pytest.raises(ValueError, match="holds a vit extractor"):
        make_extractor(ExtractorConfig(weights=str(tmp_path / "ext")), None, None)


# --- settings -------------------------------------------------------------------------------------
def test_config_checks_are_one_line():
    with pytest.raises(ConfigError) as err:
        build_dataclass(ExtractorConfig, {"arch": "vit_l"}, "sweep.yaml: extractor")
    assert "\n" not in str(err.value) and "vit" in str(err.value)
    assert str(err.value).startswith("sweep.yaml: extractor.arch: ")
    with pytest.raises(ConfigError, match="input_size") as err:
        build_dataclass(
            ExtractorConfig, {"arch": "vit", "weights": "imagenet", "input_size": 64}, "extractor"
        )
    assert "\n" not in str(err.value)
    assert ExtractorConfig(arch="vit", weights="imagenet").cross_checks() == []
    with pytest.raises(ValueError, match="divides the image side 30"):
        vit_spec(size=30)
    with pytest.raises(ValueError, match="reads 224×224 inputs only"):
        make_spec("vit", 3, input_size=64)


def test_fingerprints_keep_earlier_keys():
    alexnet = ExtractorConfig(weights="surrogate").fingerprint()
    assert not {"vit_patch", "vit_depth", "weight_decay", "warmup"} & set(alexnet)
    vit = ExtractorConfig(arch="vit", weights="surrogate", weight_decay=0.05, warmup=2)
    fp = vit.fingerprint()
    assert fp["vit_patch"] == 4 and fp["vit_depth"] == 6
    assert fp["weight_decay"] == 0.05 and fp["warmup"] == 2
    other = ExtractorConfig(
        arch="vit", weights="surrogate", weight_decay=0.05, warmup=2, vit_depth=3
    )
    assert other.fingerprint() != fp
    imagenet = ExtractorConfig(arch="vit", weights="imagenet", vit_depth=3).fingerprint()
    assert "vit_depth" not in imagenet


def test_imagenet_weights_missing_offline():
    expected = imagenet_weights_file("vit")
    assert expected.name == "vit_b_16-c867db91.pth"
    with pytest.raises(WeightsUnavailableError) as err:
        make_extractor(ExtractorConfig(arch="vit", weights="imagenet", download=False), None, None)
    message = str(err.value)
    assert "\n" not in message and str(expected) in message
    assert "ViT_B_16_Weights.IMAGENET1K_V1" in message and "downloading is disabled" in message


def test_warmup_then_cosine_and_adamw():
    model = torch.nn.Linear(2, 2)
    opt, schedule = classifier_optimizer(
        model, lr=1.0, weight_decay=0.1, warmup_steps=4, total_steps=12
    )
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.1
    rates = []
    for _ in range(12):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0) and all(a > b for a, b in itertools.pairwise(rates[4:]))
    plain, none = classifier_optimizer(
        model, lr=1e-3, weight_decay=0.0, warmup_steps=0, total_steps=9
    )
    assert type(plain) is torch.optim.Adam and none is None


# --- in-process pretraining -----------------------------------------------------------------------
def test_surrogate_pretraining_of_a_tiny_vit_beats_chance():
    size = np.zeros((1, 3, 16, 16), dtype=np.uint8)  # the surrogate set takes only the size
    config = ExtractorConfig(
        arch="vit",
        weights="surrogate",
        width=0.08,
        vit_depth=1,
        epochs=4,
        lr=2e-3,
        batch_size=64,
        weight_decay=0.05,
        warmup=1,
        surrogate_per_class=4,
        surrogate_clutter=0,
    )
    ext, info = make_extractor(config, size, None, seed=0)
    assert ext.spec["layout"] == "aipray" and ext.spec["factors"] == [8, 6, 4]
    assert ext.num_classes == 192 and ext.feature_dim == 64 and info["n_images"] == 768
    assert info["holdout_accuracy"] > info["chance_accuracy"]
    # On fresh surrogate images its colour family (the first attribute it learns) is far above
    # the chance of 1/6.
    images, labels = make_surrogate(SurrogateConfig(per_class=2, image_size=16, clutter=0, seed=5))
    with torch.no_grad():
        pred = ext(torch.from_numpy(images).float() / 255.0).argmax(1).numpy()
    family = (pred // 4) % 6 == (labels // 4) % 6
    assert family.mean() > 1 / 6 + 0.2


@pytest.mark.parametrize("training", ["adversarial", "free"])
def test_robust_training_runs_on_a_vit(training):
    rng = np.random.default_rng(0)
    cats = np.repeat(np.arange(2), 12)
    images = np.stack(
        [render_item(int(c), rng.uniform(), int(rng.integers(4)), rng, 16) for c in cats]
    )
    config = ExtractorConfig(
        arch="vit",
        width=0.08,
        vit_depth=1,
        epochs=2,
        batch_size=8,
        training=training,
        adv_eps=4,
        adv_steps=2,
        free_replays=2,
        warmup=1,
    )
    ext, info = make_extractor(config, images, cats, seed=0)
    assert info["training"] == training and ext.arch == "vit"
    assert 0 <= info["robust_holdout_accuracy"] <= 1 and info["epochs_run"] >= 1
