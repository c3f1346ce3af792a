"""Where each stage of a trial stores its output: a key per stage, a hash of everything the
output depends on (re-exported by :mod:`aipray.pipeline.stages`).

Each key joins the keys of what the stage stands on with its own settings and a version that is
bumped when what it stores changes, so a re-run finds every output that is still valid and
recomputes only the rest. An attack's images are keyed by what the attacker knows
(:meth:`aipray.attacks.base.Attack.knowledge`), so they are shared accordingly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aipray.attacks import ATTACKS
from aipray.attacks.ensemble import ENSEMBLE_VERSION
from aipray.config import Component, SweepConfig, TrialSpec
from aipray.defenses import DEFENSES
from aipray.models import MODELS
from aipray.plan import StagePaths
from aipray.store import Store, config_key

#: the baseline context every trial measures its defence's cost against
NO_DEFENSE = Component("defense", "none", DEFENSES.get("none").Config())
#: bumped when what a ranker's training stores changes (2: full-ranking HR@10 on validation;
#: 3: the best epoch selected on full-ranking validation HR@10, not against 100 sampled
#: negatives; the first stage's BPR is keyed by it too from 3 on)
TRAINING_VERSION = 3
#: bumped when what a context stage stores changes (2: the full ranking's top scores, full.pt)
CONTEXT_VERSION = 2
#: bumped when a trial's stored result changes meaning, so old results are not reused
RESULT_VERSION = 3
#: bumped when how the category push picks its classes changes (2: by the catalog's categories
#: with at least one predicted item, not by the predicted counts)
PUSH_VERSION = 2


def stage_paths(sweep: SweepConfig, trial: TrialSpec) -> StagePaths:
    store = Store(sweep.storage)
    ds_key = config_key(trial.dataset.as_dict())
    extractor = trial.extractor_config
    ext_key = config_key([ds_key, extractor.fingerprint(), sweep.seed])
    bpr_key = config_key(
        [ds_key, dataclasses.asdict(sweep.first_stage.bpr), sweep.seed, TRAINING_VERSION]
    )
    cand_key = config_key([bpr_key, sweep.first_stage.candidates])
    model_key = _model_key(sweep, trial.model, ds_key, ext_key)
    if trial.push is not None:
        return _push_paths(sweep, trial, store, ds_key, ext_key, bpr_key, model_key)
    # a defence with weights is built for the trial's ranker; its key joins what depends on it
    defense_cls = DEFENSES.get(trial.defense.name)
    trained: tuple[str, ...] = ()
    if defense_cls.trained:
        fingerprint = defense_cls.fingerprint(trial.defense.config)
        parts = [model_key, trial.defense.as_dict(), defense_cls.version, fingerprint]
        trained = (config_key(parts),)
    ctx_key = config_key([model_key, cand_key, trial.defense.as_dict(), CONTEXT_VERSION, *trained])
    bare_key = config_key([model_key, cand_key, NO_DEFENSE.as_dict(), CONTEXT_VERSION])
    # an attack's images depend on what the attacker knows, and are shared accordingly: a
    # transfer attack's are the direct attack's on its source model, wherever they are evaluated;
    # an ensemble's are one set per ensemble, whatever the order its models are named in
    knowledge = ATTACKS.get(trial.attack.name).knowledge
    crafted = [c.model for c in trial.crafted_on_each()] or [trial.model]
    known = sorted(_known_key(sweep, m, knowledge, ds_key, ext_key) for m in crafted)
    source = known[0] if len(known) == 1 else config_key(["ensemble", ENSEMBLE_VERSION, known])
    # an adaptive attack also knows the defence it optimised through; an oblivious one serves all
    defended = (trial.defense.as_dict(), *trained) if trial.adaptive else ()
    attack_key = attack_images_key(source, trial.direct_attack, *defended)
    result_parts = [ctx_key, bare_key, attack_key, sweep.examples, RESULT_VERSION]
    if sweep.lpips is not None:  # results without LPIPS keep their keys
        result_parts.append(sweep.lpips.fingerprint())
    if sweep.collusion:  # nor do those without colluding groups
        result_parts.append(["collusion", *sweep.collusion])
    result_key = config_key(result_parts)
    return StagePaths(
        dataset=store.path("datasets", trial.dataset.name, ds_key),
        extractor=store.path("extractors", extractor.arch, ext_key),
        bpr=store.path("models", "bpr", bpr_key),
        candidates=store.path("candidates", "bpr", cand_key),
        model=store.path("models", trial.model.name, model_key),
        context=store.path("contexts", trial.model.name, ctx_key),
        context_undefended=store.path("contexts", trial.model.name, bare_key),
        attack=store.path("attacks", trial.attack.name, attack_key),
        result=store.path("trials", trial.model.name, result_key),
        defense=store.path("defenses", trial.defense.name, trained[0]) if trained else None,
        source=None
        if trial.source is None
        else _model_path(sweep, store, trial.source, ds_key, ext_key),
        ensemble=tuple(_model_path(sweep, store, m, ds_key, ext_key) for m in trial.ensemble),
    )


def _model_key(sweep: SweepConfig, model: Component, ds_key: str, ext_key: str) -> str:
    """The key of a ranker's training stage: its dataset, its settings, the extractor when it
    is built on it, the seed."""
    uses_extractor = MODELS.get(model.name).uses_extractor
    parts = [ds_key, model.as_dict(), ext_key if uses_extractor else None, sweep.seed]
    return config_key([*parts, TRAINING_VERSION])


def _known_key(
    sweep: SweepConfig, model: Component, knowledge: str, ds_key: str, ext_key: str
) -> str:
    """The key of what an attack that knows ``knowledge`` knows when crafted on ``model``: its
    ranker, its feature network (the extractor's, for rankers that share it), the extractor's
    classifier, or nothing but the dataset."""
    if knowledge == "classifier":
        return ext_key
    if knowledge == "none":
        return ds_key
    if knowledge == "feature_network" and MODELS.get(model.name).features_from_extractor:
        return ext_key
    return _model_key(sweep, model, ds_key, ext_key)


def _model_path(
    sweep: SweepConfig, store: Store, model: Component, ds_key: str, ext_key: str
) -> Path:
    """Where ``model``'s ranker stage stores it (a transfer attack's source model)."""
    return store.path("models", model.name, _model_key(sweep, model, ds_key, ext_key))


def _push_paths(
    sweep: SweepConfig,
    trial: TrialSpec,
    store: Store,
    ds_key: str,
    ext_key: str,
    bpr_key: str,
    model_key: str,
) -> StagePaths:
    """Perceptual-Rec's category push: the item classes and the (origin, target) pair per
    extractor, the attacked origin images per attack (shared by every ranker and mode), the
    result per (ranker, attack, mode)."""
    push = trial.push.config
    rule = {k: getattr(push, k) for k in ("origin", "target", "min_share")}
    push_key = config_key([ext_key, bpr_key, rule, PUSH_VERSION])
    lpips = sweep.lpips.fingerprint() if sweep.lpips is not None else None
    attack_key = attack_images_key(push_key, trial.attack, lpips)
    result_key = config_key([model_key, attack_key, push.mode, RESULT_VERSION])
    unused = store.path("contexts", "unused", model_key)
    return StagePaths(
        dataset=store.path("datasets", trial.dataset.name, ds_key),
        extractor=store.path("extractors", trial.extractor_config.arch, ext_key),
        bpr=store.path("models", "bpr", bpr_key),
        candidates=unused,
        model=store.path("models", trial.model.name, model_key),
        context=unused,
        context_undefended=unused,
        attack=store.path("pushes", trial.attack.name, attack_key),
        result=store.path("trials", trial.model.name, result_key),
        push=store.path("pushes", "classes", push_key),
    )


def attack_images_key(source_key: str, attack: Component, *more: Any) -> str:
    """The key of an attack's stored images: the key of what the attacker knows (a ranker, a
    feature network, an extractor, a dataset, a category push), the attack's config, its
    ``version`` and :meth:`~aipray.attacks.base.Attack.fingerprint`, and ``more`` (what else
    decides the images, or a protocol stores beside them: an adaptive attack's defence)."""
    cls = ATTACKS.get(attack.name)
    return config_key(
        [source_key, attack.as_dict(), cls.version, cls.fingerprint(attack.config), *more]
    )


def trial_key(paths: StagePaths) -> str:
    """The trial's identity: its result folder's key (config of everything that feeds it)."""
    return paths.result.name.rsplit("-", 1)[1]
