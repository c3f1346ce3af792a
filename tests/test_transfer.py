"""Transfer attacks (``source``): images crafted against one of the sweep's models, evaluated on
another from the stored image set, without re-attacking; run in this process (no Ray) on a tiny
world, with the stages scheduled as the sweep schedules them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from aipray.config import ConfigError, parse_sweep
from aipray.pipeline import stages
from aipray.protocol import run
from aipray.sweep import trial_params, trial_plans

WORLD = {
    "examples": 0,
    "datasets": {"synthetic": {"n_users": 120, "n_items": 160, "n_cold": 8, "image_size": 16}},
    "first_stage": {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 1},
    "models": {"vbpr": {"dim": 8, "epochs": 3, "batch_size": 256}, "alexrank": {}},
    "resources": {"batch_size": 4},
}
INSA = {"eps": 16, "epochs": 2}
#: what an attack run, or not, may change between two trials of the same images
TIMING = ("attack_seconds_per_item", "attack_seconds_mean")


def _sweep(storage, **raw):
    return parse_sweep({**WORLD, "name": "transfer", "storage": str(storage), **raw})


def _run(sweep) -> dict[str, tuple[object, dict[str, float]]]:
    """Every stage the sweep's trials stand on, wave by wave as the sweep schedules them, then
    each trial in this process: the trial's name → (plan, metrics)."""
    trials = sweep.trials()
    for wave in stages.stage_waves(sweep, trials):
        for kind, trial, paths in wave:
            stages.compute_stage(kind, sweep, trial, paths, stages.pick_device(0))
    return {plan.name: (plan, run(plan)) for plan in trial_plans(sweep, trials)}


def _rows(plan) -> pd.DataFrame:
    rows = pd.read_parquet(plan.paths.result / "items.parquet")
    return rows.drop(columns=["attack_seconds"]).sort_values("item_id", ignore_index=True)


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    """The same metrics but timing (NaN equal to NaN: AlexRank has no validation score)."""
    pd.testing.assert_series_equal(
        pd.Series({k: v for k, v in a.items() if k not in TIMING}).sort_index(),
        pd.Series({k: v for k, v in b.items() if k not in TIMING}).sort_index(),
        rtol=0,
        atol=0,
    )


def test_source_equal_to_the_target_is_the_direct_trial(tmp_path):
    direct = _sweep(tmp_path, attacks={"insa": INSA, "expa": {"eps": 8}})
    named = _sweep(
        tmp_path, attacks={"insa": {**INSA, "source": "vbpr"}, "expa": {"eps": 8, "source": "vbpr"}}
    )
    by_model = {t.model.name: t for t in named.trials() if t.attack.name == "insa"}
    assert by_model["vbpr"].source is None  # vbpr's own: the direct attack, its key unchanged
    assert stages.stage_paths(named, by_model["vbpr"]) == stages.stage_paths(
        direct, direct.trials()[0]
    )
    # on alexrank, INSA crafted on vbpr: vbpr's stored set, another trial
    on_alexrank = stages.stage_paths(named, by_model["alexrank"])
    on_vbpr = stages.stage_paths(named, by_model["vbpr"])
    assert on_alexrank.attack == on_vbpr.attack and on_alexrank.source == on_vbpr.model
    assert on_alexrank.result != on_vbpr.result
    assert trial_params(named, by_model["alexrank"])["source"] == "vbpr(dim=8)"
    assert trial_params(named, by_model["vbpr"])["source"] == "vbpr(dim=8)"
    # a list is an axis, and the source that is the evaluated model collapses into the direct
    axis = _sweep(tmp_path, attacks={"insa": {**INSA, "source": ["vbpr", "alexrank"]}})
    names = sorted(t.name for t in axis.trials())
    assert names == [
        "synthetic/alexrank/insa(from=vbpr(dim=8))/eps=16/none",
        "synthetic/alexrank/insa/eps=16/none",
        "synthetic/vbpr(dim=8)/insa(from=alexrank)/eps=16/none",
        "synthetic/vbpr(dim=8)/insa/eps=16/none",
    ]
    # EXPA knows the feature network: alexrank and vbpr share the extractor's, so EXPA on
    # alexrank crafted on vbpr is the direct EXPA on alexrank (one trial, one set), and its
    # source is the extractor's features
    expa = {t.model.name: t for t in named.trials() if t.attack.name == "expa"}
    assert expa["alexrank"].source is None and expa["alexrank"] in direct.trials()
    assert trial_params(named, expa["alexrank"])["source"] == "extractor"
    pgd = _sweep(tmp_path, attacks={"pgd": {"eps": 4}}).trials()[0]
    assert trial_params(named, pgd)["source"] == "classifier"


def test_a_transfer_trial_evaluates_the_source_trials_stored_images(tmp_path, one_thread):
    store = tmp_path / "store"
    # only the transfer trial: vbpr is trained for it although no trial evaluates on vbpr
    only = _sweep(
        store,
        grids=[{"models": {"alexrank": {}}, "attacks": {"insa": {**INSA, "source": "vbpr"}}}],
        attacks={"insa": INSA},
    )
    [trial] = only.trials()
    assert trial.source is not None and trial.source.name == "vbpr"
    waves = stages.stage_waves(only, [trial])
    trained = [p.model.name for w in waves for kind, _, p in w if kind == "ranker"]
    assert len(trained) == 2 and any(n.startswith("vbpr-") for n in trained)

    [(plan, transfer)] = _run(only).values()
    assert "attack_seconds_per_item" in transfer  # it crafted the images, against vbpr
    provenance = json.loads((plan.paths.attack / "provenance.json").read_text())
    assert provenance["model"] == plan.paths.source.name != plan.paths.model.name

    # the direct trial on vbpr finds those images stored: the same set, no second attack
    both = _sweep(store, models=WORLD["models"], attacks={"insa": {**INSA, "source": "vbpr"}})
    made = _run(both)
    [(direct_plan, direct)] = [v for k, v in made.items() if k.startswith("synthetic/vbpr")]
    [(again_plan, again)] = [v for k, v in made.items() if k.startswith("synthetic/alexrank")]
    _same(again, transfer)
    assert direct_plan.paths.attack == plan.paths.attack and "attack_seconds_per_item" not in direct
    assert again_plan.paths.result == plan.paths.result  # the finished transfer trial, reused
    assert len(list((store / "attacks").iterdir())) == 1

    # evaluating that set with the provided attack on alexrank gives the transfer's numbers
    provided = _sweep(
        store, models={"alexrank": {}}, attacks={"provided": {"path": str(plan.paths.attack)}}
    )
    [(p_plan, p_metrics)] = _run(provided).values()
    _same(p_metrics, transfer)
    pd.testing.assert_frame_equal(_rows(p_plan), _rows(plan))


@pytest.mark.parametrize(
    ("attacks", "message"),
    [
        (
            {"pgd": {"source": "vbpr"}},
            "attacks.pgd.source: 'vbpr' is not allowed; pgd crafts its images against the "
            "extractor's classifier",
        ),
        ({"csema": {"source": "vbpr"}}, "attacks.csema.source: 'vbpr' is not allowed"),
        (
            {"insa": {"source": "dvbpr"}},
            "attacks.insa.source: 'dvbpr' is not allowed; expected a model of the sweep's "
            "models section: vbpr(dim=8), alexrank",
        ),
        ({"insa": {"source": 3}}, "attacks.insa.source: 3 is not allowed; expected a string"),
    ],
)
def test_a_bad_source_is_one_line_naming_key_value_and_what_is_allowed(attacks, message):
    with pytest.raises(ConfigError) as err:
        parse_sweep({**WORLD, "name": "bad", "attacks": attacks})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_source_among_several_models_of_one_name_is_given_by_label():
    models = {"vbpr": {"dim": [8, 16], "epochs": 1}, "alexrank": {}}
    with pytest.raises(ConfigError, match=r"names 2 models \(vbpr\(dim=8\), vbpr\(dim=16\)\)"):
        parse_sweep(
            {**WORLD, "name": "x", "models": models, "attacks": {"insa": {"source": "vbpr"}}}
        )
    sweep = parse_sweep(
        {**WORLD, "name": "x", "models": models, "attacks": {"insa": {"source": "vbpr(dim=16)"}}}
    )
    sources = {t.model.label: t.source and t.source.label for t in sweep.trials()}
    assert sources == {
        "vbpr(dim=8)": "vbpr(dim=16)",
        "vbpr(dim=16)": None,
        "alexrank": "vbpr(dim=16)",
    }
