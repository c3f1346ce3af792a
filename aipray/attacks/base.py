"""The :class:`Attack` interface and the attack registry; the L∞ projected-gradient engine every
optimisation attack shares lives in :mod:`aipray.linf` (re-exported here).

An attack whose Config inherits :class:`AdaptiveConfig` can be made adaptive (``adaptive:
true``): it then optimises through the trial's input defence, as the defence declares an
attacker differentiates it (:meth:`aipray.defenses.base.Defense.attackable`: its exact gradient,
or BPDA), averaging a randomised defence's draws per step (EOT). :meth:`Attack.through_defense`
turns any objective into its adaptive form, so each attack keeps one objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from aipray.linf import Objective, Plateau, linf_ascent, quantize_within  # noqa: F401 re-exported
from aipray.params import Settings, param
from aipray.registry import Registry

if TYPE_CHECKING:
    from aipray.defenses.base import Defense

ATTACKS: Registry[Attack] = Registry("attack")
#: the default weight of a screen's evasion in an adaptive attack (:class:`AdaptiveConfig`)
EVADE_WEIGHT = 100.0


@dataclass(frozen=True)
class AdaptiveConfig(Settings):
    """The settings of an attack that can be adaptive (the base of its Config).

    ``adaptive``: optimise through the trial's input defence (defence ∘ ranker, or defence ∘
    classifier) instead of the undefended model (``false``, oblivious: AIP's and
    Denoise-to-protect's setting); a grid axis, so ``[false, true]`` gives both trials.
    ``eot_samples``: draws of a randomised defence whose objectives are averaged per step
    (Athalye et al.'s Expectation over Transformation; one draw = a plain adaptive attack).
    ``bpda``: the gradient a BPDA defence passes back, the identity's (straight-through) or its
    differentiable ``approximation`` (JPEG's: Shin & Song's; a grid axis; against a defence
    without one it is the identity).

    ``evade_weight``: against a defence that screens uploads (the detector), the weight λ of
    the screen's :meth:`~aipray.defenses.base.Defense.evasion` (a hinge on the detector's logit
    under its threshold) subtracted from the attack's objective per image: the attacker keeps
    the detector's score low as well (Carlini & Wagner, AISec 2017). In units of the objective
    per logit; the hinge is zero once the image passes, so a large λ acts as a constraint.

    All are left out of the attack's store key at their defaults, so an oblivious attack keeps
    the key it had before attacks could be adaptive.
    """

    adaptive: bool = param(False, axis=True, keyed_at_default=False)
    eot_samples: int = param(1, min=1, keyed_at_default=False)
    bpda: str = param(
        "identity", axis=True, choices=("identity", "approximation"), keyed_at_default=False
    )
    evade_weight: float = param(EVADE_WEIGHT, min=0, keyed_at_default=False)


@dataclass(frozen=True)
class TransferConfig(AdaptiveConfig):
    """The settings of an attack crafted against a ranker (INSA) or its feature network
    (EXPA), which it may craft against another of the sweep's models than the one it is
    evaluated on: the transfer (black-box) setting.

    ``source``: the name (or label, e.g. ``vbpr(dim=20)``) of a model of the sweep's
    ``models:`` section, trained on the same dataset, extractor and seed; the images are crafted
    against it and evaluated on the trial's model. ``None`` (default): the trial's own model, the
    direct (white-box) attack. A grid axis: ``[vbpr, dvbpr]`` crafts on each. The images made on
    a model are one stored set whichever model evaluates them, so a transfer trial reuses the
    direct trial's. Left out of the store key at its default, like ``adaptive``.

    An ensemble (Liu et al., ICLR 2017) is several models joined by ``+``: ``vbpr+dvbpr``
    crafts one set against both at once (:mod:`aipray.attacks.ensemble`), evaluated on models
    outside it. A string rather than a YAML list, because a list is already the axis:
    ``source: [vbpr, vbpr+dvbpr]`` is one single-model and one ensemble trial, where a list
    inside the list would be easy to misread; and because the value stays what a label, an
    MLflow param and the report's row already are, a string (``+`` never occurs in a model's
    label). The order of the models changes neither the set nor the trial's key.
    """

    source: str | None = param(None, axis=True, keyed_at_default=False)


def through_defense(
    objective: Objective,
    defense: Defense,
    samples: int,
    generator: torch.Generator,
    approximate: bool = False,
    evade_weight: float = 0.0,
) -> Objective:
    """``objective`` of the defended images, as an adaptive attacker optimises it: the mean over
    ``samples`` draws of ``objective(defense.attackable(x), step)``, the draws taken from
    ``generator`` (EOT; one draw for a deterministic defence); ``approximate``: a BPDA defence's
    gradient is its differentiable approximation's; less ``evade_weight`` ×
    ``defense.evasion(x)`` of the uploaded image (what passing a screen costs; zero for other
    defences)."""

    def seen(x: torch.Tensor) -> torch.Tensor:
        return defense.attackable(x, generator, approximate=approximate)

    def defended(x: torch.Tensor, step: int) -> torch.Tensor:
        total = objective(seen(x), step)
        for _ in range(samples - 1):
            total = total + objective(seen(x), step)
        if evade_weight:
            return total / samples - evade_weight * defense.evasion(x)
        return total / samples

    return defended


@dataclass(frozen=True)
class AttackInputs:
    """What an attacker may know besides the ranker.

    Attributes:
        hook_image: ``[3, H, W]`` in [0, 1], the popular item EXPA and c-SEMA lean on.
        classifier: the pretrained extractor's classifier (images → logits), for the
            classifier-targeted TAaMR attacks.
        target_class: the class those attacks push towards (most popular among training items).
        defense: the trial's input defence, which an adaptive attack optimises through (an
            oblivious one does not read it).
    """

    hook_image: torch.Tensor | None = None
    classifier: torch.nn.Module | None = None
    target_class: int | None = None
    defense: Defense | None = None


@dataclass(frozen=True)
class AttackResult:
    """What an attack produces for a batch of ``B`` items (:meth:`Attack.run`).

    Attributes:
        images: ``[B, 3, H, W]`` adversarial images on the 8-bit grid.
        steps: ``[B]`` updates each image received, where that varies from image to image (an
            early stop); ``None`` otherwise.
    """

    images: torch.Tensor
    steps: np.ndarray | None = None


class Attack:
    """Base class: ``attack(images [B,3,H,W] in [0,1], item_ids [B]) → adversarial images on the
    8-bit grid``.

    What an attack produces per item is declared here, for every protocol to read: the images
    (``__call__``), the images with the steps each used (:meth:`run`, an
    :class:`AttackResult`), and whether each image reached the attack's own goal
    (:meth:`success`, ``None`` for attacks without one) with that goal's :attr:`target` class.
    A subclass implements ``__call__``, or :meth:`run` when it has more to say than the images.

    ``knowledge`` says what the attack depends on, which decides what its stored images are keyed
    by and shared across: ``"ranker"`` (INSA: one set per trained ranker), ``"feature_network"``
    (EXPA: one set per ranker, except that rankers whose feature network is the frozen pretrained
    extractor, :attr:`~aipray.models.base.Recommender.features_from_extractor`, share one set per
    extractor), ``"classifier"`` (FGSM/PGD: one set per extractor, shared by every ranker) or
    ``"none"`` (c-SEMA, provided: one set per dataset). An adaptive attack's images are also
    keyed by the defence it optimised through.

    An attack that can be adaptive has a Config inheriting :class:`AdaptiveConfig` and writes its
    objective once, wrapped in :meth:`through_defense` (and, where it uses the model outside the
    objective, :meth:`served`).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    knowledge: ClassVar[str] = "ranker"
    #: ranker methods the attack calls beyond scoring (EXPA: the feature network)
    requires: ClassVar[tuple[str, ...]] = ()
    #: bumped when the algorithm changes, so images made by the old one are not reused
    version: ClassVar[int] = 1
    #: the class a classifier-targeted attack pushes towards; ``None`` for the others
    target: int | None = None

    def __init__(self, config: Any, model: torch.nn.Module | None, inputs: AttackInputs) -> None:
        self.config = config
        self.model = model
        self.inputs = inputs

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define __call__ or run")

    @property
    def adaptive(self) -> bool:
        """Whether the attack optimises through :attr:`AttackInputs.defense`."""
        return bool(getattr(self.config, "adaptive", False))

    @classmethod
    def can_be_adaptive(cls) -> bool:
        """Whether the attack has the ``adaptive`` switch (its Config is an
        :class:`AdaptiveConfig`)."""
        return isinstance(getattr(cls, "Config", None), type) and issubclass(
            cls.Config, AdaptiveConfig
        )

    @classmethod
    def can_transfer(cls) -> bool:
        """Whether the attack takes ``source`` (its Config is a :class:`TransferConfig`): its
        images are crafted against a ranker, which may be another model than the evaluated one."""
        return isinstance(getattr(cls, "Config", None), type) and issubclass(
            cls.Config, TransferConfig
        )

    def _defense(self) -> Defense:
        if self.inputs.defense is None:
            raise ValueError(f"an adaptive {self.name} needs the trial's defence (AttackInputs)")
        return self.inputs.defense

    def through_defense(self, objective: Objective) -> Objective:
        """The objective the attack optimises: ``objective`` itself when oblivious; when
        adaptive, ``objective`` of the defended images (:func:`through_defense`), with
        ``eot_samples`` draws of a randomised defence from a generator seeded by the config's
        ``seed`` (0 without one) at each call, so a batch is attacked the same way every time;
        against a screen, less ``evade_weight`` × its evasion hinge."""
        if not self.adaptive:
            return objective
        defense = self._defense()
        samples = int(self.config.eot_samples) if defense.randomised else 1
        generator = torch.Generator().manual_seed(int(getattr(self.config, "seed", 0)))
        approximate = self.config.bpda == "approximation"
        weight = float(getattr(self.config, "evade_weight", 0.0)) if defense.screens else 0.0
        return through_defense(objective, defense, samples, generator, approximate, weight)

    def served(self, images: torch.Tensor) -> torch.Tensor:
        """The images as the attacked model receives them: through the defence the platform
        serves when adaptive (no gradient), unchanged when oblivious."""
        if not self.adaptive:
            return images
        with torch.no_grad():
            return self._defense()(images)

    def run(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> AttackResult:
        """The adversarial images of ``images`` ``[B, 3, H, W]`` in [0, 1] (of items
        ``item_ids``), with the steps each used where that varies."""
        return AttackResult(self(images, item_ids))

    def success(self, adversarial: torch.Tensor) -> torch.Tensor | None:
        """``[B]`` bool: whether each adversarial image reached the attack's own goal (a
        classifier attack: its :attr:`target` class), or ``None`` when the attack has no goal
        of its own (the ranker attacks: the protocol measures what they did)."""
        return None

    @classmethod
    def missing(cls, model_cls: type) -> str | None:
        """The first method in :attr:`requires` that ``model_cls`` leaves to the interface's
        default (which raises), or ``None`` when the attack can run against it."""
        from aipray.models.base import Recommender

        for method in cls.requires:
            if getattr(model_cls, method, None) is getattr(Recommender, method):
                return method
        return None

    @classmethod
    def fingerprint(cls, config: Any) -> Any:
        """What, besides the config and ``version``, decides the attack's images (e.g. the
        content of user-provided files)."""
        return None

    @classmethod
    def restrict(cls, config: Any, item_ids: Any) -> Any:
        """The cold items this attack evaluates (all of them, unless it only has some)."""
        return item_ids
