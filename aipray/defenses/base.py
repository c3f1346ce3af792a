"""Input-transform defences applied to every image the ranker sees.

A platform cannot tell which images are adversarial, so a defence transforms all of them: the
candidate items' images, the cooperative and the adversarial cold images alike.

Each defence also declares how an attacker who knows it differentiates through it (Athalye et
al., ICML 2018), so that an adaptive attack is a switch on the attack, not a rewrite
(:meth:`Defense.attackable`):

- ``gradient = "exact"``: the defence is differentiable and its own gradient is used;
- ``gradient = "bpda"``: the forward pass is the defence, the backward pass the identity
  (Backward Pass Differentiable Approximation, straight-through): JPEG, bit depth; a defence
  with a differentiable approximation (``approximable``: JPEG) offers its gradient instead;
- ``randomised = True``: every call draws new randomness; an attacker averages its objective over
  several draws per step (Expectation over Transformation, ``eot_samples`` of the attack).

A *screen* (``screens = True``: the detector) serves images as uploaded but rejects some
uploads (:meth:`Defense.rejects`); an evaluation scores a rejected item as never shown, and an
adaptive attacker also keeps :meth:`Defense.evasion` low.

A defence with weights (``trained = True``: the denoiser, the detector) is built by its own
stage of the sweep (:meth:`Defense.fit`, stored with :meth:`Defense.save`); everything after it
gets the defence by :func:`make_defense`, which loads it from that stage's folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from aipray.params import Settings
from aipray.registry import Registry

if TYPE_CHECKING:
    from aipray.data.catalog import Catalog
    from aipray.models.base import Recommender

DEFENSES: Registry[Defense] = Registry("defense")

#: how an attacker can differentiate through a defence (:attr:`Defense.gradient`)
GRADIENTS = ("exact", "bpda")


class Defense:
    """``defense(images [B, 3, H, W] in [0, 1]) → images of the same shape in [0, 1]``: what the
    platform serves, the same output for the same image every time (a randomised defence draws
    its randomness from the image's content, see :mod:`aipray.defenses.resize_pad`).

    ``defense.attackable(images, generator)`` is the same transform as an adaptive attacker
    differentiates it (:attr:`gradient`), with a randomised defence's randomness drawn from the
    attacker's ``generator`` instead.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    #: how an attacker differentiates through the defence: one of :data:`GRADIENTS`
    gradient: ClassVar[str] = "bpda"
    #: a BPDA defence with a differentiable stand-in (:meth:`approximation`) whose gradient an
    #: attacker may use in place of the identity's
    approximable: ClassVar[bool] = False
    #: each application draws new randomness: an attacker averages over draws (EOT)
    randomised: ClassVar[bool] = False
    #: leaves images as they are (no defence): nothing to recompute for it
    identity: ClassVar[bool] = False
    #: has weights, built by the sweep's ``defense`` stage (:meth:`fit`, :meth:`load`)
    trained: ClassVar[bool] = False
    #: bumped when what a trained defence's stage stores changes, so it is rebuilt
    version: ClassVar[int] = 1
    #: rejects some uploaded images (:meth:`rejects`) instead of, or besides, transforming them
    screens: ClassVar[bool] = False
    #: a screen's :meth:`detect` score at or above which an upload is rejected
    threshold: float = float("inf")

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def fit(
        cls, config: Any, catalog: Catalog, ranker: Recommender, *, device: Any, seed: int
    ) -> Defense:
        """A trained defence (``trained = True``) ready to serve in front of ``ranker``."""
        raise NotImplementedError(f"{cls.__name__} has no weights to train")

    @classmethod
    def fingerprint(cls, config: Any) -> Any:
        """What, besides the config and ``version``, decides a trained defence (the content of
        a checkpoint it loads)."""
        return None

    def save(self, folder: Path) -> None:
        """Store a trained defence's weights in ``folder`` (:meth:`load` reads them)."""
        raise NotImplementedError(f"{type(self).__name__} has no weights to store")

    @classmethod
    def load(cls, config: Any, folder: Path) -> Defense:
        """A trained defence as :meth:`save` stored it."""
        raise NotImplementedError(f"{cls.__name__} has no weights to load")

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """A screen's ``[B]`` scores of uploaded ``images``, higher = more likely adversarial."""
        raise NotImplementedError(f"{type(self).__name__} does not screen uploads")

    @torch.no_grad()
    def rejects(self, images: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: the uploads the platform turns away (none, unless the defence
        :attr:`screens`: those whose :meth:`detect` score reaches its ``threshold``)."""
        if not self.screens:
            return torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        return self.detect(images) >= self.threshold

    def evasion(self, images: torch.Tensor) -> torch.Tensor:
        """``[B]`` what an adaptive attacker keeps low to pass a screen (differentiable);
        zero for a defence that does not screen."""
        return images.new_zeros(images.shape[0])

    def draw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One application with its randomness from ``generator``; a deterministic defence is
        its ``__call__`` (the generator is not used)."""
        return self(images)

    def approximation(self, images: torch.Tensor) -> torch.Tensor:
        """A differentiable stand-in for the defence (``approximable`` defences only)."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable approximation")

    def attackable(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        approximate: bool = False,
    ) -> torch.Tensor:
        """The defence as an adaptive attacker sees it: the forward pass is one
        :meth:`draw` (``generator`` defaults to a fresh one seeded 0), the backward pass the
        defence's own gradient (``exact``) or, for ``bpda``, the identity's, or with
        ``approximate`` that of :meth:`approximation` (an ``approximable`` defence's)."""
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        if self.gradient == "exact":
            return self.draw(images, generator)
        if self.gradient == "bpda":
            out = self.draw(images.detach(), generator).detach()
            if approximate and self.approximable:
                stand_in = self.approximation(images)
                return out + (stand_in - stand_in.detach())  # forward: out; gradient: stand-in
            return out + (images - images.detach())  # forward: out exactly; gradient: identity
        raise ValueError(
            f"{type(self).__name__}.gradient: {self.gradient!r} is not allowed; expected one of "
            f"{', '.join(GRADIENTS)}"
        )


def make_defense(name: str, config: Any, folder: Path | None = None) -> Defense:
    """The registered defence ``name`` with ``config``; a trained one is loaded from ``folder``,
    the output of the trial's ``defense`` stage."""
    cls = DEFENSES.get(name)
    if not cls.trained:
        return cls(config)
    if folder is None or not Path(folder).is_dir():
        raise ValueError(
            f"defence {name!r} has weights: its stage's folder {folder} is missing; run the "
            "sweep's stages (or Defense.fit) first"
        )
    return cls.load(config, Path(folder))


@dataclass(frozen=True)
class NoDefenseConfig(Settings):
    pass


@DEFENSES.register("none")
class NoDefense(Defense):
    """The identity: the ranker sees images as uploaded."""

    Config = NoDefenseConfig
    gradient = "exact"
    identity = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images
