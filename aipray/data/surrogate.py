"""A surrogate "ImageNet" for the synthetic marketplace's extractor: many fine classes of
procedurally drawn objects, in clutter, under varied light and scale, that know nothing of the
marketplace's users; with titles (:func:`surrogate_titles`) it is also the image–title pairs of
CLIP-style pretraining.

On real data AIP and Perceptual-Rec take their features from a CNN pretrained on ImageNet: a task
of a thousand fine classes whose solution carries shape, colour and texture, none of which was
chosen for any recommender. This module is that stand-in for the synthetic marketplace. A class
is a (shape, colour family, texture) triple — with the marketplace's 8 shapes, 6 colour families
and 4 textures, 192 classes such as "red striped crescent" — and each image draws its object at a
random scale and place, with a random saturation and brightness inside its colour family, on a
background of random colour and lighting gradient, among distractor blobs and sensor noise. So
the classifier must read all three attributes from varied evidence, as an ImageNet classifier
must, while the marketplace's product shots (plain light background, one centred object) are a
narrower distribution it is then applied to — as product photos are to ImageNet.

The colour families split the hue circle into sixths starting at hue 0 (red-orange,
yellow-chartreuse, green-spring, cyan-azure, blue-violet, magenta-rose): the same sixths the
testbed's linear probe reads hue in. Nothing else of the marketplace is used: neither its items,
nor its users, nor its seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from aipray.data.synthetic import CATEGORY_NAMES, TEXTURES, _shape_mask, _texture
from aipray.data.titles import COLOUR_FAMILIES, TITLE_DROP, colour_family, make_titles
from aipray.params import Settings, param


@dataclass(frozen=True)
class SurrogateConfig(Settings):
    """Size and variety of the surrogate pretraining set (``extractor.surrogate`` in a sweep)."""

    per_class: int = param(60, min=2)
    n_shapes: int = param(len(CATEGORY_NAMES), min=2, max=len(CATEGORY_NAMES))
    image_size: int = param(32, min=16)
    clutter: int = param(3, min=0, doc="most distractor blobs per image")
    seed: int = 1_000_003

    @property
    def factors(self) -> tuple[int, int, int]:
        """The attributes' sizes, in class-numbering order: shape, colour family, texture."""
        return (self.n_shapes, len(COLOUR_FAMILIES), len(TEXTURES))

    @property
    def n_classes(self) -> int:
        return self.n_shapes * len(COLOUR_FAMILIES) * len(TEXTURES)

    def class_names(self) -> tuple[str, ...]:
        """``"<colour> <texture> <shape>"`` for every class, in label order."""
        return tuple(
            f"{COLOUR_FAMILIES[c]} {TEXTURES[t]} {CATEGORY_NAMES[s]}"
            for s in range(self.n_shapes)
            for c in range(len(COLOUR_FAMILIES))
            for t in range(len(TEXTURES))
        )


def class_of(shape: np.ndarray, hue: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """The surrogate class of objects with these attributes (hue in ``[0, 1)``)."""
    family = colour_family(hue)
    return (np.asarray(shape) * len(COLOUR_FAMILIES) + family) * len(TEXTURES) + np.asarray(texture)


def render_scene(
    shape: int, hue: float, texture: int, rng: np.random.Generator, size: int, clutter: int
) -> np.ndarray:
    """One surrogate image ``[3, size, size]`` uint8, supersampled 2× for smooth edges."""
    s = 2 * size
    coords = np.arange(s, dtype=np.float64) + 0.5
    # Background: a random, mostly unsaturated colour under a linear lighting gradient.
    bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.35, 1)))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.meshgrid(coords / s - 0.5, coords / s - 0.5, indexing="ij")
    light = 1.0 + rng.uniform(0.0, 0.5) * (np.cos(angle) * xx + np.sin(angle) * yy)
    img = bg[:, None, None] * light[None]
    # Distractors: small blobs of any colour, behind the object.
    for _ in range(int(rng.integers(0, clutter + 1))):
        centre = rng.uniform(0.1, 0.9, size=2) * s
        r = rng.uniform(0.05, 0.14) * s
        blob = (coords[:, None] - centre[0]) ** 2 + (coords[None, :] - centre[1]) ** 2 <= r * r
        img[:, blob] = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(), rng.uniform()))[
            :, None
        ]
    # The object: its shape at a random scale and place, its colour and texture.
    radius = rng.uniform(0.22, 0.44) * s
    shift = rng.uniform(-0.5, 0.5, size=2) * (s - 2 * radius)
    oy, ox = np.meshgrid(coords - s / 2 - shift[0], coords - s / 2 - shift[1], indexing="ij")
    mask = _shape_mask(shape, oy, ox, radius)
    shade = _texture(texture, oy, ox, period=max(2.0, s / rng.uniform(7, 9)))
    rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)))
    img[:, mask] = rgb[:, None] * shade[mask][None, :] * light[mask][None, :]
    # Exposure and sensor noise.
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0.0, rng.uniform(0.005, 0.03), size=img.shape)
    img = img.reshape(3, size, 2, size, 2).mean(axis=(2, 4))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def make_surrogate(config: SurrogateConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 3, S, S] uint8, labels [N])``: ``per_class`` images of every class, in a
    seeded random order. Deterministic given the config."""
    rng = np.random.default_rng(config.seed)
    n_families, n_textures = len(COLOUR_FAMILIES), len(TEXTURES)
    labels = np.repeat(np.arange(config.n_classes), config.per_class)
    rng.shuffle(labels)
    shape = labels // (n_families * n_textures)
    family = (labels // n_textures) % n_families
    texture = labels % n_textures
    hue = (family + rng.uniform(0.0, 1.0, size=labels.size)) / n_families
    images = np.stack(
        [
            render_scene(int(a), float(h), int(t), rng, config.image_size, config.clutter)
            for a, h, t in zip(shape, hue, texture, strict=True)
        ]
    )
    return images, labels.astype(np.int64)


def surrogate_titles(
    config: SurrogateConfig, labels: np.ndarray, *, drop: float = TITLE_DROP
) -> tuple[str, ...]:
    """A title per surrogate image from its class (shape, colour family, texture), with the noise
    of :func:`aipray.data.titles.make_titles`; seeded by the set's own seed, apart from the
    images' generator, so the images are the same with or without titles."""
    labels = np.asarray(labels, dtype=np.int64)
    n_families, n_textures = len(COLOUR_FAMILIES), len(TEXTURES)
    return make_titles(
        labels // (n_families * n_textures),
        (labels // n_textures) % n_families,
        labels % n_textures,
        np.random.default_rng([config.seed, 7]),
        drop=drop,
    )
