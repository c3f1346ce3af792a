"""The L∞ projected-gradient engine every optimisation attack shares, and the attack registry.

An attack differs from another only by its *objective*: a function of the current adversarial
images ``[B, 3, H, W]`` (and the step number) returning one value per image ``[B]`` to maximise.
Items in a batch are independent (the objective is a sum of per-item terms and Adam is
element-wise), so a batch optimises exactly as the items would one by one; with a
:class:`Plateau` each item also stops on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from aipray.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")

Objective = Callable[[torch.Tensor, int], torch.Tensor]


def quantize_within(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Round to the 8-bit grid while keeping ``|round(x_adv) − x| ≤ eps/255`` and ``[0, 1]``.

    When ``x`` is itself on the 8-bit grid (stored images are), plain rounding already keeps the
    bound; the clamp makes it hold for off-grid inputs too (e.g. resized images).
    """
    q = torch.round(x_adv * 255.0)
    lo = torch.clamp(torch.ceil(x * 255.0 - eps - 1e-4), min=0.0)
    hi = torch.clamp(torch.floor(x * 255.0 + eps + 1e-4), max=255.0)
    return torch.minimum(torch.maximum(q, lo), hi) / 255.0


@dataclass(frozen=True)
class Plateau:
    """Early stop, image by image: an image stops (its δ is kept from then on) once its objective
    has not exceeded its best value by more than ``tol · |best|`` for ``patience`` steps; the
    ascent ends when every image has stopped. The objective is then called on the images still
    running only, so it must treat images independently of their position in the batch."""

    patience: int
    tol: float = 1e-3


def linf_ascent(
    images: torch.Tensor,
    objective: Objective,
    *,
    eps: float,
    steps: int,
    lr: float,
    method: str = "adam",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    plateau: Plateau | None = None,
    steps_taken: torch.Tensor | None = None,
) -> torch.Tensor:
    """Maximise ``objective`` over ``δ`` with ``‖δ‖∞ ≤ eps/255`` and ``x + δ ∈ [0, 1]``.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1]; never modified.
        objective: ``(x_adv, step) → [B]`` values to maximise.
        eps: L∞ bound in 0..255 pixel units.
        steps: number of updates.
        lr: Adam learning rate (``method="adam"``) or step size in [0, 1] units (``"sign"``: PGD).
        method: ``"adam"`` (AIP's INSA/EXPA) or ``"sign"`` (signed-gradient PGD; FGSM = 1 step).
        random_start: start from a uniform point of the ε-ball (Madry et al.).
        plateau: stop each image once its objective stops improving (default: ``steps`` each).
        steps_taken: an int64 ``[B]`` tensor to fill with the updates each image received.

    Returns:
        Adversarial images on the 8-bit grid, ``[B, 3, H, W]``, detached.
    """
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    x = images.detach()
    bound = eps / 255.0
    if steps_taken is not None:
        steps_taken.fill_(0 if eps == 0 else steps)
    if eps == 0 or steps == 0:
        return quantize_within(x, x, eps)
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)  # CPU: reproducible
        delta = (2 * noise - 1).to(x.device) * bound
        delta = (x + delta).clamp(0, 1) - x
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr) if method == "adam" else None
    running = torch.arange(x.shape[0], device=x.device)  # images still being optimised
    if plateau is not None:
        best = torch.full((x.shape[0],), -math.inf, device=x.device)
        stale = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for step in range(steps):
        if plateau is None:
            value = objective(x + delta, step)
        else:
            value = objective(x[running] + delta[running], step)
            with torch.no_grad():
                v = value.detach()
                b = best[running]
                better = torch.isinf(b) | (v > b + plateau.tol * b.abs())
                best[running] = torch.where(better, v, b)
                stale[running] = torch.where(better, 0, stale[running] + 1)
                done = stale[running] >= plateau.patience
            if done.any():
                if steps_taken is not None:
                    steps_taken[running[done].to(steps_taken.device)] = step
                keep = ~done
                if not keep.any():
                    break
                running, value = running[keep], value[keep]
        (grad,) = torch.autograd.grad(value.sum(), delta)
        with torch.no_grad():
            before = None if plateau is None else delta.detach().clone()
            if opt is None:
                delta += lr * grad.sign()
            else:
                delta.grad = -grad  # Adam minimises
                opt.step()
            delta.clamp_(-bound, bound)
            delta.copy_((x + delta).clamp(0.0, 1.0) - x)
            if before is not None and running.numel() < x.shape[0]:
                # stopped images keep their δ (Adam's momentum would still move them)
                moved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                moved[running] = True
                delta.copy_(torch.where(moved[:, None, None, None], delta, before))
    return quantize_within((x + delta).detach(), x, eps)


@dataclass(frozen=True)
class AttackInputs:
    """What an attacker may know besides the ranker.

    Attributes:
        hook_image: ``[3, H, W]`` in [0, 1], the popular item EXPA and c-SEMA lean on.
        classifier: the pretrained extractor's classifier (images → logits), for the
            classifier-targeted TAaMR attacks.
        target_class: the class those attacks push towards (most popular among training items).
    """

    hook_image: torch.Tensor | None = None
    classifier: torch.nn.Module | None = None
    target_class: int | None = None


class Attack:
    """Base class: ``attack(images [B,3,H,W] in [0,1], item_ids [B]) → adversarial images on the
    8-bit grid``.

    ``knowledge`` says what the attack depends on, which decides what its stored images are keyed
    by and shared across: ``"ranker"`` (INSA: one set per trained ranker), ``"feature_network"``
    (EXPA: one set per ranker, except that rankers whose feature network is the frozen pretrained
    extractor, :attr:`~aipray.models.base.Recommender.features_from_extractor`, share one set per
    extractor), ``"classifier"`` (FGSM/PGD: one set per extractor, shared by every ranker) or
    ``"none"`` (c-SEMA, provided: one set per dataset).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    knowledge: ClassVar[str] = "ranker"
    #: ranker methods the attack calls beyond scoring (EXPA: the feature network)
    requires: ClassVar[tuple[str, ...]] = ()
    #: bumped when the algorithm changes, so images made by the old one are not reused
    version: ClassVar[int] = 1
    #: the updates each image of the last call received, where that varies (an early stop)
    steps_used: Any = None

    def __init__(self, config: Any, model: torch.nn.Module | None, inputs: AttackInputs) -> None:
        self.config = config
        self.model = model
        self.inputs = inputs

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

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
