import pytest
import torch

from aipray.attacks import ATTACKS, AttackInputs, linf_ascent, quantize_within
from aipray.attacks.insa import insa_objective
from aipray.models.dvbpr import DVBPR
from aipray.models.vbpr import VBPR


def tiny_models():
    torch.manual_seed(0)
    dvbpr = DVBPR(n_users=30, dim=8, image_size=16, width=0.1).eval().requires_grad_(False)
    ext = {"num_classes": 4, "image_size": 16, "width": 0.05}
    vbpr = VBPR(n_users=30, n_items=50, dim=8, extractor_args=ext).eval().requires_grad_(False)
    torch.nn.init.normal_(vbpr.E.weight, std=0.5)
    torch.nn.init.normal_(vbpr.theta_user.weight, std=0.5)
    return {"dvbpr": dvbpr, "vbpr": vbpr}


def images(n=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def make(name, model, eps, **kw):
    cls = ATTACKS.get(name)
    inputs = AttackInputs(hook_image=images(1, seed=9)[0])
    return cls(cls.Config(eps=eps, **kw), model, inputs)


SETTINGS = {"insa": {"epochs": 2, "user_batch": 16, "lr": 0.05}, "expa": {"steps": 15, "lr": 0.05}}


@pytest.mark.parametrize("attack", ["insa", "expa"])
@pytest.mark.parametrize("model", ["dvbpr", "vbpr"])
@pytest.mark.parametrize("eps", [1, 4, 32])
def test_bound_after_rounding_and_inputs_unchanged(attack, model, eps):
    m = tiny_models()[model]
    x = images()
    before = x.clone()
    adv = make(attack, m, eps, **SETTINGS[attack])(x)
    assert torch.equal(x, before)
    assert adv.shape == x.shape
    q = adv * 255
    assert torch.equal(q, torch.round(q)), "adversarial images must be on the 8-bit grid"
    assert adv.min() >= 0 and adv.max() <= 1
    assert (torch.round(adv * 255) - torch.round(x * 255)).abs().max() <= eps
    assert (adv != x).any()


def test_quantize_keeps_bound_for_off_grid_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=g)  # not on the 8-bit grid
    x_adv = (x + (torch.rand(4, 3, 8, 8, generator=g) - 0.5) * 0.2).clamp(0, 1)
    q = quantize_within(x_adv, x, eps=5)
    assert ((q - x).abs() * 255).max() <= 5 + 1e-4
    assert torch.equal(q * 255, torch.round(q * 255))


@pytest.mark.parametrize("model", ["dvbpr", "vbpr"])
def test_insa_objective_improves(model):
    m = tiny_models()[model]
    x = images()
    users = torch.arange(m.n_users)
    adv = make("insa", m, 16, epochs=3, user_batch=30, lr=0.05)(x)
    assert (insa_objective(m, users, adv) > insa_objective(m, users, x)).all()


def test_insa_vbpr_objective_is_eq6():
    m = tiny_models()["vbpr"]
    x = images(3)
    users = torch.arange(m.n_users)
    per_user = torch.stack(
        [(m.theta_user.weight[u] * m.E(m.extractor.features(x))).sum(1) for u in range(m.n_users)]
    ).sum(0)
    torch.testing.assert_close(insa_objective(m, users, x), per_user, rtol=1e-4, atol=1e-4)


def test_insa_dvbpr_objective_is_log_of_eq6():
    m = tiny_models()["dvbpr"]
    x = images(3)
    users = torch.arange(m.n_users)
    direct = torch.exp(m.theta.weight @ m.cnn(x).T).sum(0)
    torch.testing.assert_close(insa_objective(m, users, x), torch.log(direct))


@pytest.mark.parametrize("model", ["dvbpr", "vbpr"])
def test_expa_moves_towards_hook(model):
    m = tiny_models()[model]
    x = images()
    hook = images(1, seed=9)
    adv = make("expa", m, 32, steps=30, lr=0.05)(x)
    target = m.feature_network(hook)
    before = (m.feature_network(x) - target).norm(dim=1)
    after = (m.feature_network(adv) - target).norm(dim=1)
    assert (after < before).all()


def test_batch_equals_items_one_by_one():
    m = tiny_models()["dvbpr"]
    x = images(4)
    attack = make("expa", m, 8, steps=10, lr=0.02)
    together = attack(x)
    alone = torch.cat([attack(x[i : i + 1]) for i in range(4)])
    assert (together - alone).abs().max() <= 1 / 255 + 1e-6


def test_sign_method_is_pgd_and_zero_eps_is_identity():
    x = images(2)
    target = torch.zeros_like(x)

    def objective(xa, step):
        return -(xa - target).pow(2).flatten(1).sum(1)

    adv = linf_ascent(x, objective, eps=4, steps=10, lr=1 / 255, method="sign")
    expected = torch.clamp(torch.round(x * 255) - 4, min=0) / 255
    torch.testing.assert_close(adv, expected)
    assert torch.equal(linf_ascent(x, objective, eps=0, steps=5, lr=0.1), x)
