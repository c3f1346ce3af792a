"""Ensemble transfer attacks: images crafted against several source models at once.

Liu et al. (ICLR 2017, "Delving into transferable adversarial examples") craft against an
ensemble by optimising a weighted sum of the models' losses; images that fool several models
transfer to a held-out one better than images made on any one of them. Here the weights are
equal and each source's objective is first divided by a scale of its own, so that no model
dominates because its objective happens to be larger (a VBPR preference sums raw scores over a
batch of users, DVBPR's is a log-sum-exp, AlexRank's a weighted sum of distances): the
ensemble maximises ``(1/K) Σ_k objective_k(x, step) / scale_k``. Each attack says what its
sources' scales are (INSA: the norm of each source's preference gradient at the hook image;
EXPA: the norm of each source's features of the hook), a per-model constant: a per-image one
would tie an image to its position in the batch, which :class:`~aipray.linf.Plateau` forbids.

An ensemble of one model is that model: its objective is returned unchanged, so the images are
the single-source attack's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aipray.linf import Objective

#: bumped when how an ensemble combines its sources changes (it keys ensembles' stored images)
ENSEMBLE_VERSION = 1


class Ensemble:
    """The source models of an ensemble transfer attack, in a canonical order.

    What an attack reads of its model when it is an ensemble: :attr:`models` (each a
    :class:`~aipray.models.base.Recommender` on the same users), :attr:`n_users` and
    :attr:`attack_lr`. An attack calls :func:`members` to attack a model or an ensemble alike.
    """

    def __init__(self, models: Sequence[Any]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        users = {int(m.n_users) for m in models}
        if len(users) > 1:
            raise ValueError(f"the ensemble's models have different users: {sorted(users)}")
        self.models = tuple(models)

    @property
    def n_users(self) -> int:
        return int(self.models[0].n_users)

    @property
    def attack_lr(self) -> float:
        """INSA's default Adam step: the largest of the models' own. Adam's step does not
        depend on the objective's scale, and a model's step was chosen so that the attack
        crosses the ε-ball in the steps it has; the larger one serves every source."""
        return max(float(m.attack_lr) for m in self.models)


def members(model: Any) -> tuple[Any, ...]:
    """The models an attack crafts against: an :class:`Ensemble`'s, or ``model`` alone."""
    return model.models if isinstance(model, Ensemble) else (model,)


def ensemble_objective(objectives: Sequence[Objective], scales: Sequence[Any]) -> Objective:
    """The mean of ``objectives`` (``(x [B,3,H,W], step) → [B]``), each divided by its scale
    (a positive number or 0-d tensor): Liu et al.'s weighted sum with equal weights. One
    objective is returned as it is, unscaled."""
    if len(objectives) != len(scales) or not objectives:
        raise ValueError(f"{len(objectives)} objectives and {len(scales)} scales")
    if len(objectives) == 1:
        return objectives[0]
    k = len(objectives)

    def objective(x: torch.Tensor, step: int) -> torch.Tensor:
        total = objectives[0](x, step) / scales[0]
        for one, scale in zip(objectives[1:], scales[1:], strict=True):
            total = total + one(x, step) / scale
        return total / k

    return objective


def positive(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` detached, with a vanishing one replaced by 1 (that source is left unscaled
    rather than blown up)."""
    scale = scale.detach()
    return torch.where(scale > 0, scale, torch.ones_like(scale))
