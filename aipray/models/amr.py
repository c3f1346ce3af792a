"""AMR: VBPR trained with adversarial perturbations of the visual features (Tang et al., TKDE
2019, "Adversarial Training Towards Robust Multimedia Recommender System"), as evaluated in AIP.

The scorer is VBPR's; only training differs: ``L = L_BPR + λ_adv · L_BPR(f + Δ)`` with
``Δ = ε_adv · ∇_f L_BPR / ‖∇_f L_BPR‖`` per item, after ``clean_epochs`` epochs of plain BPR (see
:class:`aipray.models.train.FeatureAdversary`). AIP uses λ_adv = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from aipray.models.base import MODELS
from aipray.models.train import FeatureAdversary
from aipray.models.vbpr import VBPR, VBPRConfig
from aipray.params import param


@dataclass(frozen=True)
class AMRConfig(VBPRConfig):
    """VBPR's settings plus the adversary: ``adv_eps`` (L2 size of Δ in feature units),
    ``adv_weight`` (λ_adv) and ``clean_epochs`` (``None`` = half the epochs, as sisinflab)."""

    adv_eps: float = param(1.0, min=0)
    adv_weight: float = param(1.0, min=0)
    clean_epochs: int | None = param(None, min=0)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.clean_epochs is not None and self.clean_epochs >= self.epochs:
            allowed = f"an integer < epochs = {self.epochs} (or null: half the epochs)"
            return [("clean_epochs", self.clean_epochs, allowed)]
        return []

    def adversary(self) -> FeatureAdversary:
        clean = self.epochs // 2 if self.clean_epochs is None else self.clean_epochs
        return FeatureAdversary(eps=self.adv_eps, weight=self.adv_weight, clean_epochs=clean)


@MODELS.register("amr")
class AMR(VBPR):
    """VBPR with adversarial training of the visual factors; scoring is VBPR's."""

    Config = AMRConfig
