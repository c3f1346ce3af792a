import numpy as np
import pytest
import torch
from PIL import Image

from aipray.attacks import ATTACKS, AttackInputs, linf_ascent, quantize_within
from aipray.attacks.base import Plateau
from aipray.attacks.sema import compose
from aipray.models.alexrank import AlexRank
from aipray.models.amr import AMR
from aipray.models.dvbpr import DVBPR
from aipray.models.extractor import build_extractor, make_spec
from aipray.models.vbpr import VBPR

SPEC = make_spec("alexnet", 4, layout="aipray", input_size=None, image_size=16, width=0.05)


def tiny_extractor():
    torch.manual_seed(1)
    return build_extractor(SPEC).eval().requires_grad_(False)


def tiny_profiles():
    """Users' training items as CSR: 30 users with 1–4 of 50 items each."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5, size=30)
    items = np.concatenate([rng.choice(50, size=c, replace=False) for c in counts])
    return np.concatenate([[0], np.cumsum(counts)]), items


def tiny_models():
    torch.manual_seed(0)
    dvbpr = DVBPR(n_users=30, dim=8, image_size=16, width=0.1).eval().requires_grad_(False)
    ext = tiny_extractor()
    out = {"dvbpr": dvbpr}
    for name, cls in (("vbpr", VBPR), ("amr", AMR)):
        m = cls.on(ext, n_users=30, n_items=50, dim=8).eval().requires_grad_(False)
        torch.nn.init.normal_(m.E.weight, std=0.5)
        torch.nn.init.normal_(m.theta_user.weight, std=0.5)
        out[name] = m
    indptr, items = tiny_profiles()
    catalog_images = (images(50, seed=5) * 255).to(torch.uint8).numpy()
    out["alexrank"] = AlexRank.from_profiles(indptr, items, 50, ext, catalog_images).eval()
    return out


MODELS = ["dvbpr", "vbpr", "amr", "alexrank"]


def images(n=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def make(name, model, eps, **kw):
    cls = ATTACKS.get(name)
    inputs = AttackInputs(hook_image=images(1, seed=9)[0])
    return cls(cls.Config(eps=eps, **kw), model, inputs)


SETTINGS = {
    "insa": {"epochs": 2, "user_batch": 16, "lr": 0.05},
    "expa": {"steps": 15, "lr": 0.05},
    "fgsm": {},
    "pgd": {"steps": 5},
}


def make_classifier_attack(name, eps, **kw):
    cls = ATTACKS.get(name)
    inputs = AttackInputs(classifier=tiny_extractor(), target_class=2)
    return cls(cls.Config(eps=eps, **kw), None, inputs)


@pytest.mark.parametrize(
    ("attack", "model"),
    [(a, m) for a in ("insa", "expa") for m in MODELS] + [("fgsm", None), ("pgd", None)],
)
@pytest.mark.parametrize("eps", [1, 4, 32])
def test_bound_after_rounding_and_inputs_unchanged(attack, model, eps):
    x = images()
    before = x.clone()
    if model is None:
        adv = make_classifier_attack(attack, eps, **SETTINGS[attack])(x)
    else:
        adv = make(attack, tiny_models()[model], eps, **SETTINGS[attack])(x)
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


@pytest.mark.parametrize("model", MODELS)
def test_insa_objective_improves(model):
    m = tiny_models()[model]
    x = images()
    users = torch.arange(m.n_users)
    adv = make("insa", m, 16, epochs=3, user_batch=30, lr=0.05)(x)
    assert (m.preference(users, adv) > m.preference(users, x)).all()


@pytest.mark.parametrize("cls", [VBPR, AMR])
@pytest.mark.parametrize("visual_bias", [False, True])
def test_insa_vbpr_objective_is_eq6(cls, visual_bias):
    torch.manual_seed(0)
    m = cls.on(tiny_extractor(), n_users=30, n_items=50, dim=8, visual_bias=visual_bias).eval()
    torch.nn.init.normal_(m.E.weight, std=0.5)
    torch.nn.init.normal_(m.theta_user.weight, std=0.5)
    if visual_bias:
        torch.nn.init.normal_(m.beta_visual.weight, std=0.5)
    else:
        assert m.beta_visual is None  # AIP's eq. 2 has no visual bias
    x = images(3)
    users = torch.tensor([0, 2, 5, 7, 11])
    f = m.extractor.features(x)
    per_user = torch.stack([(m.theta_user.weight[u] * m.E(f)).sum(1) for u in users]).sum(0)
    if visual_bias:
        per_user = per_user + len(users) * m.beta_visual(f)[:, 0]
    torch.testing.assert_close(m.preference(users, x), per_user, rtol=1e-4, atol=1e-4)
    # = the users' summed scores of the cold item (the interface's default objective)
    total = m.score_images(users, x).sum(0)
    torch.testing.assert_close(m.preference(users, x), total, rtol=1e-4, atol=1e-4)


def test_insa_dvbpr_objective_is_log_of_eq6():
    m = tiny_models()["dvbpr"]
    x = images(3)
    users = torch.arange(m.n_users)
    direct = torch.exp(m.theta.weight @ m.cnn(x).T).sum(0)
    torch.testing.assert_close(m.preference(users, x), torch.log(direct))


@pytest.mark.parametrize("model", MODELS)
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


def test_plateau_stops_each_image_when_its_objective_stops_rising():
    """Maximising the pixel sum with signed steps of 1/255: an all-white image cannot rise and
    stops after ``patience`` steps; a grey one rises for 8 steps (ε = 8), then stops ``patience``
    steps later. Each image stops as it would alone, and keeps its δ."""
    x = torch.stack([torch.ones(3, 4, 4), torch.full((3, 4, 4), 128 / 255)])

    def objective(xa, step):
        return xa.flatten(1).sum(1)

    def run(batch, patience):
        used = torch.zeros(batch.shape[0], dtype=torch.long)
        plateau = Plateau(patience=patience, tol=1e-3)
        adv = linf_ascent(
            batch,
            objective,
            eps=8,
            steps=50,
            lr=1 / 255,
            method="sign",
            plateau=plateau,
            steps_taken=used,
        )
        return adv, used

    adv, used = run(x, patience=3)
    assert used.tolist() == [3, 8 + 3]
    torch.testing.assert_close(adv, torch.stack([x[0], x[1] + 8 / 255]))
    for i in range(2):
        alone, used_alone = run(x[i : i + 1], patience=3)
        assert torch.equal(alone[0], adv[i]) and used_alone.item() == used[i].item()
    # without a plateau every image gets every step
    used = torch.zeros(2, dtype=torch.long)
    linf_ascent(x, objective, eps=8, steps=50, lr=1 / 255, method="sign", steps_taken=used)
    assert used.tolist() == [50, 50]


def test_expa_early_stop_keeps_the_bound_and_reports_steps():
    m = tiny_models()["dvbpr"]
    x = images(4)
    full = make("expa", m, 16, steps=40, lr=0.02).run(x)
    adv_full = full.images
    assert full.steps.tolist() == [40] * 4
    # a window longer than the run never stops: the same images as AIP's fixed steps
    assert torch.equal(make("expa", m, 16, steps=40, lr=0.02, patience=40)(x), adv_full)
    early = make("expa", m, 16, steps=400, lr=0.02, patience=5, tol=0.01).run(x)
    adv = early.images
    assert (early.steps < 400).all() and (early.steps >= 5).all()
    assert ((adv - x).abs().amax() * 255).item() <= 16 + 1e-4
    assert torch.equal(x, images(4))  # input untouched


def test_insa_alexrank_objective_is_the_per_user_formula():
    # Σ_u mean_{j∈I_u} −‖Φ(X) − Φ(X_j)‖ computed user by user, against the weighted form
    m = tiny_models()["alexrank"]
    x = images(3)
    indptr, items = tiny_profiles()
    catalog_images = images(50, seed=5)
    feats = m.extractor.features(torch.round(catalog_images * 255) / 255)
    fx = m.extractor.features(x)
    users = torch.tensor([0, 3, 4, 17, 29])
    expected = torch.zeros(3)
    for u in users.tolist():
        mine = torch.as_tensor(items[indptr[u] : indptr[u + 1]])
        expected += -(fx[:, None, :] - feats[mine][None]).norm(dim=2).mean(1)
    torch.testing.assert_close(m.preference(users, x), expected, rtol=1e-4, atol=1e-3)
    # and the ranker's own scores agree: the objective is the sum of the users' scores
    torch.testing.assert_close(m.score_images(users, x).sum(0), expected, rtol=1e-4, atol=1e-3)


def test_insa_alexrank_one_forward_backward_per_step():
    m = tiny_models()["alexrank"]
    calls = {"n": 0}
    features = m.extractor.features

    def counting(x):
        calls["n"] += 1
        return features(x)

    m.extractor.features = counting
    make("insa", m, 8, epochs=2, user_batch=10, lr=0.01)(images(4))
    assert calls["n"] == 2 * 3  # 30 users in batches of 10, two epochs: one forward per step


def test_alexrank_candidate_scores_match_score_codes():
    m = tiny_models()["alexrank"]
    codes = m.extractor.features(images(7, seed=3))
    users = torch.tensor([1, 2, 5])
    index = torch.tensor([[0, 3, 6], [2, 2, 1], [5, 4, 0]])
    full = m.score_codes(users, codes)
    torch.testing.assert_close(m.score_candidates(users, codes, index), full.gather(1, index))


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_classifier_attacks_raise_target_probability(name):
    x = images(6)
    attack = make_classifier_attack(name, 16, **SETTINGS[name])
    clf = attack.inputs.classifier
    adv = attack(x)
    p_before = clf(x).softmax(1)[:, 2]
    p_after = clf(adv).softmax(1)[:, 2]
    assert p_after.mean() > p_before.mean()
    assert attack.success(adv).dtype == torch.bool


def test_fgsm_is_one_signed_step():
    x = images(3)
    attack = make_classifier_attack("fgsm", 4)
    clf = attack.inputs.classifier
    xr = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(clf(xr), torch.full((3,), 2), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xr)
    expected = quantize_within((x - 4 / 255 * grad.sign()).clamp(0, 1), x, 4)
    torch.testing.assert_close(attack(x), expected)


def test_csema_pastes_hook_on_the_right_and_keeps_the_left():
    x = images(2, size=32)
    before = x.clone()
    hook = torch.zeros(3, 32, 32)
    hook[0] = 1.0  # a red hook item
    cls = ATTACKS.get("csema")
    adv = cls(cls.Config(scale=0.4, caption=""), None, AttackInputs(hook_image=hook))(x)
    assert torch.equal(x, before) and adv.shape == x.shape
    assert torch.equal(adv * 255, torch.round(adv * 255))
    assert torch.equal(adv[..., :16], torch.round(x[..., :16] * 255) / 255)  # left half intact
    inset = adv[:, :, 12:20, 20:30]
    assert (inset[:, 0] > 0.9).all() and (inset[:, 1:] < 0.1).all()  # the red hook, right side


def test_csema_caption_is_drawn():
    item = Image.new("RGB", (64, 64), "white")
    hook = Image.new("RGB", (64, 64), "blue")
    plain = np.asarray(compose(item, hook, 0.4, ""))
    captioned = np.asarray(compose(item, hook, 0.4, "match"))
    assert (plain != captioned).any()
    assert (plain[:, :30] == 255).all()  # nothing drawn on the left part


def test_provided_reads_images_for_some_items(tmp_path):
    x = images(3, size=8)
    mine = (torch.rand(3, 8, 8) * 255).to(torch.uint8)
    Image.fromarray(mine.permute(1, 2, 0).numpy()).save(tmp_path / "7.png")
    cls = ATTACKS.get("provided")
    config = cls.Config(path=str(tmp_path))
    assert cls.restrict(config, [3, 7, 9]) == [7]
    out = cls(config, None, AttackInputs())(x[:1], torch.tensor([7]))
    assert torch.equal(out[0], mine.float() / 255)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "9.png")
    with pytest.raises(ValueError, match=r"9\.png is 4x4"):
        cls(config, None, AttackInputs())(x[:1], torch.tensor([9]))


@pytest.mark.parametrize("model", ["vbpr", "alexrank"])
def test_insa_default_lr_reaches_the_eps_bound(model):
    # AIP's lr 1e-4 over a handful of batched steps would move pixels by < 1/255; the default
    # is raised so that the attack can use its whole budget, as AIP's one-step-per-user code did
    x = images(4)
    adv = make("insa", tiny_models()[model], 32, epochs=2, user_batch=10)(x)
    assert (torch.round(adv * 255) - torch.round(x * 255)).abs().max() == 32


def test_noise_control_is_bounded_per_item_and_leaves_inputs_alone():
    noise = ATTACKS.get("noise")
    attack = noise(noise.Config(eps=8, seed=3), None, AttackInputs())
    x = images(6, size=16, seed=2)
    x = torch.round(x * 255) / 255
    before = x.clone()
    ids = torch.arange(10, 16)
    out = attack(x, ids)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    assert torch.equal(torch.round(out * 255), out * 255)  # 8-bit grid
    delta = (out - x).abs() * 255
    assert delta.max() <= 8 + 1e-4
    # away from the [0, 1] edges every pixel moves by exactly eps
    inside = (x > 8 / 255) & (x < 1 - 8 / 255)
    torch.testing.assert_close(delta[inside], torch.full_like(delta[inside], 8.0))
    # an item's noise does not depend on its batch; another seed gives other noise
    torch.testing.assert_close(attack(x[2:4], ids[2:4]), out[2:4], rtol=0, atol=0)
    other = noise(noise.Config(eps=8, seed=4), None, AttackInputs())(x, ids)
    assert not torch.equal(other, out)
