"""Perceptual-Rec's category-push protocol (Anelli et al. 2020, after TAaMR, Di Noia et al.
2020), Ray-free.

Every item belongs to the class the extractor's classifier predicts for its clean image. An
adversary perturbs the images of *all* items of an **origin** class (rarely recommended) with a
classifier-targeted attack towards a **target** class (popular); the features are re-extracted
from the attacked images, and then

- ``poisoning`` (what the authors' code runs): the visual recommender is retrained from scratch
  on the catalog with the attacked items' images (hence features) replaced;
- ``evasion``: the clean-trained recommender scores the attacked images.

Users' rankings are full rankings of the warm items minus their own training items (not AIP's
two-stage candidate set); the origin class's share of the top-K (CHR@K, nCDCG@K) is compared
before and after, user by user. Per attacked image: success (the classifier says the target after
the 8-bit round trip), feature loss, LPIPS, SSIM, PSNR, L∞ and L2.

Retraining is deterministic for a seed, so an unattacked retrain reproduces the clean model
exactly: every change in a poisoning trial comes from the replaced images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from aipray.attacks.base import ATTACKS, Attack, AttackInputs
from aipray.data.catalog import Catalog
from aipray.grid import PerceptualConfig, TrialSpec
from aipray.metrics.category import CATEGORY_CUTOFFS, category_change, category_ranking
from aipray.metrics.full_ranking import full_scores_masked, model_scores
from aipray.metrics.image import l2, linf_255, psnr, ssim
from aipray.metrics.perceptual import feature_loss
from aipray.models.base import Recommender, load_recommender, model_meta
from aipray.models.extractor import Extractor, class_names, load_extractor, predict_classes
from aipray.pixels import to_float, to_uint8
from aipray.plan import StagePaths, TrialPlan
from aipray.protocol.base import PROTOCOLS, Protocol, decode_uint8, images_table, lpips_metric
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)

MODES = ("poisoning", "evasion")
#: cut-offs of the category metrics; CHR@20 is the papers' headline
CUTOFFS = CATEGORY_CUTOFFS


# --- categories -----------------------------------------------------------------------------------
def item_classes(
    extractor: Extractor, catalog: Catalog, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``[n_items]`` the class the extractor's classifier predicts for each clean image."""
    return predict_classes(extractor, catalog.images, device=device)


@torch.no_grad()
def class_shares(
    scores_of: Callable[[torch.Tensor], torch.Tensor],
    catalog: Catalog,
    labels: np.ndarray,
    *,
    k: int = 20,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``[n_classes]`` CHR@k of every class at once (mean number of the class's items in users'
    top-k), over each user's full ranking of warm items minus training items. Items labelled
    ``-1`` count for no class."""
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1
    lab = torch.as_tensor(labels, device=device)
    total = torch.zeros(n_classes + 1, dtype=torch.float64, device=device)
    for _, scores in full_scores_masked(scores_of, catalog, device=device):
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        hit = lab[top].flatten()
        total += torch.bincount(hit.clamp(min=-1) + 1, minlength=n_classes + 1).double()
    return (total[1:] / max(1, catalog.n_users)).cpu().numpy()


def choose_push(
    shares: np.ndarray,
    labels: np.ndarray,
    warm: np.ndarray,
    *,
    min_share: float = 0.02,
    predicted: np.ndarray | None = None,
) -> tuple[int, int]:
    """The stated rule for a dataset without a configured origin and target (as the authors
    chose theirs from their clean lists): target = the class with the highest clean CHR@20;
    origin = the class with the lowest clean CHR@20 among the others that hold at least
    ``min_share`` of the warm items by ``labels`` (so that the push concerns a real category)
    and, when ``predicted`` is given, at least one warm item the extractor puts in it (the items
    it attacks). With ``labels`` the catalog's categories, every extractor that predicts the
    class at all gets the same pair, so tables compare one push across extractors."""
    n = shares.size
    counts = np.bincount(np.asarray(labels)[warm].clip(min=0), minlength=n)[:n]
    own = np.ones(n, dtype=np.int64)
    if predicted is not None:
        own = np.bincount(np.asarray(predicted)[warm].clip(min=0), minlength=n)[:n]
    target = int(np.argmax(shares))
    eligible = [
        c for c in range(n) if c != target and counts[c] >= min_share * warm.sum() and own[c] > 0
    ]
    if not eligible:
        raise ValueError(
            f"no class other than the target holds >= {min_share:.0%} of the warm items"
        )
    origin = min(eligible, key=lambda c: (shares[c], c))
    return origin, target


# --- catalogs with some images replaced -----------------------------------------------------------
class PatchedImages:
    """The catalog's uint8 images ``[N, 3, H, W]`` (array or memmap) with the rows ``item_ids``
    replaced by ``replacement`` — without copying the catalog. Indexing returns a fresh array,
    as a memmap's fancy indexing does."""

    def __init__(self, base: np.ndarray, item_ids: np.ndarray, replacement: np.ndarray) -> None:
        item_ids = np.asarray(item_ids, dtype=np.int64)
        replacement = np.asarray(replacement, dtype=np.uint8)
        if replacement.shape != (item_ids.size, *base.shape[1:]):
            raise ValueError(
                f"replacement images {replacement.shape} do not fit {item_ids.size} items of "
                f"shape {tuple(base.shape[1:])}"
            )
        self.base = base
        self.slot = np.full(base.shape[0], -1, dtype=np.int64)
        self.slot[item_ids] = np.arange(item_ids.size)
        self.replacement = replacement
        self.shape, self.dtype, self.ndim = tuple(base.shape), base.dtype, base.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(self.shape[0])]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, (int, np.integer)):
            slot = self.slot[index]
            return self.replacement[slot].copy() if slot >= 0 else np.array(self.base[index])
        rows = np.arange(self.shape[0])[index]
        out = np.array(self.base[rows])
        slots = self.slot[rows]
        hit = slots >= 0
        out[hit] = self.replacement[slots[hit]]
        return out


def with_images(catalog: Catalog, item_ids: np.ndarray, images: np.ndarray) -> Catalog:
    """``catalog`` with the images of ``item_ids`` replaced by uint8 ``images``."""
    patched = PatchedImages(catalog.images, item_ids, images)
    return dataclasses.replace(catalog, images=patched)  # type: ignore[arg-type]


# --- attacking the origin class -------------------------------------------------------------------
class OriginItemAttacker:
    """Attacks batches of origin-class items and measures each attacked image.

    Args:
        attack: a classifier-targeted attack (FGSM, PGD, C&W) aimed at the target class, or a
            control (random noise).
        extractor: the feature extractor whose features the recommender uses (feature loss).
        lpips: ``images, images → [B]`` perceptual distance (e.g.
            :func:`aipray.metrics.perceptual.make_lpips`), or ``None`` to skip it.
        target: the push's target class (success = the extractor now says it); default the
            attack's own ``target``.
    """

    def __init__(
        self,
        attack: Attack,
        extractor: Extractor,
        lpips: Callable | None = None,
        target: int | None = None,
    ) -> None:
        self.target = attack.target if target is None else int(target)
        self.attack = attack
        self.extractor = extractor
        self.lpips = lpips
        self.device = next(extractor.parameters()).device

    def __call__(
        self, clean: torch.Tensor, item_ids: np.ndarray, adversarial: torch.Tensor | None = None
    ) -> tuple[dict, torch.Tensor]:
        """Per-item rows for float ``clean`` images ``[B, 3, H, W]`` in [0, 1] of ``item_ids``,
        and the adversarial images (on the 8-bit grid; made by the attack unless given)."""
        clean = clean.to(self.device)
        start = time.perf_counter()
        if adversarial is None:
            adv = self.attack(clean, torch.as_tensor(item_ids, device=self.device))
            seconds = (time.perf_counter() - start) / max(1, len(clean))
        else:
            adv, seconds = adversarial.to(self.device), float("nan")
        with torch.no_grad():
            f_clean, logits_clean = self.extractor.features_and_logits(clean)
            f_adv, logits_adv = self.extractor.features_and_logits(adv)
            target = self.target
            out: dict[str, np.ndarray] = {
                "item_id": np.asarray(item_ids),
                "clean_class": logits_clean.argmax(1).cpu().numpy(),
                "adv_class": logits_adv.argmax(1).cpu().numpy(),
                "feature_loss": feature_loss(f_clean, f_adv).cpu().numpy(),
                "linf_255": linf_255(clean, adv).cpu().numpy(),
                "l2": l2(clean, adv).cpu().numpy(),
                "ssim": ssim(clean, adv).cpu().numpy(),
                "psnr": psnr(clean, adv).clamp(max=100.0).cpu().numpy(),
                "attack_seconds": np.full(len(clean), seconds),
            }
            if target is not None:
                out["success"] = (out["adv_class"] == int(target)).astype(np.float64)
            if self.lpips is not None:
                out["lpips"] = self.lpips(clean, adv).cpu().numpy()
        return out, adv


def attack_items(
    attacker: OriginItemAttacker,
    catalog: Catalog,
    item_ids: np.ndarray,
    *,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Attack every item of ``item_ids`` in batches: per-item rows and uint8 adversarial images
    ``[len(item_ids), 3, H, W]`` (what a sweep shards across Ray Data actors instead)."""
    rows, images = [], []
    for start in range(0, len(item_ids), batch_size):
        chunk = np.asarray(item_ids[start : start + batch_size])
        clean = to_float(catalog.images[chunk])
        out, adv = attacker(clean, chunk)
        rows.append(pd.DataFrame(out))
        images.append(to_uint8(adv).cpu().numpy())
    if not rows:
        return pd.DataFrame(), np.zeros((0, *catalog.image_shape), dtype=np.uint8)
    return pd.concat(rows, ignore_index=True), np.concatenate(images)


# --- the recommender after the attack -------------------------------------------------------------
def attacked_model(
    mode: str,
    model: Recommender,
    config: Any,
    attacked: Catalog,
    *,
    extractor: Extractor | None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[Recommender, dict[str, Any] | None]:
    """The recommender that ranks after the attack: the clean one (``evasion``) or one trained
    by the same recipe and seed on the attacked catalog (``poisoning``)."""
    if mode == "evasion":
        return model, None
    if mode != "poisoning":
        raise ValueError(f"mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    return type(model).fit(config, attacked, extractor=extractor, device=device, seed=seed)


def push_metrics(
    clean: dict[str, Any],
    attacked: dict[str, Any],
    items: pd.DataFrame,
    *,
    ks: Sequence[int] = CUTOFFS,
) -> dict[str, float]:
    """Trial metrics (MLflow names: ``clean/chr_at_20``, ``attacked/chr_count_at_20``,
    ``p_value_chr_at_20`` ...): the origin class's CHR@K (TAaMR's ``/K`` and the authors' code's
    count), nCDCG@K before and after with the user-level paired p-value, and the image metrics'
    means."""
    out: dict[str, float] = {}
    for k in ks:
        for name in ("chr", "chr_count", "ncdcg"):
            out[f"clean/{name}_at_{k}"] = float(clean["mean"][f"{name}@{k}"])
            out[f"attacked/{name}_at_{k}"] = float(attacked["mean"][f"{name}@{k}"])
    for key, change in category_change(clean, attacked).items():
        out[f"p_value_chr_at_{key.split('@')[1]}"] = change["p_value"]
    for col in ("success", "feature_loss", "lpips", "ssim", "psnr", "l2", "attack_seconds"):
        if col in items and len(items):
            out[f"{col}_mean"] = float(items[col].mean())
    if "linf_255" in items and len(items):
        out["linf_255_max"] = float(items["linf_255"].max())
    out["n_items"] = float(len(items))
    return out


def push(
    model: Recommender,
    config: Any,
    catalog: Catalog,
    extractor: Extractor,
    attack: Attack,
    origin: int,
    *,
    mode: str = "poisoning",
    lpips: Callable | None = None,
    ks: Sequence[int] = CUTOFFS,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[dict[str, float], pd.DataFrame]:
    """The whole protocol in one process: attack every warm item the extractor puts in class
    ``origin`` (``attack`` carries the target), rank again (``mode``), and measure.

    ``model`` is the clean recommender trained with ``config`` and ``seed`` on ``catalog``
    (features from ``extractor``). Returns trial metrics and per-item rows."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    labels = item_classes(extractor, catalog, device)
    warm = catalog.warm_mask()
    members = np.flatnonzero((labels == origin) & warm)
    clean = category_ranking(
        model_scores(model, catalog, device), catalog, labels, origin, ks=ks, device=device
    )
    attacker = OriginItemAttacker(attack, extractor, lpips)
    items, adv = attack_items(attacker, catalog, members, batch_size=batch_size)
    attacked_catalog = with_images(catalog, members, adv)
    after, _ = attacked_model(
        mode, model, config, attacked_catalog, extractor=extractor, device=device, seed=seed
    )
    attacked = category_ranking(
        model_scores(after, attacked_catalog, device),
        catalog,
        labels,
        origin,
        ks=ks,
        device=device,
    )
    return push_metrics(clean, attacked, items, ks=ks), items


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
