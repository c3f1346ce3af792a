"""Ranking metrics of the AIP two-stage protocol, computed by counting, never by argsort.

Per user, the visually-aware ranker sees a fixed candidate set (BPR top-C ∪ the ordinary test item)
plus one injected cold item. The injected item's rank is the number of fixed candidates that score
at least as high as it: ties count against the item being ranked, so a degenerate ranker that gives
every item the same score earns no hits. With each user's fixed scores sorted once, a batch of
injected items is ranked for all users by one ``searchsorted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CUTOFFS = (5, 10, 20)
#: the prefix of the colluding-merchant metrics (``collusion/k<k>/...``)
COLLUSION = "collusion"


@dataclass(frozen=True)
class CandidateScores:
    """The fixed part of every user's candidate set, scored by one ranker (under one defence).

    Attributes:
        sorted_scores: ``[U, M]`` ascending scores of BPR top-C ∪ {test item}; users with fewer
            than ``M`` candidates (test item already in the top-C) are padded with ``-inf``.
        test_scores: ``[U]`` score of each user's ordinary test item.
        test_rank: ``[U]`` number of the user's other fixed candidates scoring at least as high as
            the test item.
        set_sizes: ``[U]`` number of fixed candidates (padding excluded).
    """

    sorted_scores: torch.Tensor
    test_scores: torch.Tensor
    test_rank: torch.Tensor
    set_sizes: torch.Tensor

    @classmethod
    def build(cls, candidate_scores: torch.Tensor, valid: torch.Tensor, test_scores: torch.Tensor):
        """From raw ``[U, M]`` scores, a ``[U, M]`` validity mask and the test item's ``[U]``
        scores (the test item is one of the valid candidates of its user)."""
        masked = torch.where(valid, candidate_scores, torch.full_like(candidate_scores, -torch.inf))
        sorted_scores, _ = torch.sort(masked, dim=1)
        test_rank = (masked >= test_scores[:, None]).sum(1) - 1  # minus the test item itself
        return cls(sorted_scores, test_scores, test_rank, valid.sum(1))

    def to(self, device: torch.device | str) -> CandidateScores:
        return CandidateScores(*(t.to(device) for t in self.astuple()))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.sorted_scores, self.test_scores, self.test_rank, self.set_sizes)


def injected_ranks(fixed: CandidateScores, scores: torch.Tensor) -> torch.Tensor:
    """``[U, B]`` 0-based rank of each injected item (``scores [U, B]``) among the fixed set."""
    m = fixed.sorted_scores.shape[1]
    below = torch.searchsorted(fixed.sorted_scores, scores.contiguous(), right=False)
    return m - below


def hit_rates(ranks: torch.Tensor, cutoffs: Sequence[int] = CUTOFFS) -> dict[int, torch.Tensor]:
    """``HR_i@N`` per injected item: the share of users with the item in their top N, ``[B]``."""
    return {n: (ranks < n).float().mean(0) for n in cutoffs}


def ordinary_hit_rates(
    fixed: CandidateScores, injected: torch.Tensor, cutoffs: Sequence[int] = CUTOFFS
) -> dict[int, torch.Tensor]:
    """Availability: HR@N of each user's ordinary test item while the injected item (``[U, B]``
    scores) is in the set, averaged over users: ``[B]`` per cutoff."""
    rank = fixed.test_rank[:, None] + (injected >= fixed.test_scores[:, None]).long()
    return {n: (rank < n).float().mean(0) for n in cutoffs}


def colluding_ranks(fixed: CandidateScores, scores: torch.Tensor) -> torch.Tensor:
    """``[U, G, k]`` 0-based rank of each of ``k`` colluding items when all ``k`` of a group are
    injected into every user's set together (``scores [U, G, k]``: ``G`` groups of ``k``): the
    fixed candidates and the group's other items that score at least as high (ties count
    against the item being ranked, among the colluders too)."""
    n_users, groups, k = scores.shape
    among_fixed = injected_ranks(fixed, scores.reshape(n_users, groups * k))
    among_group = (scores[..., None, :] >= scores[..., :, None]).sum(-1) - 1  # others, not self
    return among_fixed.reshape(n_users, groups, k) + among_group


def colluding_hit_rates(
    fixed: CandidateScores, scores: torch.Tensor, cutoffs: Sequence[int] = CUTOFFS
) -> dict[str, dict[int, torch.Tensor]]:
    """AIP's "simultaneous presence of multiple adversarial items": ``G`` merchants each inject
    ``k`` items into every user's set at once (``scores [U, G, k]``). Per group ``[G]`` and
    cutoff: ``items``, the HR@N of its items (mean over users and the ``k`` items);
    ``merchant``, the share of users with at least one of them in the top N; ``ordinary``, the
    HR@N of each user's ordinary test item with all ``k`` in the set. With ``k = 1`` the first
    and the last are :func:`hit_rates` and :func:`ordinary_hit_rates`."""
    ranks = colluding_ranks(fixed, scores)
    ordinary = fixed.test_rank[:, None] + (scores >= fixed.test_scores[:, None, None]).sum(-1)
    return {
        "items": {n: (ranks < n).float().mean((0, 2)) for n in cutoffs},
        "merchant": {n: (ranks.min(-1).values < n).float().mean(0) for n in cutoffs},
        "ordinary": {n: (ordinary < n).float().mean(0) for n in cutoffs},
    }


def random_colluding_hit_rate(
    set_sizes: torch.Tensor, k: int, cutoffs: Sequence[int] = CUTOFFS
) -> dict[str, dict[int, float]]:
    """Expected ``items`` and ``merchant`` HR@N of :func:`colluding_hit_rates` under a uniformly
    random ranking of each user's ``M + k`` items: ``min(N, M+k) / (M+k)`` per item, and
    ``1 − C(M, N) / C(M+k, N)`` that at least one of the ``k`` is in the top N."""
    sizes = set_sizes.double()
    total = sizes + k
    items = {n: float((torch.clamp(total, max=n) / total).mean()) for n in cutoffs}
    merchant = {}
    for n in cutoffs:
        # C(M, N) / C(M+k, N) = prod_{j<k} (M+k−N−j) / (M+k−j), 0 once N > M
        miss = torch.ones_like(sizes)
        for j in range(k):
            miss = miss * torch.clamp(total - n - j, min=0) / (total - j)
        merchant[n] = float((1 - miss).mean())
    return {"items": items, "merchant": merchant}


def ranks_among(scores: torch.Tensor, users: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``[P]`` 0-based rank of the item in column ``columns[p]`` of ``scores [U, B]`` for the
    user ``users[p]``, among that user's ``B`` items: the others that score at least as high
    (ties count against it). The item cold-start yardstick: each cold item ranked among the cold
    items only, for the users who chose it, so a ranker whose cold items sit below every warm
    item can still show whether their images carry taste."""
    rows = scores[users]
    own = rows.gather(1, columns[:, None])
    return (rows >= own).sum(1) - 1


def prediction_shift(adversarial: torch.Tensor, cooperative: torch.Tensor) -> torch.Tensor:
    """AIP eq. 8: ``Δp_i = mean_u (p'_ui − p_ui)`` per item, ``[B]``."""
    return (adversarial - cooperative).mean(0)


def random_hit_rate(set_sizes: torch.Tensor, cutoffs: Sequence[int] = CUTOFFS) -> dict[int, float]:
    """Expected HR@N of any one item under a uniformly random ranking of each user's set (the
    fixed candidates plus the injected item)."""
    n = set_sizes.double() + 1
    return {k: float((torch.clamp(n, max=k) / n).mean()) for k in cutoffs}


def hit_rates_by_argsort(
    fixed_scores: np.ndarray, valid: np.ndarray, injected: np.ndarray, cutoff: int
) -> np.ndarray:
    """Slow reference: per item and user, sort the whole set and find the injected item.

    ``fixed_scores, valid: [U, M]``, ``injected: [U, B]`` → ``[B]`` HR@cutoff. Ties count against
    the injected item (it is placed last among equal scores). Used by the tests.
    """
    n_users, n_items = injected.shape
    out = np.zeros(n_items)
    for b in range(n_items):
        hits = 0
        for u in range(n_users):
            scores = np.concatenate([fixed_scores[u][valid[u]], [injected[u, b]]])
            order = np.argsort(-scores, kind="stable")
            hits += int(np.flatnonzero(order == scores.size - 1)[0] < cutoff)
        out[b] = hits / n_users
    return out
