"""Ensemble transfer attacks (``source: a+b``): INSA and EXPA crafted against several models at
once, the mean of the sources' scaled objectives (Liu et al., ICLR 2017). The attacks run on a
user's tiny ranker in this process; the sweep-level checks parse tiny sweeps and, for one, run
the ensemble trial as the sweep schedules it (no Ray)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from aipray.attacks.base import AttackInputs
from aipray.attacks.ensemble import Ensemble, ensemble_objective
from aipray.attacks.expa import EXPA, EXPAConfig
from aipray.attacks.insa import INSA, INSAConfig
from aipray.config import ConfigError, parse_sweep
from aipray.pipeline import stages
from aipray.protocol import run
from aipray.sweep import trial_params, trial_plans
from tests.rankers import PooledRanker

USERS = 40


def _ranker(seed: int) -> PooledRanker:
    torch.manual_seed(seed)
    return PooledRanker(USERS, dim=6).eval()


class LoudFeatures(PooledRanker):
    """A ranker whose features are 1000 times another's: the same EXPA, another scale."""

    def feature_network(self, images):
        return 1000.0 * F.adaptive_avg_pool2d(images, 4).flatten(1)


def _images(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 16, 16, generator=gen)
    return images, torch.rand(3, 16, 16, generator=gen)  # the items and the hook


INSA_CFG = INSAConfig(eps=16, epochs=2, user_batch=16)
EXPA_CFG = EXPAConfig(eps=16, steps=20)


@pytest.mark.parametrize(("cls", "config"), [(INSA, INSA_CFG), (EXPA, EXPA_CFG)])
def test_an_ensemble_of_one_model_is_that_models_attack_bit_for_bit(cls, config):
    images, hook = _images()
    inputs = AttackInputs(hook_image=hook)
    model = _ranker(0)
    alone = cls(config, model, inputs)(images)
    assert torch.equal(cls(config, Ensemble([model]), inputs)(images), alone)
    assert not torch.equal(alone, images)  # it did attack


def test_an_insa_ensemble_maximises_the_mean_of_its_sources_scaled_preferences():
    images, hook = _images()
    a, b = _ranker(1), _ranker(2)
    attack = INSA(INSA_CFG, Ensemble([a, b]), AttackInputs(hook_image=hook))
    batches = attack.user_batches(torch.device("cpu"))
    objective = attack.objective(batches, torch.device("cpu"))

    def scale(model):  # the norm of the preference's gradient at the hook, first users
        x = hook.unsqueeze(0).clone().requires_grad_(True)
        model.preference(batches[0], x).sum().backward()
        return x.grad.norm()

    x = images + 0.01
    for step in (0, 3):
        by_hand = (
            a.preference(batches[step], x) / scale(a) + b.preference(batches[step], x) / scale(b)
        ) / 2
        torch.testing.assert_close(objective(x, step), by_hand, rtol=1e-6, atol=0)
    # no source dominates by its units: a copy of a with 1000 times its scores weighs as a
    loud = copy.deepcopy(a)
    with torch.no_grad():
        loud.users.weight.mul_(1000)
    same = INSA(INSA_CFG, Ensemble([a, loud]), AttackInputs(hook_image=hook))
    torch.testing.assert_close(
        same.objective(batches, torch.device("cpu"))(x, 0),
        a.preference(batches[0], x) / scale(a),
        rtol=1e-5,
        atol=0,
    )


def test_an_expa_ensemble_minimises_the_mean_of_its_sources_relative_hook_distances():
    images, hook = _images()
    a, b = _ranker(1), LoudFeatures(USERS, dim=6).eval()
    objective = EXPA(EXPA_CFG, Ensemble([a, b]), AttackInputs(hook_image=hook)).objective(
        torch.device("cpu")
    )
    x = images + 0.01

    def relative(model):  # ‖Φ(x) − Φ(hook)‖ / ‖Φ(hook)‖
        target = model.feature_network(hook.unsqueeze(0))
        return (model.feature_network(x) - target).norm(dim=1) / target.norm()

    by_hand = -(relative(a) + relative(b)) / 2
    torch.testing.assert_close(objective(x, 0), by_hand, rtol=1e-6, atol=0)
    # the 1000-times features are the same pull as a's: their mean is a's alone
    torch.testing.assert_close(objective(x, 0), -relative(a), rtol=1e-5, atol=0)


def test_ensemble_objective_of_one_is_that_objective_and_needs_a_scale_each():
    def one(x, step):
        return x.flatten(1).sum(1)

    assert ensemble_objective([one], [7.0]) is one
    with pytest.raises(ValueError, match="2 objectives and 1 scales"):
        ensemble_objective([one, one], [1.0])
    with pytest.raises(ValueError, match="different users"):
        Ensemble([_ranker(0), PooledRanker(USERS + 1)])


# --- the sweep ------------------------------------------------------------------------------
POOLED = "tests.rankers:PooledRanker"
WORLD = {
    "examples": 0,
    "datasets": {"synthetic": {"n_users": 120, "n_items": 160, "n_cold": 8, "image_size": 16}},
    "first_stage": {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 1},
    "models": {"vbpr": {"dim": 8, "epochs": 3, "batch_size": 256}, "alexrank": {}, POOLED: {}},
    "resources": {"batch_size": 4},
}
INSA_RAW = {"eps": 16, "epochs": 2}


def _sweep(storage, source, target=None, attack="insa", **raw):
    """A sweep whose one grid attacks ``target`` (alexrank) from ``source``."""
    grid = {
        "models": target or {"alexrank": {}},
        "attacks": {attack: {**INSA_RAW, "source": source}},
    }
    if attack == "expa":
        grid["attacks"] = {"expa": {"eps": 8, "steps": 5, "source": source}}
    raw = {**WORLD, "name": "ensemble", "storage": str(storage), "grids": [grid], **raw}
    return parse_sweep({**raw, "attacks": {"insa": INSA_RAW}})


def test_an_ensembles_key_and_images_do_not_depend_on_the_order_of_its_models(tmp_path):
    one = _sweep(tmp_path, f"vbpr+{POOLED}")
    other = _sweep(tmp_path, f" {POOLED} + vbpr(dim=8)")
    [a], [b] = one.trials(), other.trials()
    assert a.key() == b.key() and a == b  # the source is written in one canonical order
    assert stages.stage_paths(one, a) == stages.stage_paths(other, b)
    assert a.name == f"synthetic/alexrank/insa(from={POOLED}(dim=8)+vbpr(dim=8))/eps=16/none"
    assert trial_params(one, a)["source"] == f"{POOLED}(dim=8)+vbpr(dim=8)"
    # one axis value among others: an ensemble set of its own, beside each model's
    axis = _sweep(tmp_path, ["vbpr", f"vbpr+{POOLED}", f"{POOLED}+vbpr", POOLED])
    sets = {stages.stage_paths(axis, t).attack for t in axis.trials()}
    assert len(axis.trials()) == 3 and len(sets) == 3
    paths = stages.stage_paths(one, a)
    members = [p.name.split("-")[0] for p in paths.ensemble]
    assert paths.source is None and members == ["tests.rankers.PooledRanker", "vbpr"]


@pytest.mark.parametrize(
    ("source", "target", "attack", "message"),
    [
        (
            "vbpr+dvbpr",
            None,
            "insa",
            "attacks.insa.source: 'vbpr+dvbpr' is not allowed; 'dvbpr' is none of the sweep's "
            "models; expected models of its models section joined by +: alexrank, vbpr(dim=8), "
            f"{POOLED}(dim=8)",
        ),
        (
            "vbpr+vbpr(dim=8)",
            None,
            "insa",
            "attacks.insa.source: 'vbpr+vbpr(dim=8)' is not allowed; it names vbpr(dim=8) twice",
        ),
        ("vbpr+", None, "insa", "attacks.insa.source: 'vbpr+' is not allowed; expected model"),
        (
            f"vbpr+{POOLED}",
            {"vbpr": {"dim": 8, "epochs": 3, "batch_size": 256}},
            "insa",
            f"attacks.insa.source: 'vbpr+{POOLED}' is not allowed on model vbpr(dim=8), which is "
            "one of its members; expected an ensemble of models other than the evaluated one",
        ),
        (
            "vbpr+alexrank",
            {POOLED: {}},
            "expa",
            "attacks.expa.source: 'vbpr+alexrank' is not allowed; vbpr(dim=8) and alexrank "
            "share the extractor's features: an ensemble names each once",
        ),
        (
            f"vbpr+{POOLED}",
            None,
            "expa",
            f"attacks.expa.source: 'vbpr+{POOLED}' is not allowed on model alexrank, whose "
            "extractor's features are one of its members",
        ),
    ],
)
def test_a_bad_ensemble_is_one_line_naming_key_value_and_what_is_allowed(
    tmp_path, source, target, attack, message
):
    with pytest.raises(ConfigError) as err:
        _sweep(tmp_path, source, target, attack)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_ensemble_trial_trains_its_sources_and_crafts_one_set_against_both(tmp_path, one_thread):
    sweep = _sweep(tmp_path, f"vbpr+{POOLED}")
    [trial] = sweep.trials()
    waves = stages.stage_waves(sweep, [trial])
    trained = sorted(
        p.model.name.split("-")[0] for w in waves for kind, _, p in w if kind == "ranker"
    )
    assert trained == ["alexrank", "tests.rankers.PooledRanker", "vbpr"]
    for wave in waves:
        for kind, t, paths in wave:
            stages.compute_stage(kind, sweep, t, paths, stages.pick_device(0))
    [plan] = trial_plans(sweep, [trial])
    metrics = run(plan)
    assert "attack_seconds_per_item" in metrics and metrics["linf_255_max"] <= 16
    provenance = json.loads((plan.paths.attack / "provenance.json").read_text())
    assert provenance["model"] == "+".join(p.name for p in plan.paths.ensemble)
    assert plan.params["source"] == f"{POOLED}(dim=8)+vbpr(dim=8)"
    assert plan.params["attack.source"] == f"{POOLED}(dim=8)+vbpr(dim=8)"
