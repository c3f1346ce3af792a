"""Metrics over each user's full ranking of the warm items, computed chunk by chunk of users.

Memory is ``chunk × n_items`` scores at a time, never a users × items matrix. A user's own
training items are never ranked (nor cold items); the held-out items are masked as asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

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
