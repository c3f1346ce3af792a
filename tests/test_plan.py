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

# computed before the TrialPlan existed (commit f15560d), from the payload's paths; re-pinned for
# two intended changes, nothing else: the model, BPR and every key downstream of them when
# TRAINING_VERSION became 3 (validation over the full ranking), and the AIP contexts and results
# when CONTEXT_VERSION 2 joined their keys (contexts also store the full ranking's top scores)
KNOWN = {
    "synthetic/vbpr(dim=10)/insa/eps=32/jpeg(quality=75)": {
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "bpr": "models/bpr-e112c0f7f49e8c0e",
        "candidates": "candidates/bpr-49250ffa3e4d6896",
        "model": "models/vbpr-a24959d88c337d23",
        "context": "contexts/vbpr-9d80c16b80c2c9f7",
        "context_undefended": "contexts/vbpr-3af391935a8ecada",
        "attack": "attacks/insa-50111c3d582dd280",
        "result": "trials/vbpr-495a29b29296342f",
    },
    "synthetic/vbpr(dim=10)/fgsm/eps=4/none": {
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "bpr": "models/bpr-e112c0f7f49e8c0e",
        "candidates": "candidates/bpr-49250ffa3e4d6896",
        "model": "models/vbpr-a24959d88c337d23",
        "context": "contexts/vbpr-3af391935a8ecada",
        "context_undefended": "contexts/vbpr-3af391935a8ecada",
        "attack": "attacks/fgsm-271d428e2014036a",
        "result": "trials/vbpr-cb3be54fd03e09a6",
    },
    "synthetic/dvbpr(dim=10)/expa/eps=8/none": {
        "dataset": "datasets/synthetic-782c28a1c4c2ab35",
        "extractor": "extractors/alexnet-0f7825bd75f7625b",
        "bpr": "models/bpr-e112c0f7f49e8c0e",
        "candidates": "candidates/bpr-49250ffa3e4d6896",
        "model": "models/dvbpr-0edfd87fcdec2c88",
        "context": "contexts/dvbpr-a82376dc3aa72138",
        "context_undefended": "contexts/dvbpr-a82376dc3aa72138",
        "attack": "attacks/expa-422033073b97f2f6",
        "result": "trials/dvbpr-ae646a2dcacb9edc",
    },
    "synthetic/vbpr(dim=10)/standard/pgd/eps=8/poisoning": {
        "dataset": "datasets/synthetic-da498e904c6349f8",
        "extractor": "extractors/alexnet-774c45a9bdb8693f",
        "bpr": "models/bpr-d40e848d5db20fa0",
        "candidates": "contexts/unused-683466aa989c2af6",
        "model": "models/vbpr-683466aa989c2af6",
        "context": "contexts/unused-683466aa989c2af6",
        "context_undefended": "contexts/unused-683466aa989c2af6",
        "attack": "pushes/pgd-df5a8549dca2fb24",
        "result": "trials/vbpr-0c7953801831ceda",
        "push": "pushes/classes-2a9ea98aefe2078a",
    },
    "synthetic/vbpr(dim=10)/free/pgd/eps=8/evasion": {
        "dataset": "datasets/synthetic-da498e904c6349f8",
        "extractor": "extractors/alexnet-5d457c59f84dcda1",
        "bpr": "models/bpr-d40e848d5db20fa0",
        "candidates": "contexts/unused-4d6aa2b8c5100335",
        "model": "models/vbpr-4d6aa2b8c5100335",
        "context": "contexts/unused-4d6aa2b8c5100335",
        "context_undefended": "contexts/unused-4d6aa2b8c5100335",
        "attack": "pushes/pgd-54d04a890be73696",
        "result": "trials/vbpr-0fd54a6c7e36ed6b",
        "push": "pushes/classes-17f96d43dbcbb7c0",
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
