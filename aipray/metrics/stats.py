"""Significance tests on item-level metrics."""

from __future__ import annotations

import math

import numpy as np


def paired_t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of ``a`` vs ``b`` (e.g. adversarial vs cooperative HR_i@5).

    When every difference is identical the t statistic is undefined: p is 1 if the differences
    are all zero and 0 otherwise (a constant non-zero shift is as significant as it gets).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired samples must be 1-D and of equal length, got {a.shape}, {b.shape}"
        )
    diff = a - b
    if a.size < 2 or np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        return 1.0 if a.size == 0 or abs(diff.mean()) < 1e-12 else 0.0
    from scipy import stats  # 0.7 s to import: paid by the processes that test, not all

    p = float(stats.ttest_rel(a, b).pvalue)
    return p if math.isfinite(p) else 1.0
