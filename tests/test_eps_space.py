"""FGSM/PGD's ε space: ``pixel`` (ε/255 on [0, 1] pixels) vs ``normalized`` (ε/255 in the
classifier's normalised input, Perceptual-Rec's CleverHans setting: a pixel bound of ε·std_c/255
per channel c). Hand cases on a linear classifier whose gradient sign is known everywhere."""

import pytest
import torch
from torch import nn

from aipray.attacks import ATTACKS, AttackInputs
from aipray.attacks.taamr import FGSMConfig, PGDConfig, channel_bound
from aipray.models.nets import IMAGENET_STD, Normalize
from aipray.params import SettingError

pytestmark = pytest.mark.usefixtures("one_thread")
STD = (0.5, 0.25, 0.1)  # the classifier's own normalisation: not ImageNet's


def classifier(std=STD):
    """Logits ``(−s, +s)`` with ``s`` the sum of the normalised pixels: class 1's score grows with
    every pixel, so a targeted step towards class 1 raises every pixel (gradient sign +1)."""
    head = nn.Linear(3 * 4 * 4, 2, bias=False)
    with torch.no_grad():
        head.weight[0] = -1.0
        head.weight[1] = 1.0
    net = nn.Sequential(Normalize((0.5, 0.5, 0.5), std), nn.Flatten(), head)
    return net.eval().requires_grad_(False)


def images(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.randint(60, 190, (n, 3, 4, 4), generator=g).float() / 255  # on the grid


def attack(name, clf, **kw):
    cls = ATTACKS.get(name)
    return cls(cls.Config(**kw), None, AttackInputs(classifier=clf, target_class=1))


def test_fgsm_normalized_moves_each_channel_by_its_bound():
    x, clf = images(), classifier()
    adv = attack("fgsm", clf, eps=16, eps_space="normalized")(x)
    delta = (adv - x) * 255
    # ε·std_c = 8, 4, 1.6 pixel units; on the 8-bit grid the last is ⌊1.6⌋ = 1: the bound holds
    # after rounding and FGSM (every gradient sign +1, no clipping here) attains it
    for c, expected in enumerate((8.0, 4.0, 1.0)):
        torch.testing.assert_close(delta[:, c], torch.full_like(delta[:, c], expected))
    assert torch.equal(adv * 255, torch.round(adv * 255))
    # in pixel space the same ε moves every channel by 16
    pixel = attack("fgsm", clf, eps=16)(x)
    torch.testing.assert_close((pixel - x) * 255, torch.full_like(x, 16.0))


def test_pgd_normalized_stays_in_the_per_channel_box():
    x, clf = images(), classifier()
    cfg = {"eps": 16, "steps": 10, "step_ratio": 1 / 6, "eps_space": "normalized"}
    for start in (False, True):
        adv = attack("pgd", clf, random_start=start, **cfg)(x)
        delta = ((adv - x) * 255).abs()
        for c, bound in enumerate(STD):
            assert delta[:, c].max() <= 16 * bound + 1e-4
        assert adv.min() >= 0 and adv.max() <= 1
    # 10 steps of ε/6 cross the box: every channel reaches its (rounded-down) bound
    adv = attack("pgd", clf, **cfg)(x)
    for c, expected in enumerate((8.0, 4.0, 1.0)):
        torch.testing.assert_close((adv - x)[:, c] * 255, torch.full_like(x[:, c], expected))


def test_clipping_to_the_unit_box_is_kept():
    x = images(1)
    x[:, :, 0, 0] = 254 / 255
    adv = attack("fgsm", classifier(), eps=16, eps_space="normalized")(x)
    assert adv.max() == 1.0
    assert ((adv - x) * 255)[:, :, 0, 0].flatten().tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_the_std_comes_from_the_classifier_else_imagenet():
    own = channel_bound(classifier(), "normalized").flatten()
    torch.testing.assert_close(own, torch.tensor(STD))
    bare = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))  # no Normalize: ImageNet's, the authors'
    imagenet = channel_bound(bare, "normalized").flatten()
    torch.testing.assert_close(imagenet, torch.tensor(IMAGENET_STD))
    # Perceptual-Rec's "ε = 8" in ImageNet-normalised space is about 1.8/255 in pixels
    assert (8 * imagenet).tolist() == pytest.approx([1.832, 1.792, 1.8])
    assert channel_bound(bare, "pixel").flatten().tolist() == [1.0]


def test_config():
    assert FGSMConfig().eps_space == "pixel" and PGDConfig().eps_space == "pixel"
    with pytest.raises(SettingError, match=r"^FGSMConfig\.eps_space: 'clip' is not allowed"):
        FGSMConfig(eps_space="clip")
    with pytest.raises(SettingError, match=r"expected one of pixel, normalized"):
        PGDConfig(eps_space="l2")
