"""The recommender interface every ranker implements, and its checkpoint format."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from aipray.registry import Registry

MODELS: Registry[Recommender] = Registry("model")


class Recommender(nn.Module):
    """A ranker that scores (user, item) pairs and, differentiably, (user, image) pairs.

    Scores are computed in two steps so that ranking, training and attacks share one path:
    ``encode_items`` turns items (their images and, for warm items, their ids) into codes, and
    ``score_codes`` scores codes for users. For the dot-product models here
    ``score = user_vectors(users) @ codes.T``. Cold items are encoded with ``items=None``: only the
    image counts.

    Subclasses set ``visual`` (whether images matter) and keep their constructor arguments in
    ``self.init_args`` so that checkpoints rebuild them.
    """

    name: ClassVar[str]
    visual: ClassVar[bool] = True
    #: built on the pretrained feature extractor (AlexRank, VBPR, AMR)
    uses_extractor: ClassVar[bool] = False
    #: users per chunk when scoring every user's candidate list (bounds peak memory)
    candidate_chunk: ClassVar[int] = 512
    init_args: dict[str, Any]

    @property
    def n_users(self) -> int:
        raise NotImplementedError

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``[B, D]`` of items from images ``[B, 3, H, W]`` in [0, 1] and/or item ids."""
        raise NotImplementedError

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        """Φ of the paper: the image → feature/embedding map EXPA pulls towards the hook."""
        raise NotImplementedError

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The visual item representation the ranker scores with (for maps of the item space):
        DVBPR Φ_e(X), VBPR/AMR E·Φ_f(X), AlexRank Φ_f(X)."""
        return self.feature_network(images)

    def training_encoder(self, images: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function item ids → codes for training, given all item images (uint8 ``[N,3,H,W]``,
        possibly a memmap: index it, do not copy it whole)."""
        raise NotImplementedError

    def score_codes(self, users: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[U, B]`` scores of every code for every user."""
        return self.user_vectors(users) @ codes.T

    def score_pairs(self, users: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[N]`` scores of ``codes[n]`` for ``users[n]``."""
        return (self.user_vectors(users) * codes).sum(-1)

    def score_candidates(
        self, users: torch.Tensor, codes: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """``[U, C]`` scores of ``codes[index[u, c]]`` for ``users[u]``: each user's own candidate
        list, drawn from a shared table of ``Q`` codes ``[Q, D]``."""
        return self.score_codes(users, codes).gather(1, index)

    def score_images(self, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``[U, B]`` differentiable scores of cold items shown by ``images``."""
        return self.score_codes(users, self.encode_items(images))

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict[str, Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "model.pt")
        meta = {"model": self.name, "init_args": self.init_args, **(extra or {})}
        (directory / "model.json").write_text(json.dumps(meta, indent=2))


def load_recommender(directory: Path | str, device: str | torch.device = "cpu") -> Recommender:
    """Rebuild a saved recommender in eval mode with frozen parameters."""
    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text())
    model = MODELS.get(meta["model"])(**meta["init_args"])
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model.to(device)


def model_meta(directory: Path | str) -> dict[str, Any]:
    return json.loads((Path(directory) / "model.json").read_text())
