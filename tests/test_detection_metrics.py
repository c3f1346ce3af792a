"""The detector's metrics: ROC AUC with ties counted half, and the threshold and clean
false-positive rate at a recall, by hand and against slow all-pairs references."""

from __future__ import annotations

import numpy as np
import pytest

from aipray.metrics.detection import flagged_rate, fpr_at_recall, roc_auc, threshold_at_recall


def auc_all_pairs(positive, negative) -> float:
    """Slow reference: every (adversarial, clean) pair, 1 when the adversarial one scores
    higher, ½ on a tie."""
    total = 0.0
    for p in positive:
        for n in negative:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(positive) * len(negative))


def test_auc_matches_a_hand_case_with_a_tie():
    """Clean 0.1, 0.4, 0.5; attacked 0.35, 0.5, 0.9. Pairs won by the attacked image:
    0.35 > 0.1 (1); 0.5 > 0.1, 0.4 and ties 0.5 (2.5); 0.9 beats all three (3): 6.5 of 9."""
    clean, attacked = [0.1, 0.4, 0.5], [0.35, 0.5, 0.9]
    assert roc_auc(attacked, clean) == pytest.approx(6.5 / 9)
    assert roc_auc(clean, attacked) == pytest.approx(2.5 / 9)  # the two orders sum to 1
    assert roc_auc([1.0, 2.0], [0.0]) == 1.0 and roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([3.0, 3.0], [3.0, 3.0, 3.0]) == 0.5  # all tied: chance


def test_auc_agrees_with_all_pairs_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 8, size=rng.integers(1, 30)).astype(float)
        assert roc_auc(pos, neg) == pytest.approx(auc_all_pairs(pos, neg), abs=1e-12)


def test_threshold_and_fpr_at_95_recall_by_hand():
    """20 attacked scores 1..20: 95 % recall flags 19 of them, so the threshold is the 19th
    highest, 2. Clean scores 0, 1, 2, 2, 3: those ≥ 2 (three of five) are false positives."""
    attacked = np.arange(1.0, 21.0)
    clean = np.array([0.0, 1.0, 2.0, 2.0, 3.0])
    assert threshold_at_recall(attacked, 0.95) == 2.0
    assert flagged_rate(attacked, 2.0) == 0.95
    assert fpr_at_recall(attacked, clean, 0.95) == pytest.approx(3 / 5)
    # 10 attacked: 95 % needs ⌈9.5⌉ = 10, every one, so the lowest attacked score
    assert threshold_at_recall(np.arange(10.0), 0.95) == 0.0
    assert (
        threshold_at_recall([5.0, 7.0], 1.0) == 5.0 and threshold_at_recall([5.0, 7.0], 0.5) == 7.0
    )


def test_threshold_is_the_largest_that_reaches_the_recall():
    """Against a slow reference: of all candidate thresholds (the attacked scores), the largest
    flagging at least the recall."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos = rng.integers(0, 10, size=rng.integers(1, 40)).astype(float)
        recall = float(rng.uniform(0.05, 1.0))
        reaching = [t for t in pos if (pos >= t).mean() >= recall - 1e-12]
        assert threshold_at_recall(pos, recall) == max(reaching)


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="no scores"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan], [1.0])
    with pytest.raises(ValueError, match=r"recall: 0 is not allowed"):
        threshold_at_recall([1.0], 0)
