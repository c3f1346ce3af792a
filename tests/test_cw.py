import pytest
import torch
import torch.nn.functional as F

from aipray.attacks import ATTACKS, AttackInputs
from aipray.attacks.cw import CWConfig
from aipray.params import SettingError

TARGET = 2


def world(n, seed):
    """16×16 images of 4 separable classes: class k brightens channel k % 3 in quadrant k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.35 + 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, k % 3, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 0.25
    return torch.round(x.clamp(0, 1) * 255) / 255, y


def linear_classifier():
    """A linear classifier trained in-process (100 Adam steps, 100 % accuracy on held-out data)."""
    torch.manual_seed(0)
    x, y = world(64, seed=0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval().requires_grad_(False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf():
    return linear_classifier()


def not_target(n=12, seed=1):
    x, y = world(n, seed)
    return x[y != TARGET]


def cw(clf, **kw):
    cls = ATTACKS.get("cw")
    kw.setdefault("steps", 150)
    return cls(cls.Config(**kw), None, AttackInputs(classifier=clf, target_class=TARGET))


def l2(adv, x):
    return (adv - x).flatten(1).norm(dim=1)


def test_reaches_target_inputs_unchanged_on_the_grid(clf):
    x = not_target()
    assert (clf(x).argmax(1) != TARGET).all()
    before = x.clone()
    attack = cw(clf)
    adv = attack(x)
    assert torch.equal(x, before)
    assert adv.shape == x.shape
    assert torch.equal(adv * 255, torch.round(adv * 255)), "must be on the 8-bit grid"
    assert adv.min() >= 0 and adv.max() <= 1
    assert attack.success(adv).float().mean() >= 0.75  # judged after the 8-bit rounding


def test_eps_bounds_the_rounded_perturbation(clf):
    x = not_target()
    adv = cw(clf, eps=20)(x)
    assert (adv - x).abs().max() <= 20 / 255 + 1e-6
    assert (adv != x).any()


def test_failed_images_come_back_unchanged(clf):
    x = not_target()
    attack = cw(clf, binary_steps=1)  # c = 1e-2 is far too small for this classifier
    adv = attack(x)
    assert not attack.success(adv).any()
    assert torch.equal(adv, x)


def test_l2_is_near_the_minimum_and_the_binary_search_lowers_it(clf):
    x = not_target(8)
    # for a linear classifier, ‖δ‖ ≥ (Z_j − Z_t)/‖w_t − w_j‖ for every class j: a lower bound
    weight = clf[1].weight
    logits = clf(x)
    gaps = (logits - logits[:, TARGET : TARGET + 1]).clamp(min=0)
    lower = (gaps / (weight - weight[TARGET]).norm(dim=1).clamp(min=1e-12)).amax(1)
    attack = cw(clf)
    adv = attack(x)
    assert attack.success(adv).all()
    assert (l2(adv, x) >= lower).all()
    assert (l2(adv, x) <= 1.05 * lower).all()
    # starting from a c far too large, one binary step stops at a much longer perturbation;
    # the search then lowers c and shortens it
    crude = cw(clf, initial_const=100.0, binary_steps=1)
    adv_crude = crude(x)
    assert crude.success(adv_crude).all()
    searched = cw(clf, initial_const=100.0, binary_steps=5)(x)
    assert (l2(searched, x) < 0.8 * l2(adv_crude, x)).all()


def test_more_binary_steps_never_lengthen_the_perturbation(clf):
    # every binary step restarts from x with a new c; the smallest success over all of them is
    # kept, so the L2 cannot grow with the number of binary steps
    x = not_target(8)
    lengths = [l2(cw(clf, initial_const=1.0, binary_steps=k)(x), x) for k in range(1, 6)]
    for shorter, longer in zip(lengths[1:], lengths[:-1], strict=True):
        assert (shorter <= longer).all()


def test_batch_is_items_one_by_one(clf):
    x = not_target(6)
    attack = cw(clf, steps=60, binary_steps=3, lr=0.02)
    together = attack(x)
    alone = torch.cat([attack(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(attack.success(together), attack.success(alone))
    torch.testing.assert_close(l2(together, x), l2(alone, x), atol=2 / 255, rtol=0)


def test_without_the_early_stop_the_perturbation_is_no_longer(clf):
    # the default keeps every step of every binary step as a candidate; the early stop freezes an
    # image once its loss stalls, so it can only miss shorter successes (success is judged on the
    # returned, 8-bit-rounded image)
    x = not_target(8)
    default = cw(clf, steps=200, lr=0.01, initial_const=1.0, binary_steps=3)
    stopped = cw(clf, steps=200, lr=0.01, initial_const=1.0, binary_steps=3, abort_early=True)
    assert not CWConfig().abort_early
    adv, adv_stopped = default(x), stopped(x)
    ok, ok_stopped = default.success(adv), stopped.success(adv_stopped)
    assert ok.all() and ok_stopped.all()
    assert torch.equal(adv * 255, torch.round(adv * 255))
    assert (l2(adv, x) <= l2(adv_stopped, x) + 1e-6).all()
    assert l2(adv, x).sum() < l2(adv_stopped, x).sum()


def test_config_bounds():
    assert CWConfig().steps == 1000 and CWConfig().eps is None
    assert CWConfig(eps=8).eps == 8.0
    for bad in ({"steps": 0}, {"binary_steps": 0}, {"lr": -1}, {"eps": 300}, {"target": -1}):
        with pytest.raises(SettingError, match=r"^CWConfig\."):
            CWConfig(**bad)
