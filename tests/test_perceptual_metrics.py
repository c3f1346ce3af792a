# These tests never use ImageNet weights: the LPIPS backbone is either the seeded random one
# (``backbone: random``) or a state dict the test builds in-process and writes to tmp_path.
import socket

import pytest
import torch
import torch.nn.functional as F
import torchvision

from aipray.metrics.image import l2
from aipray.metrics.perceptual import (
    LPIPS,
    LPIPSConfig,
    feature_loss,
    imagenet_backbone_file,
    make_lpips,
)
from aipray.models.extractor import WeightsUnavailableError
from aipray.params import SettingError


@pytest.fixture(scope="module")
def vgg() -> LPIPS:
    return make_lpips(LPIPSConfig(net="vgg", backbone="random"))


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return make_lpips(LPIPSConfig(net="alex", backbone="random"))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """A seeded torchvision VGG16 and the file its ``features.*`` weights are saved to (wrapped
    as checkpoints often are; the classifier is left out to keep the file small)."""
    torch.manual_seed(7)
    reference = torchvision.models.vgg16(weights=None).eval()
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    file = tmp_path_factory.mktemp("backbone") / "vgg16.pth"
    torch.save({"state_dict": state}, file)
    return reference, file


def smooth_images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear")


def test_identical_images_are_at_distance_zero(vgg):
    x = smooth_images(4)
    d = vgg(x, x)
    assert d.shape == (4,)
    assert d.abs().max().item() < 1e-6


def test_distance_grows_with_noise_and_is_symmetric(vgg):
    x = smooth_images(6)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    means = []
    for amplitude in (0.02, 0.06, 0.2):
        y = (x + amplitude * noise).clamp(0, 1)
        d = vgg(x, y)
        torch.testing.assert_close(d, vgg(y, x), atol=1e-6, rtol=1e-5)
        means.append(d.mean().item())
    assert 0 < means[0] < means[1] < means[2]


def test_sizes_32_16_and_224(vgg):
    for size in (32, 16, 8):  # 8 px is upsampled to VGG's minimum of 16
        x = smooth_images(2, size)
        d = vgg(x, 1 - x)
        assert torch.isfinite(d).all() and (d > 0).all()
    x = smooth_images(2, 224)
    d = vgg(x, (x + 0.1).clamp(0, 1))
    assert d.shape == (2,) and (d > 0).all()


def test_alex_net_works_at_32_and_below(alex):
    assert "not LPIPS as published" in alex.label
    for size in (32, 16):  # AlexNet needs 31 px: 16 px is upsampled to 32
        x = smooth_images(3, size)
        assert alex(x, x).abs().max().item() < 1e-6
        assert (alex(x, (x + 0.1).clamp(0, 1)) > 0).all()


def test_metric_is_frozen_but_passes_gradients_to_the_images(vgg):
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    x = smooth_images(2)
    y = (x + 0.05).clamp(0, 1).requires_grad_(True)
    vgg(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_random_backbone_is_seeded(alex):
    torch.manual_seed(123)  # the global generator does not matter
    again = make_lpips(LPIPSConfig(net="alex", backbone="random"))
    x = smooth_images(2)
    y = (x + 0.1).clamp(0, 1)
    torch.testing.assert_close(alex(x, y), again(x, y), atol=0, rtol=0)


def test_random_backbone_is_announced_unless_quiet(caplog):
    """Library users are told the random backbone is not LPIPS; sweep actors stay quiet (the
    driver says it once)."""
    config = LPIPSConfig(net="alex", backbone="random")
    with caplog.at_level("WARNING", logger="aipray.metrics.perceptual"):
        make_lpips(config, quiet=True)
        assert caplog.records == []
        make_lpips(config)
    (record,) = caplog.records
    assert record.getMessage() == (
        "LPIPS(alex, random backbone: not LPIPS as published): "
        "for tests and offline smoke runs only"
    )


def test_missing_imagenet_weights_raise_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was reached for")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    file = imagenet_backbone_file("vgg")
    assert file == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsUnavailableError) as err:
        make_lpips(LPIPSConfig(net="vgg", backbone="imagenet", download=False))
    message = str(err.value)
    assert str(file) in message
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url in message
    assert "lpips.backbone" in message


def test_backbone_from_a_state_dict_file(vgg_file):
    reference, file = vgg_file
    config = LPIPSConfig(net="vgg", backbone=str(file))
    assert config.fingerprint()["backbone_sha256"]
    assert config.label == "LPIPS(vgg, vgg16.pth)"
    metric = make_lpips(config)
    convs = {
        int(name): layer
        for part in metric.net.net.children()
        for name, layer in part.named_children()
        if isinstance(layer, torch.nn.Conv2d)
    }
    assert len(convs) == 13
    for index, layer in convs.items():
        assert torch.equal(layer.weight, reference.features[index].weight)
        assert torch.equal(layer.bias, reference.features[index].bias)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = metric.net.net(x).relu5_3
        theirs = reference.features[:30](x)
    torch.testing.assert_close(ours, theirs)


def test_a_state_dict_of_another_net_is_refused(vgg_file):
    _, file = vgg_file
    with pytest.raises(
        ValueError,
        match=r"alexnet: features\.0\.weight is \(64, 3, 3, 3\), expected \(64, 3, 11, 11\)",
    ):
        make_lpips(LPIPSConfig(net="alex", backbone=str(file)))


def test_config_checks():
    with pytest.raises(SettingError):
        LPIPSConfig(net="squeeze")
    assert LPIPSConfig().net == "vgg" and LPIPSConfig().backbone == "imagenet"
    assert not LPIPSConfig().download
    assert LPIPSConfig(backbone="/nowhere/vgg.pth").file_checks()
    assert LPIPSConfig(backbone="random").file_checks() == []


def test_feature_loss_by_hand():
    clean = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    # item 0: (1 + 0 + 4 + 0) / 4
    assert feature_loss(clean, adv).tolist() == [1.25, 0.0]


def test_l2_by_hand():
    clean = torch.zeros(2, 3, 2, 2)
    perturbed = clean.clone()
    perturbed[0, 0, 0, 0] = 0.3
    perturbed[0, 2, 1, 1] = -0.4
    assert torch.allclose(l2(clean, perturbed), torch.tensor([0.5, 0.0]))
