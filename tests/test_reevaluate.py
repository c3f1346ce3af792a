"""A stored image set re-evaluated with the ``provided`` attack, in this process (no Ray): the
trial that made it and every trial that re-evaluates it, under the same or another defence, give
the same numbers, with no attack run and no stage rebuilt."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from aipray.attacks.sema import STORED_SET
from aipray.config import ConfigError, parse_sweep
from aipray.pipeline import stages
from aipray.protocol import PROTOCOLS, run
from aipray.reevaluate import reevaluation
from aipray.store import file_sha256
from aipray.sweep import trial_plans

WORLD = {
    "examples": 2,
    "datasets": {"synthetic": {"n_users": 120, "n_items": 160, "n_cold": 10, "image_size": 16}},
    "first_stage": {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 1},
    "models": {"vbpr": {"dim": 8, "epochs": 3, "batch_size": 256}},
    "defenses": {"none": {}, "bitdepth": {"bits": 3}},
    "resources": {"batch_size": 4},
}
#: what an attack run, or not, may change between two trials of the same images
TIMING = ("attack_seconds_per_item", "attack_seconds_mean")


def _run_all(raw: dict, storage) -> dict[str, tuple[object, dict[str, float]]]:
    """Each trial of the sweep, its stages computed and the trial run in this process: the
    defence's name → (plan, metrics)."""
    sweep = parse_sweep({**raw, "storage": str(storage)})
    trials = sweep.trials()
    protocol = PROTOCOLS.get(sweep.protocol)()
    for trial in trials:
        paths = stages.stage_paths(sweep, trial)
        for wave in protocol.stages:
            for kind in wave:
                if kind != "extractor" or protocol.uses_extractor(trial):
                    stages.compute_stage(kind, sweep, trial, paths, stages.pick_device(0))
    return {plan.defense.name: (plan, run(plan)) for plan in trial_plans(sweep, trials)}


def _rows(plan) -> pd.DataFrame:
    rows = pd.read_parquet(plan.paths.result / "items.parquet")
    return rows.drop(columns=["attack_seconds"]).sort_values("item_id", ignore_index=True)


def test_a_stored_image_set_reevaluates_to_the_same_numbers(tmp_path, one_thread):
    store = tmp_path / "store"
    made = _run_all(
        {**WORLD, "name": "made", "attacks": {"insa": {"eps": [16], "epochs": 2}}}, store
    )
    plan, metrics = made["none"]
    images = plan.paths.attack
    # the oblivious INSA images serve both defences: one stored set, with its provenance
    assert made["bitdepth"][0].paths.attack == images
    assert sorted(p.name for p in (store / "attacks").iterdir()) == [images.name]
    provenance = json.loads((images / "provenance.json").read_text())
    assert provenance["sha256"] == file_sha256(images / STORED_SET)
    assert provenance["items"] == metrics["n_items"] == 10
    assert (provenance["attack"], provenance["eps"], provenance["seed"]) == ("insa", 16, 0)
    assert provenance["model"] == plan.paths.model.name and provenance["defense"] is None
    assert provenance["key"] == images.name and provenance["code"]["aipray"]
    models = sorted(p.name for p in (store / "models").iterdir())

    again = _run_all(
        {**WORLD, "name": "again", "attacks": {"provided": {"path": str(images)}}}, store
    )
    assert sorted(p.name for p in (store / "models").iterdir()) == models  # nothing retrained
    for defense, (plan_again, metrics_again) in again.items():
        plan_made, metrics_made = made[defense]
        assert plan_again.paths.context == plan_made.paths.context
        assert plan_again.paths.result != plan_made.paths.result  # a trial of its own
        same = {k: v for k, v in metrics_made.items() if k not in TIMING}
        assert {k: v for k, v in metrics_again.items() if k not in TIMING} == same
        pd.testing.assert_frame_equal(_rows(plan_again), _rows(plan_made))
    # under the defence its numbers are the defended ones, not the undefended ones
    assert again["bitdepth"][1]["adversarial/hr_at_5"] == made["bitdepth"][1]["adversarial/hr_at_5"]
    # a changed image set is other images: another attack key, so nothing stored is reused
    pd.read_parquet(images / STORED_SET).iloc[:1].to_parquet(images / STORED_SET, index=False)
    raw = {**WORLD, "name": "again", "attacks": {"provided": {"path": str(images)}}}
    sweep = parse_sweep({**raw, "storage": str(store)})
    assert stages.stage_paths(sweep, sweep.trials()[0]).attack != again["none"][0].paths.attack


def test_the_reevaluate_command_builds_a_provided_sweep_on_the_sets_dataset(tmp_path, one_thread):
    store = tmp_path / "store"
    made = _run_all(
        {**WORLD, "name": "made", "attacks": {"insa": {"eps": [16], "epochs": 2}}}, store
    )
    images = made["none"][0].paths.attack
    sweep = parse_sweep(
        {**WORLD, "name": "made", "storage": str(store), "attacks": {"expa": {"eps": 8}}}
    )
    again = reevaluation(sweep, images, defenses=["bitdepth"])
    assert again.name == f"made-reeval-{images.name}"
    [trial] = again.trials()
    assert (trial.attack.name, trial.defense.name) == ("provided", "bitdepth")
    assert trial.attack.config.path == str(images)
    [plan] = trial_plans(again, [trial])
    for wave in stages.stage_waves(again, [trial]):
        for kind, t, paths in wave:
            stages.compute_stage(kind, again, t, paths, stages.pick_device(0))
    metrics = run(plan)
    same = {k: v for k, v in made["bitdepth"][1].items() if k not in TIMING}
    assert {k: v for k, v in metrics.items() if k not in TIMING} == same

    # what it refuses, each in one line naming what is allowed
    with pytest.raises(ConfigError, match=r"has no adv\.parquet and no provenance\.json"):
        reevaluation(sweep, tmp_path)
    with pytest.raises(ConfigError, match=r"--models: 'dvbpr' is not allowed; .*: vbpr"):
        reevaluation(sweep, images, models=["dvbpr"])
    other = {**WORLD["datasets"]["synthetic"], "n_users": 100}
    elsewhere = parse_sweep(
        {**WORLD, "name": "x", "attacks": {"expa": {}}, "datasets": {"synthetic": other}}
    )
    with pytest.raises(ConfigError, match=r"image set: dataset 'synthetic-\w+' is not allowed"):
        reevaluation(elsewhere, images)
