"""The Ray Data actor of a trial: holds one trained ranker, runs attack → defence → scoring.

It is plain Python over torch: Ray builds one per actor-pool slot with the constructor arguments
(paths only, so a restarted actor reloads from disk) and calls it on batches of cold items.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from aipray.attacks import ATTACKS, AttackInputs
from aipray.config import Component
from aipray.data import Catalog
from aipray.defenses import DEFENSES
from aipray.metrics.image import linf_255, psnr, ssim
from aipray.metrics.ranking import (
    CUTOFFS,
    hit_rates,
    injected_ranks,
    ordinary_hit_rates,
    prediction_shift,
)
from aipray.models import load_recommender
from aipray.models.extractor import load_extractor, read_extractor_info
from aipray.pipeline.stages import StagePaths, load_context, pick_device

log = logging.getLogger(__name__)


def decode_images(column: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """A column of raw uint8 ``[3, H, W]`` bytes → float ``[B, 3, H, W]`` in [0, 1]."""
    raw = np.stack([np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in column])
    return torch.from_numpy(raw).float() / 255.0


def encode_images(images: torch.Tensor) -> np.ndarray:
    """Float images on the 8-bit grid → an object column of raw uint8 bytes."""
    raw = torch.round(images.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    out = np.empty(raw.shape[0], dtype=object)
    out[:] = [r.tobytes() for r in raw]
    return out


class TrialActor:
    """Callable over batches ``{"item_id", "image"[, "adv"]}`` → one row of metrics per item.

    When the batch already carries adversarial images (``adv``, from an earlier trial with the
    same ranker and attack), the attack is skipped: a non-adaptive attack does not depend on the
    defence.
    """

    def __init__(
        self,
        paths: dict[str, str],
        model: dict[str, Any],
        attack: dict[str, Any],
        defense: dict[str, Any],
        gpus: float = 0.0,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.paths = StagePaths.from_dict(paths)
        self.device = pick_device(gpus)
        self.model = load_recommender(self.paths.model, self.device)
        self.context = load_context(self.paths.context, self.device)
        catalog = Catalog.load(self.paths.dataset)
        self.image_shape = catalog.image_shape
        self.bare_context = load_context(self.paths.context_undefended, self.device)
        attack_c = _component("attack", attack)
        self.attack = ATTACKS.get(attack_c.name)(
            attack_c.config, self.model, attack_inputs(attack_c, catalog, self.paths, self.device)
        )
        defense_c = _component("defense", defense)
        self.defended = defense_c.name != "none"
        self.defense = DEFENSES.get(defense_c.name)(defense_c.config)
        self.users = torch.arange(self.model.n_users, device=self.device)
        log.info("actor ready on %s", self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clean = decode_images(batch["image"], self.image_shape).to(self.device)
        start = time.perf_counter()
        ids = np.array(batch["item_id"])  # a writable copy (Arrow buffers are read-only)
        if "adv" in batch:
            adv = decode_images(batch["adv"], self.image_shape).to(self.device)
            attack_seconds = np.full(clean.shape[0], np.nan)
        else:
            adv = self.attack(clean, torch.as_tensor(ids, device=self.device))
            attack_seconds = np.full(clean.shape[0], (time.perf_counter() - start) / len(clean))
        with torch.no_grad():
            coop = self.model.score_images(self.users, self.defense(clean))  # [U, B]
            attacked = self.model.score_images(self.users, self.defense(adv))
            bare = self.model.score_images(self.users, clean) if self.defended else coop
            out: dict[str, np.ndarray] = {
                "item_id": ids,
                "adv": encode_images(adv),
                "prediction_shift": prediction_shift(attacked, coop).cpu().numpy(),
                "coop_score": coop.mean(0).cpu().numpy(),
                "adv_score": attacked.mean(0).cpu().numpy(),
                "linf_255": linf_255(clean, adv).cpu().numpy(),
                "ssim": ssim(clean, adv).cpu().numpy(),
                "psnr": psnr(clean, adv).clamp(max=100.0).cpu().numpy(),
                "attack_seconds": attack_seconds,
            }
            groups = {
                "cooperative": hit_rates(injected_ranks(self.context, coop)),
                "adversarial": hit_rates(injected_ranks(self.context, attacked)),
                "ordinary": ordinary_hit_rates(self.context, coop),
                "ordinary_attacked": ordinary_hit_rates(self.context, attacked),
                "ordinary_undefended": ordinary_hit_rates(self.bare_context, bare),
            }
            for group, rates in groups.items():
                for k in CUTOFFS:
                    out[f"{group}/hr_at_{k}"] = rates[k].cpu().numpy()
            success = getattr(self.attack, "success", None)
            if success is not None:
                out["success"] = success(adv).float().cpu().numpy()
        return out


def hook_item(attack: Component, catalog: Catalog) -> int:
    """The attack's configured hook item, or the most-interacted training item."""
    hook = getattr(attack.config, "hook", None)
    return catalog.most_popular_item() if hook is None else int(hook)


def attack_inputs(
    attack: Component, catalog: Catalog, paths: StagePaths, device: torch.device
) -> AttackInputs:
    """What the attack may know besides the ranker: the hook item's image (the configured one, or
    the most-interacted training item), and for classifier attacks the extractor's classifier and
    its most popular class."""
    hook = hook_item(attack, catalog)
    hook_image = torch.from_numpy(np.array(catalog.images[hook])).float() / 255.0
    if ATTACKS.get(attack.name).knowledge != "classifier":
        return AttackInputs(hook_image=hook_image)
    info = read_extractor_info(paths.extractor)
    return AttackInputs(
        hook_image=hook_image,
        classifier=load_extractor(paths.extractor, device),
        target_class=int(info["target_class"]),
    )


def _component(kind: str, d: dict[str, Any]) -> Component:
    """Rebuild a component from ``{"name", "config"}`` (what travels to the actor)."""
    from aipray.config import build_dataclass
    from aipray.registry import Registry

    registry: Registry = {"attack": ATTACKS, "defense": DEFENSES}[kind]
    cls = registry.get(d["name"]).Config
    (config,), _ = build_dataclass(cls, d["config"], f"{kind}s.{d['name']}")
    return Component(kind, d["name"], config)
