"""The scores AIP's protocol ranks injected items against, computed once per (ranker, defence):
every user's fixed candidates (:func:`candidate_scores`), every warm item for the full-ranking
yardstick (:func:`served_scores`, :func:`full_ranking_scores`), each through the defence the
platform serves. Re-exported by :mod:`aipray.protocol.aip`."""

from __future__ import annotations

import numpy as np
import torch

from aipray.data.catalog import Catalog
from aipray.defenses import DEFENSES
from aipray.metrics.full_ranking import ScoresOf, full_ranking_context
from aipray.metrics.ranking import CandidateScores
from aipray.models.base import Recommender
from aipray.pixels import ImageMap, to_float


def no_defense() -> ImageMap:
    """The identity defence (the ranker sees images as uploaded)."""
    none = DEFENSES.get("none")
    return none(none.Config())


def is_identity(defense: ImageMap) -> bool:
    return bool(getattr(defense, "identity", False))


# --- fixed candidate scores -----------------------------------------------------------------------
@torch.no_grad()
def candidate_scores(
    model: Recommender,
    catalog: Catalog,
    candidates: np.ndarray,
    defense: ImageMap | None = None,
    device: torch.device | str = "cpu",
    *,
    served: Recommender | None = None,
) -> CandidateScores:
    """Score every user's fixed candidates (``candidates`` ∪ test item) with the ranker a
    platform with ``defense`` serves (``served``, default ``model.under_defense``), on defended
    images."""
    defense = no_defense() if defense is None else defense
    if served is None:
        served = model.under_defense(defense, catalog.images)
    fixed = np.concatenate([candidates, catalog.test_items[:, None]], axis=1)
    valid = np.ones(fixed.shape, dtype=bool)
    valid[:, -1] = ~(candidates == catalog.test_items[:, None]).any(1)
    needed = np.unique(fixed)
    lookup = np.full(catalog.n_items, -1)
    lookup[needed] = np.arange(needed.size)
    codes = []
    for start in range(0, needed.size, 256):
        ids = needed[start : start + 256]
        images = to_float(catalog.images[ids], device)
        codes.append(served.encode_items(defense(images), torch.as_tensor(ids, device=device)))
    codes_t = torch.cat(codes)
    scores = np.empty(fixed.shape, dtype=np.float32)
    step = served.candidate_chunk
    for start in range(0, catalog.n_users, step):
        rows = slice(start, min(start + step, catalog.n_users))
        users = torch.arange(rows.start, rows.stop, device=device)
        chunk = lookup[fixed[rows]]
        uniq, inv = np.unique(chunk, return_inverse=True)
        s = served.score_candidates(
            users,
            codes_t[torch.as_tensor(uniq, device=device)],
            torch.as_tensor(inv.reshape(chunk.shape), device=device),
        )
        scores[rows] = s.cpu().numpy()
    return CandidateScores.build(
        torch.as_tensor(scores), torch.as_tensor(valid), torch.as_tensor(scores[:, -1]).clone()
    )


@torch.no_grad()
def served_scores(
    served: Recommender,
    catalog: Catalog,
    defense: ImageMap | None = None,
    device: torch.device | str = "cpu",
    *,
    as_cold: bool = False,
) -> ScoresOf:
    """``users → [U, n_items]`` scores by ``served`` of every warm item, each encoded from its
    (defended) image and id as the fixed candidates are, or with ``as_cold`` from its image
    alone, as a cold item is (its title too, for a ranker that reads titles); cold items' columns
    are left at zero codes (the full-ranking metrics mask them)."""
    defense = no_defense() if defense is None else defense
    warm = np.flatnonzero(catalog.warm_mask())
    codes = []
    for start in range(0, warm.size, 256):
        ids = warm[start : start + 256]
        images = to_float(catalog.images[ids], device)
        items = torch.as_tensor(ids, device=device)
        encode = served.encode_cold if as_cold else served.encode_items
        codes.append(encode(defense(images), items))
    warm_codes = torch.cat(codes)
    table = warm_codes.new_zeros(catalog.n_items, warm_codes.shape[1])
    table[torch.as_tensor(warm, device=device)] = warm_codes

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        return served.score_codes(users, table)

    return scores_of


def full_ranking_scores(
    model: Recommender,
    catalog: Catalog,
    defense: ImageMap | None = None,
    device: torch.device | str = "cpu",
    *,
    served: Recommender | None = None,
) -> CandidateScores:
    """Every user's full ranking by the ranker a platform with ``defense`` serves (``served``,
    default ``model.under_defense``), as far as the full-ranking yardstick needs it
    (:func:`~aipray.metrics.full_ranking.full_ranking_context`)."""
    defense = no_defense() if defense is None else defense
    if served is None:
        served = model.under_defense(defense, catalog.images)
    scores_of = served_scores(served, catalog, defense, device)
    return full_ranking_context(scores_of, catalog, chunk=served.candidate_chunk, device=device)
