"""The stages before the attack grid, each a pure function of its config slice.

prepare (dataset → catalog + cold-item shard) → extractor pretraining → BPR → candidates →
second-stage rankers → a defence with weights per ranker (the denoiser) → candidate scores per
(ranker, defence). Each stage's output is stored under a
hash of everything it depends on (:class:`~aipray.store.Store`), so it is computed once and reused
by every trial and every later sweep.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aipray.attacks import ATTACKS
from aipray.config import Component, SweepConfig, TrialSpec
from aipray.data import DATASETS, Catalog
from aipray.data.catalog import summary
from aipray.defenses import DEFENSES, make_defense
from aipray.metrics.full_ranking import full_hit_rate, model_scores
from aipray.models import MODELS, load_recommender
from aipray.models.base import model_meta
from aipray.models.extractor import (
    IN_PROCESS,
    ON_SURROGATE,
    class_names,
    load_extractor,
    make_extractor,
    popular_class,
    save_extractor,
)
from aipray.pipeline.threads import stage_threads, torch_threads
from aipray.plan import StagePaths
from aipray.protocol import PROTOCOLS, aip
from aipray.protocol.base import pick_device  # noqa: F401 - re-exported
from aipray.protocol.cold_items import load_context, load_served  # noqa: F401 - re-exported
from aipray.store import Store, atomic_dir, config_key, done

log = logging.getLogger(__name__)

#: the baseline context every trial measures its defence's cost against
NO_DEFENSE = Component("defense", "none", DEFENSES.get("none").Config())
#: bumped when what a ranker's training stores changes (2: full-ranking HR@10 on validation;
#: 3: the best epoch selected on full-ranking validation HR@10, not against 100 sampled
#: negatives; the first stage's BPR is keyed by it too from 3 on)
TRAINING_VERSION = 3
#: one JSON line per stage computed (kind, output, seconds, peak memory of its process), under
#: the store: what a sweep's stages cost, for the scale benchmark and for a user sizing a cluster
STAGE_LOG = "stages.jsonl"

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
    # transfer attack's are the direct attack's on its source model, wherever they are evaluated
    crafted = trial.crafted_on()
    crafted_key = _model_key(sweep, crafted.model, ds_key, ext_key)
    from_extractor = MODELS.get(crafted.model.name).features_from_extractor
    sources = {"ranker": crafted_key, "classifier": ext_key, "none": ds_key}
    sources["feature_network"] = ext_key if from_extractor else crafted_key
    # an adaptive attack also knows the defence it optimised through; an oblivious one serves all
    defended = (trial.defense.as_dict(), *trained) if trial.adaptive else ()
    source = sources[ATTACKS.get(trial.attack.name).knowledge]
    attack_key = attack_images_key(source, crafted.attack, *defended)
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
        else store.path("models", trial.source.name, crafted_key),
    )


def _model_key(sweep: SweepConfig, model: Component, ds_key: str, ext_key: str) -> str:
    """The key of a ranker's training stage: its dataset, its settings, the extractor when it
    is built on it, the seed."""
    uses_extractor = MODELS.get(model.name).uses_extractor
    parts = [ds_key, model.as_dict(), ext_key if uses_extractor else None, sweep.seed]
    return config_key([*parts, TRAINING_VERSION])


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


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


# --- 1 prepare ----------------------------------------------------------------------------------
def prepare_dataset(component: Component, out: Path) -> Path:
    """Build the catalog and the cold-item shard that Ray Data reads in each trial."""
    if done(out):
        return out
    with atomic_dir(out) as tmp:
        # Real datasets stream their decoded images straight into tmp/images.npy.
        catalog = DATASETS.get(component.name).build(component.config, component.name, tmp)
        catalog.save(tmp)
        write_cold_items(catalog, tmp / "cold")
        _write_json(tmp / "summary.json", summary(catalog))
    log.info("prepared %s: %s", component.label, summary(catalog))
    return out


def write_cold_items(catalog: Catalog, folder: Path, shard_size: int = 256) -> None:
    """Cold items as parquet shards: ``item_id`` and ``image`` (raw uint8 ``[3, H, W]`` bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = catalog.cold_items
    for n, start in enumerate(range(0, ids.size, shard_size)):
        chunk = ids[start : start + shard_size]
        table = pa.table(
            {
                "item_id": pa.array(chunk, pa.int64()),
                "image": pa.array([catalog.images[i].tobytes() for i in chunk], pa.binary()),
            }
        )
        pq.write_table(table, folder / f"part-{n:05d}.parquet")


# --- 2 train ------------------------------------------------------------------------------------
def train_extractor(
    sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device
) -> Path:
    """The trial's extractor (pretrained here, ImageNet weights or a checkpoint), with the class
    TAaMR's attacks target: the one it predicts most often over the training interactions."""
    out = paths.extractor
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    cfg = trial.extractor_config
    warm = np.flatnonzero(catalog.warm_mask())
    pretrain = cfg.weights in IN_PROCESS
    # the surrogate set brings its own images: of the catalog's it needs one, for their size
    rows = warm[:1] if cfg.weights in ON_SURROGATE else warm
    extractor, info = make_extractor(
        cfg,
        np.asarray(catalog.images[rows]) if pretrain else None,
        catalog.categories[rows] if pretrain else None,
        device=device,
        seed=sweep.seed,
        category_names=catalog.category_names,
    )
    pop = catalog.item_popularity()
    trained = np.flatnonzero(pop)
    target = popular_class(extractor, catalog.images, pop[trained], items=trained, device=device)
    names = class_names(extractor.spec, catalog.category_names)
    info["target_class"] = target
    info["target_class_name"] = names[target] if target < len(names) else str(target)
    with atomic_dir(out) as tmp:
        save_extractor(extractor, tmp, info)
    log.info("extractor ready (%s); TAaMR target class %s", cfg.weights, info["target_class_name"])
    return out


def train_bpr(sweep: SweepConfig, paths: StagePaths, device: torch.device) -> Path:
    out = paths.bpr
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    bpr = MODELS.get("bpr")
    model, training = bpr.fit(
        sweep.first_stage.bpr, catalog, extractor=None, device=device, seed=sweep.seed
    )
    with atomic_dir(out) as tmp:
        model.cpu().save(tmp, {"training": training})
    log.info(
        "BPR validation HR@10 %.3f at epoch %d of %d run (%.0fs)",
        training["best_score"],
        training["best_epoch"],
        training["epochs_run"],
        training["seconds"],
    )
    return out


def build_candidates(sweep: SweepConfig, paths: StagePaths, device: torch.device) -> Path:
    """Each user's BPR top-C among warm items outside the user's training and validation items,
    and the first stage's health (:func:`aipray.protocol.candidates.first_stage_health`)."""
    out = paths.candidates
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    bpr = load_recommender(paths.bpr, device)
    candidates = aip.top_candidates(bpr, catalog, sweep.first_stage.candidates, device)
    health = aip.first_stage_health(
        bpr, catalog, candidates, model_meta(paths.bpr)["training"], device
    )
    with atomic_dir(out) as tmp:
        np.savez(tmp / "candidates.npz", candidates=candidates)
        _write_json(tmp / "summary.json", health)
    log.info(
        "first stage: BPR val HR@10 %.3f (random %.3f), full HR@10 %.3f (popularity %.3f); "
        "top-%d holds the test item for %.1f%% of users (popularity's: %.1f%%)",
        health["val_hr_at_10"],
        health["val_random_hr_at_10"],
        health["full_hr_at_10"],
        health["full_popularity_hr_at_10"],
        int(health["C"]),
        100 * health["test_in_top_c"],
        100 * health["popularity_test_in_top_c"],
    )
    if health["val_hr_at_10"] < 1.5 * health["val_random_hr_at_10"]:
        log.warning(
            "first stage: BPR validation HR@10 %.3f is within 1.5x of random (%.3f): its "
            "candidates are close to random; check first_stage.bpr",
            health["val_hr_at_10"],
            health["val_random_hr_at_10"],
        )
    return out


def first_stage_health(paths: StagePaths) -> dict[str, float]:
    """What :func:`build_candidates` measured about the first stage."""
    return json.loads((paths.candidates / "summary.json").read_text())


def train_ranker(
    sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device
) -> Path:
    """The trial's ranker, trained by its own recipe (``Recommender.fit``) on clean images."""
    out = paths.model
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    cls = MODELS.get(trial.model.name)
    extractor = load_extractor(paths.extractor, device) if cls.uses_extractor else None
    model, training = cls.fit(
        trial.model.config, catalog, extractor=extractor, device=device, seed=sweep.seed
    )
    if training is not None:  # against the popularity ranker's, in the first stage's health
        training["full_hr_at_10"] = full_hit_rate(model_scores(model, catalog, device), catalog)
    with atomic_dir(out) as tmp:
        model.cpu().save(tmp, {"training": training})
    if training is None:
        log.info("%s ready (nothing to train)", trial.model.label)
    else:
        log.info(
            "%s validation HR@10 %.3f at epoch %d of %d run, among all warm items %.3f (%.0fs)",
            trial.model.label,
            training["best_score"],
            training["best_epoch"],
            training.get("epochs_run", training["best_epoch"]),
            training["full_hr_at_10"],
            training["seconds"],
        )
    return out


def train_defense(
    sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device
) -> Path | None:
    """The trial's defence when it has weights (the denoiser), built for the trained ranker by
    its own recipe (:meth:`~aipray.defenses.base.Defense.fit`); nothing for the others."""
    out = paths.defense
    if out is None or done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    ranker = load_recommender(paths.model, device)
    cls = DEFENSES.get(trial.defense.name)
    defense = cls.fit(trial.defense.config, catalog, ranker, device=device, seed=sweep.seed)
    with atomic_dir(out) as tmp:
        defense.save(tmp)
    log.info("%s ready for %s", trial.defense.label, trial.model.label)
    return out


# --- 3 candidate scores -------------------------------------------------------------------------
def build_context(
    trial: TrialSpec, paths: StagePaths, device: torch.device, *, undefended: bool = False
) -> Path:
    """Score every user's fixed candidates (BPR top-C ∪ test item) with the ranker, on images that
    went through the trial's defence (or none, ``undefended``: the baseline the defence's cost on
    ordinary items is measured against), and store them sorted for counting ranks
    (``context.pt``), with what the full-ranking yardstick needs of every user's ranking of all
    warm items (``full.pt``, :func:`~aipray.protocol.aip.full_ranking_scores`). When the
    defence changes the ranker itself (AlexRank's profile images), the defended ranker is stored
    alongside (``served/``)."""
    out = paths.context_undefended if undefended else paths.context
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    model = load_recommender(paths.model, device)
    component = NO_DEFENSE if undefended else trial.defense
    defense = make_defense(component.name, component.config, paths.defense)
    with np.load(paths.candidates / "candidates.npz") as f:
        candidates = f["candidates"]
    served = model.under_defense(defense, catalog.images)
    ctx = aip.candidate_scores(model, catalog, candidates, defense, device, served=served)
    full = aip.full_ranking_scores(model, catalog, defense, device, served=served)
    with atomic_dir(out) as tmp:
        torch.save(dataclasses.asdict(ctx), tmp / "context.pt")
        torch.save(dataclasses.asdict(full), tmp / "full.pt")
        if served is not model:
            served.cpu().save(tmp / "served", {"defense": component.as_dict()})
    return out


# --- any stage, by kind ---------------------------------------------------------------------------
def stage_output(kind: str, paths: StagePaths) -> Path | None:
    """Where the stage ``kind`` (a name in a protocol's ``stages``) stores its output: the
    :class:`StagePaths` field of that name (the ranker's is ``model``); ``None`` when the trial
    has no such stage (a defence without weights)."""
    return getattr(paths, "model" if kind == "ranker" else kind)


#: the stages a transfer attack's source model stands on: its ranker and what that is trained on
SOURCE_STAGES = frozenset({"dataset", "extractor", "ranker"})


def stage_waves(
    sweep: SweepConfig, trials: list[TrialSpec]
) -> list[list[tuple[str, TrialSpec, StagePaths]]]:
    """The stage outputs ``trials`` stand on, wave by wave (the protocol's ``stages``), each
    output once as ``(kind, trial, paths)``: every trial's own, and the ranker of each transfer
    attack's source model (:data:`SOURCE_STAGES` of :meth:`TrialSpec.crafted_on`), so that the
    source is trained before the attack runs even when no direct trial on it is pending."""
    protocol = PROTOCOLS.get(sweep.protocol)()
    jobs: list[tuple[TrialSpec, frozenset[str] | None]] = [(t, None) for t in trials]
    jobs += [(t.crafted_on(), SOURCE_STAGES) for t in trials if t.source is not None]
    located = [(trial, only, stage_paths(sweep, trial)) for trial, only in jobs]
    waves, seen = [], set()
    for wave in protocol.stages:
        out = []
        for trial, only, paths in located:
            for kind in wave:
                target = stage_output(kind, paths)
                if target is None or target in seen or (only is not None and kind not in only):
                    continue
                if kind == "extractor" and not protocol.uses_extractor(trial):
                    continue
                seen.add(target)
                out.append((kind, trial, paths))
        waves.append(out)
    return waves


def compute_stage(
    kind: str, sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device
) -> None:
    """Build the stage ``kind``'s output unless it is stored, with :func:`stage_threads`: the
    stages every protocol shares here, a protocol's own by its object
    (:meth:`aipray.protocol.base.Protocol.build_stage`)."""
    shared = {
        "dataset": lambda: prepare_dataset(trial.dataset, paths.dataset),
        "bpr": lambda: train_bpr(sweep, paths, device),
        "candidates": lambda: build_candidates(sweep, paths, device),
        "extractor": lambda: train_extractor(sweep, trial, paths, device),
        "ranker": lambda: train_ranker(sweep, trial, paths, device),
        "defense": lambda: train_defense(sweep, trial, paths, device),
        "context": lambda: build_context(trial, paths, device),
        "context_undefended": lambda: build_context(trial, paths, device, undefended=True),
    }
    with torch_threads(stage_threads(sweep)):
        if kind in shared:
            shared[kind]()
        else:
            PROTOCOLS.get(sweep.protocol)().build_stage(kind, trial, paths, device)
