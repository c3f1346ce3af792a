"""CLIP-style pretraining (``extractor.weights: clip``): the text tower, CLIP's symmetric InfoNCE,
alignment of image–title pairs, and the checkpoint that carries the text tower."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aipray.data.titles import VOCABULARY
from aipray.models.extractor import (
    ExtractorConfig,
    build_extractor,
    load_extractor,
    make_extractor,
    make_spec,
    save_extractor,
)
from aipray.models.extractor.clip import clip_accuracy, fit_clip
from aipray.models.extractor.text import MAX_SCALE, PAD, UNKNOWN, ClipHead, clip_loss, tokenize
from aipray.params import SettingError

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")


def clip_spec(n_classes: int = 6, image_size: int = 16) -> dict:
    text = {
        "vocab": VOCABULARY,
        "width": 16,
        "dim": 16,
        "max_len": 4,
        "class_titles": list(COLOURS[:n_classes]),
    }
    return make_spec(
        "alexnet",
        n_classes,
        layout="aipray",
        input_size=None,
        image_size=image_size,
        width=0.05,
        text=text,
        labels="surrogate",
    )


def test_infonce_matches_a_hand_computed_2x2_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised: e1 and (e1 + e2)/√2
    r = 1 / math.sqrt(2)
    # logits = 2 · cos: [[2, 2r], [0, 2r]]
    image_to_text = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * r)))
        - math.log(math.exp(2 * r) / (math.exp(0) + math.exp(2 * r)))
    ) / 2
    text_to_image = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    expected = (image_to_text + text_to_image) / 2
    assert float(clip_loss(images, texts, 2.0)) == pytest.approx(expected, abs=1e-6)


def test_tokens_and_the_temperature():
    tokens = tokenize(["Red disc", "new zebra", ""], ["disc", "red"], max_len=3)
    assert tokens.tolist() == [[3, 2, PAD], [UNKNOWN, UNKNOWN, PAD], [PAD, PAD, PAD]]
    head = ClipHead(5, clip_spec()["text"])
    assert float(head.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert float(head.scale().detach()) == MAX_SCALE
    # an empty title embeds as the MLP of zeros, not NaN
    assert torch.isfinite(head.embed_text(tokenize([""], head.vocab, 4))).all()


def colour_pairs(n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Flat images of the six colour families (noisy, random brightness) titled by colour."""
    import colorsys

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    images = np.empty((n, 3, 16, 16), dtype=np.uint8)
    for i, c in enumerate(labels):
        rgb = colorsys.hsv_to_rgb((c + rng.uniform(0.2, 0.8)) / 6, 0.9, rng.uniform(0.6, 1.0))
        pixels = np.array(rgb)[:, None, None] + rng.normal(0, 0.05, (3, 16, 16))
        images[i] = np.clip(pixels * 255, 0, 255).astype(np.uint8)
    return images, [COLOURS[c] for c in labels], labels


def test_clip_pretraining_aligns_matching_pairs_above_chance():
    images, titles, labels = colour_pairs(240, seed=0)
    torch.manual_seed(0)
    extractor = build_extractor(clip_spec())
    result = fit_clip(
        extractor,
        images,
        titles,
        labels,
        epochs=8,
        batch_size=32,
        lr=3e-3,
        device=torch.device("cpu"),
        seed=0,
    )
    test_images, test_titles, test_labels = colour_pairs(120, seed=1)
    tokens = extractor.head.tokens(test_titles)
    zero_shot, retrieval = clip_accuracy(
        extractor, torch.as_tensor(test_images), tokens, test_labels, torch.device("cpu")
    )
    # chance is 1/6 for both: each image's nearest title and its zero-shot class are its colour
    assert retrieval > 0.6 and zero_shot > 0.6, (retrieval, zero_shot, result.history)
    assert result.best_score == max(h["holdout_accuracy"] for h in result.history)


def test_the_checkpoint_round_trips_the_text_tower(tmp_path):
    torch.manual_seed(1)
    extractor = build_extractor(clip_spec()).eval()
    with torch.no_grad():
        extractor.head.logit_scale.fill_(2.5)
    save_extractor(extractor, tmp_path / "ext")
    loaded = load_extractor(tmp_path / "ext")
    assert (
        loaded.has_text
        and not build_extractor(
            make_spec("alexnet", 6, layout="aipray", input_size=None, image_size=16, width=0.05)
        ).has_text
    )
    titles = ["red disc", "navy striped box", ""]
    torch.testing.assert_close(loaded.text_features(titles), extractor.text_features(titles))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(x), extractor(x).detach())
    assert float(loaded.head.scale()) == pytest.approx(math.exp(2.5), rel=1e-6)


def test_clip_weights_train_in_process_on_the_surrogate_set():
    config = ExtractorConfig(
        weights="clip",
        surrogate_per_class=2,
        width=0.05,
        epochs=1,
        batch_size=64,
        text_dim=8,
        text_width=8,
    )
    extractor, info = make_extractor(config, np.zeros((1, 3, 16, 16), np.uint8), None, seed=0)
    assert extractor.has_text and extractor.num_classes == 192
    assert extractor.text_features(["red striped crescent"]).shape == (1, 8)
    assert info["source"] == "clip" and 0 <= info["holdout_retrieval"] <= 1
    # its settings key its weights; the surrogate's keys are unchanged by them
    surrogate = ExtractorConfig(weights="surrogate").fingerprint()
    assert "text_dim" not in surrogate and "title_drop" not in surrogate
    assert config.fingerprint()["text_dim"] == 8
    with pytest.raises(SettingError, match="standard with weights: clip"):
        ExtractorConfig(weights="clip", training="free")
