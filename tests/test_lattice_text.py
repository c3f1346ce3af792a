"""LATTICE with a second modality: titles join as the authors' textual features (an initial and
a learned kNN graph, mixed with the images' by learned softmax weights); a cold item's text
parts are fixed by its title while its image's move, and with ``text: false`` it is image-only
LATTICE."""

from __future__ import annotations

import pytest
import torch

from aipray.models.base import load_recommender
from aipray.models.extractor import build_extractor
from aipray.models.lattice import LATTICE, LATTICEConfig
from aipray.pixels import to_float
from tests.test_clip import clip_spec
from tests.test_freedom_text import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = LATTICEConfig(dim=8, feat_dim=8, knn_k=4, epochs=4, lr=0.01, batch_size=256, patience=None)


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return build_extractor(clip_spec()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def catalog():
    return synthetic(titles=True)


@pytest.fixture(scope="module")
def model(catalog, extractor):
    trained, _ = LATTICE.fit(CONFIG, catalog, extractor=extractor, device="cpu", seed=0)
    return trained.eval().requires_grad_(False)


def test_titles_are_a_second_modality_with_a_learned_weight(catalog, model):
    assert model.modalities == ("image", "text")
    assert model.modal_weight.shape == (2,)
    # the weights learnt away from the equal start (softmax of 0.5, 0.5)
    assert not torch.allclose(model.modal_weights(), torch.tensor([0.5, 0.5]))
    # every item's title features are stored, a cold item's too
    cold = torch.as_tensor(catalog.cold_items)
    assert model.text_features[cold].abs().sum() > 0
    # warm rows of the text graph list warm items only
    warm = torch.as_tensor(catalog.warm_mask())
    assert warm[model.text_initial[warm]].all()


def test_a_cold_items_title_parts_stay_while_its_image_parts_move(catalog, model):
    cold, other = int(catalog.cold_items[0]), int(catalog.cold_items[1])
    ids = torch.tensor([cold, cold])
    images = to_float(catalog.images[[cold, other]])
    title = model.cold_rows(images, items=ids, modalities=("text",))
    torch.testing.assert_close(title[0], title[1])
    image = model.cold_rows(images, items=ids, modalities=("image",))
    assert not torch.allclose(image[0], image[1])
    with pytest.raises(ValueError, match="give the items' ids"):
        model.score_images(torch.arange(3), images)


def test_a_gradient_reaches_the_pixels_through_the_image_parts(catalog, model):
    ids = torch.as_tensor(catalog.cold_items[:3])
    images = to_float(catalog.images[ids.numpy()]).requires_grad_(True)
    value = model.preference(torch.arange(model.n_users), images, ids).sum()
    (grad,) = torch.autograd.grad(value, images)
    assert grad.abs().sum() > 0


def test_text_false_is_todays_image_only_lattice(extractor):
    titled, plain = synthetic(titles=True), synthetic(titles=False)
    config = LATTICEConfig(**{**CONFIG.__dict__, "text": False})
    off, _ = LATTICE.fit(config, titled, extractor=extractor, device="cpu", seed=0)
    today, _ = LATTICE.fit(CONFIG, plain, extractor=extractor, device="cpu", seed=0)
    assert off.modalities == today.modalities == ("image",)
    off.eval(), today.eval()
    users = torch.arange(today.n_users)
    images = to_float(plain.images[plain.cold_items])
    with torch.no_grad():
        torch.testing.assert_close(
            off.score_images(users, images), today.score_images(users, images)
        )
        torch.testing.assert_close(off.warm_codes(), today.warm_codes())
    with pytest.raises(ValueError, match="needs item titles"):
        LATTICE.on(extractor, plain, LATTICEConfig(text=True))


def test_the_text_model_round_trips_through_save_and_load(catalog, model, tmp_path):
    model.save(tmp_path / "m")
    loaded = load_recommender(tmp_path / "m").eval()
    assert loaded.modalities == ("image", "text")
    ids = torch.as_tensor(catalog.cold_items)
    images = to_float(catalog.images[ids.numpy()])
    users = torch.arange(model.n_users)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.score_images(users, images, ids), model.score_images(users, images, ids)
        )
