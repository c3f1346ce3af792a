"""Perceptual-Rec's category push as a registered :class:`~aipray.protocol.base.Protocol`
(``perceptual``): one sweep trial from its :class:`~aipray.plan.TrialPlan` — the push stage
(classes, origin and target), the per-batch origin-item attacker, the retrain-and-rank finish
and the example figures. The maths it calls lives in :mod:`aipray.protocol.perceptual`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from aipray.attacks.base import ATTACKS, AttackInputs
from aipray.data.catalog import Catalog
from aipray.grid import PerceptualConfig, TrialSpec
from aipray.metrics.category import category_ranking
from aipray.metrics.full_ranking import model_scores
from aipray.models.base import load_recommender, model_meta
from aipray.models.extractor import class_names, load_extractor
from aipray.plan import StagePaths, TrialPlan
from aipray.protocol.base import PROTOCOLS, Protocol, decode_uint8, images_table, lpips_metric
from aipray.protocol.perceptual import (
    OriginItemAttacker,
    attacked_model,
    choose_push,
    class_shares,
    item_classes,
    push_metrics,
    with_images,
)
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)


# --- the protocol object: one trial from its plan -----------------------------------------------
def build_push(
    config: PerceptualConfig, paths: StagePaths, device: torch.device | str = "cpu"
) -> Path:
    """The push stage: classify every item with the trial's extractor and settle origin and
    target: the configured classes (ids or names), else :func:`choose_push` on the first
    stage's clean CHR@20 (over the catalog's categories when the extractor's classes are those
    categories, else over the extractor's own classes). Stores ``classes.npy`` and
    ``push.json`` under ``paths.push``."""
    out = paths.push
    assert out is not None
    if done(out):
        return out
    catalog = Catalog.load(paths.dataset)
    extractor = load_extractor(paths.extractor, device)
    labels = item_classes(extractor, catalog, device)
    names = class_names(extractor.spec, catalog.category_names)
    own = extractor.spec.get("labels") == "categories" and (catalog.categories >= 0).all()
    rule_labels = catalog.categories if own else labels
    bpr = load_recommender(paths.bpr, device)
    shares = class_shares(
        model_scores(bpr, catalog, device), catalog, rule_labels, k=20, device=device
    )
    warm = catalog.warm_mask()
    ruled = choose_push(shares, rule_labels, warm, min_share=config.min_share, predicted=labels)
    origin = _class_id(config.origin, names, "origin", ruled[0])
    target = _class_id(config.target, names, "target", ruled[1])
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
        "chosen_by": "rule" if config.origin is None or config.target is None else "config",
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
    """What :func:`build_push` stored: every item's class and the push's origin and target."""
    return np.load(path / "classes.npy"), json.loads((path / "push.json").read_text())


def _origin_items(plan: TrialPlan) -> tuple[Catalog, np.ndarray, np.ndarray, dict[str, Any]]:
    catalog = Catalog.load(plan.paths.dataset)
    labels, info = load_push(plan.paths.push)
    members = np.flatnonzero((labels == info["origin"]) & catalog.warm_mask())
    return catalog, members, labels, info


@PROTOCOLS.register("perceptual")
class CategoryPush(Protocol):
    """Perceptual-Rec's category push as a sweep trial: the items are the warm items the
    extractor puts in the origin class; each batch goes through :class:`OriginItemAttacker`; the
    finish ranks again (retraining, for ``poisoning``) and compares the origin class's CHR/nCDCG
    (:func:`push_metrics`). The attacked images and their per-image measures depend on the
    extractor, the attack and the push's classes only: they are stored under the attack's key
    and shared by every ranker and mode."""

    stages = (("dataset",), ("bpr", "extractor"), ("ranker", "push"))
    columns: ClassVar[dict[str, str]] = {
        "clean/chr_count_at_20": "chr@20",
        "attacked/chr_count_at_20": "att_chr@20",
        "p_value_chr_at_20": "p",
        "success_mean": "success",
        "feature_loss_mean": "fl",
        "lpips_mean": "lpips",
        "linf_255_max": "linf",
    }
    finish_on = "train"

    def uses_extractor(self, trial: TrialSpec) -> bool:
        return True  # its classifier defines the classes

    def build_stage(self, stage: str, trial: TrialSpec, paths: Any, device: torch.device) -> None:
        if stage != "push" or trial.push is None:
            super().build_stage(stage, trial, paths, device)
            return
        build_push(trial.push.config, paths, device)

    def rows_path(self, plan: TrialPlan) -> Path:
        return plan.paths.attack

    def stored_rows(self, plan: TrialPlan) -> pd.DataFrame | None:
        if not done(plan.paths.attack):
            return None
        return pd.read_parquet(plan.paths.attack / "items.parquet")

    def items(self, plan: TrialPlan) -> pa.Table:
        catalog, members, _, _ = _origin_items(plan)
        return images_table(members, catalog.images[members])

    def evaluator(self, plan: TrialPlan, device: torch.device) -> OriginItemAttacker:
        extractor = load_extractor(plan.paths.extractor, device)
        _, info = load_push(plan.paths.push)
        target = int(info["target"])
        inputs = AttackInputs(classifier=extractor, target_class=target)
        attack = ATTACKS.get(plan.attack.name)(plan.attack.config, None, inputs)
        return OriginItemAttacker(attack, extractor, lpips_metric(plan.lpips, device), target)

    def store_attack(self, plan: TrialPlan, table: pa.Table, rows: pd.DataFrame) -> None:
        with atomic_dir(plan.paths.attack) as tmp:
            pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp / "items.parquet")

    def finish(
        self, plan: TrialPlan, rows: pd.DataFrame, folder: Path, device: torch.device
    ) -> dict[str, float]:
        """The recommender after the attack (the clean one, or retrained for ``poisoning``) and
        the origin class's CHR/nCDCG before and after, with the attack's per-image means."""
        assert plan.push is not None
        paths = plan.paths
        catalog = Catalog.load(paths.dataset)
        labels, info = load_push(paths.push)
        adv = decode_uint8(rows["adv"], catalog.image_shape)
        attacked = with_images(catalog, rows["item_id"].to_numpy(), adv)
        model = load_recommender(paths.model, device)
        extractor = load_extractor(paths.extractor, device)
        after, training = attacked_model(
            plan.push.mode,
            model,
            plan.model.config,
            attacked,
            extractor=extractor,
            device=device,
            seed=plan.seed,
        )
        origin = int(info["origin"])
        clean = category_ranking(model_scores(model, catalog, device), catalog, labels, origin)
        pushed = category_ranking(model_scores(after, attacked, device), catalog, labels, origin)
        metrics = push_metrics(clean, pushed, rows.drop(columns=["adv"]))
        trained = model_meta(paths.model).get("training") or {}
        metrics["ranker/val_hr_at_10"] = float(trained.get("best_score", float("nan")))
        metrics["ranker/full_hr_at_10"] = float(trained.get("full_hr_at_10", float("nan")))
        if training is not None:
            metrics["attacked_ranker/val_hr_at_10"] = float(training["best_score"])
        metrics["push/origin"] = float(origin)
        metrics["push/target"] = float(info["target"])
        metrics["push/n_origin_items"] = float(info["n_origin_items"])
        if plan.examples and len(rows):
            names = class_names(extractor.spec, catalog.category_names)
            write_examples(catalog, rows.head(plan.examples), names, folder)
        return metrics


def write_examples(
    catalog: Catalog, rows: pd.DataFrame, names: Sequence[str], folder: Path
) -> None:
    """``examples.png`` (clean | adversarial, with the predicted classes by name and LPIPS) and
    ``examples.npz`` of the attacked items ``rows`` (with ``adv``)."""
    ids = rows["item_id"].to_numpy()
    clean = np.asarray(catalog.images[ids])
    shape = catalog.image_shape
    adv = decode_uint8(rows["adv"], shape)

    def name(c: Any) -> str:
        return names[int(c)] if 0 <= int(c) < len(names) else f"class {int(c)}"

    measures = {c: rows[c].to_numpy() for c in ("lpips", "adv_class", "clean_class") if c in rows}
    for col in ("adv_class", "clean_class"):
        if col in rows:
            measures[f"{col}_name"] = np.array([name(c) for c in rows[col]])
    np.savez_compressed(
        folder / "examples.npz", item_ids=ids, clean=clean, adversarial=adv, **measures
    )
    scale, pad, head = max(1, 128 // shape[1]), 4, 28
    h, w = shape[1] * scale, shape[2] * scale
    grid = Image.new("RGB", (2 * (w + pad) + pad, len(ids) * (h + head + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for row in range(len(ids)):
        y = pad + row * (h + head + pad)
        pairs = (
            (clean[row], rows["clean_class"].iloc[row]),
            (adv[row], rows["adv_class"].iloc[row]),
        )
        for col, (img, cls) in enumerate(pairs):
            tile = Image.fromarray(img.transpose(1, 2, 0)).resize((w, h), Image.NEAREST)
            x = pad + col * (w + pad)
            grid.paste(tile, (x, y + head))
            text = f"item {ids[row]}: {name(cls)}" if col == 0 else name(cls)
            if col == 1 and "lpips" in rows:
                text += f" LPIPS {rows['lpips'].iloc[row]:.3f}"
            draw.text((x, y + 2), text, fill="black")
    grid.save(folder / "examples.png")
