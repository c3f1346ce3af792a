"""A user's own ranker, defined outside aipray/models and never registered: the protocol tests
attack it directly, and a sweep names it by import path (``tests.rankers:PooledRanker``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import aipray
from aipray.params import Settings, param
from aipray.pixels import to_float


@dataclass(frozen=True)
class PooledConfig(Settings):
    """Its sweep settings: the embedding length and a short BPR training."""

    dim: int = param(8, axis=True, min=1)
    epochs: int = param(2, min=1)
    batch_size: int = param(256, min=1)
    lr: float = param(0.01, min=0)


class PooledRanker(aipray.Recommender):
    """User vectors against a linear map of 4×4 average-pooled pixels. Only n_users,
    encode_items, user_vectors and feature_network, plus a training recipe for sweeps."""

    Config = PooledConfig

    def __init__(self, n_users: int, dim: int = 8) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users, dim)
        self.proj = nn.Linear(3 * 4 * 4, dim)

    @property
    def n_users(self) -> int:
        return self.users.num_embeddings

    def feature_network(self, images):
        return F.adaptive_avg_pool2d(images, 4).flatten(1)

    def encode_items(self, images, items=None):
        return self.proj(self.feature_network(images))

    def user_vectors(self, users):  # score = user vector · item code
        return self.users(users)

    def training_encoder(self, images):
        return lambda items: self.encode_items(to_float(images[items.cpu().numpy()], items.device))

    @classmethod
    def fit(cls, config, catalog, *, extractor=None, device, seed):
        from aipray.models.train import fit_with

        torch.manual_seed(seed)
        model = cls(catalog.n_users, config.dim).to(device)
        groups = [{"params": model.parameters()}]
        return fit_with(model, catalog, config, groups, device=device, seed=seed, reg=0.0)
