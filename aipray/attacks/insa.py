"""INSA, the insider attack of AIP (Liu & Larson, WWW 2021, eq. 6).

The attacker knows the trained user embeddings and maximises, over an L∞-bounded δ, how much all
users prefer the item:

- VBPR and AMR: Σ_u θ_u·(E Φ_f(X + δ)) + β'·Φ_f(X + δ) = (Σ_u θ_u)·(E Φ_f) + |U|·β'·Φ_f:
  linear, one forward per step. AIP's eq. 6 omits the visual bias β'·Φ_f, which is part of every
  user's score of the item; leaving it out lets the attack lower the item's score through it;
- DVBPR: Σ_u exp(θ_u·Φ_e(X + δ)), optimised as its logarithm (logsumexp), which has the same
  maximiser and does not overflow;
- AlexRank: Σ_u mean_{j∈I_u} −‖Φ_f(X + δ) − Φ_f(X_j)‖₂ = −Σ_j w_j ‖Φ_f(X + δ) − Φ_f(X_j)‖₂ with
  w_j = Σ_{u∋j} 1/|I_u| over the batch's users: one distance per profile item, no user loop.

Like the paper, each Adam step uses one batch of users; ``epochs`` passes over all users.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import ALL_MODELS, ATTACKS, Attack, AttackInputs, linf_ascent
from aipray.models.alexrank import AlexRank
from aipray.models.base import Recommender
from aipray.models.dvbpr import DVBPR
from aipray.models.vbpr import VBPR
from aipray.params import param

DEFAULT_LR = {"dvbpr": 1e-3, "vbpr": 1e-4, "amr": 1e-4, "alexrank": 1e-4}


def default_lr(model: str, eps: float, steps: int) -> float:
    """AIP's per-model Adam lr, raised where needed so that ``steps · lr ≥ 2ε/255``.

    Adam moves a pixel by at most about ``lr`` per step. AIP's code made one step per user
    (34k per epoch on Amazon Men), so even lr 1e-4 crossed the ε-ball; with user batches there
    are ~500× fewer steps, and lr 1e-4 would stop at ≈ 17/255 whatever ε (measured), making
    ε = 16 and 32 the same attack.
    """
    return max(DEFAULT_LR[model], 2.0 * eps / 255.0 / max(1, steps))


@dataclass(frozen=True)
class INSAConfig:
    """eps in 0..255 pixel units; lr ``None`` takes AIP's per-model value (DVBPR 1e-3, others
    1e-4); ``visual_bias: false`` drops VBPR/AMR's β'·Φ_f term, as AIP's eq. 6 does."""

    eps: float = param(32.0, axis=True, min=0, max=255)
    epochs: int = param(10, min=1)
    user_batch: int = param(512, min=1)
    lr: float | None = param(None, min=0)
    visual_bias: bool = True
    seed: int = 0


def insa_objective(
    model: Recommender, users: torch.Tensor, images: torch.Tensor, *, visual_bias: bool = True
) -> torch.Tensor:
    """Eq. 6 for ``users`` (one batch), per image: ``[B]``."""
    if isinstance(model, DVBPR):
        scores = model.score_codes(users, model.feature_network(images))  # [U, B]
        return torch.logsumexp(scores, dim=0)
    if isinstance(model, VBPR):  # and AMR, its subclass
        theta_sum = model.theta_user(users).sum(0)  # [K]
        features = model.extractor.features(images)
        value = model.E(features) @ theta_sum
        if visual_bias:
            value = value + model.beta_visual(features)[:, 0] * users.numel()
        return value
    if isinstance(model, AlexRank):
        weights = model.profile_weights(users)  # [P]
        active = weights > 0
        dist = torch.cdist(model.feature_network(images), model.profile_features[active])
        return -(dist @ weights[active])
    raise ValueError(f"INSA has no objective for model {model.name!r}; allowed: {ALL_MODELS}")


@ATTACKS.register("insa")
class INSA(Attack):
    """Insider attack: maximise every user's preference for the item (eq. 6)."""

    Config = INSAConfig
    version = 2  # 2: visual bias in VBPR/AMR's objective; lr reaches the ε-ball

    def __init__(self, config: INSAConfig, model: Recommender, inputs: AttackInputs) -> None:
        super().__init__(config, model, inputs)

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        device = images.device
        n_users = self.model.n_users
        gen = torch.Generator().manual_seed(cfg.seed)
        batches: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            perm = torch.randperm(n_users, generator=gen)
            batches.extend(perm.split(cfg.user_batch))
        batches = [b.to(device) for b in batches]
        lr = cfg.lr if cfg.lr is not None else default_lr(self.model.name, cfg.eps, len(batches))

        def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
            return insa_objective(self.model, batches[step], x_adv, visual_bias=cfg.visual_bias)

        return linf_ascent(images, objective, eps=cfg.eps, steps=len(batches), lr=lr)
