"""AlexRank (AIP, Liu & Larson 2021, after He & McAuley's visual nearest-neighbour ranker).

``p(u, i) = −mean_{j ∈ I_u} ‖f_i − f_j‖₂`` with ``f = Φ_f(X)`` the extractor's features (AlexNet
fc7 after ReLU in AIP). Nothing is trained: the model is the frozen extractor plus each user's
training items and their features. Cold items are scored from their images only.

Storage: users' training items as CSR (``indptr [n_users + 1]``, ``slots [nnz]`` into the
``profile_features [P, F]`` of the ``P`` distinct items that occur in some profile).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS, Recommender
from aipray.models.extractor import build_extractor, extract_features
from aipray.params import Settings, param


@dataclass(frozen=True)
class AlexRankConfig(Settings):
    """AlexRank has no trainable parameters; ``batch_size`` only sets feature-extraction batches."""

    batch_size: int = param(256, min=1)


@MODELS.register("alexrank")
class AlexRank(Recommender):
    """Mean L2 distance to the user's training items in the extractor's feature space."""

    Config = AlexRankConfig
    display_name = "AlexRank"
    uses_extractor = True
    features_from_extractor = True
    candidate_chunk = 64

    def __init__(
        self, n_users: int, n_items: int, nnz: int, n_profile: int, extractor_spec: dict[str, Any]
    ) -> None:
        super().__init__()
        self.init_args = {
            "n_users": n_users,
            "n_items": n_items,
            "nnz": nnz,
            "n_profile": n_profile,
            "extractor_spec": extractor_spec,
        }
        self.extractor = build_extractor(extractor_spec)
        self.extractor.eval().requires_grad_(False)
        self.register_buffer("indptr", torch.zeros(n_users + 1, dtype=torch.long))
        self.register_buffer("slots", torch.zeros(nnz, dtype=torch.long))
        self.register_buffer("profile_items", torch.zeros(n_profile, dtype=torch.long))
        self.register_buffer("profile_features", torch.zeros(n_profile, self.extractor.feature_dim))

    @classmethod
    def from_profiles(
        cls,
        indptr: np.ndarray,
        items: np.ndarray,
        n_items: int,
        extractor: torch.nn.Module,
        images: np.ndarray,
        batch_size: int = 256,
    ) -> AlexRank:
        """Build from users' training items (CSR) and the item images (uint8 ``[N, 3, H, W]``)."""
        profile_items, slots = np.unique(items, return_inverse=True)
        model = cls(indptr.size - 1, n_items, items.size, profile_items.size, extractor.spec)
        model.extractor.load_state_dict(extractor.state_dict())
        device = next(extractor.parameters()).device
        model.to(device)
        feats = extract_features(
            model.extractor, images, batch_size=batch_size, items=profile_items
        )
        model.indptr.copy_(torch.as_tensor(indptr))
        model.slots.copy_(torch.as_tensor(slots))
        model.profile_items.copy_(torch.as_tensor(profile_items))
        model.profile_features.copy_(feats)
        return model

    def train(self, mode: bool = True) -> AlexRank:
        super().train(mode)
        self.extractor.eval()
        return self

    @property
    def n_users(self) -> int:
        return int(self.indptr.numel() - 1)

    # --- per-user profile weights -------------------------------------------------------------
    def _entries(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``users [U]``: (row in ``users`` [E], profile slot [E], weight 1/|I_u| [E])."""
        start, stop = self.indptr[users], self.indptr[users + 1]
        counts = stop - start
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        slots = self.slots[start[rows] + offsets]
        weights = 1.0 / counts.clamp(min=1).to(self.profile_features.dtype)[rows]
        return rows, slots, weights

    def profile_weights(self, users: torch.Tensor) -> torch.Tensor:
        """``[P]`` weight of each profile item: ``w_j = Σ_{u ∈ users, j ∈ I_u} 1/|I_u|``.

        With it, ``Σ_u p(u, i) = −Σ_j w_j ‖f_i − f_j‖``: INSA's objective needs one distance per
        profile item instead of one per (user, item) pair.
        """
        _, slots, weights = self._entries(users)
        out = self.profile_features.new_zeros(self.profile_features.shape[0])
        return out.index_add_(0, slots, weights)

    # --- the Recommender interface ----------------------------------------------------------------
    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        if images is None:
            raise ValueError("AlexRank scores items by their images; images is None")
        return self.extractor.features(images)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(images)

    def score_codes(self, users: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[U, B]``: ``−mean_{j∈I_u} ‖codes_b − f_j‖`` (one distance per profile item)."""
        rows, slots, weights = self._entries(users)
        dist = torch.cdist(self.profile_features, codes)  # [P, B]
        out = codes.new_zeros(users.numel(), codes.shape[0])
        return -out.index_add_(0, rows, dist[slots] * weights[:, None])

    def score_candidates(
        self, users: torch.Tensor, codes: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """``[U, C]``: user ``u``'s score of ``codes[index[u, c]]``; one distance per (code,
        profile item of the chunk) instead of per (user, candidate, profile item)."""
        rows, slots, weights = self._entries(users)
        used, slot_col = torch.unique(slots, return_inverse=True)
        dist = torch.cdist(codes, self.profile_features[used])  # [Q, S]
        # entry e adds w_e · dist[index[row_e, :], slot_e] to its user's row
        contrib = dist[index[rows], slot_col[:, None]] * weights[:, None]  # [E, C]
        out = codes.new_zeros(index.shape)
        return -out.index_add_(0, rows, contrib)

    def training_encoder(self, images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError("AlexRank has nothing to train")

    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """AIP eq. 6 for AlexRank, ``Σ_u mean_{j∈I_u} −‖Φ_f(X) − Φ_f(X_j)‖``, as the weighted sum
        ``−Σ_j w_j ‖Φ_f(X) − Φ_f(X_j)‖`` (:meth:`profile_weights`): one distance per profile
        item instead of one per (user, item) pair."""
        weights = self.profile_weights(users)  # [P]
        active = weights > 0
        dist = torch.cdist(self.feature_network(images), self.profile_features[active])
        return -(dist @ weights[active])

    def under_defense(self, defense, images: np.ndarray) -> AlexRank:
        """A copy whose users' profile features come from defended images: a platform that
        defends its inputs defends every image, its users' past items included."""
        if getattr(defense, "identity", False):
            return self
        model = copy.deepcopy(self)
        feats = extract_features(
            model.extractor,
            images,
            items=self.profile_items.cpu().numpy(),
            transform=defense,
            device=self.profile_features.device,
        )
        model.profile_features.copy_(feats)
        return model

    @classmethod
    def fit(
        cls,
        config: AlexRankConfig,
        catalog: Catalog,
        *,
        extractor: nn.Module | None,
        device: torch.device,
        seed: int,
    ) -> tuple[AlexRank, None]:
        """Nothing to train: the users' profiles and their features."""
        if extractor is None:
            raise ValueError("alexrank is built on the pretrained extractor; none was given")
        indptr, items = catalog.train_csr()
        model = cls.from_profiles(
            indptr, items, catalog.n_items, extractor.to(device), catalog.images, config.batch_size
        )
        return model, None
