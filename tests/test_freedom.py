"""FREEDOM's graphs, its cold items and its attack path, on real torch and a tiny catalog (the
shared model contract runs in test_contracts.py)."""

import numpy as np
import pytest
import torch

from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.metrics.full_ranking import FULL_CUTOFFS
from aipray.metrics.ranking import hit_rates, hit_rates_by_argsort, injected_ranks
from aipray.models.base import load_recommender
from aipray.models.extractor import build_extractor, make_spec
from aipray.models.freedom import FREEDOM, FREEDOMConfig
from aipray.models.graphs import (
    bipartite,
    degree_sensitive_keep,
    edge_weights,
    knn_adjacency,
    knn_neighbours,
    spmm,
)
from aipray.pixels import to_float
from aipray.protocol import aip
from tests.test_protocol import full_ranking_sets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def catalog():
    return make_synthetic(SyntheticConfig(n_users=80, n_items=120, n_cold=8, image_size=16, seed=2))


@pytest.fixture(scope="module")
def model(catalog):
    spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
    torch.manual_seed(0)
    extractor = build_extractor(spec).eval().requires_grad_(False)
    config = FREEDOMConfig(dim=8, knn_k=4, epochs=3, batch_size=256, patience=None)
    trained, _ = FREEDOM.fit(config, catalog, extractor=extractor, device="cpu", seed=0)
    return trained.eval().requires_grad_(False)


def test_the_item_graph_matches_a_hand_case():
    # items 0..4 on the plane; item 5 is cold (outside the graph) and sits on top of item 0
    features = torch.tensor(
        [[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.2, 0.9], [1.0, 0.7], [1.0, 0.0]]
    )
    warm = torch.tensor([0, 1, 2, 3, 4])
    local = knn_neighbours(features[warm], features[warm], k=2)
    # each row: itself, then its most cosine-similar other item (by hand: cosines
    # 0-1 .976, 0-4 .819, 1-4 .924, 2-3 .976, 3-4 .737)
    assert local.tolist() == [[0, 1], [1, 0], [2, 3], [3, 2], [4, 1]]
    graph = knn_adjacency(warm, warm[local], n_items=6).to_dense()
    expected = torch.zeros(6, 6)
    for row, cols in enumerate(local.tolist()):
        expected[row, cols] = 0.5  # D^-1/2 A D^-1/2 with every row sum k = 2
    torch.testing.assert_close(graph, expected, atol=1e-6, rtol=0)
    # a cold item's neighbours are warm items only: item 5 equals item 0 but is not a candidate
    assert knn_neighbours(features[5:], features[warm], k=2).tolist() == [[0, 1]]


def test_user_item_edges_are_normalised_by_both_degrees():
    users = torch.tensor([0, 0, 1])
    items = torch.tensor([0, 1, 1])
    # d_u = (2, 1), d_i = (1, 2)
    expected = torch.tensor([1 / np.sqrt(2 * 1), 1 / np.sqrt(2 * 2), 1 / np.sqrt(1 * 2)])
    torch.testing.assert_close(edge_weights(users, items, 2, 2), expected.float())


def test_sparse_products_and_their_gradients_match_dense_ones():
    users = torch.tensor([0, 0, 1, 2, 2, 2])
    items = torch.tensor([0, 3, 1, 1, 2, 3])
    graph = bipartite(users, items, 3, 4)
    dense = graph.matrix.to_dense()
    torch.testing.assert_close(graph.transpose.to_dense(), dense.T)
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(3, 5)
    (grad,) = torch.autograd.grad((spmm(graph, x) * w).sum(), x)
    (expected,) = torch.autograd.grad((dense @ x * w).sum(), x)
    torch.testing.assert_close(spmm(graph, x), dense @ x)
    torch.testing.assert_close(grad, expected)


def test_degree_sensitive_pruning_keeps_low_degree_edges_more_often():
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 1.0, 0.05, 0.05, 0.05, 0.05])
    kept = np.zeros(weights.size)
    for _ in range(400):
        keep = degree_sensitive_keep(weights, 2, rng)
        assert keep.size == 2 and np.unique(keep).size == 2
        kept[keep] += 1
    assert kept[:2].min() > 5 * kept[2:].max()


def test_the_graph_holds_the_warm_items_and_each_is_its_own_neighbour(catalog, model):
    warm = np.flatnonzero(catalog.warm_mask())
    assert model.in_graph.numpy().tolist() == catalog.warm_mask().tolist()
    rows = model.neighbours[torch.as_tensor(warm)]
    assert (rows[:, 0] == torch.as_tensor(warm)).float().mean() > 0.95  # itself first (ties aside)
    assert bool(model.in_graph[rows].all())  # never a cold item
    assert bool((model.neighbours[torch.as_tensor(catalog.cold_items)] == -1).all())


def test_a_cold_items_neighbours_change_with_its_image(catalog, model):
    cold = catalog.cold_items[0]
    warm = np.flatnonzero(catalog.warm_mask())
    x = to_float(catalog.images[[cold]])
    before = set(model.similarities(x).topk(model.knn_k).indices[0].tolist())
    # shown with warm item j's picture, the cold item reads j's own kNN row: same set, same code
    j = next(int(i) for i in warm if int(i) not in before)
    xj = to_float(catalog.images[[j]])
    after = set(model.similarities(xj).topk(model.knn_k).indices[0].tolist())
    assert after != before and j in after
    assert after == set(model.neighbours[j].tolist())
    reach = model.tables()[2]
    torch.testing.assert_close(model.encode_items(xj)[0], (model.item_graph().matrix @ reach)[j])


def test_the_relaxed_top_k_tends_to_the_hard_score_and_reaches_the_pixels(catalog, model):
    users = torch.arange(30)
    x = to_float(catalog.images[catalog.cold_items[:4]])
    hard = model.score_images(users, x).sum(0)
    sharp = FREEDOM(**{**model.init_args, "relax": 1e-4})
    sharp.load_state_dict(model.state_dict())
    sharp.eval().requires_grad_(False)
    torch.testing.assert_close(sharp.preference(users, x), hard, atol=1e-5, rtol=1e-4)
    pixels = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.preference(users, pixels).sum(), pixels)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()
    # the hard score itself is piecewise constant in the pixels: no gradient path reaches them
    assert not model.score_images(users, x.clone().requires_grad_(True)).requires_grad


def test_insa_runs_against_it_unchanged_and_raises_the_hard_scores(catalog, model):
    ids = catalog.cold_items[:6]
    x = to_float(catalog.images[ids])
    attack = aip.attack("insa", model, catalog, eps=32, epochs=4, user_batch=40, lr=0.01)
    adv = attack(x, torch.as_tensor(ids))
    users = torch.arange(model.n_users)
    before = model.score_images(users, x).mean()
    after = model.score_images(users, adv).mean()
    assert after > before


def test_cached_tables_follow_the_weights(model, tmp_path):
    model.save(tmp_path / "freedom")
    copy = load_recommender(tmp_path / "freedom")
    users = torch.arange(5)
    items = copy.in_graph.nonzero().flatten()[:10]
    first = copy.score_codes(users, copy.encode_items(None, items))
    torch.testing.assert_close(first, model.score_codes(users, model.encode_items(None, items)))
    with torch.no_grad():
        copy.user_id.weight.mul_(2.0)
        copy.item_id.weight.mul_(2.0)
    second = copy.score_codes(users, copy.encode_items(None, items))
    torch.testing.assert_close(second, 4 * first)  # propagation is linear: both sides double


def test_its_full_ranking_matches_a_slow_argsort(catalog, model):
    """The full-ranking yardstick on FREEDOM (warm items by id from the stored top scores, cold
    items from their images) equals an argsort of every rankable item's score, taken from the
    dense product of the propagated user and item tables."""
    users = torch.arange(catalog.n_users)
    full = aip.full_ranking_scores(model, catalog)
    with torch.no_grad():
        user_e, item_e, _ = model.propagate(model.full_graph(), model.item_graph())
        table = (user_e @ item_e.T).numpy()
        cold = model.score_images(users, to_float(catalog.images[catalog.cold_items])).numpy()
    allowed = full_ranking_sets(catalog)
    ranks = injected_ranks(full, torch.as_tensor(cold))
    for k in FULL_CUTOFFS:
        slow = hit_rates_by_argsort(table, allowed, cold, k)
        np.testing.assert_allclose(hit_rates(ranks, (k,))[k].numpy(), slow, atol=1e-6)
    assert full.set_sizes.tolist() == allowed.sum(1).tolist()


def test_served_scores_as_cold_read_each_warm_item_from_its_image_alone(catalog, model):
    users = torch.arange(12)
    warm = np.flatnonzero(catalog.warm_mask())
    by_image = aip.served_scores(model, catalog, as_cold=True)(users)
    by_id = aip.served_scores(model, catalog)(users)
    with torch.no_grad():
        expected = model.score_images(users, to_float(catalog.images[warm]))
        ids = model.score_codes(users, model.tables()[1][torch.as_tensor(warm)])
    torch.testing.assert_close(by_image[:, warm], expected)
    torch.testing.assert_close(by_id[:, warm], ids)
    assert not torch.allclose(by_image[:, warm], by_id[:, warm])
    assert bool((by_image[:, catalog.cold_items] == 0).all())


def test_with_neighbour_codes_a_cold_item_averages_its_neighbours_whole_codes(catalog, model):
    # cold_code: neighbours reads the warm items' whole codes (LightGCN term included) through
    # the same top-k row; the relaxed score still tends to the hard one and reaches the pixels
    imputed = FREEDOM(**{**model.init_args, "cold_code": "neighbours"})
    imputed.load_state_dict(model.state_dict())
    imputed.eval().requires_grad_(False)
    x = to_float(catalog.images[catalog.cold_items[:3]])
    top = model.similarities(x).topk(model.knn_k).indices
    torch.testing.assert_close(imputed.encode_items(x), model.warm_codes()[top].mean(1))
    assert not torch.allclose(imputed.encode_items(x), model.encode_items(x))
    users = torch.arange(30)
    sharp = FREEDOM(**{**imputed.init_args, "relax": 1e-4})
    sharp.load_state_dict(model.state_dict())
    sharp.eval().requires_grad_(False)
    hard = imputed.score_images(users, x).sum(0)
    torch.testing.assert_close(sharp.preference(users, x), hard, atol=1e-5, rtol=1e-4)
    pixels = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(imputed.preference(users, pixels).sum(), pixels)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()


def test_a_relaxation_off_its_default_shows_in_the_label_and_not_at_it():
    # relax is no axis, but a sub-grid may change it: two such trials must not share a label,
    # and the labels (and keys) of everything at the default stay as they were
    from aipray.grid import Component

    default = Component("model", "freedom", FREEDOMConfig(dim=8))
    softer = Component("model", "freedom", FREEDOMConfig(dim=8, relax=25.0))
    assert default.label == "freedom(dim=8,knn_k=10,dropout=0.8,reg_weight=0.0001)"
    assert softer.label == "freedom(dim=8,knn_k=10,dropout=0.8,reg_weight=0.0001,relax=25)"
    assert default.key() != softer.key()
