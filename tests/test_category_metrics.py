"""CHR@K and nCDCG@K of the Perceptual-Rec / TAaMR protocol: the chunked ``topk`` path against a
slow dense argsort, and a case worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aipray.data.catalog import Catalog
from aipray.metrics.category import (
    category_change,
    category_ranking,
    rank_discounts,
    top_items,
)

KS = (1, 3, 5, 10, 20, 50, 100)  # 50 and 100 exceed some users' rankable sets (53 items)


def make_catalog(
    n_users: int,
    n_items: int,
    train: list[list[int]],
    val: list[int],
    test: list[int],
    cold: list[int],
) -> Catalog:
    """A catalog from per-user training lists; 1×1 images (the metrics never look at them)."""
    users = np.concatenate([np.full(len(t), u) for u, t in enumerate(train)]).astype(np.int64)
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in train])
    return Catalog(
        name="tiny",
        train_users=users,
        train_items=items,
        val_items=np.asarray(val, dtype=np.int64),
        test_items=np.asarray(test, dtype=np.int64),
        cold_items=np.asarray(cold, dtype=np.int64),
        categories=np.full(n_items, -1, dtype=np.int64),
        images=np.zeros((n_items, 3, 1, 1), dtype=np.uint8),
    )


def table_scores(table: torch.Tensor):
    calls: list[int] = []

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        calls.append(users.numel())
        return table[users]

    scores_of.calls = calls  # type: ignore[attr-defined]
    return scores_of


def slow_category_ranking(
    table: np.ndarray, catalog: Catalog, categories: np.ndarray, category: int, ks
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Reference: the dense users × items matrix, cold and training items masked, every user's
    whole ranking by a stable descending argsort (ties: lower item id first), then counting."""
    scores = table.astype(np.float32).copy()
    scores[:, catalog.cold_items] = -np.inf
    scores[catalog.train_users, catalog.train_items] = -np.inf
    disc = rank_discounts(catalog.n_items)  # 1 / log2(r + 1), checked by hand below
    out = {f"{m}@{k}": np.zeros(catalog.n_users) for m in ("chr_count", "chr", "ncdcg") for k in ks}
    rankings = []
    for u in range(catalog.n_users):
        order = np.argsort(-scores[u], kind="stable")
        ranking = order[np.isfinite(scores[u][order])]  # rankable items only
        rankings.append(ranking)
        is_cat = categories[ranking] == category
        n_uc = int(is_cat.sum())
        for k in ks:
            count, gain = 0, 0.0
            for r in range(min(k, ranking.size)):
                if is_cat[r]:
                    count += 1
                    gain += disc[r]
            ideal = 0.0
            for r in range(min(k, n_uc)):
                ideal += disc[r]
            out[f"chr_count@{k}"][u] = count
            out[f"chr@{k}"][u] = count / k
            out[f"ncdcg@{k}"][u] = gain / ideal if n_uc else 0.0
    return out, rankings


def random_world(seed: int, n_users: int = 37, n_items: int = 53):
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(n_items, size=4, replace=False)).tolist()
    warm = np.setdiff1d(np.arange(n_items), cold)
    categories = rng.integers(0, 4, size=n_items)
    rare = rng.choice(warm, size=3, replace=False)
    categories[categories == 4] = 0
    categories[rare] = 4  # the rare category: three warm items
    train = []
    for u in range(n_users):
        own = rng.choice(warm, size=int(rng.integers(1, 9)), replace=False).tolist()
        if u % 5 == 0:  # these users have every item of the rare category in training
            own = sorted(set(own) | set(rare.tolist()))
        train.append(own)
    val = rng.choice(warm, size=n_users).tolist()
    test = rng.choice(warm, size=n_users).tolist()
    table = np.round(rng.normal(size=(n_users, n_items)), 1).astype(np.float32)  # many ties
    table[:, :10] = 0.5  # and a block of exact ties across the top
    catalog = make_catalog(n_users, n_items, train, val, test, cold)
    return catalog, table, categories


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 8, 37])
def test_chunked_topk_matches_dense_argsort(seed: int, chunk: int) -> None:
    catalog, table, categories = random_world(seed)
    for category in (0, 3, 4):
        slow, _ = slow_category_ranking(table, catalog, categories, category, KS)
        scores_of = table_scores(torch.tensor(table))
        fast = category_ranking(scores_of, catalog, categories, category, ks=KS, chunk=chunk)
        assert max(scores_of.calls) <= chunk  # never more than one chunk of users at a time
        assert sum(scores_of.calls) == catalog.n_users
        assert set(fast["per_user"]) == set(slow)
        for key, values in slow.items():
            assert fast["per_user"][key].dtype == np.float64
            np.testing.assert_array_equal(fast["per_user"][key], values, err_msg=key)
            assert fast["mean"][key] == pytest.approx(values.mean(), abs=1e-15)
    # the rare category: users 0, 5, 10, ... cannot be shown any of it
    fast = category_ranking(table_scores(torch.tensor(table)), catalog, categories, 4, ks=KS)
    assert (fast["n_category"][::5] == 0).all() and (fast["n_category"] > 0).any()
    assert (fast["per_user"]["ncdcg@100"][::5] == 0).all()
    assert fast["n_category_items"] == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_top_items_are_the_stable_argsort_prefix(seed: int) -> None:
    catalog, table, _ = random_world(seed)
    _, rankings = slow_category_ranking(table, catalog, np.zeros(53, int), 0, (1,))
    scores = torch.tensor(table)
    scores[:, torch.as_tensor(catalog.cold_items)] = -torch.inf
    scores[torch.as_tensor(catalog.train_users), torch.as_tensor(catalog.train_items)] = -torch.inf
    for k in (1, 7, 10, 11, 30):
        items, values = top_items(scores, k)
        for u, ranking in enumerate(rankings):
            assert items[u].tolist() == ranking[:k].tolist()
            np.testing.assert_array_equal(values[u].numpy(), scores[u, ranking[:k]].numpy())


def hand_case():
    # items 0..5; category 1 = items 0, 2, 4; item 5 is cold.
    categories = np.array([1, 0, 1, 0, 1, 0])
    # user 0 trains on item 1; user 1 on every category-1 item.
    catalog = make_catalog(2, 6, [[1], [0, 2, 4]], val=[3, 1], test=[0, 3], cold=[5])
    table = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.8, 0.5, 0.99],  # ranking 3, 2, 4, 0 (2 before 4: tie, lower id)
            [0.7, 0.2, 0.6, 0.3, 0.9, 0.95],  # ranking 3, 1
        ]
    )
    return catalog, table, categories


def test_by_hand() -> None:
    catalog, table, categories = hand_case()
    res = category_ranking(table_scores(table), catalog, categories, 1, ks=(1, 2, 3, 5), chunk=1)
    per_user = res["per_user"]
    assert res["n_category"].tolist() == [3, 0]
    # user 0's hits by rank: 0, 1, 1, 1
    assert per_user["chr_count@1"].tolist() == [0, 0]
    assert per_user["chr_count@2"].tolist() == [1, 0]
    assert per_user["chr_count@3"].tolist() == [2, 0]
    assert per_user["chr_count@5"].tolist() == [3, 0]  # the ranking ends after 4 items
    assert per_user["chr@2"].tolist() == [0.5, 0]
    assert per_user["chr@5"].tolist() == [3 / 5, 0]
    inv3 = 1 / math.log2(3)
    assert per_user["ncdcg@1"].tolist() == [0.0, 0.0]
    assert per_user["ncdcg@2"][0] == pytest.approx(inv3 / (1 + inv3), rel=1e-15)
    assert per_user["ncdcg@3"][0] == pytest.approx((inv3 + 0.5) / (1 + inv3 + 0.5), rel=1e-15)
    ideal = 1 + inv3 + 0.5  # n_uc = 3 caps the ideal at three hits
    assert per_user["ncdcg@5"][0] == pytest.approx((inv3 + 0.5 + 1 / math.log2(5)) / ideal)
    assert per_user["ncdcg@5"][1] == 0.0  # no category item is rankable for user 1
    assert res["mean"]["chr_count@3"] == 1.0
    assert res["mean"]["chr@3"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(rank_discounts(4), [1, inv3, 0.5, 1 / math.log2(5)], rtol=1e-15)


def test_category_change_paired_test() -> None:
    catalog, table, categories = random_world(3)
    clean = category_ranking(table_scores(torch.tensor(table)), catalog, categories, 4, ks=KS)
    same = category_change(clean, clean)["chr_count@20"]
    assert same["clean"] == same["attacked"] == clean["mean"]["chr_count@20"]
    assert same["delta"] == 0.0 and same["p_value"] == 1.0
    pushed = table.copy()
    pushed[:, categories == 4] += 1.0  # the attack pushes the rare category up
    attacked = category_ranking(table_scores(torch.tensor(pushed)), catalog, categories, 4, ks=KS)
    change = category_change(clean, attacked)
    assert set(change) == {f"chr_count@{k}" for k in KS}
    c = change["chr_count@5"]
    assert c["attacked"] > c["clean"] and c["delta"] == pytest.approx(c["attacked"] - c["clean"])
    assert c["p_value"] < 0.01
    from scipy import stats

    a, b = attacked["per_user"]["chr_count@5"], clean["per_user"]["chr_count@5"]
    assert c["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    with pytest.raises(ValueError, match="metric must be one of"):
        category_change(clean, attacked, metric="hr")


def test_bad_inputs() -> None:
    catalog, table, categories = hand_case()
    with pytest.raises(ValueError, match=r"one class per item, shape \(6,\)"):
        category_ranking(table_scores(table), catalog, categories[:5], 1)
    with pytest.raises(ValueError, match="positive cut-offs"):
        category_ranking(table_scores(table), catalog, categories, 1, ks=(0, 5))
    nan = table.clone()
    nan[1, 3] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        category_ranking(table_scores(nan), catalog, categories, 1)
