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
