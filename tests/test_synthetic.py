"""The synthetic marketplace's item styles can be replayed from its config."""

from __future__ import annotations

import colorsys

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
