"""How well a detector tells adversarial images from clean ones: ROC AUC, the threshold that
catches a given share of the adversarial images, and the clean images flagged at it.

Scores are "higher = more likely adversarial"; an image is *flagged* when its score is at least
the threshold, so a clean image scoring exactly the threshold is a false positive. Pure numpy.
"""

from __future__ import annotations

import math

import numpy as np


def _scores(values: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).ravel()
    if out.size == 0:
        raise ValueError(f"{what}: no scores; expected at least one")
    if not np.isfinite(out).all():
        raise ValueError(f"{what}: scores must be finite (got NaN or ±inf)")
    return out


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores of ``positive`` (adversarial) vs ``negative`` (clean) images: the
    Mann–Whitney U statistic over all pairs, ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` (a tie counts half),
    computed from mid-ranks in O(n log n)."""
    pos, neg = _scores(positive, "positive"), _scores(negative, "negative")
    both = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # values strictly smaller
    mid_rank = below + (counts + 1) / 2.0  # 1-based rank, ties averaged
    ranks = mid_rank[inverse]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def threshold_at_recall(positive: np.ndarray, recall: float = 0.95) -> float:
    """The largest threshold that flags (score ≥ threshold) at least ``recall`` of the
    ``positive`` scores: the ⌈recall·n⌉-th highest positive score."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall: {recall!r} is not allowed; expected a number in (0, 1]")
    pos = np.sort(_scores(positive, "positive"))[::-1]
    k = math.ceil(recall * pos.size - 1e-9)  # how many positives must be flagged
    return float(pos[max(k, 1) - 1])


def flagged_rate(scores: np.ndarray, threshold: float) -> float:
    """The share of ``scores`` flagged at ``threshold`` (score ≥ threshold): a recall for
    adversarial images, a false-positive rate for clean ones."""
    return float((_scores(scores, "scores") >= threshold).mean())


def fpr_at_recall(positive: np.ndarray, negative: np.ndarray, recall: float = 0.95) -> float:
    """The share of ``negative`` (clean) images flagged at the threshold that catches
    ``recall`` of the ``positive`` (adversarial) ones (:func:`threshold_at_recall`)."""
    return flagged_rate(negative, threshold_at_recall(positive, recall))
