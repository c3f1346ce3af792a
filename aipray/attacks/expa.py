"""EXPA, the expert attack of AIP (eq. 7): pull the item's features onto a popular hook item's.

The attacker knows the feature network Φ (VBPR, AMR, AlexRank: the pretrained extractor; DVBPR:
the embedding CNN) and a hook item, by default the most-interacted training item. It minimises
``‖Φ(X + δ) − Φ(X_hook)‖₂`` with Adam from δ = 0.

AIP runs a fixed 5,000 steps. With ``patience`` set, each image stops once its distance has not
fallen by more than ``tol`` (relative) for that many steps (:class:`~aipray.attacks.base.Plateau`);
the steps each image used are reported (``attack_steps``).

Adaptive (``adaptive: true``), it pulls Φ of the defended image onto Φ of the defended hook
(the platform defends the hook's image too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import (
    ATTACKS,
    Attack,
    AttackInputs,
    AttackResult,
    Plateau,
    TransferConfig,
    linf_ascent,
)
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
        hook = self.inputs.hook_image.to(images.device).unsqueeze(0)
        with torch.no_grad():
            target = self.model.feature_network(self.served(hook))  # [1, F]

        def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
            return -(self.model.feature_network(x_adv) - target).norm(dim=1)

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
