"""INSA, the insider attack of AIP (Liu & Larson, WWW 2021, eq. 6).

The attacker knows the trained ranker, user embeddings included, and maximises, over an
L∞-bounded δ, how much all users prefer the item: ``Σ_u p(u, X + δ)``. The objective is the
ranker's own :meth:`~aipray.models.base.Recommender.preference`, the sum of the users' scores
unless the model has a cheaper equivalent (VBPR/AMR: linear in the features; AlexRank: a weighted
sum over profile items; DVBPR: the logarithm of AIP's ``Σ exp``). INSA itself names no model, so
any ranker that implements the interface can be attacked.

Like the paper, each Adam step uses one batch of users; ``epochs`` passes over all users.
Adaptive (``adaptive: true``), it maximises the preference of the defended image, through the
ranker the platform serves under the defence.

Against an :class:`~aipray.attacks.ensemble.Ensemble` of source models (a transfer attack
whose ``source`` names several), it maximises the mean of the sources' preferences, each
divided by the norm of its gradient at the hook image for the first batch of users
(:meth:`INSA.scale`): a per-model constant that makes the sources' pulls on the pixels equally
strong at a real product image, whatever the units of each model's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import (
    ATTACKS,
    Attack,
    AttackInputs,
    Objective,
    TransferConfig,
    linf_ascent,
)
from aipray.attacks.ensemble import ensemble_objective, members, positive
from aipray.models.base import Recommender
from aipray.params import param


def default_lr(model: Recommender, eps: float, steps: int) -> float:
    """The model's INSA step (:attr:`Recommender.attack_lr`, AIP's per-model Adam lr), raised
    where needed so that ``steps · lr ≥ 2ε/255``.

    Adam moves a pixel by at most about ``lr`` per step. AIP's code made one step per user
    (34k per epoch on Amazon Men), so even lr 1e-4 crossed the ε-ball; with user batches there
    are ~500× fewer steps, and lr 1e-4 would stop at ≈ 17/255 whatever ε (measured), making
    ε = 16 and 32 the same attack.
    """
    return max(model.attack_lr, 2.0 * eps / 255.0 / max(1, steps))


@dataclass(frozen=True)
class INSAConfig(TransferConfig):
    """eps in 0..255 pixel units; ``epochs`` passes over all users in batches of ``user_batch``
    (AIP: 10 × 512); lr ``None`` takes the model's default (:func:`default_lr`); ``adaptive``,
    ``eot_samples``, ``source``: :class:`~aipray.attacks.base.TransferConfig`."""

    eps: float = param(32.0, axis=True, min=0, max=255)
    epochs: int = param(10, min=1)
    user_batch: int = param(512, min=1)
    lr: float | None = param(None, min=0)
    seed: int = 0


@ATTACKS.register("insa")
class INSA(Attack):
    """Insider attack: maximise every user's preference for the item (eq. 6)."""

    Config = INSAConfig
    version = 3  # 3: the objective is the model's preference (VBPR/AMR without β′ by default)

    def __init__(self, config: INSAConfig, model: Recommender, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        batches = self.user_batches(images.device)
        lr = cfg.lr if cfg.lr is not None else default_lr(self.model, cfg.eps, len(batches))
        objective = self.objective(batches, images.device, item_ids)
        return linf_ascent(
            images, self.through_defense(objective), eps=cfg.eps, steps=len(batches), lr=lr
        )

    def user_batches(self, device: torch.device) -> list[torch.Tensor]:
        """The batch of users of each step: ``epochs`` seeded permutations of all users."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        batches: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            perm = torch.randperm(self.model.n_users, generator=gen)
            batches.extend(perm.split(cfg.user_batch))
        return [b.to(device) for b in batches]

    def objective(
        self,
        batches: list[torch.Tensor],
        device: torch.device,
        item_ids: torch.Tensor | None = None,
    ) -> Objective:
        """What INSA maximises at step ``t`` (before any defence): the model's preference of
        ``batches[t]`` for the items ``item_ids`` (a ranker that reads titles needs them);
        against an ensemble, the mean of its models' preferences, each divided by its
        :meth:`scale`."""
        models = members(self.model)
        objectives = [preference_of(model, batches, item_ids) for model in models]
        scales = [self.scale(m, batches, device) for m in models] if len(models) > 1 else [1]
        return ensemble_objective(objectives, scales)

    def scale(
        self, model: Recommender, batches: list[torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        """A source's scale in an ensemble: the L2 norm of the gradient of its preference (first
        batch of users) with respect to the pixels of the hook image, the popular item the
        attacker knows. Scaling a model's scores scales it alike, so the ratio is unit-free."""
        if self.inputs.hook_image is None:
            raise ValueError("an ensemble INSA needs the hook item's image to scale its sources")
        hook = self.inputs.hook_image.to(device).unsqueeze(0).detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model.preference(batches[0], hook).sum(), hook)
        return positive(grad.norm())


def preference_of(
    model: Recommender, batches: list[torch.Tensor], item_ids: torch.Tensor | None = None
) -> Objective:
    """``model``'s INSA objective: its preference of the step's batch of users for the items
    ``item_ids``."""

    def preference(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return model.preference(batches[step], x_adv, item_ids)

    return preference
