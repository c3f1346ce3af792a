"""Short product titles built from an item's attributes: the text modality of the synthetic
marketplace and of the surrogate pretraining set.

A title names the item's colour family (the sixth of the hue circle its hue falls in, the
surrogate's colour families), its texture and its shape, in that order: "red striped crescent".
Titles are an informative but imperfect modality, as sellers' titles are:

- each attribute word is one of two synonyms, drawn uniformly ("red" or "scarlet", "striped" or
  "lined", "crescent" or "moon"), so the same style has four to eight spellings;
- each attribute word is left out with probability ``drop`` (a title that would lose all three
  keeps its shape word: a listing always names what it sells);
- with probability ``filler`` a word that says nothing of the style comes first ("new",
  "classic", ...).

So a title is read right or not at all, never wrongly: what it misses is the image's to say.
Everything is drawn from the generator it is given; the callers seed one of their own, apart from
the one that draws images and interactions, so switching titles on changes nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the six sixths of the hue circle, from hue 0 (the surrogate's classes and the hue probe)
COLOUR_FAMILIES = ("red", "yellow", "green", "cyan", "blue", "magenta")
#: two words per colour family, in :data:`COLOUR_FAMILIES` order
COLOUR_WORDS = (
    ("red", "scarlet"),
    ("yellow", "golden"),
    ("green", "emerald"),
    ("cyan", "turquoise"),
    ("blue", "navy"),
    ("magenta", "pink"),
)
#: two words per texture, in :data:`aipray.data.synthetic.TEXTURES` order
TEXTURE_WORDS = (
    ("plain", "solid"),
    ("striped", "lined"),
    ("dotted", "spotted"),
    ("checked", "chequered"),
)
#: two words per shape, in :data:`aipray.data.synthetic.CATEGORY_NAMES` order
SHAPE_WORDS = (
    ("circle", "disc"),
    ("square", "box"),
    ("triangle", "wedge"),
    ("diamond", "rhombus"),
    ("cross", "plus"),
    ("ring", "hoop"),
    ("bar", "stick"),
    ("crescent", "moon"),
)
#: words that say nothing of the style
FILLER_WORDS = ("new", "classic", "premium", "original")
#: every word a title can hold (the text tower's vocabulary is built from it)
VOCABULARY = tuple(
    sorted(
        {w for words in (*COLOUR_WORDS, *TEXTURE_WORDS, *SHAPE_WORDS) for w in words}
        | set(FILLER_WORDS)
    )
)
#: share of attribute words left out, and of titles with a filler word, by default
TITLE_DROP = 0.2
TITLE_FILLER = 0.3


def colour_family(hue: np.ndarray) -> np.ndarray:
    """The colour family (index into :data:`COLOUR_FAMILIES`) of hues in ``[0, 1)``."""
    family = np.floor(np.asarray(hue, dtype=np.float64) * len(COLOUR_FAMILIES)).astype(np.int64)
    return family % len(COLOUR_FAMILIES)


def canonical_title(shape: int, family: int, texture: int) -> str:
    """The noiseless title of a style: each attribute's first word ("red striped crescent")."""
    return " ".join((COLOUR_WORDS[family][0], TEXTURE_WORDS[texture][0], SHAPE_WORDS[shape][0]))


def make_titles(
    shapes: Sequence[int] | np.ndarray,
    families: Sequence[int] | np.ndarray,
    textures: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    drop: float = TITLE_DROP,
    filler: float = TITLE_FILLER,
) -> tuple[str, ...]:
    """One title per item from its shape, colour family and texture indices (see the module
    docstring); every draw comes from ``rng``, item by item in order."""
    if not 0.0 <= drop < 1.0 or not 0.0 <= filler <= 1.0:
        raise ValueError(f"title noise: drop {drop} must be in [0, 1), filler {filler} in [0, 1]")
    shapes, families, textures = (
        np.asarray(a, dtype=np.int64) for a in (shapes, families, textures)
    )
    n = shapes.size
    synonym = rng.integers(0, 2, size=(n, 3))
    kept = rng.uniform(size=(n, 3)) >= drop
    pad = rng.uniform(size=n) < filler
    pad_word = rng.integers(0, len(FILLER_WORDS), size=n)
    titles = []
    for i in range(n):
        words = (
            COLOUR_WORDS[families[i]][synonym[i, 0]],
            TEXTURE_WORDS[textures[i]][synonym[i, 1]],
            SHAPE_WORDS[shapes[i]][synonym[i, 2]],
        )
        keep = kept[i] if kept[i].any() else np.array([False, False, True])
        out = [w for w, k in zip(words, keep, strict=True) if k]
        if pad[i]:
            out.insert(0, FILLER_WORDS[pad_word[i]])
        titles.append(" ".join(out))
    return tuple(titles)
