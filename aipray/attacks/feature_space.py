"""The feature-space attack the multimodal-recommendation literature runs, beside the pixel one.

Multimodal recommenders (MMRec's FREEDOM, LATTICE, BM3, …) read stored image feature vectors,
and the attacks published on them perturb those vectors, not the pixels (UAT-MC runs PGD on the
stored image and text features). Whether a feature displacement is reachable by a bounded pixel
change through the real encoder is another question. Here:

- :func:`feature_view` turns a ranker whose images reach its scores only through its frozen
  extractor's features (VBPR, AMR, AlexRank, FREEDOM, LATTICE) into the same ranker fed with feature
  vectors in place of images, sharing every parameter: its ``score_images`` and ``preference``
  then take ``[B, F]`` features;
- :func:`feature_insa` is INSA's objective (the ranker's own ``preference``, summed over users)
  maximised over the features inside an L2 ball per item, by projected normalised-gradient
  ascent (Madry et al.'s L2 PGD);
- :func:`displacement` is the L2 distance a pixel attack moved each item's features.

Giving :func:`feature_insa` each item's own displacement as its budget answers: with the same
feature change that the pixel attacker produced, how far does an attacker who writes the
features directly get? Above the pixel attack's HR, a feature-space result overstates what an
attacker who controls only the image can do; the gap is the encoder's share of the defence.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from aipray.models.base import Recommender


class FeatureInput(nn.Module):
    """An extractor stand-in whose "images" are already its features: ``features(x) = x``."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def feature_view(model: Recommender) -> Recommender:
    """``model`` fed with extractor features in place of images: a shallow copy whose
    ``extractor`` is :class:`FeatureInput`, every other parameter and buffer shared; ``model``
    itself is unchanged. Only for rankers whose images reach the score through
    ``extractor.features`` alone (raises ``ValueError`` for the others, e.g. DVBPR's own CNN)."""
    if not getattr(type(model), "features_from_extractor", False) or not hasattr(
        model, "extractor"
    ):
        raise ValueError(
            f"{type(model).__name__}: a feature-space attack needs a ranker that reads its frozen "
            "extractor's features (VBPR, AMR, AlexRank, FREEDOM, LATTICE); its images reach the "
            "score another way"
        )
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a module table of its own: model keeps its extractor
    view._modules["extractor"] = FeatureInput()
    return view


@torch.no_grad()
def displacement(model: Recommender, clean: torch.Tensor, adversarial: torch.Tensor):
    """``[B]`` L2 distance between the extractor features of ``adversarial`` and ``clean`` images,
    and ``[B]`` the clean features' L2 norms."""
    before = model.extractor.features(clean)
    after = model.extractor.features(adversarial)
    return (after - before).norm(dim=1), before.norm(dim=1)


def feature_insa(
    view: Recommender,
    features: torch.Tensor,
    radius: torch.Tensor,
    user_batches: Sequence[torch.Tensor],
    steps: int = 50,
) -> torch.Tensor:
    """INSA in feature space: maximise ``Σ_u p(u, f + δ)`` (the ranker's ``preference`` over
    every batch of ``user_batches``) over ``‖δ_i‖₂ ≤ radius_i``, by ``steps`` steps of size
    ``2.5·radius/steps`` along the L2-normalised gradient, each projected back onto the ball.
    ``view``: :func:`feature_view`; ``features [B, F]``; returns ``[B, F]``. No pixel range and
    no 8-bit grid constrain it: stored features have neither."""
    radius = radius.to(features).reshape(-1, 1)
    step = 2.5 * radius / max(1, steps)
    delta = torch.zeros_like(features)
    for _ in range(steps):
        delta.requires_grad_(True)
        objective = sum(view.preference(users, features + delta).sum() for users in user_batches)
        (grad,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            direction = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            delta = delta + step * direction
            norm = delta.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(radius / norm.clamp(min=1e-12), max=1.0)
    return (features + delta).detach()
