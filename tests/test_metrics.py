import numpy as np
import pytest
import torch

from aipray.metrics.image import linf_255, psnr, ssim
from aipray.metrics.ranking import (
    CandidateScores,
    colluding_hit_rates,
    colluding_ranks,
    hit_rates,
    hit_rates_by_argsort,
    injected_ranks,
    ordinary_hit_rates,
    prediction_shift,
    random_colluding_hit_rate,
    random_hit_rate,
    ranks_among,
)
from aipray.metrics.stats import paired_t_test


def small_case():
    # 2 users, 4 fixed candidates each (the last column is the test item); user 1's test item
    # is already in its BPR top-C, so its last column is padding.
    scores = torch.tensor([[0.9, 0.5, 0.1, 0.3], [0.2, 0.8, 0.4, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    test = torch.tensor([0.3, 0.4])
    return CandidateScores.build(scores, valid, test), scores, valid


def test_ranks_by_hand():
    fixed, _, _ = small_case()
    # user 0 fixed: 0.9 0.5 0.3 0.1 ; user 1 fixed: 0.8 0.4 0.2
    injected = torch.tensor([[1.0, 0.5, 0.0], [0.3, 0.8, 0.9]])
    ranks = injected_ranks(fixed, injected)
    # ties count against the injected item: 0.5 vs {0.9, 0.5} -> rank 2
    assert ranks.tolist() == [[0, 2, 4], [2, 1, 0]]
    hr = hit_rates(ranks, cutoffs=(1, 2))
    assert hr[1].tolist() == [0.5, 0.0, 0.5]
    assert hr[2].tolist() == [0.5, 0.5, 0.5]


def test_test_item_rank_and_availability_by_hand():
    fixed, _, _ = small_case()
    # user 0's test item 0.3 is beaten by 0.9 and 0.5; user 1's 0.4 by 0.8
    assert fixed.test_rank.tolist() == [2, 1]
    assert fixed.set_sizes.tolist() == [4, 3]
    injected = torch.tensor([[1.0, 0.0], [0.1, 0.4]])
    rates = ordinary_hit_rates(fixed, injected, cutoffs=(2, 3))
    # item 0: user 0 test rank 3, user 1 rank 1 ; item 1: user 0 rank 2, user 1 rank 2 (tie)
    assert rates[2].tolist() == [0.5, 0.0]
    assert rates[3].tolist() == [0.5, 1.0]


def test_random_hit_rate_by_hand():
    sizes = torch.tensor([4, 9])  # sets of 5 and 10 with the injected item
    assert random_hit_rate(sizes, cutoffs=(5,))[5] == pytest.approx((1.0 + 0.5) / 2)


def test_colluding_items_are_all_in_each_set_by_hand():
    fixed, _, _ = small_case()
    # one merchant of k = 2; user 0 fixed 0.9 0.5 0.3 0.1 (test 0.3), user 1 0.8 0.4 0.2 (test 0.4)
    group = torch.tensor([[[0.6, 0.95]], [[0.5, 0.5]]])  # [U, G=1, k=2]
    # user 0: 0.6 is beaten by 0.9 and by its colluder 0.95; user 1: the colluders tie, and a tie
    # counts against each of them
    assert colluding_ranks(fixed, group).tolist() == [[[2, 0]], [[2, 2]]]
    rates = colluding_hit_rates(fixed, group, cutoffs=(1, 3, 4, 5))
    assert rates["items"][1].tolist() == [0.25]
    assert rates["items"][3].tolist() == [1.0]
    assert rates["merchant"][1].tolist() == [0.5]  # user 0 sees 0.95 first
    # the test item falls behind both colluders: user 0 rank 2 -> 4, user 1 rank 1 -> 3
    assert rates["ordinary"][4].tolist() == [0.5]
    assert rates["ordinary"][5].tolist() == [1.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_colluding_ranks_match_a_loop_over_each_users_whole_set(seed):
    rng = np.random.default_rng(seed)
    n_users, m, groups, k = 7, 6, 4, 3
    raw = rng.integers(0, 5, size=(n_users, m)).astype(np.float32)  # ties on purpose
    valid = rng.random((n_users, m)) > 0.2
    valid[:, -1] = True
    fixed = CandidateScores.build(torch.tensor(raw), torch.tensor(valid), torch.tensor(raw[:, -1]))
    injected = rng.integers(0, 5, size=(n_users, groups, k)).astype(np.float32)
    ranks = colluding_ranks(fixed, torch.tensor(injected)).numpy()
    for u in range(n_users):
        for g in range(groups):
            whole = np.concatenate([raw[u][valid[u]], injected[u, g]])
            for i in range(k):
                own = valid[u].sum() + i  # the item's place in the user's whole set
                others = np.delete(whole, own)
                assert ranks[u, g, i] == (others >= whole[own]).sum(), (u, g, i)
    # one colluder alone is the ordinary injected item
    alone = colluding_hit_rates(fixed, torch.tensor(injected[:, :, :1]), cutoffs=(2, 4))
    single = torch.tensor(injected[:, :, 0])
    for n, hr in hit_rates(injected_ranks(fixed, single), cutoffs=(2, 4)).items():
        torch.testing.assert_close(alone["items"][n], hr)
        torch.testing.assert_close(alone["merchant"][n], hr)
    for n, hr in ordinary_hit_rates(fixed, single, cutoffs=(2, 4)).items():
        torch.testing.assert_close(alone["ordinary"][n], hr)


def test_random_colluding_hit_rate_counts_every_ordering():
    from itertools import permutations

    # 4 fixed candidates and k = 2 colluders (labels 0, 1): every ordering of the 6 is equally
    # likely; by hand, P(a colluder in the top 2) = 1 - C(4,2)/C(6,2) = 0.6
    orders = list(permutations(range(6)))
    for n in (1, 2, 3, 5):
        items = np.mean([o.index(0) < n for o in orders])
        merchant = np.mean([min(o.index(0), o.index(1)) < n for o in orders])
        chance = random_colluding_hit_rate(torch.tensor([4]), 2, cutoffs=(n,))
        assert chance["items"][n] == pytest.approx(items)
        assert chance["merchant"][n] == pytest.approx(merchant)
    assert random_colluding_hit_rate(torch.tensor([4]), 2, cutoffs=(2,))["merchant"][2] == (
        pytest.approx(0.6)
    )


def test_prediction_shift():
    adv = torch.tensor([[2.0, 1.0], [4.0, 1.0]])
    coop = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    assert prediction_shift(adv, coop).tolist() == [2.0, -1.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counting_matches_slow_argsort(seed):
    rng = np.random.default_rng(seed)
    n_users, m, b = 40, 30, 7
    scores = rng.normal(size=(n_users, m)).astype(np.float32)
    scores[:, :5] = np.round(scores[:, :5], 1)  # some ties
    valid = np.ones((n_users, m), dtype=bool)
    valid[rng.uniform(size=n_users) < 0.3, -1] = False
    injected = rng.normal(size=(n_users, b)).astype(np.float32)
    injected[:, 0] = scores[:, 0]  # exact ties with a candidate
    fixed = CandidateScores.build(
        torch.tensor(scores), torch.tensor(valid), torch.tensor(scores[:, -1])
    )
    ranks = injected_ranks(fixed, torch.tensor(injected))
    for k in (1, 5, 10):
        fast = hit_rates(ranks, cutoffs=(k,))[k].numpy()
        slow = hit_rates_by_argsort(scores, valid, injected, k)
        np.testing.assert_allclose(fast, slow)


def test_ranks_among_the_cold_items_count_ties_against_the_item():
    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0], [0.0, 5.0, 4.0, 1.0]])
    users = torch.tensor([0, 0, 1, 1, 0])
    columns = torch.tensor([0, 1, 1, 3, 2])
    # user 0: 3 is first, 1 last; user 1: 5 first, 1 third; user 0's 2 ties with its twin,
    # which counts against it: rank 2, not 1
    assert ranks_among(scores, users, columns).tolist() == [0, 3, 0, 2, 2]


@pytest.mark.parametrize("seed", [0, 1])
def test_ranks_among_match_a_stable_argsort_with_the_item_last_among_equals(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(12, 9)), 1).astype(np.float32)
    users = rng.integers(0, 12, size=30)
    columns = rng.integers(0, 9, size=30)
    slow = []
    for u, c in zip(users, columns, strict=True):
        others = np.delete(scores[u], c)
        order = np.argsort(-np.append(others, scores[u, c]), kind="stable")
        slow.append(int(np.flatnonzero(order == others.size)[0]))
    fast = ranks_among(torch.tensor(scores), torch.tensor(users), torch.tensor(columns))
    assert fast.tolist() == slow


def test_paired_t_test():
    from scipy import stats

    a = np.array([0.1, 0.4, 0.35, 0.8])
    b = np.array([0.0, 0.1, 0.3, 0.2])
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_t_test(b, b) == 1.0
    assert paired_t_test(b + 0.5, b) == 0.0


def test_image_metrics():
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    x = torch.round(x * 255) / 255
    y = (x + 7 / 255).clamp(0, 1)
    assert linf_255(x, y).tolist() == [7.0, 7.0, 7.0]
    assert torch.isinf(psnr(x, x)).all()
    mse = ((x - y) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, y), 10 * torch.log10(1 / mse))
    torch.testing.assert_close(ssim(x, x), torch.ones(3))


@pytest.mark.parametrize("levels", [None, 2])
def test_ssim_matches_scikit_image(levels):
    """Against scikit-image's float64 SSIM: strong noise, and an 8-bit perturbation of at most
    ``levels`` grey levels (where SSIM is close to 1 and float32 cancellation would show)."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 48, 40), generator=g) / 255.0
    if levels is None:
        y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    else:
        y = (x + torch.randint(-levels, levels + 1, x.shape, generator=g) / 255.0).clamp(0, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = skimage_metrics.structural_similarity(
            x[i].permute(1, 2, 0).double().numpy(),
            y[i].permute(1, 2, 0).double().numpy(),
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-5)
