"""AIP's first stage (Liu & Larson, WWW 2021, §4): BPR's top-C candidates per user among warm
items outside the user's training and validation items, and the first stage's health (is it
better than popularity and random?). Ray-free; :mod:`aipray.protocol.aip` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aipray.data.catalog import Catalog
from aipray.metrics.full_ranking import (
    ScoresOf,
    full_hit_rate,
    full_random_hit_rate,
    full_scores_masked,
    model_scores,
    popularity_scores,
)
from aipray.models.base import Recommender


@torch.no_grad()
def top_candidates(
    bpr: Recommender, catalog: Catalog, c: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``[n_users, C']`` each user's top-C warm items by ``bpr`` outside the user's training and
    validation items; ``C' = min(C, what every user has left)``."""
    indptr, _ = catalog.train_csr()
    widest = int(np.diff(indptr).max()) + 1 if catalog.n_users else 0
    c = min(c, int(catalog.warm_mask().sum()) - widest)
    if c < 1:
        raise ValueError("first_stage.candidates: the catalog has too few warm items for C >= 1")
    return top_scored(model_scores(bpr, catalog, device), catalog, c, device)


@torch.no_grad()
def top_scored(
    scores_of: ScoresOf, catalog: Catalog, c: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``[n_users, c]`` each user's ``c`` best-scored warm items outside the user's training and
    validation items (ties in any order)."""
    top = [
        scores.topk(c, dim=1).indices.cpu()
        for _, scores in full_scores_masked(scores_of, catalog, mask_held_out="val", device=device)
    ]
    return torch.cat(top).numpy()


@dataclass(frozen=True)
class FirstStage:
    """The trained first stage, its candidates and its health.

    ``health`` holds, as plain floats: ``val_hr_at_10`` (the best epoch's validation HR@10 over
    the full ranking, what training selected on; on at most 5,000 sampled users) and
    ``val_random_hr_at_10`` (a random ranker's expected value of it);
    ``full_hr_at_10`` (the validation item ranked among all warm items outside the training set,
    every user)
    and ``full_popularity_hr_at_10`` (the same for the popularity ranker); ``test_in_top_c``
    (share of users whose test item is among the candidates), ``popularity_test_in_top_c`` (the
    same for the popularity ranker's top-C: what the candidates would be without BPR) and ``C``.
    """

    model: Recommender
    candidates: np.ndarray
    health: dict[str, float] = field(default_factory=dict)


def first_stage(
    catalog: Catalog,
    config: Any = None,
    *,
    candidates: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> FirstStage:
    """Train BPR (``config``: a :class:`~aipray.models.bpr.BPRConfig`, default settings when
    ``None``), take each user's top-``candidates`` and measure the first stage's health."""
    from aipray.models.base import MODELS

    bpr_cls = MODELS.get("bpr")
    config = bpr_cls.Config() if config is None else config
    model, training = bpr_cls.fit(config, catalog, extractor=None, device=device, seed=seed)
    cands = top_candidates(model, catalog, candidates, device)
    return FirstStage(model, cands, first_stage_health(model, catalog, cands, training, device))


def first_stage_health(
    model: Recommender,
    catalog: Catalog,
    candidates: np.ndarray,
    training: dict[str, Any] | None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """See :class:`FirstStage`. A first stage within 1.5× of random draws candidates that say
    little about the second-stage ranker: callers warn about it."""
    best = float(training["best_score"]) if training else float("nan")
    in_top = (candidates == catalog.test_items[:, None]).any(1)
    popular = top_scored(popularity_scores(catalog), catalog, candidates.shape[1], device)
    popular_in_top = (popular == catalog.test_items[:, None]).any(1)
    return {
        "val_hr_at_10": best,
        "val_random_hr_at_10": full_random_hit_rate(catalog, k=10),
        "full_hr_at_10": full_hit_rate(model_scores(model, catalog, device), catalog, k=10),
        "full_popularity_hr_at_10": full_hit_rate(popularity_scores(catalog), catalog, k=10),
        "test_in_top_c": float(in_top.mean()),
        "popularity_test_in_top_c": float(popular_in_top.mean()),
        "C": float(candidates.shape[1]),
    }
