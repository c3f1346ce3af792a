"""The feature-space attack beside the pixel one: the feature view of a ranker scores features as
the ranker scores their images, and feature-space INSA keeps its L2 budget and, on VBPR (linear
in the features), does at least as well as the pixel attack whose displacement it is given."""

import pytest
import torch

from aipray.attacks.feature_space import displacement, feature_insa, feature_view
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.models import MODELS
from aipray.models.extractor import build_extractor, make_spec
from aipray.pixels import to_float
from aipray.protocol import aip

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def catalog():
    return make_synthetic(SyntheticConfig(n_users=80, n_items=120, n_cold=8, image_size=16, seed=4))


@pytest.fixture(scope="module")
def extractor():
    spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
    torch.manual_seed(0)
    return build_extractor(spec).eval().requires_grad_(False)


def _fit(name, catalog, extractor, **settings):
    cls = MODELS.get(name)
    model, _ = cls.fit(cls.Config(**settings), catalog, extractor=extractor, device=CPU, seed=0)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def rankers(catalog, extractor):
    return {
        "vbpr": _fit("vbpr", catalog, extractor, dim=8, epochs=3, batch_size=256, patience=None),
        "freedom": _fit(
            "freedom", catalog, extractor, dim=8, knn_k=4, epochs=3, batch_size=256, patience=None
        ),
        "alexrank": _fit("alexrank", catalog, extractor),
        "lattice": _fit(
            "lattice", catalog, extractor, dim=8, knn_k=4, epochs=3, batch_size=256, patience=None
        ),
    }


@pytest.mark.parametrize("name", ["vbpr", "freedom", "alexrank", "lattice"])
def test_the_feature_view_scores_features_as_the_ranker_scores_images(catalog, rankers, name):
    model = rankers[name]
    images = to_float(catalog.images[catalog.cold_items])
    users = torch.arange(model.n_users)
    view = feature_view(model)
    with torch.no_grad():
        features = model.extractor.features(images)
        torch.testing.assert_close(
            view.score_images(users, features), model.score_images(users, images)
        )
        torch.testing.assert_close(
            view.preference(users, features), model.preference(users, images)
        )
    # the ranker keeps its extractor and shares its parameters with the view
    assert type(model.extractor).__name__ != "FeatureInput"
    for own, seen in (
        (model.named_parameters(), view.named_parameters()),
        (model.named_buffers(), view.named_buffers()),
    ):
        mine = dict(own)
        assert all(t is mine[name] for name, t in seen)


def test_a_ranker_without_extractor_features_has_no_feature_view(catalog):
    dvbpr = MODELS.get("dvbpr")
    model, _ = dvbpr.fit(
        dvbpr.Config(dim=4, width=0.05, epochs=1, batch_size=256, patience=None),
        catalog,
        extractor=None,
        device=CPU,
        seed=0,
    )
    with pytest.raises(ValueError, match="needs a ranker that reads its frozen extractor"):
        feature_view(model)


def test_feature_insa_keeps_its_budget_and_pays_off(catalog, rankers):
    model = rankers["vbpr"]
    view = feature_view(model)
    users = torch.arange(model.n_users)
    images = to_float(catalog.images[catalog.cold_items])
    with torch.no_grad():
        features = model.extractor.features(images)
    radius = torch.linspace(0.0, 1.0, features.shape[0]) * features.norm(dim=1).mean()
    moved = feature_insa(view, features, radius, [users], steps=20)
    assert torch.all((moved - features).norm(dim=1) <= radius + 1e-5)
    assert torch.equal(moved[0], features[0])  # no budget, no change
    with torch.no_grad():
        gain = view.preference(users, moved) - view.preference(users, features)
    assert torch.all(gain[1:] > 0)


def test_at_the_pixel_attacks_displacement_the_feature_attack_does_at_least_as_well(
    catalog, rankers
):
    # VBPR's preference is linear in the features: the best δ in an L2 ball lies along its
    # gradient, so the pixel attack's own feature change is one of the feature attacker's options
    model = rankers["vbpr"]
    users = torch.arange(model.n_users)
    images = to_float(catalog.images[catalog.cold_items])
    insa = aip.attack("insa", model, catalog, eps=16, epochs=3, user_batch=40)
    adversarial = insa.run(images).images
    moved, norms = displacement(model, images, adversarial)
    assert torch.all(moved > 0) and torch.all(norms > 0)
    view = feature_view(model)
    with torch.no_grad():
        features = model.extractor.features(images)
        pixel = view.preference(users, model.extractor.features(adversarial))
    in_features = feature_insa(view, features, moved, [users], steps=20)
    with torch.no_grad():
        feature = view.preference(users, in_features)
    assert torch.all(feature >= pixel - 1e-4 * pixel.abs().clamp(min=1))
