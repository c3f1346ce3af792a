"""Perceptual-Rec's category push without Ray: catalogs with replaced images, the class rule,
evasion and poisoning on a tiny synthetic world."""

import numpy as np
import pytest
import torch

from aipray.attacks import ATTACKS, AttackInputs
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.metrics.category import category_ranking
from aipray.metrics.full_ranking import model_scores
from aipray.models.extractor import ExtractorConfig, make_extractor
from aipray.models.vbpr import VBPR, VBPRConfig
from aipray.protocol import perceptual


@pytest.fixture(scope="module")
def world():
    catalog = make_synthetic(
        SyntheticConfig(n_users=150, n_items=160, n_cold=10, image_size=16, seed=4)
    )
    warm = np.flatnonzero(catalog.warm_mask())
    extractor, _ = make_extractor(
        ExtractorConfig(width=0.1, epochs=4),
        np.asarray(catalog.images[warm]),
        catalog.categories[warm],
        seed=0,
        category_names=catalog.category_names,
    )
    config = VBPRConfig(dim=8, lr=0.003, reg=0.001, epochs=4, batch_size=256)
    model, _ = VBPR.fit(config, catalog, extractor=extractor, device="cpu", seed=0)
    return catalog, extractor, config, model


def test_patched_images_index_like_the_array_with_rows_replaced():
    base = np.arange(6 * 3 * 2 * 2, dtype=np.uint8).reshape(6, 3, 2, 2)
    new = np.full((2, 3, 2, 2), 255, dtype=np.uint8)
    patched = perceptual.PatchedImages(base, np.array([4, 1]), new)
    expected = base.copy()
    expected[[4, 1]] = new
    assert patched.shape == base.shape and len(patched) == 6
    np.testing.assert_array_equal(np.asarray(patched), expected)
    np.testing.assert_array_equal(patched[1], expected[1])
    np.testing.assert_array_equal(patched[2:5], expected[2:5])
    np.testing.assert_array_equal(patched[np.array([5, 4, 0])], expected[[5, 4, 0]])
    out = patched[0:2]
    out[:] = 7  # a fresh array: the base is untouched
    assert base[0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="do not fit"):
        perceptual.PatchedImages(base, np.array([1]), new)


def test_rule_picks_least_recommended_sizeable_origin_and_most_recommended_target():
    shares = np.array([0.5, 0.01, 3.0, 0.2])
    labels = np.array([0, 0, 1, 2, 2, 2, 3, 3, 3, 3])
    warm = np.ones(10, dtype=bool)
    assert perceptual.choose_push(shares, labels, warm, min_share=0.1) == (1, 2)
    # class 1 holds 1 of 10 warm items: below a 20 % floor, so the next least recommended
    assert perceptual.choose_push(shares, labels, warm, min_share=0.2) == (3, 2)
    # an extractor that puts no item in class 1 cannot push it: the next one is taken
    predicted = np.array([0, 0, 0, 2, 2, 2, 3, 3, 3, 3])
    assert perceptual.choose_push(shares, labels, warm, min_share=0.1, predicted=predicted) == (
        3,
        2,
    )


def test_class_shares_agree_with_the_per_category_metric(world):
    catalog, _, _, model = world
    scores_of = model_scores(model, catalog)
    shares = perceptual.class_shares(scores_of, catalog, catalog.categories, k=20)
    for c in range(len(shares)):
        one = category_ranking(scores_of, catalog, catalog.categories, c, ks=(20,))
        assert shares[c] == pytest.approx(one["mean"]["chr_count@20"], abs=1e-9)
    assert shares.sum() == pytest.approx(20.0)  # every top-20 slot holds some category


def test_unattacked_retraining_reproduces_the_clean_ranking(world):
    """Poisoning retrains with the same seed: with the images unchanged nothing may move, so
    every change a poisoning trial reports comes from the attacked images."""
    catalog, extractor, config, model = world
    same = perceptual.with_images(catalog, np.array([3, 5]), np.asarray(catalog.images[[3, 5]]))
    again, _ = perceptual.attacked_model(
        "poisoning", model, config, same, extractor=extractor, seed=0
    )
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode"):
        perceptual.attacked_model("both", model, config, same, extractor=extractor)


def test_evasion_changes_only_the_attacked_items_scores(world):
    catalog, extractor, config, model = world
    ids = np.array([7, 11])
    noisy = 255 - np.asarray(catalog.images[ids])
    attacked = perceptual.with_images(catalog, ids, noisy)
    after, _ = perceptual.attacked_model("evasion", model, config, attacked, extractor=extractor)
    users = torch.arange(catalog.n_users)
    before = model_scores(model, catalog)(users)
    now = model_scores(after, attacked)(users)
    others = np.setdiff1d(np.arange(catalog.n_items), ids)
    torch.testing.assert_close(now[:, others], before[:, others])
    assert not torch.allclose(now[:, ids], before[:, ids])


@pytest.mark.parametrize("mode", ["evasion", "poisoning"])
def test_push_end_to_end_pgd(world, mode):
    catalog, extractor, config, model = world
    labels = perceptual.item_classes(extractor, catalog)
    shares = perceptual.class_shares(model_scores(model, catalog), catalog, labels)
    origin, target = perceptual.choose_push(shares, labels, catalog.warm_mask())
    pgd = ATTACKS.get("pgd")
    attack = pgd(
        pgd.Config(eps=16, steps=10, step_ratio=1 / 6),
        None,
        AttackInputs(classifier=extractor, target_class=target),
    )
    before = np.array(catalog.images[:4])
    metrics, items = perceptual.push(
        model, config, catalog, extractor, attack, origin, mode=mode, batch_size=16
    )
    np.testing.assert_array_equal(np.array(catalog.images[:4]), before)  # inputs unchanged
    members = np.flatnonzero((labels == origin) & catalog.warm_mask())
    assert sorted(items["item_id"]) == list(members)
    assert metrics["n_items"] == members.size
    assert metrics["linf_255_max"] <= 16
    assert (items["clean_class"] == origin).all()
    assert metrics["success_mean"] == pytest.approx((items["adv_class"] == target).mean())
    assert metrics["success_mean"] > 0.5  # an undefended classifier is easy to push at eps 16
    assert (items["feature_loss"] > 0).all()
    for k in perceptual.CUTOFFS:
        assert metrics[f"clean/chr_at_{k}"] == pytest.approx(metrics[f"clean/chr_count_at_{k}"] / k)
        assert 0 <= metrics[f"attacked/ncdcg_at_{k}"] <= 1
    assert 0 <= metrics["p_value_chr_at_20"] <= 1 or np.isnan(metrics["p_value_chr_at_20"])
