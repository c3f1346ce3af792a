"""Perceptual-Rec's category push in a sweep: the push stage (item classes, origin and target),
the Ray Data actor that attacks origin-class images, and the trial that re-ranks and measures.

The attacked images (and their per-image measures) depend on the extractor, the attack and the
push's classes only, so they are stored once and shared by every ranker and mode; a trial whose
images exist skips the attack. Re-ranking (retraining, for ``poisoning``) runs as a Ray task with
the training resources.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aipray.attacks import ATTACKS, AttackInputs
from aipray.config import SweepConfig, TrialSpec
from aipray.data import Catalog
from aipray.metrics.category import category_ranking
from aipray.metrics.full_ranking import model_scores
from aipray.models import load_recommender
from aipray.models.base import model_meta
from aipray.models.extractor import class_names, load_extractor
from aipray.pipeline.actor import (
    BatchFolder,
    _component,
    decode_images,
    decode_uint8,
    encode_images,
    make_metric,
    map_with_actors,
    partial_folder,
)
from aipray.pipeline.stages import StagePaths, pick_device
from aipray.protocol import perceptual
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)


# --- the push stage -------------------------------------------------------------------------------
def build_push(sweep: SweepConfig, trial: TrialSpec, paths: StagePaths, device: torch.device):
    """Classify every item with the trial's extractor and settle origin and target: the
    configured classes (ids or names), else :func:`~aipray.protocol.perceptual.choose_push` on
    the first stage's clean CHR@20 (over the catalog's categories when the extractor's classes
    are those categories, else over the extractor's own classes)."""
    out = paths.push
    assert out is not None and trial.push is not None
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    extractor = load_extractor(paths.extractor, device)
    labels = perceptual.item_classes(extractor, catalog, device)
    names = class_names(extractor.spec, catalog.category_names)
    cfg = trial.push.config
    own = extractor.spec.get("labels") == "categories" and (catalog.categories >= 0).all()
    rule_labels = catalog.categories if own else labels
    bpr = load_recommender(paths.bpr, device)
    shares = perceptual.class_shares(
        model_scores(bpr, catalog, device), catalog, rule_labels, k=20, device=device
    )
    warm = catalog.warm_mask()
    ruled = perceptual.choose_push(
        shares, rule_labels, warm, min_share=cfg.min_share, predicted=labels
    )
    origin = _class_id(cfg.origin, names, "origin", ruled[0])
    target = _class_id(cfg.target, names, "target", ruled[1])
    members = np.flatnonzero((labels == origin) & warm)
    if members.size == 0:
        raise ValueError(
            f"perceptual.origin: the extractor puts no warm item in class {origin} "
            f"({names[origin]}); choose another origin"
        )
    info = {
        "origin": origin,
        "target": target,
        "origin_name": names[origin],
        "target_name": names[target],
        "chosen_by": "rule" if cfg.origin is None or cfg.target is None else "config",
        "rule_labels": "catalog categories" if own else "extractor classes",
        "bpr_chr_at_20": {
            names[c] if c < len(names) else str(c): float(v) for c, v in enumerate(shares)
        },
        "n_origin_items": int(members.size),
        "n_target_items": int(((labels == target) & warm).sum()),
    }
    with atomic_dir(out) as tmp:
        np.save(tmp / "classes.npy", labels)
        (tmp / "push.json").write_text(json.dumps(info, indent=2))
    log.info(
        "category push: %s (%d items) -> %s, chosen by %s",
        info["origin_name"],
        members.size,
        info["target_name"],
        info["chosen_by"],
    )
    return out


def _class_id(value: int | str | None, names: list[str], key: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"perceptual.{key}: {value!r} is not a class of the extractor")
        return names.index(value)
    if not 0 <= value < len(names):
        raise ValueError(
            f"perceptual.{key}: {value} is not allowed; expected a class id in 0..{len(names) - 1}"
        )
    return int(value)


def load_push(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    return np.load(path / "classes.npy"), json.loads((path / "push.json").read_text())


# --- the attack actor -----------------------------------------------------------------------------
class PushActor:
    """Ray Data callable over batches ``{"item_id", "image"}`` of origin-class items: attacks
    them towards the target class and measures each image (a thin adapter of
    :class:`aipray.protocol.perceptual.OriginItemAttacker`)."""

    def __init__(
        self,
        paths: dict[str, str],
        attack: dict[str, Any],
        lpips: dict[str, Any] | None,
        gpus: float = 0.0,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.paths = StagePaths.from_dict(paths)
        self.device = pick_device(gpus)
        extractor = load_extractor(self.paths.extractor, self.device)
        _, info = load_push(self.paths.push)
        self.image_shape = Catalog.load(self.paths.dataset).image_shape
        attack_c = _component("attack", attack)
        inputs = AttackInputs(classifier=extractor, target_class=int(info["target"]))
        attacker = ATTACKS.get(attack_c.name)(attack_c.config, None, inputs)
        metric = make_metric(lpips, self.device)
        self.attacker = perceptual.OriginItemAttacker(
            attacker, extractor, metric, target=int(info["target"])
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clean = decode_images(batch["image"], self.image_shape)
        out, adv = self.attacker(clean, np.array(batch["item_id"]))
        out["adv"] = encode_images(adv)
        return out


def origin_table(catalog: Catalog, members: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "item_id": pa.array(members, pa.int64()),
            "image": pa.array([catalog.images[i].tobytes() for i in members], pa.binary()),
        }
    )


def attack_origin(payload: dict[str, Any], paths: StagePaths) -> None:
    """Attack every origin-class item through Ray Data and store ``items.parquet`` (per-image
    measures with the adversarial images) under the attack's folder."""
    catalog = Catalog.load(paths.dataset)
    labels, info = load_push(paths.push)
    members = np.flatnonzero((labels == info["origin"]) & catalog.warm_mask())
    kwargs = {k: payload[k] for k in ("paths", "attack", "lpips")}
    batches = partial_folder(paths.attack)
    table = origin_table(catalog, members)
    items = map_with_actors(table, PushActor, kwargs, payload["resources"], batches)
    items = items.drop(columns=["resumed"])
    with atomic_dir(paths.attack) as tmp:
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), tmp / "items.parquet")
    BatchFolder(batches).clear()


# --- re-ranking -----------------------------------------------------------------------------------
def rerank(payload: dict[str, Any], threads: int = 1) -> dict[str, float]:
    """The recommender after the attack (clean one, or retrained for ``poisoning``) and the
    origin class's CHR/nCDCG before and after, with the attack's per-image means."""
    torch.set_num_threads(max(1, threads))
    paths = StagePaths.from_dict(payload["paths"])
    device = pick_device(payload["resources"]["train_gpus"])
    catalog = Catalog.load(paths.dataset)
    labels, info = load_push(paths.push)
    items = pd.read_parquet(paths.attack / "items.parquet")
    shape = catalog.image_shape
    adv = decode_uint8(items["adv"], shape)
    attacked = perceptual.with_images(catalog, items["item_id"].to_numpy(), adv)
    model = load_recommender(paths.model, device)
    config = _component("model", payload["model"]).config
    extractor = load_extractor(paths.extractor, device)
    after, training = perceptual.attacked_model(
        payload["mode"],
        model,
        config,
        attacked,
        extractor=extractor,
        device=device,
        seed=payload["seed"],
    )
    origin = int(info["origin"])
    clean = category_ranking(model_scores(model, catalog, device), catalog, labels, origin)
    pushed = category_ranking(model_scores(after, attacked, device), catalog, labels, origin)
    metrics = perceptual.push_metrics(clean, pushed, items.drop(columns=["adv"]))
    trained = model_meta(paths.model).get("training") or {}
    metrics["ranker/val_hr_at_10"] = float(trained.get("best_score", float("nan")))
    metrics["ranker/full_hr_at_10"] = float(trained.get("full_hr_at_10", float("nan")))
    if training is not None:
        metrics["attacked_ranker/val_hr_at_10"] = float(training["best_score"])
    metrics["push/origin"] = float(origin)
    metrics["push/target"] = float(info["target"])
    metrics["push/n_origin_items"] = float(info["n_origin_items"])
    return metrics


def evaluate(payload: dict[str, Any]) -> dict[str, float]:
    """One category-push trial: attack (unless its images exist), re-rank, store, return."""
    import ray

    paths = StagePaths.from_dict(payload["paths"])
    if done(paths.result):
        return json.loads((paths.result / "metrics.json").read_text())
    if not done(paths.attack):
        attack_origin(payload, paths)
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res = payload["resources"]
    # Outside the trial's placement group (a light bundle): retraining takes the training
    # resources from the cluster, like the stages do.
    task = ray.remote(rerank).options(
        num_cpus=res["train_cpus"],
        num_gpus=res["train_gpus"],
        max_retries=1,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    metrics = ray.get(task.remote(payload, max(1, round(res["train_cpus"]))))
    items = pd.read_parquet(paths.attack / "items.parquet")
    with atomic_dir(paths.result) as tmp:
        pq.write_table(
            pa.Table.from_pandas(items.drop(columns=["adv"]), preserve_index=False),
            tmp / "items.parquet",
        )
        n = int(payload["examples"])
        if n and len(items):
            write_examples(payload, paths, items.head(n), tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("%s: %s", payload["name"], {k: round(v, 4) for k, v in metrics.items()})
    return metrics


def write_examples(
    payload: dict[str, Any], paths: StagePaths, items: pd.DataFrame, folder: Path
) -> None:
    """``examples.png`` (clean | adversarial, with the predicted classes and LPIPS) and
    ``examples.npz`` of the first attacked items."""
    from PIL import Image, ImageDraw

    catalog = Catalog.load(paths.dataset)
    shape = tuple(payload["image_shape"])
    ids = items["item_id"].to_numpy()
    clean = np.asarray(catalog.images[ids])
    adv = decode_uint8(items["adv"], shape)
    measures = {c: items[c].to_numpy() for c in ("lpips", "adv_class", "clean_class") if c in items}
    np.savez_compressed(
        folder / "examples.npz", item_ids=ids, clean=clean, adversarial=adv, **measures
    )
    scale, pad, head = max(1, 128 // shape[1]), 4, 28
    h, w = shape[1] * scale, shape[2] * scale
    grid = Image.new("RGB", (2 * (w + pad) + pad, len(ids) * (h + head + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row in range(len(ids)):
        y = pad + row * (h + head + pad)
        for col, (img, cls) in enumerate(
            ((clean[row], items["clean_class"].iloc[row]), (adv[row], items["adv_class"].iloc[row]))
        ):
            tile = Image.fromarray(img.transpose(1, 2, 0)).resize((w, h), Image.NEAREST)
            x = pad + col * (w + pad)
            grid.paste(tile, (x, y + head))
            text = f"class {cls}"
            if col == 1 and "lpips" in items:
                text += f" LPIPS {items['lpips'].iloc[row]:.3f}"
            draw.text((x, y + 2), text, fill="black")
    grid.save(folder / "examples.png")
