"""INSA, the insider attack of AIP (Liu & Larson, WWW 2021, eq. 6).

The attacker knows the trained user embeddings and maximises, over an L∞-bounded δ, how much all
users prefer the item:

- VBPR:  Σ_u θ_u·(E Φ_f(X + δ)) = (Σ_u θ_u)·(E Φ_f(X + δ)): linear, one forward per step;
- DVBPR: Σ_u exp(θ_u·Φ_e(X + δ)), optimised as its logarithm (logsumexp), which has the same
  maximiser and does not overflow.

Like the paper, each Adam step uses one batch of users; ``epochs`` passes over all users.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import ATTACKS, Attack, AttackInputs, linf_ascent
from aipray.models.base import Recommender
from aipray.params import param

DEFAULT_LR = {"dvbpr": 1e-3, "vbpr": 1e-4}


@dataclass(frozen=True)
class INSAConfig:
    """eps in 0..255 pixel units; lr ``None`` takes AIP's per-model value (DVBPR 1e-3, VBPR 1e-4)."""

    eps: float = param(32.0, axis=True, min=0, max=255)
    epochs: int = param(10, min=1)
    user_batch: int = param(512, min=1)
    lr: float | None = param(None, min=0)
    seed: int = 0


def insa_objective(model: Recommender, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Eq. 6 for ``users`` (one batch), per image: ``[B]``."""
    if model.name == "dvbpr":
        scores = model.score_codes(users, model.feature_network(images))  # [U, B]
        return torch.logsumexp(scores, dim=0)
    if model.name == "vbpr":
        theta_sum = model.theta_user(users).sum(0)  # [K]
        return model.visual_embedding(images) @ theta_sum
    raise ValueError(f"INSA has no objective for model {model.name!r}; allowed: dvbpr, vbpr")


@ATTACKS.register("insa")
class INSA(Attack):
    """Insider attack: maximise every user's preference for the item (eq. 6)."""

    Config = INSAConfig
    models = ("dvbpr", "vbpr")

    def __init__(self, config: INSAConfig, model: Recommender, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        device = images.device
        n_users = self.model.n_users
        gen = torch.Generator().manual_seed(cfg.seed)
        batches: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            perm = torch.randperm(n_users, generator=gen)
            batches.extend(perm.split(cfg.user_batch))
        batches = [b.to(device) for b in batches]
        lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[self.model.name]

        def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
            return insa_objective(self.model, batches[step], x_adv)

        return linf_ascent(images, objective, eps=cfg.eps, steps=len(batches), lr=lr)
