"""The recommender interface every ranker implements, and its checkpoint format.

A ranker carries its own knowledge, so attacks, the protocols and the pipeline never name a model:

- how it scores: ``encode_items`` (images and/or ids → codes) and ``score_codes`` (users × codes);
  candidate lists, single pairs and images are scored through them unless a model has a faster way;
- what INSA maximises: ``preference(users, images) → [B]``, the sum of the users' scores unless
  the model overrides it with an algebraic shortcut (VBPR's linear form, AlexRank's weighted sum);
- how hard attacks should step: ``attack_lr`` (AIP's default Adam step for INSA);
- the feature network EXPA pulls towards a hook item: ``feature_network``;
- what a defence changes besides the item images: ``under_defense`` (AlexRank's profile images);
- its training recipe: the class method ``fit(config, catalog, ...)``, with ``penalty`` giving the
  L2 term λ‖Θ‖² on the parameter rows a training triple uses.

A user's own ranker subclasses :class:`Recommender` (an ``nn.Module``) and implements ``n_users``,
``encode_items`` and ``score_codes`` (or ``user_vectors``); ``feature_network`` only for EXPA.
Registering it (``@MODELS.register("mine")``) is needed only to name it in a sweep YAML.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from aipray.pixels import ImageMap
from aipray.registry import Registry

if TYPE_CHECKING:
    from aipray.data.catalog import Catalog

MODELS: Registry[Recommender] = Registry("model")


class Recommender(nn.Module):
    """A ranker that scores (user, item) pairs and, differentiably, (user, image) pairs.

    Scores are computed in two steps so that ranking, training and attacks share one path:
    ``encode_items`` turns items (their images ``[B, 3, H, W]`` in [0, 1] and, for warm items,
    their ids ``[B]``) into codes ``[B, D]``, and ``score_codes`` scores codes for users
    ``[U]`` → ``[U, B]``. For the dot-product models here ``score = user_vectors(users) @ codes.T``.
    Cold items are encoded with ``items=None``: only the image counts.

    Subclasses keep their constructor arguments in ``self.init_args`` so that checkpoints rebuild
    them (:meth:`save`, :func:`load_recommender`).
    """

    name: ClassVar[str] = "custom"
    #: how reports and tables name the model
    display_name: ClassVar[str] = ""
    #: the frozen dataclass of its sweep-YAML settings (registered models)
    Config: ClassVar[type]
    #: whether images matter (BPR, the first stage, is not visual)
    visual: ClassVar[bool] = True
    #: built on the pretrained feature extractor (AlexRank, VBPR, AMR)
    uses_extractor: ClassVar[bool] = False
    #: ``feature_network`` is the frozen pretrained extractor's features (AlexRank, VBPR, AMR), so
    #: an attack that knows only Φ (EXPA) makes the same images against each of them
    features_from_extractor: ClassVar[bool] = False
    #: users per chunk when scoring every user's candidate list (bounds peak memory)
    candidate_chunk: ClassVar[int] = 512
    #: INSA's default Adam step (AIP: 1e-4; its DVBPR used 1e-3)
    attack_lr: ClassVar[float] = 1e-4
    init_args: dict[str, Any]

    # --- scoring ---------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define n_users")

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} must define user_vectors or override score_codes"
        )

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``[B, D]`` of items from images ``[B, 3, H, W]`` in [0, 1] and/or item ids."""
        raise NotImplementedError(f"{type(self).__name__} must define encode_items")

    def score_codes(self, users: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[U, B]`` scores of every code for every user."""
        return self.user_vectors(users) @ codes.T

    def score_pairs(self, users: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[N]`` scores of ``codes[n]`` for ``users[n]``."""
        index = torch.arange(users.numel(), device=users.device).unsqueeze(1)
        return self.score_candidates(users, codes, index).squeeze(1)

    def score_candidates(
        self, users: torch.Tensor, codes: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """``[U, C]`` scores of ``codes[index[u, c]]`` for ``users[u]``: each user's own candidate
        list, drawn from a shared table of ``Q`` codes ``[Q, D]``."""
        return self.score_codes(users, codes).gather(1, index)

    def score_images(self, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``[U, B]`` differentiable scores of cold items shown by ``images``."""
        return self.score_codes(users, self.encode_items(images))

    # --- what attacks use ------------------------------------------------------------------------
    def preference(self, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """INSA's objective (AIP eq. 6) for one batch of ``users``: ``[B]``, per image, the sum
        of the users' scores of it. Models override it with an equivalent, cheaper form."""
        return self.score_images(users, images).sum(0)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        """Φ of the paper: the image → feature/embedding map EXPA pulls towards the hook."""
        raise NotImplementedError(
            f"{type(self).__name__} has no feature_network: EXPA needs one (images → features)"
        )

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The visual item representation the ranker scores with (for maps of the item space):
        DVBPR Φ_e(X), VBPR/AMR E·Φ_f(X), AlexRank Φ_f(X)."""
        return self.feature_network(images)

    def under_defense(self, defense: ImageMap, images: np.ndarray) -> Recommender:
        """The ranker a platform with an input ``defense`` serves. Item images pass through the
        defence wherever they are scored; a model that also keeps images of its own (AlexRank's
        users' profile items) returns a copy with those defended too. ``images`` is the catalog's
        uint8 ``[N, 3, H, W]`` (may be a memmap)."""
        return self

    # --- training --------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        config: Any,
        catalog: Catalog,
        *,
        extractor: nn.Module | None,
        device: torch.device,
        seed: int,
    ) -> tuple[Recommender, dict[str, Any] | None]:
        """The model's training recipe: a trained model on ``catalog`` and what training
        recorded (``None`` if nothing is trained)."""
        raise NotImplementedError(f"{cls.__name__} has no training recipe")

    def training_encoder(self, images: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function item ids → codes for training, given all item images (uint8 ``[N,3,H,W]``,
        possibly a memmap: index it, do not copy it whole)."""
        raise NotImplementedError(f"{type(self).__name__} has no training encoder")

    def penalty(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """``[B]`` squared L2 norms of the parameter rows triple ``(users, pos, neg)[b]`` uses:
        BPR's λ‖Θ‖² applied to what a training step touches, not a decay of whole tables."""
        return torch.zeros(users.shape, device=users.device)

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
