"""Item titles, the text modality: built from each item's attributes with seeded noise, carried
by the catalog through the stored dataset stage, read from a dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aipray.data import Catalog
from aipray.data.surrogate import SurrogateConfig, make_surrogate, surrogate_titles
from aipray.data.synthetic import (
    CATEGORY_NAMES,
    TEXTURES,
    SyntheticConfig,
    item_styles,
    item_titles,
    make_synthetic,
)
from aipray.data.titles import (
    COLOUR_WORDS,
    FILLER_WORDS,
    SHAPE_WORDS,
    TEXTURE_WORDS,
    VOCABULARY,
    canonical_title,
    colour_family,
    make_titles,
)


def test_a_title_names_colour_texture_and_shape_by_hand():
    # a noiseless draw: no word dropped, no filler; synonyms by the generator
    rng = np.random.default_rng(0)
    (title,) = make_titles([7], [0], [1], rng, drop=0.0, filler=0.0)
    colour, texture, shape = title.split()
    assert colour in ("red", "scarlet") and texture in ("striped", "lined")
    assert shape in ("crescent", "moon")
    assert canonical_title(7, 0, 1) == "red striped crescent"
    # the word lists follow the attributes' order
    assert len(SHAPE_WORDS) == len(CATEGORY_NAMES) and len(TEXTURE_WORDS) == len(TEXTURES)
    assert SHAPE_WORDS[CATEGORY_NAMES.index("ring")][0] == "ring"
    assert colour_family(np.array([0.0, 0.999, 1 / 6, 0.5])).tolist() == [0, 5, 1, 3]


def test_title_noise_drops_words_never_all_and_adds_fillers():
    n = 4000
    rng = np.random.default_rng(1)
    shapes, families, textures = rng.integers(0, 8, n), rng.integers(0, 6, n), rng.integers(0, 4, n)
    titles = make_titles(shapes, families, textures, np.random.default_rng(2), drop=0.3)
    lengths = []
    for title, s, f, t in zip(titles, shapes, families, textures, strict=True):
        words = title.split()
        assert set(words) <= set(VOCABULARY)
        style = [w for w in words if w not in FILLER_WORDS]
        assert style, title  # never an empty title
        # every attribute word that is there is a synonym of the item's own attribute
        allowed = set(COLOUR_WORDS[f]) | set(TEXTURE_WORDS[t]) | set(SHAPE_WORDS[s])
        assert set(style) <= allowed, title
        lengths.append(len(style))
    # about 30 % of attribute words dropped (all-dropped titles keep their shape word)
    assert abs(np.mean(lengths) / 3 - 0.7) < 0.03
    fillers = np.mean([t.split()[0] in FILLER_WORDS for t in titles])
    assert abs(fillers - 0.3) < 0.03


def test_synthetic_titles_are_deterministic_per_seed_and_change_nothing_else():
    config = SyntheticConfig(n_users=40, n_items=60, n_cold=6, image_size=16, seed=3)
    plain = make_synthetic(config)
    assert plain.titles is None
    with_titles = make_synthetic(SyntheticConfig(**{**config.__dict__, "titles": True}))
    assert np.array_equal(plain.images, with_titles.images)
    assert np.array_equal(plain.train_items, with_titles.train_items)
    titled = SyntheticConfig(**{**config.__dict__, "titles": True})
    assert with_titles.titles == item_titles(titled) == make_synthetic(titled).titles
    other = SyntheticConfig(**{**config.__dict__, "titles": True, "seed": 4})
    assert item_titles(other) != with_titles.titles
    # built from each item's own attributes
    styles = item_styles(config)
    family = colour_family(styles.hues)
    for i, title in enumerate(with_titles.titles):
        words = set(title.split()) - set(FILLER_WORDS)
        allowed = (
            set(COLOUR_WORDS[family[i]])
            | set(TEXTURE_WORDS[styles.textures[i]])
            | set(SHAPE_WORDS[styles.categories[i]])
        )
        assert words and words <= allowed


def test_surrogate_titles_come_from_the_class():
    config = SurrogateConfig(per_class=2, image_size=16, seed=5)
    _, labels = make_surrogate(config)
    titles = surrogate_titles(config, labels)
    assert titles == surrogate_titles(config, labels)
    names = config.class_names()
    for label, title in zip(labels, titles, strict=True):
        colour, texture, shape = names[label].split()
        f, t, s = (
            ("red", "yellow", "green", "cyan", "blue", "magenta").index(colour),
            TEXTURES.index(texture),
            CATEGORY_NAMES.index(shape),
        )
        words = set(title.split()) - set(FILLER_WORDS)
        assert words <= set(COLOUR_WORDS[f]) | set(TEXTURE_WORDS[t]) | set(SHAPE_WORDS[s])


def test_catalog_titles_round_trip_through_save_and_load(tmp_path: Path):
    config = SyntheticConfig(n_users=30, n_items=40, n_cold=4, image_size=16, titles=True)
    catalog = make_synthetic(config)
    catalog.save(tmp_path / "titled")
    assert Catalog.load(tmp_path / "titled").titles == catalog.titles
    plain = make_synthetic(SyntheticConfig(n_users=30, n_items=40, n_cold=4, image_size=16))
    plain.save(tmp_path / "plain")
    assert Catalog.load(tmp_path / "plain").titles is None


def test_a_folder_reads_titles_by_item(tmp_path: Path):
    from aipray.data.folder import read_titles

    path = tmp_path / "titles.tsv"
    path.write_text("item\ttitle\nB\tnavy box\nA\t red disc \nB\tignored\n")
    assert read_titles(path, np.array(["A", "B", "C"])) == ("red disc", "navy box", "")
