"""VBPR (He & McAuley 2016) on the features of a frozen, pretrained extractor.

AIP's eq. 2: ``p(u, i) = α + β_u + β_i + γ_u·γ_i + θ_u·(E f_i)`` with ``f_i = Φ_f(X_i)``. The
offsets α and β_u are dropped: they change neither a user's ranking nor the BPR loss. He &
McAuley's original model also has a visual bias ``β′·f_i``; AIP's eq. 2 and AMR do not, and it
matters (INSA pushes cold items much further through it), so it is an option,
``visual_bias: true``, off by default. A cold item has no trained ``β_i`` or ``γ_i``; both are
zero, so only its image counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS, Recommender
from aipray.models.extractor import Extractor, build_extractor, extract_features
from aipray.params import Settings, param


@dataclass(frozen=True)
class VBPRConfig(Settings):
    """VBPR training. AIP: K = K' = 100, BPR loss with L2 weight λ (``reg``, on the rows of each
    training triple: γ_u, θ_u, γ_i, γ_j, β_i, β_j) and λ_E (``reg_visual``, weight decay on E and
    β′, which every step uses). ``visual_bias`` adds He & McAuley's β′·f (not in AIP).
    ``epochs`` is the most it trains: it stops once validation HR@10 has not improved for
    ``patience`` epochs (null = never) and keeps its best epoch."""

    dim: int = param(100, axis=True, min=1)
    lr: float = param(1e-3, min=0)
    reg: float = param(1e-4, min=0)
    reg_visual: float = param(1e-4, min=0)
    epochs: int = param(100, min=1)
    batch_size: int = param(1024, min=1)
    visual_bias: bool = param(False, axis=True)
    patience: int | None = param(5, min=1, doc="epochs without a validation gain before stopping")

    def adversary(self) -> Any:
        """The training-time adversary on the visual features (none for plain VBPR)."""
        return None


@MODELS.register("vbpr")
class VBPR(Recommender):
    """Latent and visual factors on top of a frozen pretrained ``extractor``."""

    Config = VBPRConfig
    display_name = "VBPR"
    uses_extractor = True
    features_from_extractor = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        extractor_spec: dict[str, Any],
        visual_bias: bool = False,
        feature_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.init_args = {
            "n_users": n_users,
            "n_items": n_items,
            "dim": dim,
            "extractor_spec": extractor_spec,
            "visual_bias": visual_bias,
            "feature_scale": float(feature_scale),
        }
        # the constant the extractor's features are multiplied by before E and β′ (AMR's code:
        # 1 / the warm items' global max |f|; 1 for VBPR); saved with the model (init_args), so
        # cold and attacked images are scaled alike, and part of the graph down to the pixels
        self.register_buffer("feature_scale", torch.tensor(float(feature_scale)), persistent=False)
        self.extractor = build_extractor(extractor_spec)
        self.extractor.eval().requires_grad_(False)
        feature_dim = self.extractor.feature_dim
        self.gamma_user = nn.Embedding(n_users, dim)
        self.theta_user = nn.Embedding(n_users, dim)
        self.beta_item = nn.Embedding(n_items, 1)
        self.gamma_item = nn.Embedding(n_items, dim)
        self.E = nn.Linear(feature_dim, dim, bias=False)
        self.beta_visual = nn.Linear(feature_dim, 1, bias=False) if visual_bias else None
        for emb in (self.gamma_user, self.theta_user, self.gamma_item):
            nn.init.normal_(emb.weight, std=0.01)
        nn.init.zeros_(self.beta_item.weight)
        nn.init.normal_(self.E.weight, std=0.01)
        if self.beta_visual is not None:
            nn.init.zeros_(self.beta_visual.weight)

    @classmethod
    def on(
        cls, extractor: Extractor, n_users: int, n_items: int, dim: int, visual_bias: bool = False
    ) -> VBPR:
        """A fresh model on top of the trained ``extractor`` (its weights copied in)."""
        model = cls(n_users, n_items, dim, extractor.spec, visual_bias=visual_bias)
        model.extractor.load_state_dict(extractor.state_dict())
        return model

    def set_feature_scale(self, scale: float) -> None:
        """Scale the extractor's features by ``scale`` from now on (and in checkpoints)."""
        self.feature_scale.fill_(float(scale))
        self.init_args["feature_scale"] = float(scale)

    def visual_features(self, images: torch.Tensor) -> torch.Tensor:
        """The features the model uses: ``feature_scale · Φ_f(X)``, differentiable in X."""
        return self.extractor.features(images) * self.feature_scale

    def train(self, mode: bool = True) -> VBPR:
        super().train(mode)
        self.extractor.eval()  # the pretrained extractor never trains here
        return self

    @property
    def n_users(self) -> int:
        return self.theta_user.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        g = self.gamma_user(users)
        return torch.cat([torch.ones_like(g[:, :1]), g, self.theta_user(users)], dim=1)

    def encode_features(
        self, features: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``[bias, γ_i, E f]`` from extractor features ``[B, F]``; ``items=None`` for
        cold items (no trained β_i, γ_i)."""
        visual = self.E(features)
        if self.beta_visual is not None:
            bias = self.beta_visual(features)
        else:
            bias = visual.new_zeros(visual.shape[0], 1)
        if items is None:
            gamma = visual.new_zeros(visual.shape)
        else:
            bias = bias + self.beta_item(items)
            gamma = self.gamma_item(items)
        return torch.cat([bias, gamma, visual], dim=1)

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        if images is None:
            raise ValueError("VBPR needs item images to compute visual features")
        return self.encode_features(self.visual_features(images), items)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        # the extractor's own features: EXPA's images are shared by every ranker on the extractor
        # (a constant feature_scale does not move the hook distance's minimiser)
        return self.extractor.features(images)

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """``E f``: the visual item representation."""
        return self.E(self.visual_features(images))

    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """AIP eq. 6 for VBPR, linear in the features: ``Σ_u θ_u·(E f) = (Σ_u θ_u)·(E f)``, plus
        ``|users|·β′·f`` when the model has the visual bias (part of every user's score). A cold
        item's γ_i and β_i are zero. One forward pass for all users of the batch."""
        features = self.visual_features(images)
        value = self.E(features) @ self.theta_user(users).sum(0)
        if self.beta_visual is not None:
            value = value + self.beta_visual(features)[:, 0] * users.numel()
        return value

    def training_encoder(self, images: np.ndarray) -> FeatureEncoder:
        device = self.E.weight.device
        table = extract_features(self.extractor, images, device=device)
        return FeatureEncoder(table * self.feature_scale, self.encode_features)

    def penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        rows = [self.gamma_user(users), self.theta_user(users)]
        rows += [self.gamma_item(pos), self.gamma_item(neg), self.beta_item(pos)]
        rows += [self.beta_item(neg)]
        return sum(r.pow(2).sum(1) for r in rows)

    @classmethod
    def fit(
        cls,
        config: VBPRConfig,
        catalog: Catalog,
        *,
        extractor: nn.Module | None,
        device: torch.device,
        seed: int,
    ) -> tuple[VBPR, dict[str, Any]]:
        from aipray.models.train import fit_with

        if extractor is None:
            raise ValueError(f"{cls.name} is built on the pretrained extractor; none was given")
        torch.manual_seed(seed)
        model = cls.on(
            extractor, catalog.n_users, catalog.n_items, config.dim, config.visual_bias
        ).to(device)
        shared = [model.E.weight] + (
            [] if model.beta_visual is None else [model.beta_visual.weight]
        )
        rows = [p for n, p in model.named_parameters() if n.split(".")[0] in ROW_TABLES]
        groups = [
            {"params": rows, "weight_decay": 0.0},
            {"params": shared, "weight_decay": config.reg_visual},
        ]
        adversary = config.adversary()
        encoder = None
        if adversary is not None and adversary.unit == "max_abs":
            # AMR's own scaling (duxy-me/AMR, Dataset.py): divide every feature by the global
            # max |f| of the training (warm) items' features, and keep that constant
            raw = extract_features(model.extractor, catalog.images, device=device)
            warm = torch.as_tensor(catalog.warm_mask(), device=raw.device)
            peak = float(raw[warm].abs().max()) if bool(warm.any()) else 0.0
            model.set_feature_scale(1.0 / peak if peak > 0 else 1.0)
            encoder = FeatureEncoder(raw * model.feature_scale, model.encode_features)
        return fit_with(
            model,
            catalog,
            config,
            groups,
            device=device,
            seed=seed,
            reg=config.reg,
            adversary=adversary,
            encoder=encoder,
        )


ROW_TABLES = ("gamma_user", "theta_user", "beta_item", "gamma_item")


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
