"""EXPA, the expert attack of AIP (eq. 7): pull the item's features onto a popular hook item's.

The attacker knows the feature network Φ (VBPR, AMR, AlexRank: the pretrained extractor; DVBPR:
the embedding CNN) and a hook item, by default the most-interacted training item. It minimises
``‖Φ(X + δ) − Φ(X_hook)‖₂`` with Adam from δ = 0.

AIP runs a fixed 5,000 steps. With ``patience`` set, each image stops once its distance has not
fallen by more than ``tol`` (relative) for that many steps (:class:`~aipray.attacks.base.Plateau`);
the steps each image used are reported (``attack_steps``).

Adaptive (``adaptive: true``), it pulls Φ of the defended image onto Φ of the defended hook
(the platform defends the hook's image too).

Against an :class:`~aipray.attacks.ensemble.Ensemble` of source models each has its own Φ and
so its own target, Φ_k of the hook: the ensemble minimises the mean of the sources' EXPA
losses, each relative to the norm of its hook features, ``(1/K) Σ_k ‖Φ_k(X + δ) − Φ_k(X_hook)‖
/ ‖Φ_k(X_hook)‖`` (unit-free: the extractor's fc7 and DVBPR's embedding have unrelated
scales). With ``patience`` the early stop watches that mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import (
    ATTACKS,
    Attack,
    AttackInputs,
    AttackResult,
    Objective,
    Plateau,
    TransferConfig,
    linf_ascent,
)
from aipray.attacks.ensemble import ensemble_objective, members, positive
from aipray.models.base import Recommender
from aipray.params import param


@dataclass(frozen=True)
class EXPAConfig(TransferConfig):
    """eps in 0..255 pixel units; AIP: Adam lr 0.01, 5000 steps; hook ``None`` = most popular;
    ``patience`` ``None`` = every step (AIP), else the early stop's window (with ``tol``);
    ``adaptive``, ``eot_samples``, ``source``: :class:`~aipray.attacks.base.TransferConfig`."""

    eps: float = param(32.0, axis=True, min=0, max=255)
    steps: int = param(5000, min=1)
    lr: float = param(0.01, min=0)
    hook: int | None = param(None, min=0)
    patience: int | None = param(None, axis=True, min=1)
    tol: float = param(1e-3, min=0)


@ATTACKS.register("expa")
class EXPA(Attack):
    """Expert attack: move the item's features onto the hook item's (eq. 7)."""

    Config = EXPAConfig
    requires = ("feature_network",)
    knowledge = "feature_network"  # AlexRank, VBPR and AMR share Φ: one set of images for all

    def __init__(self, config: EXPAConfig, model: Recommender, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)
        if inputs.hook_image is None:
            raise ValueError("EXPA needs the hook item's image")

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(images, item_ids).images

    def run(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> AttackResult:
        objective = self.objective(images.device)
        cfg = self.config
        plateau = None if cfg.patience is None else Plateau(cfg.patience, cfg.tol)
        used = torch.zeros(images.shape[0], dtype=torch.long)
        adv = linf_ascent(
            images,
            self.through_defense(objective),
            eps=cfg.eps,
            steps=cfg.steps,
            lr=cfg.lr,
            plateau=plateau,
            steps_taken=used,
        )
        return AttackResult(adv, used.numpy())

    def objective(self, device: torch.device) -> Objective:
        """What EXPA maximises (before any defence): minus the distance of Φ(X + δ) to Φ of the
        (served) hook; against an ensemble, the mean over its models of that distance in each
        one's features, each divided by the norm of its hook features."""
        hook = self.inputs.hook_image.to(device).unsqueeze(0)
        models = members(self.model)
        objectives, scales = [], []
        for model in models:
            with torch.no_grad():
                target = model.feature_network(self.served(hook))  # [1, F]
            objectives.append(closeness_to(model, target))
            scales.append(positive(target.norm()) if len(models) > 1 else 1)
        return ensemble_objective(objectives, scales)


def closeness_to(model: Recommender, target: torch.Tensor) -> Objective:
    """``model``'s EXPA objective: minus the distance of Φ(X + δ) to ``target`` ``[1, F]``."""

    def closeness(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return -(model.feature_network(x_adv) - target).norm(dim=1)

    return closeness
