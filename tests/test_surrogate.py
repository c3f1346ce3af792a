"""The surrogate "ImageNet" the synthetic marketplace's extractor is pretrained on, and the
factorised classifier head it is trained with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aipray.data.surrogate import COLOUR_FAMILIES, SurrogateConfig, class_of, make_surrogate
from aipray.data.synthetic import CATEGORY_NAMES, TEXTURES
from aipray.models.extractor import (
    ExtractorConfig,
    build_extractor,
    load_extractor,
    make_extractor,
    make_spec,
    save_extractor,
)
from aipray.models.nets import FactorisedHead
from aipray.params import ConfigError, build_dataclass


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_surrogate_set_is_balanced_deterministic_and_named_by_its_attributes():
    config = SurrogateConfig(per_class=3, image_size=16, seed=7)
    images, labels = make_surrogate(config)
    assert config.n_classes == 8 * 6 * 4 == len(config.class_names())
    assert images.shape == (3 * 192, 3, 16, 16) and images.dtype == np.uint8
    assert np.array_equal(np.bincount(labels, minlength=192), np.full(192, 3))
    again, labels_again = make_surrogate(config)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    other, _ = make_surrogate(SurrogateConfig(per_class=3, image_size=16, seed=8))
    assert not np.array_equal(images, other)
    # class = (shape, colour family, texture), row-major; the name says the same
    shape, hue, texture = 5, 2.5 / 6, 1  # a ring, green, striped
    label = int(class_of(np.array([shape]), np.array([hue]), np.array([texture]))[0])
    assert label == (5 * 6 + 2) * 4 + 1
    assert config.class_names()[label] == "green stripes ring"
    assert (COLOUR_FAMILIES[2], CATEGORY_NAMES[5], TEXTURES[1]) == ("green", "ring", "stripes")
    # hue 0.999 is the last sixth (magenta), hue 1/6 starts the second (yellow)
    edges = class_of(np.array([0, 0]), np.array([0.999, 1 / 6]), np.array([0, 0]))
    assert edges.tolist() == [20, 4]


def test_factorised_head_is_the_product_of_its_attribute_softmaxes():
    torch.manual_seed(0)
    head = FactorisedHead(5, (2, 3, 4))
    f = torch.randn(7, 5)
    logits = head(f)
    assert logits.shape == (7, 24)
    parts = [h(f) for h in head.heads]
    # class (a, b, c) = a * 12 + b * 4 + c scores the sum of its attributes' logits
    for a, b, c in ((0, 0, 0), (1, 2, 3), (0, 1, 2)):
        expected = parts[0][:, a] + parts[1][:, b] + parts[2][:, c]
        assert torch.allclose(logits[:, a * 12 + b * 4 + c], expected, atol=1e-6)
    # so the joint cross-entropy is the sum of the attributes' cross-entropies
    target = torch.tensor([23, 0, 5, 17, 9, 12, 1])
    joint = F.cross_entropy(logits, target, reduction="none")
    split = sum(
        F.cross_entropy(p, t, reduction="none")
        for p, t in zip(parts, (target // 12, (target // 4) % 3, target % 4), strict=True)
    )
    assert torch.allclose(joint, split, atol=1e-5)


def test_factorised_spec_round_trips_and_rejects_a_wrong_product(tmp_path):
    spec = make_spec(
        "alexnet", 24, layout="aipray", input_size=16, image_size=16, width=0.125, factors=(2, 3, 4)
    )
    extractor = build_extractor(spec).eval()
    assert isinstance(extractor.head, FactorisedHead)
    save_extractor(extractor, tmp_path / "ext", {"source": "surrogate"})
    loaded = load_extractor(tmp_path / "ext")
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(extractor(x), loaded(x))
    with pytest.raises(ValueError, match="factors"):
        make_spec("alexnet", 25, layout="aipray", input_size=16, image_size=16, factors=(2, 3, 4))


def test_surrogate_weights_train_a_192_class_extractor_named_by_attributes():
    config = ExtractorConfig(
        weights="surrogate", width=0.125, epochs=1, batch_size=64, surrogate_per_class=2
    )
    catalog_images = np.zeros((4, 3, 16, 16), dtype=np.uint8)  # only their size is used
    extractor, info = make_extractor(config, catalog_images, None, seed=0)
    assert extractor.num_classes == 192 and info["source"] == "surrogate"
    assert extractor.spec["labels"] == "surrogate" and extractor.spec["factors"] == [8, 6, 4]
    assert extractor.class_names[0] == "red plain circle"
    assert info["n_images"] == 2 * 192
    # its settings are part of the cache key; a standard catalog pretraining's key is not
    assert config.fingerprint()["surrogate_per_class"] == 2
    assert "surrogate_per_class" not in ExtractorConfig(weights="pretrain").fingerprint()


def test_surrogate_settings_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="surrogate_per_class: 1 is not allowed"):
        build_dataclass(
            ExtractorConfig, {"weights": "surrogate", "surrogate_per_class": 1}, "extractor"
        )
