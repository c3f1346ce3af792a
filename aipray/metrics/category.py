"""Category-level ranking metrics of the Perceptual-Rec / TAaMR protocol: CHR@K and nCDCG@K.

An attack on the images of every item of an *origin* category ``c`` succeeds when the
recommender shows more of that category; these metrics count it in each user's **full ranking**
of the warm items minus the user's own training items (the held-out validation and test items
stay rankable, as in the public code's top-150 lists). The ranking is computed chunk by chunk of
users (:func:`~aipray.metrics.full_ranking.full_scores_masked`) with ``torch.topk`` of the largest
cut-off only: memory is ``chunk × n_items`` scores, never a users × items matrix.

Definitions, for user ``u`` and the items ``i_1, i_2, ...`` of the ranking (rank ``r`` from 1):

- **CHR@K**, category hit ratio, defined in TAaMR (Di Noia, Malitesta, Merra, *"TAaMR: Targeted
  Adversarial Attack against Multimedia Recommender Systems"*, DSN-W 2020) as
  ``CHR_u@K = (1/K) Σ_{r≤K} 1[cat(i_r) = c]`` (key ``chr@K``, "the paper's formula").
  Perceptual-Rec (*"Assessing Perceptual and Recommendation Mutation of Adversarially-Poisoned
  Visual Recommenders"*, sisinflab 2020) cites it and describes it as "the average number of a
  (pushed) category of items in the top-K", which is what the sisinflab public code computes: the
  count, not divided by K (key ``chr_count@K``; its Table 1 CHR@20 of 0.64 is such a count).
  Both are returned; say which one a table shows.
- **nCDCG@K**, normalised category discounted cumulative gain (TAaMR):
  ``CDCG_u@K = Σ_{r≤K} 1[cat(i_r) = c] / log2(r + 1)``, divided by its ideal value, that
  of a ranking whose first ``min(K, n_uc)`` positions are of category ``c``, where ``n_uc`` is
  the number of category-``c`` items in u's rankable set; ``nCDCG_u@K = 0`` when ``n_uc = 0``.

Trial-level values are means over **all** users (users without rankable category items count as
0 in every metric). When a user's rankable set is shorter than K, the ranking simply ends there;
``chr@K`` still divides by K.

Ties: items of equal score are ranked by **lower item id first** (a stable descending sort), in
the fast path and in the slow reference alike, so results do not depend on ``topk``'s order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aipray.metrics.full_ranking import ScoresOf, full_scores_masked
from aipray.metrics.stats import paired_t_test

CATEGORY_CUTOFFS = (5, 10, 20, 50, 100)
METRICS = ("chr_count", "chr", "ncdcg")


def rank_discounts(n: int) -> np.ndarray:
    """``[n]`` float64 ``1 / log2(r + 1)`` for ranks ``r = 1..n``."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def top_items(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k`` best items, best first, ties by lower item id: ``(items, scores)``, both
    ``[U, k]``, ``k <= scores.shape[1]``.

    ``torch.topk`` picks the items; its choice among items tied at the k-th value is arbitrary, so
    rows with more such items than it kept are redone (the tied items of lowest id enter), then
    every row is ordered by score, equal scores by item id (a stable sort of the id-sorted row).
    """
    values, items = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    threshold = values[:, k - 1 : k]
    cut_ties = (scores == threshold).sum(1) > (values == threshold).sum(1)
    rows = cut_ties.nonzero().flatten()
    if rows.numel():
        items[rows] = _lowest_id_top(scores[rows], threshold[rows], k)
    items = torch.sort(items, dim=1).values
    picked = torch.gather(scores, 1, items)
    picked, order = torch.sort(picked, dim=1, descending=True, stable=True)
    return torch.gather(items, 1, order), picked


def _lowest_id_top(scores: torch.Tensor, threshold: torch.Tensor, k: int) -> torch.Tensor:
    """``[R, k]`` ids (ascending) of the items above ``threshold [R, 1]`` plus the lowest-id items
    equal to it, ``k`` per row (the k-th best value is ``threshold``)."""
    above = scores > threshold
    tied = scores == threshold
    need = k - above.sum(1, keepdim=True)
    chosen = above | (tied & (torch.cumsum(tied, dim=1, dtype=torch.int32) <= need))
    # exactly k per row; nonzero walks rows in order and each row by increasing item id
    return chosen.nonzero()[:, 1].view(scores.shape[0], k)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(k) for k in ks}))
    if not out or out[0] < 1:
        raise ValueError(f"ks must be positive cut-offs, got {tuple(ks)}")
    return out


def metrics_from_hits(
    hits: np.ndarray, n_category: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user metrics from ``hits [U, L]`` (bool: the item at rank ``r`` is of the category,
    ranks beyond the user's rankable set are False) and ``n_category [U]`` (``n_uc``), for every
    K in ``ks``; ``L >= min(max(ks), rankable set)``. Keys ``chr_count@K``, ``chr@K``,
    ``ncdcg@K``; float64 ``[U]`` arrays."""
    ks = _check_ks(ks)
    length = max(ks[-1], 1)
    if hits.shape[1] < length:  # pad: there are no items beyond the ranking
        hits = np.pad(hits, ((0, 0), (0, length - hits.shape[1])))
    disc = rank_discounts(length)
    # sequential sums (cumsum), so the value does not depend on how the ranking was obtained
    gain = np.cumsum(np.where(hits[:, :length], disc, 0.0), axis=1)
    count = np.cumsum(hits[:, :length], axis=1)
    ideal_at = np.cumsum(disc)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_k = count[:, k - 1].astype(np.float64)
        best = np.minimum(k, n_category)
        ideal = np.where(best > 0, ideal_at[np.maximum(best, 1) - 1], 1.0)
        out[f"chr_count@{k}"] = n_k
        out[f"chr@{k}"] = n_k / k
        out[f"ncdcg@{k}"] = np.where(best > 0, gain[:, k - 1] / ideal, 0.0)
    return out


@torch.no_grad()
def category_ranking(
    scores_of: ScoresOf,
    catalog: Any,
    categories: np.ndarray,
    category: int,
    *,
    ks: Sequence[int] = CATEGORY_CUTOFFS,
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """CHR@K (both normalisations) and nCDCG@K of category ``category`` for every user.

    Args:
        scores_of: ``users [U] → scores [U, n_items]`` (e.g. :func:`~aipray.metrics.full_ranking.
            model_scores`); called once per chunk of users.
        catalog: the :class:`~aipray.data.catalog.Catalog`; cold items and each user's training
            items are not ranked, the validation and test items are.
        categories: ``[n_items]`` int class of every item (e.g. the extractor's predicted
            ImageNet class, as in Perceptual-Rec; ``-1`` for unknown).
        category: the origin category ``c``.
        ks: cut-offs K; one ``topk`` of the largest serves all of them.
        chunk: users per chunk; memory is a few ``chunk × n_items`` float32 matrices (and what
            ``scores_of`` itself allocates).

    Returns:
        ``{"per_user": {key: float64 [n_users]}, "mean": {key: float}, "n_category": int64
        [n_users], "ks": ks, "category": c, "n_category_items": int}`` with keys
        ``chr_count@K`` (the sisinflab public code: number of category items in the top-K),
        ``chr@K`` (TAaMR's formula: that count / K) and ``ncdcg@K`` (TAaMR);
        ``n_category`` is ``n_uc``, the number of category items user u can be shown, and
        ``n_category_items`` the number of warm items of the category. Means are over all users.
        Ties: lower item id first.
    """
    ks = _check_ks(ks)
    categories = np.asarray(categories)
    if categories.shape != (catalog.n_items,):
        raise ValueError(
            f"categories must give one class per item, shape ({catalog.n_items},); "
            f"got {categories.shape}"
        )
    in_category = categories == category
    category_items = torch.as_tensor(np.flatnonzero(in_category), device=device)
    in_category_t = torch.as_tensor(in_category, device=device)
    k_top = min(ks[-1], catalog.n_items)
    hits, n_category = [], []
    for ids, scores in full_scores_masked(
        scores_of, catalog, mask_held_out="", chunk=chunk, device=device
    ):
        if torch.isnan(scores).any():
            raise ValueError(f"scores_of returned NaN scores for users from {ids[0]}")
        items, values = top_items(scores, k_top)
        rankable = values > -torch.inf
        hits.append((in_category_t[items] & rankable).cpu().numpy())
        n_uc = (scores[:, category_items] > -torch.inf).sum(1)
        n_category.append(n_uc.cpu().numpy().astype(np.int64))
    hit_matrix = np.concatenate(hits) if hits else np.zeros((0, k_top), dtype=bool)
    n_uc_all = np.concatenate(n_category) if n_category else np.zeros(0, dtype=np.int64)
    per_user = metrics_from_hits(hit_matrix, n_uc_all, ks)
    return {
        "per_user": per_user,
        "mean": {key: float(v.mean()) if v.size else 0.0 for key, v in per_user.items()},
        "n_category": n_uc_all,
        "ks": ks,
        "category": int(category),
        "n_category_items": int((in_category & catalog.warm_mask()).sum()),
    }


def category_change(
    clean: dict[str, Any], attacked: dict[str, Any], *, metric: str = "chr_count"
) -> dict[str, dict[str, float]]:
    """The change of a category metric from a clean to an attacked ranking, with its significance.

    Both arguments are :func:`category_ranking` results over the same users. For every K in both,
    returns ``{"<metric>@K": {"clean", "attacked", "delta", "p_value"}}``: the two means, their
    difference and the two-sided user-level paired t-test p-value
    (:func:`~aipray.metrics.stats.paired_t_test`). The default ``chr_count`` is what the public
    code tests; ``chr`` gives the same p-value (a constant factor).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    out: dict[str, dict[str, float]] = {}
    for k in sorted(set(clean["ks"]) & set(attacked["ks"])):
        key = f"{metric}@{k}"
        a, b = attacked["per_user"][key], clean["per_user"][key]
        out[key] = {
            "clean": float(b.mean()) if b.size else 0.0,
            "attacked": float(a.mean()) if a.size else 0.0,
            "delta": float((a - b).mean()) if a.size else 0.0,
            "p_value": paired_t_test(a, b),
        }
    return out
