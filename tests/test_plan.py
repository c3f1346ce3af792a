"""A trial's plan: the store keys it carries are the ones earlier versions computed (stored
results are reused, not recomputed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aipray.config import parse_sweep
from aipray.pipeline.stages import stage_paths

#: a small sweep of each protocol; their trials' stage keys are pinned below
AIP = {
    "name": "keys",
    "storage": "/store",
    "examples": 2,
    "datasets": {"synthetic": {"n_users": 300, "n_items": 260, "n_cold": 24, "image_size": 16}},
    "first_stage": {"candidates": 30, "bpr": {"epochs": 5, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 2},
    "models": {"dvbpr": {"dim": 10, "epochs": 6}, "vbpr": {"dim": 10, "epochs": 5}},
    "attacks": {
        "insa": {"eps": [32], "epochs": 10},
        "expa": {"eps": [8], "steps": 10},
        "fgsm": {"eps": [4]},
    },
    "defenses": {"none": {}, "jpeg": {"quality": 75}},
}
PUSH = {
    "name": "keys-push",
    "protocol": "perceptual",
    "storage": "/store",
    "examples": 2,
    "datasets": {"synthetic": {"n_users": 300, "n_items": 260, "n_cold": 1, "image_size": 16}},
    "first_stage": {"bpr": {"epochs": 5, "batch_size": 512}},
    "extractor": {"width": 0.1, "epochs": 2, "training": ["standard", "free"]},
    "perceptual": {"mode": ["poisoning", "evasion"]},
    "lpips": {"net": "alex", "backbone": "random"},
    "models": {"vbpr": {"dim": 10, "epochs": 5}},
    "attacks": {"pgd": {"eps": [8], "steps": 5}},
}

# computed before the TrialPlan existed (commit f15560d), from the payload's paths
KNOWN = {
    "synthetic/vbpr(dim=10)/insa/eps=32/jpeg(quality=75)": {
        "attack": "attacks/insa-12d1e78336523935",
        "bpr": "models/bpr-9af9b8c910949c2f",
        "candidates": "candidates/bpr-fabe86c2683c01b5",
        "context": "contexts/vbpr-0b310b01a90ed95d",
        "context_undefended": "contexts/vbpr-f536bddd6877e3c3",
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "model": "models/vbpr-5a2ac6ac7d4130ec",
        "result": "trials/vbpr-32d0f912dbe061d0",
    },
    "synthetic/vbpr(dim=10)/fgsm/eps=4/none": {
        "attack": "attacks/fgsm-271d428e2014036a",
        "bpr": "models/bpr-9af9b8c910949c2f",
        "candidates": "candidates/bpr-fabe86c2683c01b5",
        "context": "contexts/vbpr-f536bddd6877e3c3",
        "context_undefended": "contexts/vbpr-f536bddd6877e3c3",
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "model": "models/vbpr-5a2ac6ac7d4130ec",
        "result": "trials/vbpr-958aade6126946e5",
    },
    "synthetic/dvbpr(dim=10)/expa/eps=8/none": {
        "attack": "attacks/expa-5dfbd0fd00862287",
        "bpr": "models/bpr-9af9b8c910949c2f",
        "candidates": "candidates/bpr-fabe86c2683c01b5",
        "context": "contexts/dvbpr-37d6b37ad8add234",
        "context_undefended": "contexts/dvbpr-37d6b37ad8add234",
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "model": "models/dvbpr-c2679a1a34948859",
        "result": "trials/dvbpr-a6e0ec6d98d3ba0a",
    },
    "synthetic/vbpr(dim=10)/standard/pgd/eps=8/poisoning": {
        "attack": "pushes/pgd-945ba5bbd6d934d7",
        "bpr": "models/bpr-c4f8d96a3e0c6cc3",
        "candidates": "contexts/unused-dee087673d3b6f61",
        "context": "contexts/unused-dee087673d3b6f61",
        "context_undefended": "contexts/unused-dee087673d3b6f61",
        "dataset": "datasets/synthetic-da498e904c6349f8",
        "extractor": "extractors/alexnet-774c45a9bdb8693f",
        "model": "models/vbpr-dee087673d3b6f61",
        "push": "pushes/classes-9122344d06ec94a9",
        "result": "trials/vbpr-18672625f55db839",
    },
    "synthetic/vbpr(dim=10)/free/pgd/eps=8/evasion": {
        "attack": "pushes/pgd-09c30e0881dc5404",
        "bpr": "models/bpr-c4f8d96a3e0c6cc3",
        "candidates": "contexts/unused-727a82557a6096cc",
        "context": "contexts/unused-727a82557a6096cc",
        "context_undefended": "contexts/unused-727a82557a6096cc",
        "dataset": "datasets/synthetic-da498e904c6349f8",
        "extractor": "extractors/alexnet-5d457c59f84dcda1",
        "model": "models/vbpr-727a82557a6096cc",
        "push": "pushes/classes-87ec8cf9e0bfdbd4",
        "result": "trials/vbpr-eac390e3fbd983cc",
    },
}


def _paths(raw):
    sweep = parse_sweep(raw)
    return {t.name: stage_paths(sweep, t) for t in sweep.trials()}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_stage_keys_are_those_stored_results_were_filed_under(name):
    paths = {**_paths(AIP), **_paths(PUSH)}[name]
    got = {k: str(Path(v).relative_to("/store")) for k, v in paths.as_dict().items()}
    assert got == KNOWN[name]
