"""A synthetic visual marketplace: procedurally drawn products and users with visual taste.

Each item has a category (its shape), a hue and a texture, drawn on a light background with a
little jitter. Each user has one or two favourite styles (category, hue, texture); the probability
that a user interacts with an item grows with how well the item matches a favourite style and with
the item's popularity (log-normal with a long tail, as in real marketplaces, plus one clearly
most-popular item). So a model that looks at the
pictures beats a random ranker, and a hook item for EXPA exists.

Cold items are picked by a seeded uniform draw and all their interactions are removed; users left
with fewer than three interactions are dropped. The remaining interactions are split per user
leave-one-out (one random validation item, one random test item, the rest for training).
Everything is deterministic given the config. With ``titles: true`` every item also gets a short
title built from its attributes, with noise (:mod:`aipray.data.titles`): a second modality.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aipray.data.catalog import Catalog
from aipray.data.titles import TITLE_DROP, colour_family, make_titles
from aipray.params import Settings, param

CATEGORY_NAMES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "bar",
    "crescent",
)
TEXTURES = ("plain", "stripes", "dots", "checker")


@dataclass(frozen=True)
class SyntheticConfig(Settings):
    """Size and taste of the synthetic marketplace (all fields may be set in the sweep YAML)."""

    n_users: int = param(1200, min=10)
    n_items: int = param(1200, min=20)
    n_cold: int = param(120, min=1)
    n_categories: int = param(8, min=2, max=len(CATEGORY_NAMES))
    image_size: int = param(32, min=16)
    min_interactions: int = param(6, min=4)
    mean_interactions: float = param(10.0, min=4)
    taste_sharpness: float = param(4.0, min=0)
    popularity_weight: float = param(1.0, min=0)
    popularity_spread: float = param(2.0, min=0)
    hook_boost: float = param(40.0, min=1)
    titles: bool = param(False, keyed_at_default=False, doc="give every item a short title")
    title_drop: float = param(
        TITLE_DROP, min=0, max=0.95, keyed_at_default=False, doc="share of title words left out"
    )
    seed: int = 0

    def category_names(self) -> tuple[str, ...]:
        """The names of the catalog's categories (known before it is built)."""
        return CATEGORY_NAMES[: self.n_categories]

    def cross_checks(self) -> list[tuple[str, object, str]]:
        """``(key, value, allowed)`` for each constraint between fields that fails."""
        bad: list[tuple[str, object, str]] = []
        if self.n_items < self.n_cold + 10:
            bad.append(("n_items", self.n_items, f"an integer >= n_cold + 10 = {self.n_cold + 10}"))
        if self.mean_interactions < self.min_interactions:
            bad.append(("mean_interactions", self.mean_interactions, ">= min_interactions"))
        return bad


def _shape_mask(category: int, yy: np.ndarray, xx: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of a category's shape centred at 0 with the given radius (pixel units)."""
    ax, ay = np.abs(xx), np.abs(yy)
    r = np.sqrt(xx**2 + yy**2)
    name = CATEGORY_NAMES[category]
    if name == "circle":
        return r <= radius
    if name == "square":
        return (ax <= radius * 0.85) & (ay <= radius * 0.85)
    if name == "triangle":
        return (yy <= radius * 0.8) & (yy >= -radius * 0.9 + 1.9 * ax)
    if name == "diamond":
        return ax + ay <= radius
    if name == "cross":
        arm = radius * 0.33
        return ((ax <= arm) & (ay <= radius)) | ((ay <= arm) & (ax <= radius))
    if name == "ring":
        return (r <= radius) & (r >= radius * 0.55)
    if name == "bar":
        return (ax <= radius) & (ay <= radius * 0.4)
    if name == "crescent":
        return (r <= radius) & (np.sqrt((xx - radius * 0.45) ** 2 + yy**2) > radius * 0.75)
    raise ValueError(f"no shape for category {category}")


def _texture(texture: int, yy: np.ndarray, xx: np.ndarray, period: float) -> np.ndarray:
    """Brightness multiplier in [0.45, 1] for the texture."""
    name = TEXTURES[texture]
    if name == "plain":
        return np.ones_like(xx)
    if name == "stripes":
        return np.where(np.floor((xx + yy) / period) % 2 == 0, 1.0, 0.5)
    if name == "dots":
        cx = (xx / period) - np.round(xx / period)
        cy = (yy / period) - np.round(yy / period)
        return np.where(cx**2 + cy**2 < 0.09, 0.45, 1.0)
    if name == "checker":
        return np.where((np.floor(xx / period) + np.floor(yy / period)) % 2 == 0, 1.0, 0.55)
    raise ValueError(f"no texture {texture}")


def render_item(
    category: int, hue: float, texture: int, rng: np.random.Generator, size: int
) -> np.ndarray:
    """Draw one product image, ``[3, size, size]`` uint8, supersampled 2× for smooth edges."""
    s = 2 * size
    coords = np.arange(s, dtype=np.float64) + 0.5
    shift = rng.uniform(-0.06, 0.06, size=2) * s
    yy, xx = np.meshgrid(coords - s / 2 - shift[0], coords - s / 2 - shift[1], indexing="ij")
    radius = rng.uniform(0.30, 0.42) * s
    mask = _shape_mask(category, yy, xx, radius)
    shade = _texture(texture, yy, xx, period=max(2.0, s / 8))
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 0.95), rng.uniform(0.75, 0.95)))
    background = rng.uniform(0.88, 0.97)
    img = np.full((3, s, s), background)
    img[:, mask] = rgb[:, None] * shade[mask][None, :]
    img += rng.normal(0.0, 0.015, size=img.shape)
    img = img.reshape(3, size, 2, size, 2).mean(axis=(2, 4))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _hue_affinity(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    return np.cos(2 * np.pi * (h1 - h2))


@dataclass(frozen=True)
class ItemStyles:
    """What each item looks like: its category (shape) index, hue in [0, 1) and texture index
    (into :data:`TEXTURES`), and how common each category is."""

    categories: np.ndarray
    hues: np.ndarray
    textures: np.ndarray
    category_weight: np.ndarray


def _draw_styles(rng: np.random.Generator, config: SyntheticConfig) -> ItemStyles:
    category_weight = rng.dirichlet(np.full(config.n_categories, 3.0))
    categories = rng.choice(config.n_categories, size=config.n_items, p=category_weight)
    hues = rng.uniform(0.0, 1.0, size=config.n_items)
    textures = rng.integers(0, len(TEXTURES), size=config.n_items)
    return ItemStyles(categories, hues, textures, category_weight)


def item_styles(config: SyntheticConfig) -> ItemStyles:
    """The items' styles of the marketplace ``config`` makes, replayed from its seed (the catalog
    stores only the categories): the ground truth of what users' taste is made of."""
    return _draw_styles(np.random.default_rng(config.seed), config)


def style_labels(config: SyntheticConfig) -> dict[str, np.ndarray]:
    """Each item's style as integer labels, what users choose by: ``shape`` (its category),
    ``hue`` (the sixth of the hue circle it falls in) and ``texture``."""
    styles = item_styles(config)
    return {
        "shape": styles.categories,
        "hue": colour_family(styles.hues),
        "texture": styles.textures,
    }


def item_titles(config: SyntheticConfig, styles: ItemStyles | None = None) -> tuple[str, ...]:
    """Every item's title (:mod:`aipray.data.titles`) from its shape, hue sixth and texture,
    with the title noise of ``config``; drawn from a generator of its own seeded by the
    marketplace's seed, so the images and interactions are the same with or without titles."""
    styles = item_styles(config) if styles is None else styles
    rng = np.random.default_rng([config.seed, 7])
    return make_titles(
        styles.categories,
        colour_family(styles.hues),
        styles.textures,
        rng,
        drop=config.title_drop,
    )


@dataclass(frozen=True)
class UserTastes:
    """What each user likes: two styles (category, hue, texture), the second weighted
    ``second_weight`` (0: one style only), and the items' log-popularity they also follow."""

    categories: np.ndarray  # [U, 2]
    hues: np.ndarray  # [U, 2]
    textures: np.ndarray  # [U, 2]
    second_weight: np.ndarray  # [U]
    log_popularity: np.ndarray  # [N]

    def logits(self, config: SyntheticConfig, styles: ItemStyles, user: int) -> np.ndarray:
        """User ``user``'s logit of every item [N]: the better-matching style's affinity (category
        1, hue up to 0.8, texture 0.5) times ``taste_sharpness``, plus popularity. Interactions
        are a Gumbel top-k draw of these."""
        aff = np.full(styles.categories.size, -np.inf)
        for s in range(self.categories.shape[1]):
            weight = 1.0 if s == 0 else self.second_weight[user]
            if weight == 0.0:
                continue
            a = (
                1.0 * (styles.categories == self.categories[user, s])
                + 0.8 * _hue_affinity(styles.hues, self.hues[user, s])
                + 0.5 * (styles.textures == self.textures[user, s])
            )
            aff = np.maximum(aff, a + np.log(weight))
        return config.taste_sharpness * aff + config.popularity_weight * self.log_popularity


def make_synthetic(config: SyntheticConfig, name: str = "synthetic") -> Catalog:
    """Generate the marketplace described in the module docstring."""
    return _generate(config, name)[0]


def cold_buyers(config: SyntheticConfig) -> tuple[Catalog, np.ndarray, np.ndarray]:
    """The marketplace ``config`` makes and the interactions its cold items lost:
    ``(catalog, users [P], items [P])``, users in the catalog's (re-indexed) numbering, those
    the catalog dropped left out. These are what a cold-start evaluation holds out (LATTICE's
    cold-start setting: the recall of each cold item among the users who chose it)."""
    catalog, _, _, _, held_out = _generate(config, "synthetic")
    return catalog, held_out[0], held_out[1]


def true_preferences(config: SyntheticConfig) -> tuple[Catalog, Callable[[np.ndarray], np.ndarray]]:
    """The marketplace ``config`` makes and its users' own logits: ``logits(users [U]) → [U, N]``
    for the catalog's (re-indexed) users. Ranking by them is what the generator itself would do,
    the ceiling of what any ranker can learn from the interactions."""
    catalog, tastes, styles, kept_users, _ = _generate(config, "synthetic")

    def logits(users: np.ndarray) -> np.ndarray:
        return np.stack([tastes.logits(config, styles, int(kept_users[u])) for u in users])

    return catalog, logits


def _generate(
    config: SyntheticConfig, name: str
) -> tuple[Catalog, UserTastes, ItemStyles, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(config.seed)
    n_items, n_cat = config.n_items, config.n_categories

    # Items: attributes, popularity and images.
    styles = _draw_styles(rng, config)
    categories, hues, textures = styles.categories, styles.hues, styles.textures
    log_pop = rng.normal(0.0, config.popularity_spread, size=n_items)
    hook = int(rng.integers(n_items))
    log_pop[hook] = log_pop.max() + np.log(config.hook_boost)
    images = np.stack(
        [
            render_item(int(c), float(h), int(t), rng, config.image_size)
            for c, h, t in zip(categories, hues, textures, strict=True)
        ]
    )

    # Users: one or two favourite styles each; interactions by Gumbel top-k sampling.
    n_users = config.n_users
    n_styles = 2
    tastes = UserTastes(
        categories=rng.choice(n_cat, size=(n_users, n_styles), p=styles.category_weight),
        hues=rng.uniform(0.0, 1.0, size=(n_users, n_styles)),
        textures=rng.integers(0, len(TEXTURES), size=(n_users, n_styles)),
        second_weight=np.where(rng.uniform(size=n_users) < 0.5, 0.0, 0.8),
        log_popularity=log_pop,
    )
    counts = config.min_interactions + rng.poisson(
        config.mean_interactions - config.min_interactions, size=n_users
    )
    counts = np.minimum(counts, n_items // 4)
    users, items = [], []
    for u in range(n_users):
        logits = tastes.logits(config, styles, u)
        chosen = np.argpartition(-(logits + rng.gumbel(size=n_items)), counts[u])[: counts[u]]
        users.append(np.full(counts[u], u))
        items.append(chosen.copy())  # not a view: it would keep all n_items entries alive
    all_users = np.concatenate(users)
    all_items = np.concatenate(items)

    # Cold items: a seeded uniform draw among all items but the hook; remove their interactions.
    candidates = np.setdiff1d(np.arange(n_items), [hook])
    cold = np.sort(rng.choice(candidates, size=config.n_cold, replace=False))
    keep = ~np.isin(all_items, cold)
    lost_users, lost_items = all_users[~keep], all_items[~keep]
    all_users, all_items = all_users[keep], all_items[keep]

    # Drop users with fewer than 3 interactions left, then re-index users densely.
    per_user = np.bincount(all_users, minlength=n_users)
    kept_users = np.flatnonzero(per_user >= 3)
    remap = np.full(n_users, -1)
    remap[kept_users] = np.arange(kept_users.size)
    mask = remap[all_users] >= 0
    all_users, all_items = remap[all_users[mask]], all_items[mask]
    lost = remap[lost_users] >= 0
    held_out = (remap[lost_users[lost]].astype(np.int64), lost_items[lost].astype(np.int64))

    # Leave-one-out: a random validation and test item per user, the rest for training.
    order = np.lexsort((rng.uniform(size=all_users.size), all_users))
    all_users, all_items = all_users[order], all_items[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(all_users))[:-1]])
    val_items = all_items[starts]
    test_items = all_items[starts + 1]
    train_mask = np.ones(all_users.size, dtype=bool)
    train_mask[starts] = False
    train_mask[starts + 1] = False

    catalog = Catalog(
        name=name,
        train_users=all_users[train_mask].astype(np.int64),
        train_items=all_items[train_mask].astype(np.int64),
        val_items=val_items.astype(np.int64),
        test_items=test_items.astype(np.int64),
        cold_items=cold.astype(np.int64),
        categories=categories.astype(np.int64),
        images=images,
        category_names=config.category_names(),
        titles=item_titles(config, styles) if config.titles else None,
    )
    return catalog, tastes, styles, kept_users, held_out
