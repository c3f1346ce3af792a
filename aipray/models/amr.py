"""AMR: VBPR trained with adversarial perturbations of the visual features (Tang et al., TKDE
2019, "Adversarial Training Towards Robust Multimedia Recommender System"), as evaluated in AIP.

The scorer is VBPR's; only training differs: ``L = L_BPR + λ_adv · L_BPR(f + Δ)`` with
``Δ = ε · ∇_f L_BPR / ‖∇_f L_BPR‖`` per item, after ``clean_epochs`` epochs of plain BPR (see
:class:`aipray.models.train.FeatureAdversary`). AIP uses λ_adv = 1.

ε is in feature units, so its meaning depends on the extractor (sisinflab use ε = 1, Elliot 0.1,
on features of different norms). ``adv_eps_unit`` says which units ``adv_eps`` is in:

- ``max_abs`` (default, AMR's own code, duxy-me/AMR ``Dataset.py`` and ``run.sh``): every visual
  feature is divided by the global max |f| over the training (warm) items' features, and ε = 0.1
  in those units (λ_adv = 1). The constant is part of the model (``feature_scale``), so cold and
  attacked images are scaled by the same number and INSA's gradients reach the pixels through it.
  This also changes the base model (E sees scaled features), so even ε = 0 is not plain VBPR.
- ``relative_norm``: the features are left as they are and ε = ``adv_eps`` × the mean L2 norm of
  the training items' features (default 0.05). ``adv_eps_relative: x`` is the earlier spelling of
  ``adv_eps_unit: relative_norm, adv_eps: x`` and keeps its sweep labels.

The absolute ε (in the units of the features the model sees) and the scale are recorded with the
model. Nothing in training picks ε (validation HR barely moves with it, while the robustness to
INSA does), so AMR's results are a curve over ``adv_eps`` in a stated unit, an axis of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from aipray.models.base import MODELS
from aipray.models.train import FeatureAdversary
from aipray.models.vbpr import VBPR, VBPRConfig
from aipray.params import param

ADV_EPS_UNITS = ("max_abs", "relative_norm")
#: ε when ``adv_eps`` is not given: AMR's own 0.1 (max_abs), and the earlier relative default
DEFAULT_ADV_EPS = {"max_abs": 0.1, "relative_norm": 0.05}


@dataclass(frozen=True)
class AMRConfig(VBPRConfig):
    """VBPR's settings plus the adversary: ``adv_eps`` (L2 size of Δ in ``adv_eps_unit``;
    null: 0.1 for ``max_abs``, 0.05 for ``relative_norm``), ``adv_eps_unit`` (``max_abs``:
    features divided by their global max |f|, AMR's code; ``relative_norm``: a fraction of the
    mean feature norm; null: ``relative_norm`` when ``adv_eps_relative`` is given, else
    ``max_abs``), ``adv_eps_relative`` (the earlier spelling of a ``relative_norm`` ε),
    ``adv_weight`` (λ_adv) and ``clean_epochs`` (``None``: plain epochs until validation stops
    improving, at most half the epochs, then adversarial ones until it stops again; without a
    ``patience``, half the epochs, as sisinflab)."""

    adv_eps: float | None = param(None, axis=True, min=0)
    adv_eps_unit: str | None = param(None, choices=ADV_EPS_UNITS)
    adv_eps_relative: float | None = param(None, axis=True, min=0)
    adv_weight: float = param(1.0, min=0)
    clean_epochs: int | None = param(None, min=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adv_eps_unit is None:  # resolved, so that params and cache keys name the unit
            unit = "max_abs" if self.adv_eps_relative is None else "relative_norm"
            object.__setattr__(self, "adv_eps_unit", unit)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        bad: list[tuple[str, object, str]] = []
        if self.clean_epochs is not None and self.clean_epochs >= self.epochs:
            allowed = f"an integer < epochs = {self.epochs} (or null: half the epochs)"
            bad.append(("clean_epochs", self.clean_epochs, allowed))
        if self.adv_eps_relative is not None and self.adv_eps is not None:
            allowed = (
                "null when adv_eps is set (adv_eps_relative: x means adv_eps: x, relative_norm)"
            )
            bad.append(("adv_eps_relative", self.adv_eps_relative, allowed))
        if self.adv_eps_relative is not None and self.adv_eps_unit == "max_abs":
            allowed = "relative_norm or null with adv_eps_relative (a fraction of the mean norm)"
            bad.append(("adv_eps_unit", self.adv_eps_unit, allowed))
        return bad

    def eps_value(self) -> float:
        """ε in :attr:`adv_eps_unit`."""
        if self.adv_eps_relative is not None:
            return self.adv_eps_relative
        return DEFAULT_ADV_EPS[self.adv_eps_unit] if self.adv_eps is None else self.adv_eps

    def adversary(self) -> FeatureAdversary:
        # null: until validation stops improving, at most half the epochs (with a patience),
        # else half the epochs
        clean = self.clean_epochs
        if clean is None and self.patience is None:
            clean = self.epochs // 2
        return FeatureAdversary(
            eps=self.eps_value(),
            weight=self.adv_weight,
            clean_epochs=clean,
            unit=self.adv_eps_unit,
        )


@MODELS.register("amr")
class AMR(VBPR):
    """VBPR with adversarial training of the visual factors; scoring is VBPR's."""

    Config = AMRConfig
    display_name = "AMR"
