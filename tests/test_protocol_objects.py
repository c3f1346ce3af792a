"""One protocol object per protocol, called the same way with and without Ray: an AIP trial and a
category-push trial run through :func:`aipray.protocol.run` in this process, then through the
sweep's Ray path (Ray Data actors, the finish as a Ray task), give the same per-item rows."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from aipray.config import parse_sweep
from aipray.pipeline import stages
from aipray.protocol import PROTOCOLS, Protocol, protocol_of, run
from aipray.sweep import trial_plans

WORLD = {
    "examples": 2,
    "datasets": {"synthetic": {"n_users": 120, "n_items": 160, "n_cold": 10, "image_size": 16}},
    "first_stage": {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 1},
    "models": {"vbpr": {"dim": 8, "epochs": 3, "batch_size": 256}},
    "resources": {"batch_size": 4, "actor_cpus": 0.5, "train_cpus": 0.5},
}
AIP = {**WORLD, "name": "objects-aip", "attacks": {"insa": {"eps": [16], "epochs": 4}}}
PUSH = {
    **WORLD,
    "name": "objects-push",
    "protocol": "perceptual",
    "perceptual": {"mode": "evasion"},
    "attacks": {"pgd": {"eps": [8], "steps": 3}},
}


def _plan(raw, tmp_path):
    """The sweep's one trial as a plan, its stages computed in this process."""
    sweep = parse_sweep({**raw, "storage": str(tmp_path / "store")})
    (trial,) = sweep.trials()
    paths = stages.stage_paths(sweep, trial)
    protocol = PROTOCOLS.get(sweep.protocol)()
    for wave in protocol.stages:
        for kind in wave:
            if kind != "extractor" or protocol.uses_extractor(trial):
                stages.compute_stage(kind, sweep, trial, paths, stages.pick_device(0))
    (plan,) = trial_plans(sweep, [trial])
    return plan


def _elsewhere(plan, folder):
    """The same plan with its attack and result stored under ``folder`` (nothing reused)."""
    paths = dataclasses.replace(plan.paths, attack=folder / "attack", result=folder / "result")
    return dataclasses.replace(plan, paths=paths)


def _rows(plan) -> pd.DataFrame:
    rows = pd.read_parquet(plan.paths.result / "items.parquet")
    return rows.drop(columns=["attack_seconds"]).sort_values("item_id", ignore_index=True)


def test_registered_protocols_are_protocol_objects():
    assert set(PROTOCOLS.names()) >= {"aip", "perceptual"}
    for name in PROTOCOLS.names():
        protocol = PROTOCOLS.get(name)()
        assert isinstance(protocol, Protocol) and protocol.stages and protocol.columns


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for both protocols' runs (a start and a stop cost about 4 s)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("raw", [AIP, PUSH], ids=["aip", "perceptual"])
def test_a_trial_gives_the_same_rows_without_ray_and_through_ray(
    raw, tmp_path, one_thread, local_ray
):
    from aipray.pipeline.trial import evaluate

    plan = _plan(raw, tmp_path)
    local = run(plan)
    assert (plan.paths.result / "examples.png").is_file()
    assert local["n_items"] > 0

    remote = _elsewhere(plan, tmp_path / "ray")
    through_ray = evaluate(remote)
    pd.testing.assert_frame_equal(_rows(plan), _rows(remote))
    timing = ("attack_seconds_per_item", "attack_seconds_mean")
    assert {k: v for k, v in local.items() if k not in timing} == pytest.approx(
        {k: v for k, v in through_ray.items() if k not in timing}, nan_ok=True
    )
    assert protocol_of(plan).name == raw.get("protocol", "aip")


def test_push_figure_rows_are_one_item_across_extractors(tmp_path):
    """Each extractor attacks the items it puts in the origin class: the figure's rows are the
    items most extractors attacked, each shown under every extractor that attacked it."""
    import numpy as np

    from aipray.report.perceptual import _shared_items, image_grid

    def examples(ids):
        k = len(ids)
        return {
            "item_ids": np.array(ids),
            "clean": np.zeros((k, 3, 8, 8), np.uint8),
            "adversarial": np.zeros((k, 3, 8, 8), np.uint8),
            "adv_class_name": np.array(["sneaker"] * k),
            "clean_class_name": np.array(["ring"] * k),
        }

    arrays = {"a": examples([51, 21, 9]), "b": examples([21, 7, 9])}
    held = {t: {int(i): (a, n) for n, i in enumerate(a["item_ids"])} for t, a in arrays.items()}
    assert _shared_items(held, 3) == [9, 21, 7]
    frame = pd.DataFrame(
        {
            "dataset": ["d", "d"],
            "attack": ["pgd", "pgd"],
            "eps": [8.0, 8.0],
            "extractor": ["standard", "adversarial"],
            "run_id": ["a", "b"],
        }
    )
    (tmp_path / "figures").mkdir()
    refs = image_grid(frame, lambda run_id, name: arrays[run_id], tmp_path, n=3)
    assert len(refs) == 1 and (tmp_path / refs[0].path).is_file()
