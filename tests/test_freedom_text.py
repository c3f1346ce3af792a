"""FREEDOM with a second modality: its item–item graph mixes the images' and the titles' kNN
graphs (``image_weight``), a cold item's row mixes its image's top-k (moved by the attacker)
with its title's (fixed), and with ``image_weight`` 1.0 it is image-only FREEDOM."""

from __future__ import annotations

import pytest
import torch

from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.models.base import load_recommender
from aipray.models.extractor import build_extractor
from aipray.models.freedom import FREEDOM, FREEDOMConfig
from aipray.pixels import to_float
from tests.test_clip import clip_spec

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = FREEDOMConfig(dim=8, knn_k=4, epochs=3, batch_size=256, patience=None)


def synthetic(titles: bool):
    config = SyntheticConfig(
        n_users=80, n_items=120, n_cold=8, image_size=16, seed=2, titles=titles
    )
    return make_synthetic(config)


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return build_extractor(clip_spec()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def catalog():
    return synthetic(titles=True)


@pytest.fixture(scope="module")
def model(catalog, extractor):
    trained, _ = FREEDOM.fit(CONFIG, catalog, extractor=extractor, device="cpu", seed=0)
    return trained.eval().requires_grad_(False)


def test_the_mixed_item_graph_matches_a_hand_case(extractor):
    model = FREEDOM(2, 4, 2, extractor.spec, 1, knn_k=2, text_dim=3, image_weight=0.25)
    model.in_graph[:3] = True
    model.neighbours[:3] = torch.tensor([[0, 1], [1, 0], [2, 1]])
    model.text_neighbours[:] = torch.tensor([[0, 2], [1, 2], [2, 0], [1, 2]])
    # each modality's row: 1/2 on its two neighbours; S = 0.25 S_image + 0.75 S_text
    expected = torch.tensor(
        [
            [0.5, 0.125, 0.375, 0.0],
            [0.125, 0.5, 0.375, 0.0],
            [0.375, 0.125, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # the cold item is in no warm row, and has none itself
        ]
    )
    torch.testing.assert_close(model.item_graph().matrix.to_dense(), expected)
    torch.testing.assert_close(model.item_graph().matrix.to_dense().sum(1)[:3], torch.ones(3))


def test_a_default_text_model_weighs_images_by_the_papers_0_1(catalog, model):
    assert model.reads_text and model.image_weight == pytest.approx(0.1)
    assert model.init_args["image_weight"] == pytest.approx(0.1)
    # every item's text row lists warm items only; a warm item's holds itself
    warm = catalog.warm_mask()
    assert warm[model.text_neighbours.numpy()].all()
    rows = torch.arange(catalog.n_items)[torch.as_tensor(warm)]
    own = (model.text_neighbours[rows] == rows[:, None]).any(1)
    assert float(own.float().mean()) > 0.5  # a title shared by more than k items may crowd it out


def test_a_cold_items_title_neighbours_stay_while_its_image_neighbours_move(catalog, model):
    cold = int(catalog.cold_items[0])
    other = int(catalog.cold_items[1])
    ids = torch.tensor([cold, cold])
    images = to_float(catalog.images[[cold, other]])  # its own image, then another item's
    top = model.similarities(images).topk(model.knn_k, dim=1).indices
    assert set(top[0].tolist()) != set(top[1].tolist())  # the image's neighbours move
    codes = model.image_codes(images, ids)
    w = model.image_weight
    title_half = codes - w * model.visual_codes(images)
    torch.testing.assert_close(title_half[0], title_half[1])  # the title's do not
    reach = model.tables()[2]
    torch.testing.assert_close(title_half[0], (1 - w) * reach[model.text_neighbours[cold]].mean(0))
    # the ranker needs the items' ids to read their titles
    with pytest.raises(ValueError, match="give the items' ids"):
        model.score_images(torch.arange(3), images)


def test_a_gradient_reaches_the_pixels_through_the_mixed_graph(catalog, model):
    ids = torch.as_tensor(catalog.cold_items[:3])
    images = to_float(catalog.images[ids.numpy()]).requires_grad_(True)
    value = model.preference(torch.arange(model.n_users), images, ids).sum()
    (grad,) = torch.autograd.grad(value, images)
    assert grad.abs().sum() > 0
    # with the image's weight at 0 the row is the title's alone: nothing for the pixels to move
    title_only = FREEDOM.on(
        model.extractor, catalog, FREEDOMConfig(dim=8, knn_k=4, image_weight=0.0)
    ).eval()
    value = title_only.preference(torch.arange(5), images, ids).sum()
    assert not value.requires_grad or torch.autograd.grad(value, images)[0].abs().sum() == 0


def test_image_weight_1_is_todays_image_only_freedom(extractor):
    titled, plain = synthetic(titles=True), synthetic(titles=False)
    config = FREEDOMConfig(**{**CONFIG.__dict__, "image_weight": 1.0})
    mixed_off, _ = FREEDOM.fit(config, titled, extractor=extractor, device="cpu", seed=0)
    today, _ = FREEDOM.fit(CONFIG, plain, extractor=extractor, device="cpu", seed=0)
    assert not mixed_off.reads_text and not today.reads_text
    assert mixed_off.state_dict().keys() == today.state_dict().keys()
    users = torch.arange(today.n_users)
    images = to_float(plain.images[plain.cold_items])
    mixed_off.eval(), today.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mixed_off.score_images(users, images), today.score_images(users, images)
        )
        torch.testing.assert_close(mixed_off.warm_codes(), today.warm_codes())
    # no titles, or no text tower: 0.1 cannot be had
    with pytest.raises(ValueError, match="needs item titles"):
        FREEDOM.on(extractor, plain, FREEDOMConfig(image_weight=0.1))


def test_the_text_model_round_trips_through_save_and_load(catalog, model, tmp_path):
    model.save(tmp_path / "m")
    loaded = load_recommender(tmp_path / "m").eval()
    assert loaded.reads_text and loaded.image_weight == model.image_weight
    ids = torch.as_tensor(catalog.cold_items)
    images = to_float(catalog.images[ids.numpy()])
    users = torch.arange(model.n_users)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.score_images(users, images, ids), model.score_images(users, images, ids)
        )


def test_a_defence_trains_on_attacks_against_the_text_model(catalog, model):
    from aipray.defenses.denoiser import DenoiserConfig, training_perturbations

    config = DenoiserConfig(train_eps=16, attack_epochs=1, user_batch=40, pgd_steps=2, batch_size=3)
    ids = torch.as_tensor(catalog.warm_mask().nonzero()[0][:6])
    clean = to_float(catalog.images[ids.numpy()])
    adv = training_perturbations(config, model, clean, 0, ids)
    assert adv.shape == clean.shape and (adv - clean).abs().amax() > 0
    assert (adv - clean).abs().amax() <= 16 / 255 + 1e-6


def test_a_sweep_that_reads_titles_without_them_fails_before_any_work(tmp_path):
    from pathlib import Path

    from aipray.config import load_sweep
    from aipray.params import ConfigError

    text = (Path(__file__).resolve().parents[1] / "sweeps/text_synthetic.yaml").read_text()
    assert load_sweep(Path(__file__).resolve().parents[1] / "sweeps/text_synthetic.yaml")
    for old, new, message in (
        ("    titles: true\n", "", "has none; allowed: titles: true"),
        ("weights: clip", "weights: surrogate", "has no text tower; allowed: clip"),
    ):
        path = tmp_path / "text.yaml"
        path.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_sweep(path)
