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
Its constructor's arguments are captured when it is built, so :meth:`Recommender.save` and
:func:`load_recommender` need nothing more. A sweep YAML names it by its import path
(``mypkg.rankers:MyRanker``, with a ``Config`` and a ``fit`` recipe) or, once registered
(``@MODELS.register("mine")``), by that name.
"""

from __future__ import annotations

import functools
import inspect
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
    Cold items are encoded with ``items=None``: only the image counts. A ranker that also reads
    what an attacker of the pixels cannot change (an item's title) is given the cold items' ids
    where they are scored or attacked (``items`` of :meth:`encode_cold`, :meth:`score_images` and
    :meth:`preference`); the others ignore them.

    The arguments a subclass's constructor was called with are kept in ``self.init_args``
    (captured by :meth:`__init_subclass__`, JSON-able values only), so that checkpoints rebuild
    the model (:meth:`save`, :func:`load_recommender`); a model whose saved state differs from
    its constructor arguments updates ``init_args`` itself.
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap the subclass's ``__init__`` so that building an instance records the arguments
        of the outermost constructor (defaults filled in) as ``init_args``, unless that
        constructor set ``init_args`` itself."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: Recommender, *args: Any, **kw: Any) -> None:
            outermost = type(self).__init__ is __init__
            if outermost:
                captured = _arguments(signature, type(self), self, *args, **kw)
            init(self, *args, **kw)
            if outermost and "init_args" not in self.__dict__:
                self.init_args = captured

        cls.__init__ = __init__  # type: ignore[method-assign]

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

    def encode_cold(self, images: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, D]`` of items scored as cold items, from their ``images``; ``items``
        ``[B]`` their ids, for a ranker that also reads what an attacker of the pixels cannot
        change (their titles); the others ignore them."""
        return self.encode_items(images)

    def score_images(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[U, B]`` differentiable scores of cold items shown by ``images`` (``items``: as in
        :meth:`encode_cold`)."""
        return self.score_codes(users, self.encode_cold(images, items))

    # --- what attacks use ------------------------------------------------------------------------
    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """INSA's objective (AIP eq. 6) for one batch of ``users``: ``[B]``, per image, the sum
        of the users' scores of it (``items``: as in :meth:`score_images`). Models override it
        with an equivalent, cheaper form."""
        return self.score_images(users, images, items).sum(0)

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
    def save(self, directory: Path | str, extra: dict[str, Any] | None = None) -> None:
        """Write ``directory/model.pt`` (the state dict) and ``directory/model.json`` (the
        model's registered name or import path, ``init_args`` and ``extra``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "model.pt")
        meta = {"model": model_name(type(self)), "init_args": self.init_args, **(extra or {})}
        try:
            text = json.dumps(meta, indent=2)
        except TypeError as err:
            raise TypeError(
                f"{type(self).__name__}: init_args {self.init_args!r} cannot be saved ({err}); "
                "a checkpoint stores the constructor's arguments, so they must be JSON values"
            ) from None
        (directory / "model.json").write_text(text)


def _arguments(
    signature: inspect.Signature, cls: type, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """The constructor arguments ``args``/``kwargs`` bind to, defaults filled in, without
    ``self``; ``**kwargs`` are merged in, ``*args`` cannot be saved."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if index == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{cls.__name__}(*{name}): positional varargs cannot be saved")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def model_name(cls: type) -> str:
    """What a checkpoint and a sweep call ``cls``: its registered name, else its import path
    ``module:QualName``."""
    name = cls.__dict__.get("name")
    if name is not None and name in MODELS and MODELS.get(name) is cls:
        return name
    return f"{cls.__module__}:{cls.__qualname__}"


def load_recommender(directory: Path | str, device: str | torch.device = "cpu") -> Recommender:
    """Rebuild a saved recommender in eval mode with frozen parameters (its class by the
    registered name or import path its checkpoint records)."""
    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text())
    model = MODELS.get(meta["model"])(**meta["init_args"])
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return model.to(device)


def model_meta(directory: Path | str) -> dict[str, Any]:
    return json.loads((Path(directory) / "model.json").read_text())
