"""The TAaMR baselines (Di Noia et al. 2020) that AIP compares against: targeted FGSM and PGD on
the pretrained extractor's classifier, pushing every cold image towards the class that is most
popular among training items. They know the classifier, not the ranker, so one set of images
serves every ranker built on that extractor.

Targeted: minimise the cross-entropy to the target class (maximise its negative) inside the L∞
ε-ball, in pixel units, with 8-bit rounding at the end (the bound holds after rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aipray.attacks.base import ATTACKS, Attack, AttackInputs, linf_ascent
from aipray.params import Settings, param


def _targeted_objective(classifier: torch.nn.Module, target: int):
    def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        logits = classifier(x_adv)
        labels = torch.full((x_adv.shape[0],), target, device=x_adv.device, dtype=torch.long)
        return -F.cross_entropy(logits, labels, reduction="none")

    return objective


class _ClassifierAttack(Attack):
    knowledge = "classifier"

    def __init__(self, config, model, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)
        if inputs.classifier is None:
            raise ValueError(f"{self.name} needs the extractor's classifier")
        target = getattr(config, "target", None)
        self.target = inputs.target_class if target is None else int(target)
        if self.target is None:
            raise ValueError(f"{self.name} needs a target class")

    def success(self, adversarial: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: the classifier now says the target class (after the 8-bit round trip)."""
        with torch.no_grad():
            return self.inputs.classifier(adversarial).argmax(1) == self.target


@dataclass(frozen=True)
class FGSMConfig(Settings):
    """eps in 0..255 pixel units; target ``None`` = most popular class among training items."""

    eps: float = param(8.0, axis=True, min=0, max=255)
    target: int | None = param(None, min=0)


@ATTACKS.register("fgsm")
class FGSM(_ClassifierAttack):
    """Targeted FGSM (Goodfellow et al. 2015): ``x − ε·sign(∇_x CE(f(x), t))``, one step."""

    Config = FGSMConfig

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        objective = _targeted_objective(self.inputs.classifier, self.target)
        eps = self.config.eps
        return linf_ascent(images, objective, eps=eps, steps=1, lr=eps / 255.0, method="sign")


@dataclass(frozen=True)
class PGDConfig(Settings):
    """eps in 0..255 pixel units; AIP/TAaMR: 20 steps. The step is ``step_size`` (pixel units),
    or ``step_ratio``·ε (Perceptual-Rec: 10 steps of ε/6, ``step_ratio: 0.1667``), or by default
    2.5·ε/steps (Madry et al.); no random start (as the Perceptual-Rec code)."""

    eps: float = param(8.0, axis=True, min=0, max=255)
    steps: int = param(20, min=1)
    step_size: float | None = param(None, min=0)
    step_ratio: float | None = param(None, min=0)
    random_start: bool = False
    target: int | None = param(None, min=0)
    seed: int = 0

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.step_size is not None and self.step_ratio is not None:
            return [("step_ratio", self.step_ratio, "null when step_size is set (give one)")]
        return []

    def step(self) -> float:
        """The step in pixel units."""
        if self.step_size is not None:
            return self.step_size
        if self.step_ratio is not None:
            return self.step_ratio * self.eps
        return 2.5 * self.eps / self.steps


@ATTACKS.register("pgd")
class PGD(_ClassifierAttack):
    """Targeted PGD (Madry et al. 2018): signed-gradient steps projected onto the ε-ball."""

    Config = PGDConfig

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        step = cfg.step()
        return linf_ascent(
            images,
            _targeted_objective(self.inputs.classifier, self.target),
            eps=cfg.eps,
            steps=cfg.steps,
            lr=step / 255.0,
            method="sign",
            random_start=cfg.random_start,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
