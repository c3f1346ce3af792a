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
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from aipray.attacks.base import Attack
from aipray.data.catalog import Catalog
from aipray.metrics.category import CATEGORY_CUTOFFS, category_change, category_ranking
from aipray.metrics.full_ranking import full_scores_masked, model_scores
from aipray.metrics.image import l2, linf_255, psnr, ssim
from aipray.metrics.perceptual import feature_loss
from aipray.models.base import Recommender
from aipray.models.extractor import Extractor, predict_classes
from aipray.pixels import to_float, to_uint8

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
