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
from aipray.pipeline.keys import (  # noqa: F401 - re-exported: the keys were defined here
    CONTEXT_VERSION,
    NO_DEFENSE,
    PUSH_VERSION,
    RESULT_VERSION,
    TRAINING_VERSION,
    attack_images_key,
    stage_paths,
    trial_key,
)
from aipray.pipeline.threads import stage_threads, torch_threads
from aipray.plan import StagePaths
from aipray.protocol import PROTOCOLS, aip
from aipray.protocol.base import pick_device  # noqa: F401 - re-exported
from aipray.protocol.cold_items import load_context, load_served  # noqa: F401 - re-exported
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)

#: one JSON line per stage computed (kind, output, seconds, peak memory of its process), under
#: the store: what a sweep's stages cost, for the scale benchmark and for a user sizing a cluster
STAGE_LOG = "stages.jsonl"


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
    attack's source model, each of an ensemble's (:data:`SOURCE_STAGES` of
    :meth:`TrialSpec.crafted_on_each`), so that every source is trained before the attack runs
    even when no direct trial on it is pending."""
    protocol = PROTOCOLS.get(sweep.protocol)()
    jobs: list[tuple[TrialSpec, frozenset[str] | None]] = [(t, None) for t in trials]
    jobs += [(c, SOURCE_STAGES) for t in trials for c in t.crafted_on_each()]
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
