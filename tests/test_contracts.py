"""Every registered model, attack and defence through the same contract tests, parametrised over
the registries: a newly registered one is tested without editing this file (the last test
proves it with a model registered only by a pytest plugin)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aipray.attacks import ATTACKS, AttackResult
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.defenses import DEFENSES, GRADIENTS, make_defense
from aipray.models import MODELS, load_recommender
from aipray.models.extractor import build_extractor, make_spec
from aipray.pixels import to_float
from aipray.protocol import aip

#: settings that keep any registered class tiny and fast, applied where its Config has the field
SMALL = {
    "epochs": 2,
    "batch_size": 256,
    "dim": 4,
    "factors": 8,
    "width": 0.05,
    "steps": 3,
    "binary_steps": 2,
    "user_batch": 32,
    "eps": 8,
}


def small(cls, **more):
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return {k: v for k, v in {**SMALL, **more}.items() if k in fields}


@pytest.fixture(scope="module")
def world():
    """A tiny catalog and a tiny extractor (8 classes) for every contract."""
    catalog = make_synthetic(
        SyntheticConfig(n_users=60, n_items=90, n_cold=6, image_size=16, seed=1)
    )
    spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
    torch.manual_seed(0)
    return catalog, build_extractor(spec).eval().requires_grad_(False)


_TRAINED: dict[str, object] = {}


def trained(name, world):
    """The registered model ``name`` trained by its own recipe with :data:`SMALL` settings."""
    if name not in _TRAINED:
        catalog, extractor = world
        cls = MODELS.get(name)
        config = cls.Config(**small(cls))
        ext = extractor if cls.uses_extractor else None
        model, training = cls.fit(config, catalog, extractor=ext, device="cpu", seed=0)
        assert isinstance(model, cls) and (training is None or isinstance(training, dict))
        _TRAINED[name] = model.eval().requires_grad_(False)
    return _TRAINED[name]


def cold_images(catalog, n=4):
    ids = catalog.cold_items[:n]
    return to_float(catalog.images[ids]), torch.as_tensor(ids)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name, world, tmp_path):
    """Trains by its recipe; scores candidate lists as its codes do; a checkpoint rebuilds it
    from the constructor arguments it recorded; a visual model scores images differentiably and
    INSA's objective reaches the pixels."""
    catalog, _ = world
    model = trained(name, world)
    users = torch.arange(min(10, model.n_users))
    items = torch.as_tensor(np.flatnonzero(catalog.warm_mask())[:12])
    images = to_float(catalog.images[items.numpy()])
    codes = model.encode_items(images if model.visual else None, items)
    index = torch.randint(
        0, len(items), (len(users), 5), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(
        model.score_candidates(users, codes, index),
        model.score_codes(users, codes).gather(1, index),
    )
    model.save(tmp_path / "ckpt")
    again = load_recommender(tmp_path / "ckpt")
    assert type(again) is type(model)
    torch.testing.assert_close(
        again.score_codes(users, again.encode_items(images if model.visual else None, items)),
        model.score_codes(users, codes),
    )
    if not model.visual:
        return
    x, _ = cold_images(catalog)
    assert model.score_images(users, x).shape == (len(users), len(x))
    x = x.clone().requires_grad_(True)
    value = model.preference(users, x)
    assert value.shape == (len(x),)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def attack_for(name, world, tmp_path):
    """A registered attack with :data:`SMALL` settings against a ranker it can run on."""
    catalog, extractor = world
    cls = ATTACKS.get(name)
    ranker = next(
        trained(m, world)
        for m in MODELS.names()
        if MODELS.get(m).visual and cls.missing(MODELS.get(m)) is None
    )
    settings = small(cls)
    if "path" in {f.name for f in dataclasses.fields(cls.Config)}:  # images made elsewhere
        for item in catalog.cold_items:
            arr = np.asarray(catalog.images[item]).transpose(1, 2, 0)
            Image.fromarray(255 - arr).save(tmp_path / f"{item}.png")
        settings["path"] = str(tmp_path)
    return aip.attack(name, ranker, catalog, classifier=extractor, target_class=1, **settings)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, world, tmp_path):
    """``run`` declares what the attack produced: images on the 8-bit grid in [0, 1] within ε,
    the inputs untouched, steps per image or none, and success per image or none."""
    catalog, _ = world
    attack = attack_for(name, world, tmp_path)
    x, ids = cold_images(catalog)
    before = x.clone()
    result = attack.run(x, ids)
    assert isinstance(result, AttackResult)
    adv = result.images
    assert torch.equal(x, before) and adv.shape == x.shape
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(adv * 255, torch.round(adv * 255)), "not on the 8-bit grid"
    eps = getattr(attack.config, "eps", None)
    if eps is not None:
        assert (torch.round(adv * 255) - torch.round(x * 255)).abs().max() <= eps
    assert result.steps is None or np.asarray(result.steps).shape == (len(x),)
    success = attack.success(adv)
    assert success is None or (success.dtype == torch.bool and success.shape == (len(x),))
    assert (success is not None) == (attack.target is not None)
    assert torch.equal(attack(x, ids), adv)  # __call__ is run's images (deterministic)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, world, tmp_path):
    """Images in, images of the same shape in [0, 1] out, the same for the same image every
    time; the identity changes nothing. It declares how an attacker differentiates through it,
    and its attackable form has that gradient: its own (``exact``: finite, reaching the
    pixels) or the identity's (``bpda``), with a deterministic defence's forward unchanged. A
    defence with weights is built by its recipe against a trained ranker and stored and loaded
    as the sweep's stage does (:func:`make_defense`). A screen (the detector) also scores and
    rejects uploads."""
    catalog, _ = world
    cls = DEFENSES.get(name)
    if cls.trained:
        config = cls.Config(**small(cls, width=4, train_items=8, batch_size=8))
        ranker = trained(next(m for m in MODELS.names() if MODELS.get(m).visual), world)
        built = cls.fit(config, catalog, ranker, device="cpu", seed=0)
        built.save(tmp_path)
        defense = make_defense(name, config, tmp_path)
        x, _ = cold_images(catalog)
        assert torch.equal(defense(x), built(x))
    else:
        defense = make_defense(name, cls.Config())
    x, _ = cold_images(catalog)
    out = defense(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(defense(x), out)
    assert torch.equal(defense(x[1:]), out[1:])  # an image is served alike in any batch
    if cls.identity:
        assert torch.equal(out, x)
    assert cls.gradient in GRADIENTS
    y = x.clone().requires_grad_(True)
    seen = defense.attackable(y, torch.Generator().manual_seed(0))
    assert seen.shape == x.shape and seen.min() >= 0 and seen.max() <= 1
    if not cls.randomised:
        assert torch.equal(seen.detach(), out)
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((seen * weights).sum(), y)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    if cls.gradient == "bpda":
        assert torch.equal(grad, weights)
    # a screen scores each upload alike in any batch, rejects by that score, and an attacker
    # can differentiate what passing it costs; any other defence rejects nothing
    rejected = defense.rejects(x)
    assert rejected.dtype == torch.bool and rejected.shape == (len(x),)
    assert torch.equal(defense.rejects(x[1:]), rejected[1:])
    if not cls.screens:
        assert not rejected.any() and torch.equal(defense.evasion(x), torch.zeros(len(x)))
        return
    with torch.no_grad():
        scores = defense.detect(x)
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    assert torch.allclose(defense.detect(x[1:]), scores[1:], atol=1e-5)
    assert torch.equal(rejected, scores >= defense.threshold)
    y = x.clone().requires_grad_(True)
    cost = defense.evasion(y)
    assert cost.shape == (len(x),) and (cost >= 0).all()
    (grad,) = torch.autograd.grad(defense.detect(y).sum(), y)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


PLUGIN = '''
import aipray
from tests.rankers import PooledRanker


@aipray.MODELS.register("pooled_in_a_test")
class Pooled(PooledRanker):
    """A model declared only here, registered when pytest loads this plugin."""
'''


def test_a_newly_registered_model_is_picked_up(tmp_path):
    """A model registered by a plugin the contract tests know nothing of goes through them."""
    (tmp_path / "new_model_plugin.py").write_text(PLUGIN)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "new_model_plugin", "-k", "pooled"]
    done = subprocess.run(
        [*command, "-p", "no:cacheprovider", "tests/test_contracts.py"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
