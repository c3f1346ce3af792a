"""The TAaMR baselines (Di Noia et al. 2020) that AIP compares against: targeted FGSM and PGD on
the pretrained extractor's classifier, pushing every cold image towards the class that is most
popular among training items. They know the classifier, not the ranker, so one set of images
serves every ranker built on that extractor.

Targeted: minimise the cross-entropy to the target class (maximise its negative) inside the L∞
ε-ball, with 8-bit rounding at the end (the bound holds after rounding).

``eps_space`` says where the ε-ball lies. ``pixel`` (default): ε/255 in [0, 1] pixels, the same
for every channel (AIP, and aipray's other attacks). ``normalized``: ε/255 in the classifier's
normalised input space, as the Perceptual-Rec / TAaMR code runs CleverHans on ImageNet-normalised
images; per channel c the pixel bound is ε/255 · std_c (ImageNet's std: about 0.226·ε/255, so
Perceptual-Rec's "ε = 8" is about 1.8/255 in pixels), and so is the step. The std comes from the
attacked classifier's own normalisation (its first :class:`~aipray.models.nets.Normalize`), else
ImageNet's. After the 8-bit round trip a channel moves by at most ⌊ε·std_c⌋/255 (on-grid input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aipray.attacks.base import ATTACKS, AdaptiveConfig, Attack, AttackInputs, linf_ascent
from aipray.models.nets import IMAGENET_STD, Normalize
from aipray.params import Settings, param

EPS_SPACES = ("pixel", "normalized")


def input_std(classifier: torch.nn.Module) -> torch.Tensor:
    """``[1, 3, 1, 1]``: the per-channel std the classifier normalises its [0, 1] input with
    (its first :class:`Normalize` module), else ImageNet's (the sisinflab code's)."""
    for module in classifier.modules():
        if isinstance(module, Normalize):
            return module.std.detach().float().reshape(1, -1, 1, 1).cpu()
    return torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def channel_bound(classifier: torch.nn.Module, eps_space: str) -> torch.Tensor:
    """``[1, 3, 1, 1]`` (or ``[1, 1, 1, 1]``) factors from ε (0..255 units of ``eps_space``) to
    the per-channel pixel bound in 0..255 units: 1 in pixel space, std_c in normalised space."""
    if eps_space == "pixel":
        return torch.ones(1, 1, 1, 1)
    if eps_space == "normalized":
        return input_std(classifier)
    raise ValueError(f"eps_space: {eps_space!r} is not allowed; expected one of {EPS_SPACES}")


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
        #: per-channel factor from ε to the pixel bound (``eps_space``; C&W has none)
        self.channel_scale = channel_bound(inputs.classifier, getattr(config, "eps_space", "pixel"))

    def success(self, adversarial: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: the classifier now says the target class (after the 8-bit round trip;
        adaptive: of the image as the defence serves it)."""
        with torch.no_grad():
            return self.inputs.classifier(self.served(adversarial)).argmax(1) == self.target


@dataclass(frozen=True)
class FGSMConfig(Settings):
    """eps in 0..255 units of ``eps_space`` (``pixel``: [0, 1] pixels, default; ``normalized``:
    the classifier's normalised input, as Perceptual-Rec's code); target ``None`` = most popular
    class among training items."""

    eps: float = param(8.0, axis=True, min=0, max=255)
    target: int | None = param(None, min=0)
    eps_space: str = param("pixel", choices=EPS_SPACES)


@ATTACKS.register("fgsm")
class FGSM(_ClassifierAttack):
    """Targeted FGSM (Goodfellow et al. 2015): ``x − ε·sign(∇_x CE(f(x), t))``, one step."""

    Config = FGSMConfig

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        objective = _targeted_objective(self.inputs.classifier, self.target)
        eps = self.config.eps
        if self.config.eps_space == "pixel":
            return linf_ascent(images, objective, eps=eps, steps=1, lr=eps / 255.0, method="sign")
        bound = eps * self.channel_scale  # per channel, 0..255 pixel units
        return linf_ascent(images, objective, eps=bound, steps=1, lr=bound / 255.0, method="sign")


@dataclass(frozen=True)
class PGDConfig(AdaptiveConfig):
    """eps in 0..255 units of ``eps_space`` (as FGSM's); AIP/TAaMR: 20 steps. The step is
    ``step_size`` (ε's units), or ``step_ratio``·ε (Perceptual-Rec: 10 steps of ε/6,
    ``step_ratio: 0.1667``), or by default 2.5·ε/steps (Madry et al.); no random start (as the
    Perceptual-Rec code). ``adaptive``, ``eot_samples``: through the defence into the
    classifier (:class:`~aipray.attacks.base.AdaptiveConfig`)."""

    eps: float = param(8.0, axis=True, min=0, max=255)
    steps: int = param(20, min=1)
    step_size: float | None = param(None, min=0)
    step_ratio: float | None = param(None, min=0)
    random_start: bool = False
    target: int | None = param(None, min=0)
    seed: int = 0
    eps_space: str = param("pixel", choices=EPS_SPACES)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.step_size is not None and self.step_ratio is not None:
            return [("step_ratio", self.step_ratio, "null when step_size is set (give one)")]
        return []

    def step(self) -> float:
        """The step in ε's units (0..255 of ``eps_space``)."""
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
        objective = self.through_defense(_targeted_objective(self.inputs.classifier, self.target))
        if cfg.eps_space != "pixel":
            return linf_ascent(
                images,
                objective,
                eps=cfg.eps * self.channel_scale,
                steps=cfg.steps,
                lr=step * self.channel_scale / 255.0,
                method="sign",
                random_start=cfg.random_start,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
        return linf_ascent(
            images,
            objective,
            eps=cfg.eps,
            steps=cfg.steps,
            lr=step / 255.0,
            method="sign",
            random_start=cfg.random_start,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
