"""VBPR (He & McAuley 2016) on the features of a frozen, pretrained extractor.

``p(u, i) = α + β_u + β_i + γ_u·γ_i + θ_u·(E f_i) + β'·f_i`` with ``f_i = Φ_f(X_i)``. The global
offset α is dropped: it changes neither rankings nor prediction shifts. A cold item has no trained
``β_i`` or ``γ_i``; both are zero, so only its image counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aipray.models.base import MODELS, Recommender
from aipray.models.extractor import Extractor, build_extractor, extract_features
from aipray.params import param


@dataclass(frozen=True)
class VBPRConfig:
    """VBPR training. AIP: K = K' = 100, BPR loss with L2 weight λ."""

    dim: int = param(100, axis=True, min=1)
    lr: float = param(1e-3, min=0)
    weight_decay: float = param(1e-4, min=0)
    epochs: int = param(20, min=1)
    batch_size: int = param(1024, min=1)


@MODELS.register("vbpr")
class VBPR(Recommender):
    """Latent and visual factors on top of a frozen pretrained ``extractor``."""

    Config = VBPRConfig
    uses_extractor = True

    def __init__(
        self, n_users: int, n_items: int, dim: int, extractor_spec: dict[str, Any]
    ) -> None:
        super().__init__()
        self.init_args = {
            "n_users": n_users,
            "n_items": n_items,
            "dim": dim,
            "extractor_spec": extractor_spec,
        }
        self.extractor = build_extractor(extractor_spec)
        self.extractor.eval().requires_grad_(False)
        feature_dim = self.extractor.feature_dim
        self.beta_user = nn.Embedding(n_users, 1)
        self.gamma_user = nn.Embedding(n_users, dim)
        self.theta_user = nn.Embedding(n_users, dim)
        self.beta_item = nn.Embedding(n_items, 1)
        self.gamma_item = nn.Embedding(n_items, dim)
        self.E = nn.Linear(feature_dim, dim, bias=False)
        self.beta_visual = nn.Linear(feature_dim, 1, bias=False)
        for emb in (self.gamma_user, self.theta_user, self.gamma_item):
            nn.init.normal_(emb.weight, std=0.01)
        for emb in (self.beta_user, self.beta_item):
            nn.init.zeros_(emb.weight)
        nn.init.normal_(self.E.weight, std=0.01)
        nn.init.zeros_(self.beta_visual.weight)

    @classmethod
    def on(cls, extractor: Extractor, n_users: int, n_items: int, dim: int) -> VBPR:
        """A fresh model on top of the trained ``extractor`` (its weights copied in)."""
        model = cls(n_users, n_items, dim, extractor.spec)
        model.extractor.load_state_dict(extractor.state_dict())
        return model

    def train(self, mode: bool = True) -> VBPR:
        super().train(mode)
        self.extractor.eval()  # the pretrained extractor never trains here
        return self

    @property
    def n_users(self) -> int:
        return self.theta_user.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        b = self.beta_user(users)
        return torch.cat(
            [b, torch.ones_like(b), self.gamma_user(users), self.theta_user(users)], dim=1
        )

    def encode_features(
        self, features: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes from extractor features ``[B, F]``; ``items=None`` for cold items."""
        visual = self.E(features)
        bias = self.beta_visual(features)
        if items is None:
            gamma = visual.new_zeros(visual.shape)
        else:
            bias = bias + self.beta_item(items)
            gamma = self.gamma_item(items)
        return torch.cat([torch.ones_like(bias), bias, gamma, visual], dim=1)

    def visual_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``E Φ_f(X)``: the part of the score INSA's VBPR objective acts on."""
        return self.E(self.extractor.features(images))

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        if images is None:
            raise ValueError("VBPR needs item images to compute visual features")
        return self.encode_features(self.extractor.features(images), items)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(images)

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_embedding(images)

    def training_encoder(self, images: np.ndarray) -> FeatureEncoder:
        device = self.E.weight.device
        return FeatureEncoder(
            extract_features(self.extractor, images, device=device), self.encode_features
        )


@dataclass(frozen=True)
class FeatureEncoder:
    """Training-time item encoder over precomputed extractor features ``[n_items, F]``.

    ``features(items)`` and ``encode(features, items)`` are exposed separately so that AMR can
    perturb the features between the two."""

    table: torch.Tensor
    encode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

    def features(self, items: torch.Tensor) -> torch.Tensor:
        return self.table[items]

    def __call__(self, items: torch.Tensor) -> torch.Tensor:
        return self.encode(self.table[items], items)
