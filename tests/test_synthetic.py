"""The synthetic marketplace's item styles can be replayed from its config."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np

from aipray.data.synthetic import SyntheticConfig, item_styles, make_synthetic


def test_item_styles_are_the_styles_the_images_were_drawn_with():
    config = SyntheticConfig(n_users=60, n_items=80, n_cold=8, image_size=16, seed=5)
    catalog = make_synthetic(config)
    styles = item_styles(config)
    assert np.array_equal(styles.categories, catalog.categories)
    assert styles.hues.shape == styles.textures.shape == (80,)
    for item in range(catalog.n_items):
        pixels = catalog.images[item].reshape(3, -1).T / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
        product = hsv[hsv[:, 1] > 0.5]  # the background is nearly grey
        angle = 2 * np.pi * product[:, 0]
        drawn = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi) % 1.0
        gap = abs(drawn - styles.hues[item])
        assert min(gap, 1 - gap) < 0.03, item


def test_style_labels_are_the_items_shape_hue_sixth_and_texture():
    from aipray.data.synthetic import SyntheticConfig, item_styles, style_labels

    config = SyntheticConfig(n_users=20, n_items=60, n_cold=5, image_size=16)
    labels, styles = style_labels(config), item_styles(config)
    assert list(labels) == ["shape", "hue", "texture"]
    assert np.array_equal(labels["shape"], styles.categories)
    assert np.array_equal(labels["texture"], styles.textures)
    hue = labels["hue"]
    assert hue.min() >= 0 and hue.max() <= 5
    # a hue in [k/6, (k+1)/6) is sixth k
    assert np.all(styles.hues >= hue / 6) and np.all(styles.hues < (hue + 1) / 6)


def test_true_preferences_are_the_generators_own_ranking():
    """The users' own logits: the same catalog as make_synthetic, a logit that is taste ×
    sharpness + popularity (checked by hand for one user), and a ranking that beats popularity
    on the held-out items, as the generator's ceiling must."""
    import torch

    from aipray.data.synthetic import true_preferences
    from aipray.metrics.full_ranking import full_hit_rate, popularity_scores

    config = SyntheticConfig(n_users=300, n_items=200, n_cold=20, image_size=16, seed=2)
    catalog, logits = true_preferences(config)
    plain = make_synthetic(config)
    for field in ("train_users", "train_items", "val_items", "test_items", "cold_items"):
        assert np.array_equal(getattr(catalog, field), getattr(plain, field)), field
    assert np.array_equal(catalog.images, plain.images)

    # taste only: every logit is sharpness × (the better style's affinity): the first style's
    # alone lies in [−0.8, 2.3] (hue cos × 0.8, category 1, texture 0.5)
    flat = dataclasses.replace(config, popularity_weight=0.0)
    taste = true_preferences(flat)[1](np.arange(5))
    assert taste.shape == (5, 200)
    assert taste.max() <= 4 * 2.3 + 1e-9 and taste.min() >= 4 * -0.8 - 1e-9
    # popularity only: every user's logits are the items' log-popularity, the same for all
    pop_only = dataclasses.replace(config, taste_sharpness=0.0)
    rows = true_preferences(pop_only)[1](np.arange(3))
    assert np.allclose(rows, rows[0]) and np.isfinite(rows).all()
    # a user's logit ranks the items the user chose above the rest on average
    u = 0
    own = logits(np.array([u]))[0]
    chosen = catalog.train_items[catalog.train_users == u]
    assert own[chosen].mean() > own.mean()

    def scores_of(users: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(logits(users.numpy()), dtype=torch.float32)

    ceiling = full_hit_rate(scores_of, catalog, held_out="test")
    assert ceiling > full_hit_rate(popularity_scores(catalog), catalog, held_out="test") + 0.05


def test_cold_buyers_are_the_interactions_the_cold_items_lost():
    from aipray.data.synthetic import cold_buyers, true_preferences

    config = SyntheticConfig(n_users=60, n_items=80, n_cold=6, image_size=16, seed=4)
    catalog, users, items = cold_buyers(config)
    made = make_synthetic(config)
    assert np.array_equal(catalog.cold_items, made.cold_items)
    assert np.array_equal(catalog.train_items, made.train_items)
    assert users.size == items.size > 0
    assert set(items.tolist()) <= set(catalog.cold_items.tolist())
    assert users.min() >= 0 and users.max() < catalog.n_users
    # the generator chose them by its users' logits: a buyer likes the item more than the
    # average user does
    _, logits = true_preferences(config)
    table = logits(np.arange(catalog.n_users))
    assert table[users, items].mean() > table[:, items].mean() + 1.0
