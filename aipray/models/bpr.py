"""BPR matrix factorisation (Rendle et al. 2009): the first-stage candidate generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS, Recommender
from aipray.params import Settings, param


@dataclass(frozen=True)
class BPRConfig(Settings):
    """First-stage BPR. ``reg`` is BPR-Opt's λ on the rows of each training triple (γ_u, γ_i,
    γ_j, β_i, β_j). AIP trained 64 factors with SGD lr 0.01 (Amazon) / 0.5 (Tradesy) and weight
    decay 1e-3. ``epochs`` is the most it trains: it stops once validation HR@10 has not improved
    for ``patience`` epochs (null = never) and keeps its best epoch."""

    factors: int = param(64, min=1)
    lr: float = param(0.01, min=0)
    reg: float = param(1e-4, min=0)
    optimizer: str = param("adam", choices=("adam", "sgd"))
    epochs: int = param(100, min=1)
    batch_size: int = param(4096, min=1)
    patience: int | None = param(5, min=1, doc="epochs without a validation gain before stopping")


@MODELS.register("bpr")
class BPR(Recommender):
    """``p(u, i) = γ_u·γ_i + β_i``; not visual: cold items cannot be scored by it."""

    Config = BPRConfig
    display_name = "BPR"
    visual = False

    def __init__(self, n_users: int, n_items: int, factors: int = 64) -> None:
        super().__init__()
        self.init_args = {"n_users": n_users, "n_items": n_items, "factors": factors}
        self.user_emb = nn.Embedding(n_users, factors)
        self.item_emb = nn.Embedding(n_items, factors)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def n_users(self) -> int:
        return self.user_emb.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        u = self.user_emb(users)
        return torch.cat([u, torch.ones_like(u[:, :1])], dim=1)

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        if items is None:
            raise ValueError("BPR scores warm items by id only; it cannot score images")
        return torch.cat([self.item_emb(items), self.item_bias(items)], dim=1)

    def training_encoder(self, images: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda items: self.encode_items(None, items)

    def penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        rows = [self.user_emb(users), self.item_emb(pos), self.item_emb(neg)]
        rows += [self.item_bias(pos), self.item_bias(neg)]
        return sum(r.pow(2).sum(1) for r in rows)

    @classmethod
    def fit(
        cls,
        config: BPRConfig,
        catalog: Catalog,
        *,
        extractor: nn.Module | None = None,
        device: torch.device,
        seed: int,
    ) -> tuple[BPR, dict[str, Any]]:
        from aipray.models.train import fit_with

        torch.manual_seed(seed)
        model = cls(catalog.n_users, catalog.n_items, config.factors).to(device)
        groups = [{"params": model.parameters()}]
        return fit_with(model, catalog, config, groups, device=device, seed=seed, reg=config.reg)
