"""The stages before the attack grid, each a pure function of its config slice.

prepare (dataset → catalog + cold-item shard) → extractor pretraining → BPR → candidates →
second-stage rankers → candidate scores per (ranker, defence). Each stage's output is stored under a
hash of everything it depends on (:class:`~aipray.store.Store`), so it is computed once and reused
by every trial and every later sweep.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
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
from aipray.defenses import DEFENSES
from aipray.metrics.ranking import CandidateScores
from aipray.models import MODELS, load_recommender
from aipray.models.alexrank import AlexRank
from aipray.models.amr import AMR
from aipray.models.bpr import BPR
from aipray.models.dvbpr import DVBPR
from aipray.models.extractor import (
    class_names,
    load_extractor,
    make_extractor,
    popular_class,
    save_extractor,
)
from aipray.models.train import fit_bpr
from aipray.models.vbpr import VBPR
from aipray.store import Store, atomic_dir, config_key, done

log = logging.getLogger(__name__)

#: the baseline context every trial measures its defence's cost against
NO_DEFENSE = Component("defense", "none", DEFENSES.get("none").Config())
#: bumped when a trial's stored result changes meaning, so old results are not reused
RESULT_VERSION = 2


def pick_device(gpus: float) -> torch.device:
    """CUDA when GPUs were requested and one is visible, else CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class StagePaths:
    """Where every stage output of one trial lives, derived from the config alone."""

    dataset: Path
    extractor: Path
    bpr: Path
    candidates: Path
    model: Path
    context: Path
    context_undefended: Path
    attack: Path
    result: Path

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> StagePaths:
        return cls(**{k: Path(v) for k, v in d.items()})


def stage_paths(sweep: SweepConfig, trial: TrialSpec) -> StagePaths:
    store = Store(sweep.storage)
    ds_key = config_key(trial.dataset.as_dict())
    ext_key = config_key([ds_key, sweep.extractor.fingerprint(), sweep.seed])
    bpr_key = config_key([ds_key, dataclasses.asdict(sweep.first_stage.bpr), sweep.seed])
    cand_key = config_key([bpr_key, sweep.first_stage.candidates])
    uses_extractor = MODELS.get(trial.model.name).uses_extractor
    model_key = config_key(
        [ds_key, trial.model.as_dict(), ext_key if uses_extractor else None, sweep.seed]
    )
    ctx_key = config_key([model_key, cand_key, trial.defense.as_dict()])
    bare_key = config_key([model_key, cand_key, NO_DEFENSE.as_dict()])
    # an attack's images depend on what the attacker knows, and are shared accordingly
    attack_cls = ATTACKS.get(trial.attack.name)
    source_key = {"ranker": model_key, "classifier": ext_key, "none": ds_key}[attack_cls.knowledge]
    attack_key = config_key(
        [
            source_key,
            trial.attack.as_dict(),
            attack_cls.version,
            attack_cls.fingerprint(trial.attack.config),
        ]
    )
    result_key = config_key([ctx_key, bare_key, attack_key, sweep.examples, RESULT_VERSION])
    return StagePaths(
        dataset=store.path("datasets", trial.dataset.name, ds_key),
        extractor=store.path("extractors", sweep.extractor.arch, ext_key),
        bpr=store.path("models", "bpr", bpr_key),
        candidates=store.path("candidates", "bpr", cand_key),
        model=store.path("models", trial.model.name, model_key),
        context=store.path("contexts", trial.model.name, ctx_key),
        context_undefended=store.path("contexts", trial.model.name, bare_key),
        attack=store.path("attacks", trial.attack.name, attack_key),
        result=store.path("trials", trial.model.name, result_key),
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
def train_extractor(sweep: SweepConfig, paths: StagePaths, device: torch.device) -> Path:
    """The sweep's extractor (pretrained here, ImageNet weights or a checkpoint), with the class
    TAaMR's attacks target: the one it predicts most often over the training interactions."""
    out = paths.extractor
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    cfg = sweep.extractor
    warm = np.flatnonzero(catalog.warm_mask())
    pretrain = cfg.weights == "pretrain"
    extractor, info = make_extractor(
        cfg,
        np.asarray(catalog.images[warm]) if pretrain else None,
        catalog.categories[warm] if pretrain else None,
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
    cfg = sweep.first_stage.bpr
    model = BPR(catalog.n_users, catalog.n_items, cfg.factors).to(device)
    result = fit_bpr(
        model,
        catalog,
        [{"params": model.parameters(), "weight_decay": cfg.weight_decay}],
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        device=device,
        seed=sweep.seed,
    )
    with atomic_dir(out) as tmp:
        model.cpu().save(tmp, {"training": dataclasses.asdict(result)})
    log.info("BPR validation HR@10 %.3f (%.0fs)", result.best_score, result.seconds)
    return out


def build_candidates(sweep: SweepConfig, paths: StagePaths, device: torch.device) -> Path:
    """Each user's BPR top-C among warm items outside the user's training and validation items."""
    out = paths.candidates
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    bpr = load_recommender(paths.bpr, device)
    indptr, train_items = catalog.train_csr()
    # never more than every user has left after masking their training and validation items
    widest = int(np.diff(indptr).max()) + 1 if catalog.n_users else 0
    c = min(sweep.first_stage.candidates, int(catalog.warm_mask().sum()) - widest)
    if c < 1:
        raise ValueError("first_stage.candidates: the catalog has too few warm items for C >= 1")
    blocked = ~torch.as_tensor(catalog.warm_mask(), device=device)
    all_items = torch.arange(catalog.n_items, device=device)
    with torch.no_grad():
        codes = bpr.encode_items(None, all_items)
        top = []
        for start in range(0, catalog.n_users, 1024):
            users = torch.arange(start, min(start + 1024, catalog.n_users), device=device)
            scores = bpr.score_codes(users, codes)
            scores[:, blocked] = -torch.inf
            lo, hi = int(indptr[start]), int(indptr[start + len(users)])
            rows = np.repeat(np.arange(len(users)), np.diff(indptr[start : start + len(users) + 1]))
            scores[torch.as_tensor(rows), torch.as_tensor(train_items[lo:hi])] = -torch.inf
            val = torch.as_tensor(catalog.val_items[start : start + len(users)])
            scores[torch.arange(len(users)), val] = -torch.inf
            top.append(scores.topk(c, dim=1).indices.cpu())
    candidates = torch.cat(top).numpy()
    in_top = (candidates == catalog.test_items[:, None]).any(1)
    with atomic_dir(out) as tmp:
        np.savez(tmp / "candidates.npz", candidates=candidates)
        _write_json(tmp / "summary.json", {"C": c, "test_item_in_top_c": float(in_top.mean())})
    log.info("BPR top-%d holds the test item for %.1f%% of users", c, 100 * in_top.mean())
    return out


def train_ranker(
    sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device
) -> Path:
    out = paths.model
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    cfg = trial.model.config
    size = catalog.image_shape[1]
    user_reg = 0.0
    adversary = None
    name = trial.model.name
    if MODELS.get(name).uses_extractor:
        extractor = load_extractor(paths.extractor, device)
    if name == "alexrank":
        indptr, items = catalog.train_csr()
        model = AlexRank.from_profiles(
            indptr, items, catalog.n_items, extractor, catalog.images, cfg.batch_size
        )
        with atomic_dir(out) as tmp:
            model.cpu().save(tmp, {"training": None})
        log.info("%s: %d profile items", trial.model.label, model.profile_items.numel())
        return out
    if name == "dvbpr":
        model = DVBPR(catalog.n_users, cfg.dim, size, width=cfg.width, dropout=cfg.dropout)
        groups = [
            {"params": model.cnn.parameters(), "weight_decay": cfg.lambda_cnn},
            {"params": model.theta.parameters(), "weight_decay": 0.0},
        ]
        user_reg = cfg.lambda_user
    elif name in ("vbpr", "amr"):
        cls = AMR if name == "amr" else VBPR
        model = cls.on(extractor, catalog.n_users, catalog.n_items, cfg.dim)
        trainable = [p for n, p in model.named_parameters() if not n.startswith("extractor.")]
        groups = [{"params": trainable, "weight_decay": cfg.weight_decay}]
        if name == "amr":
            adversary = cfg.adversary()
    else:  # pragma: no cover - the config parser only admits registered visual models
        raise ValueError(f"no training recipe for model {name!r}")
    model.to(device)
    result = fit_bpr(
        model,
        catalog,
        groups,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        device=device,
        seed=sweep.seed,
        user_reg=user_reg,
        adversary=adversary,
    )
    with atomic_dir(out) as tmp:
        model.cpu().save(tmp, {"training": dataclasses.asdict(result)})
    log.info(
        "%s validation HR@10 %.3f at epoch %d (%.0fs)",
        trial.model.label,
        result.best_score,
        result.best_epoch,
        result.seconds,
    )
    return out


# --- 3 candidate scores -------------------------------------------------------------------------
def build_context(
    trial: TrialSpec, paths: StagePaths, device: torch.device, *, undefended: bool = False
) -> Path:
    """Score every user's fixed candidates (BPR top-C ∪ test item) with the ranker, on images that
    went through the trial's defence (or none, ``undefended``: the baseline the defence's cost on
    ordinary items is measured against), and store them sorted for counting ranks."""
    out = paths.context_undefended if undefended else paths.context
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    model = load_recommender(paths.model, device)
    component = NO_DEFENSE if undefended else trial.defense
    defense = DEFENSES.get(component.name)(component.config)
    with np.load(paths.candidates / "candidates.npz") as f:
        candidates = f["candidates"]
    fixed = np.concatenate([candidates, catalog.test_items[:, None]], axis=1)
    valid = np.ones(fixed.shape, dtype=bool)
    valid[:, -1] = ~(candidates == catalog.test_items[:, None]).any(1)
    needed = np.unique(fixed)
    lookup = np.full(catalog.n_items, -1)
    lookup[needed] = np.arange(needed.size)
    with torch.no_grad():
        codes = []
        for start in range(0, needed.size, 256):
            ids = needed[start : start + 256]
            images = torch.as_tensor(np.asarray(catalog.images[ids])).to(device).float() / 255
            codes.append(model.encode_items(defense(images), torch.as_tensor(ids, device=device)))
        codes_t = torch.cat(codes)
        scores = np.empty(fixed.shape, dtype=np.float32)
        step = model.candidate_chunk
        for start in range(0, catalog.n_users, step):
            rows = slice(start, min(start + step, catalog.n_users))
            users = torch.arange(rows.start, rows.stop, device=device)
            chunk = lookup[fixed[rows]]
            uniq, inv = np.unique(chunk, return_inverse=True)
            s = model.score_candidates(
                users,
                codes_t[torch.as_tensor(uniq, device=device)],
                torch.as_tensor(inv.reshape(chunk.shape), device=device),
            )
            scores[rows] = s.cpu().numpy()
    ctx = CandidateScores.build(
        torch.as_tensor(scores), torch.as_tensor(valid), torch.as_tensor(scores[:, -1])
    )
    with atomic_dir(out) as tmp:
        torch.save(dataclasses.asdict(ctx), tmp / "context.pt")
    return out


def load_context(path: Path, device: torch.device | str = "cpu") -> CandidateScores:
    return CandidateScores(
        **torch.load(path / "context.pt", map_location=device, weights_only=True)
    )
