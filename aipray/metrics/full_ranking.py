"""Metrics over each user's full ranking of the warm items, computed chunk by chunk of users.

Memory is ``chunk × n_items`` scores at a time, never a users × items matrix. A user's own
training items are never ranked (nor cold items); the held-out items are masked as asked.

The full-ranking yardstick of an injected item (Denoise-to-protect's HR@50, beside AIP's HR@N
among the top-C candidates) needs no more than each user's ``depth`` best scores: an item is in
the top N ≤ depth exactly when fewer than N of those score at least as high as it.
:func:`full_ranking_context` keeps them, with the test item's score and full rank, as a
:class:`~aipray.metrics.ranking.CandidateScores`, so the counting functions of
:mod:`aipray.metrics.ranking` rank injected items against the full ranking unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from aipray.metrics.ranking import CandidateScores

#: cut-offs of the full-ranking yardstick (Denoise-to-protect reports HR@50)
FULL_CUTOFFS = (10, 20, 50)

ScoresOf = Callable[[torch.Tensor], torch.Tensor]


def full_scores_masked(
    scores_of: ScoresOf,
    catalog: Any,
    *,
    mask_held_out: str = "",
    chunk: int = 256,
    device: torch.device | str = "cpu",
    users: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(user ids [U], scores [U, n_items])`` per chunk of ``users`` (default: every user
    in order), with cold items and each user's training items at ``-inf``, and the validation
    (``"val"``), test (``"test"``) or both (``"val,test"``) held-out items too.
    ``scores_of(users [U]) → [U, n_items]``."""
    blocked = torch.as_tensor(~catalog.warm_mask(), device=device)
    indptr, train_items = catalog.train_csr()
    held = [h for h in mask_held_out.split(",") if h]
    users = np.arange(catalog.n_users) if users is None else np.asarray(users, dtype=np.int64)
    for start in range(0, users.size, chunk):
        ids = users[start : start + chunk]
        scores = scores_of(torch.as_tensor(ids, device=device)).float().clone()
        scores[:, blocked] = -torch.inf
        lo, hi = indptr[ids], indptr[ids + 1]
        rows = np.repeat(np.arange(ids.size), hi - lo)
        cols = train_items[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
        scores[
            torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
        ] = -torch.inf
        local = torch.arange(ids.size, device=device)
        for name in held:
            items = {"val": catalog.val_items, "test": catalog.test_items}[name][ids]
            scores[local, torch.as_tensor(items, device=device)] = -torch.inf
        yield ids, scores


@torch.no_grad()
def full_hit_rate(
    scores_of: ScoresOf,
    catalog: Any,
    *,
    k: int = 10,
    held_out: str = "val",
    chunk: int = 256,
    device: torch.device | str = "cpu",
    users: np.ndarray | None = None,
) -> float:
    """HR@k of each user's held-out item (``"val"`` or ``"test"``) ranked among all warm items
    outside the user's training set and the other held-out item, over ``users`` (default: all).
    Ties count against it."""
    target_all = {"val": catalog.val_items, "test": catalog.test_items}[held_out]
    other = "test" if held_out == "val" else "val"
    hits = total = 0
    for ids, scores in full_scores_masked(
        scores_of, catalog, mask_held_out=other, chunk=chunk, device=device, users=users
    ):
        local = torch.arange(scores.shape[0], device=scores.device)
        target = torch.as_tensor(target_all[ids], device=scores.device)
        own = scores[local, target].clone()
        scores[local, target] = -torch.inf
        hits += int(((scores >= own[:, None]).sum(1) < k).sum())
        total += ids.size
    return hits / max(1, total)


def full_random_hit_rate(catalog: Any, *, k: int = 10) -> float:
    """A random ranker's expected :func:`full_hit_rate`: the mean over users of ``k`` over the
    number of items each user's held-out item is ranked among."""
    n_warm = int(catalog.warm_mask().sum())
    own = np.bincount(catalog.train_users, minlength=catalog.n_users)
    pool = n_warm - own - 1  # the other held-out item is not ranked either
    return float(np.mean(np.minimum(1.0, k / np.maximum(pool, 1))))


@torch.no_grad()
def full_ranking_context(
    scores_of: ScoresOf,
    catalog: Any,
    *,
    depth: int = max(FULL_CUTOFFS),
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> CandidateScores:
    """Each user's full ranking, as far as HR@N for N ≤ ``depth`` needs it: the ``depth`` best
    scores (ascending, ``-inf`` padded) over every warm item outside the user's training and
    validation items (the set the first stage draws its candidates from; the test item is in
    it), the test item's score and its rank there (items scoring at least as high), and the
    ranking's size per user. ``scores_of(users [U]) → [U, n_items]``."""
    parts: list[tuple[torch.Tensor, ...]] = []
    for ids, scores in full_scores_masked(
        scores_of, catalog, mask_held_out="val", chunk=chunk, device=device
    ):
        local = torch.arange(scores.shape[0], device=scores.device)
        test = torch.as_tensor(catalog.test_items[ids], device=scores.device)
        test_scores = scores[local, test]
        test_rank = (scores >= test_scores[:, None]).sum(1) - 1
        top = scores.topk(min(depth, scores.shape[1]), dim=1).values.flip(1)
        parts.append((top, test_scores, test_rank, torch.isfinite(scores).sum(1)))
    return CandidateScores(*(torch.cat(column).cpu() for column in zip(*parts, strict=True)))


def popularity_scores(catalog: Any) -> ScoresOf:
    """The popularity ranker: every user scores an item by its number of training interactions."""
    pop = torch.as_tensor(catalog.item_popularity(), dtype=torch.float32)

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        return pop.to(users.device).expand(users.numel(), -1)

    return scores_of


@torch.no_grad()
def model_scores(model: Any, catalog: Any, device: torch.device | str = "cpu") -> ScoresOf:
    """A trained recommender's scores of every item, from its training encoder (ids and
    images), for ``full_*`` metrics."""
    model.eval()
    encoder = model.training_encoder(catalog.images)
    codes = torch.cat(
        [
            encoder(torch.arange(i, min(i + 512, catalog.n_items), device=device))
            for i in range(0, catalog.n_items, 512)
        ]
    )

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        return model.score_codes(users, codes)

    return scores_of
