"""AMR: VBPR trained with adversarial perturbations of the visual features (Tang et al., TKDE
2019, "Adversarial Training Towards Robust Multimedia Recommender System"), as evaluated in AIP.

The scorer is VBPR's; only training differs: ``L = L_BPR + λ_adv · L_BPR(f + Δ)`` with
``Δ = ε · ∇_f L_BPR / ‖∇_f L_BPR‖`` per item, after ``clean_epochs`` epochs of plain BPR (see
:class:`aipray.models.train.FeatureAdversary`). AIP uses λ_adv = 1.

ε is in feature units, so its meaning depends on the extractor (sisinflab use ε = 1, Elliot 0.1,
on features of different norms). Here it is set relative to the mean L2 norm of the training
items' features, ``adv_eps_relative``; the absolute ε it gives is recorded with the model. Nothing
in training picks it (validation HR barely moves with ε, while the robustness to INSA does), so
AMR's results are a curve over ``adv_eps_relative``, an axis of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from aipray.models.base import MODELS
from aipray.models.train import FeatureAdversary
from aipray.models.vbpr import VBPR, VBPRConfig
from aipray.params import param


@dataclass(frozen=True)
class AMRConfig(VBPRConfig):
    """VBPR's settings plus the adversary: ``adv_eps_relative`` (L2 size of Δ as a fraction of
    the mean feature norm), ``adv_weight`` (λ_adv) and ``clean_epochs`` (``None`` = half the
    epochs, as sisinflab)."""

    adv_eps_relative: float = param(0.05, axis=True, min=0)
    adv_weight: float = param(1.0, min=0)
    clean_epochs: int | None = param(None, min=0)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.clean_epochs is not None and self.clean_epochs >= self.epochs:
            allowed = f"an integer < epochs = {self.epochs} (or null: half the epochs)"
            return [("clean_epochs", self.clean_epochs, allowed)]
        return []

    def adversary(self) -> FeatureAdversary:
        clean = self.epochs // 2 if self.clean_epochs is None else self.clean_epochs
        return FeatureAdversary(
            eps_relative=self.adv_eps_relative, weight=self.adv_weight, clean_epochs=clean
        )


@MODELS.register("amr")
class AMR(VBPR):
    """VBPR with adversarial training of the visual factors; scoring is VBPR's."""

    Config = AMRConfig
    display_name = "AMR"
