"""DVBPR (Kang et al. 2017): end-to-end visual BPR, ``p(u, i) = θ_u·Φ_e(X_i)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS, Recommender
from aipray.models.nets import CNNF
from aipray.params import Settings, param
from aipray.pixels import to_float


@dataclass(frozen=True)
class DVBPRConfig(Settings):
    """DVBPR training. AIP/DVBPR: K=100, λ1=1e-3 on the CNN, λ2=1 on θ_u, Adam 1e-4, batch 128,
    20 epochs (here the most it trains: it stops once validation HR@10 has not improved for
    ``patience`` epochs, null = never, and keeps its best epoch)."""

    dim: int = param(100, axis=True, min=1)
    width: float = param(1.0, min=0.01)
    dropout: float = param(0.5, min=0, max=0.99)
    lr: float = param(1e-4, min=0)
    lambda_cnn: float = param(1e-3, min=0)
    lambda_user: float = param(1.0, min=0)
    epochs: int = param(20, min=1)
    batch_size: int = param(128, min=1)
    patience: int | None = param(5, min=1, doc="epochs without a validation gain before stopping")


@MODELS.register("dvbpr")
class DVBPR(Recommender):
    """User embeddings θ ``[n_users, dim]`` and the CNN-F item network Φ_e.

    Dropout is active only in training mode; every scoring path puts the model in eval mode (the
    AIP code left dropout on at evaluation, so its item embeddings were random).
    """

    Config = DVBPRConfig
    display_name = "DVBPR"
    attack_lr = 1e-3  # AIP's INSA step for DVBPR

    def __init__(
        self, n_users: int, dim: int, image_size: int, width: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.init_args = {
            "n_users": n_users,
            "dim": dim,
            "image_size": image_size,
            "width": width,
            "dropout": dropout,
        }
        self.theta = nn.Embedding(n_users, dim)
        nn.init.normal_(self.theta.weight, std=0.01)
        self.cnn = CNNF(dim, image_size, width=width, dropout=dropout)

    @property
    def n_users(self) -> int:
        return self.theta.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.theta(users)

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        if images is None:
            raise ValueError("DVBPR scores items by their images; images is None")
        return self.cnn(images)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        return self.cnn(images)

    def training_encoder(self, images: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        def encode(items: torch.Tensor) -> torch.Tensor:
            return self.cnn(to_float(images[items.cpu().numpy()], items.device))

        return encode

    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """AIP eq. 6 for DVBPR is ``Σ_u exp(θ_u·Φ_e(X))``; its logarithm (``logsumexp``) is
        maximised instead, which does not overflow. For one batch of users the two have the same
        maximiser, but the gradient of the logarithm is the gradient of the sum divided by the
        sum, so over a sequence of user batches (what INSA optimises) the batches are weighted
        differently than with the sum itself: not the same optimisation path, only per batch the
        same optimum."""
        return torch.logsumexp(self.score_images(users, images), dim=0)

    def penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``‖θ_u‖²/2``: DVBPR's λ2 term on the batch's users (λ1 on the CNN is weight decay)."""
        return 0.5 * self.theta(users).pow(2).sum(1)

    @classmethod
    def fit(
        cls,
        config: DVBPRConfig,
        catalog: Catalog,
        *,
        extractor: nn.Module | None = None,
        device: torch.device,
        seed: int,
    ) -> tuple[DVBPR, dict[str, Any]]:
        from aipray.models.train import fit_with

        torch.manual_seed(seed)
        size = catalog.image_shape[1]
        model = cls(catalog.n_users, config.dim, size, width=config.width, dropout=config.dropout)
        model.to(device)
        groups = [
            {"params": model.cnn.parameters(), "weight_decay": config.lambda_cnn},
            {"params": model.theta.parameters(), "weight_decay": 0.0},
        ]
        reg = config.lambda_user
        return fit_with(model, catalog, config, groups, device=device, seed=seed, reg=reg)
