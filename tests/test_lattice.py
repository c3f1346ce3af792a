"""LATTICE's graphs, its training schedule, its cold items and its attack path, on real torch
and a tiny catalog (the shared model contract runs in test_contracts.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aipray.data.synthetic import SyntheticConfig, make_synthetic, style_labels, true_preferences
from aipray.metrics.full_ranking import FULL_CUTOFFS
from aipray.metrics.ranking import hit_rates, hit_rates_by_argsort, injected_ranks
from aipray.models.extractor import build_extractor, make_spec
from aipray.models.graphs import mean_bipartite, spmm
from aipray.models.lattice import LATTICE, LATTICEConfig
from aipray.models.lattice_loss import LATTICELoss
from aipray.models.train import fit_with
from aipray.params import SettingError
from aipray.pixels import to_float
from aipray.protocol import aip
from tests.test_protocol import full_ranking_sets

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)


@pytest.fixture(scope="module")
def catalog():
    return make_synthetic(SyntheticConfig(n_users=80, n_items=120, n_cold=8, image_size=16, seed=2))


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return build_extractor(SPEC).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def model(catalog, extractor):
    config = LATTICEConfig(
        dim=8, feat_dim=8, knn_k=4, epochs=10, lr=0.01, batch_size=256, patience=None
    )
    trained, _ = LATTICE.fit(config, catalog, extractor=extractor, device="cpu", seed=0)
    return trained.eval().requires_grad_(False)


def dense_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """The reference codes' dense recipe: cosine similarities, each row's top-k kept with their
    values, then ``D^{-1/2} A D^{-1/2}`` with ``D`` the row sums."""
    unit = F.normalize(features, dim=1)
    sims = unit @ unit.T
    values, index = sims.topk(k, dim=1)
    adjacency = torch.zeros_like(sims).scatter(1, index, values)
    d = adjacency.sum(1).pow(-0.5)
    return d[:, None] * adjacency * d[None, :]


def hand_model(lambda_coeff: float = 0.9) -> tuple[LATTICE, torch.Tensor]:
    """Items 0..4 on the plane (padded with zeros to the extractor's feature length), item 5
    cold; the projection stretches the plane (x, y) → (x, y/10), so the learned graph differs
    from the initial one."""
    plane = torch.tensor([[1.0, 0.0], [0.9, 0.2], [0.0, 1.0], [0.2, 0.9], [1.0, 0.7], [1.0, 0.0]])
    torch.manual_seed(0)
    model = LATTICE(2, 6, 3, SPEC, 1, feat_dim=2, knn_k=2, lambda_coeff=lambda_coeff)
    features = torch.zeros(6, model.extractor.feature_dim)
    features[:, :2] = plane
    with torch.no_grad():
        projection = model.projections["image"]
        projection.weight.zero_()
        projection.weight[0, 0], projection.weight[1, 1] = 1.0, 0.1
        projection.bias.zero_()
    model.set_graph(torch.arange(5), {"image": features[:5]})
    return model.eval().requires_grad_(False), features


def test_the_item_graph_mixes_the_learned_and_initial_graphs_as_specified():
    model, features = hand_model()
    warm = features[:5]
    projected = warm[:, :2] * torch.tensor([1.0, 0.1])
    # by hand: item 3 = (0.2, 0.9) is nearest item 2 on the raw features (cosine .976), but
    # item 4 once y is shrunk (cosines .938 against .410)
    assert model.image_initial[3].tolist() == [3, 2]
    learned, _, _ = model.learned_graph()
    assert learned.dst[learned.src == 3].tolist() == [3, 4]
    graph, _, _ = model.item_graph()
    expected = torch.zeros(6, 6)
    expected[:5, :5] = 0.1 * dense_graph(projected, 2) + 0.9 * dense_graph(warm, 2)
    torch.testing.assert_close(graph.detach().matrix.to_dense(), expected, atol=1e-6, rtol=0)
    # λ = 0 is the learned graph alone, λ = 1 the initial one
    only_learned, _ = hand_model(lambda_coeff=0.0)
    torch.testing.assert_close(
        only_learned.item_graph()[0].detach().matrix.to_dense()[:5, :5],
        dense_graph(projected, 2),
        atol=1e-6,
        rtol=0,
    )


def test_a_cold_items_row_is_built_as_a_warm_row_from_warm_items_only():
    model, features = hand_model()
    model.modality_features = lambda x, *_: {"image": x}  # the "images" are the features here
    row = model.cold_rows(features[5:])[0]
    # item 5 sits on item 0: its raw top-2 are items 0 and 1 (cosines 1, .976), its projected
    # top-2 items 0 and 1 too (1, .9998); it is not a neighbour of itself
    unit = F.normalize(features, dim=1)
    raw = unit[5] @ unit[:2].T
    plane = F.normalize(features[:, :2] * torch.tensor([1.0, 0.1]), dim=1)
    proj = plane[5] @ plane[:2].T
    rowsum_raw = model.image_initial_rowsum[:2]
    rowsum_learned = model.tables().learned_rowsum[:2]
    expected = torch.zeros(6)
    expected[:2] = 0.9 * raw / raw.sum().sqrt() / rowsum_raw.sqrt()
    expected[:2] += 0.1 * proj / proj.sum().sqrt() / rowsum_learned.sqrt()
    torch.testing.assert_close(row, expected, atol=1e-6, rtol=0)
    # the code reads the neighbours' reach and is normalised; no collaborative term
    code = model.image_codes(features[5:])[0]
    torch.testing.assert_close(code, F.normalize(expected @ model.tables().reach, dim=0))


def test_the_user_item_graph_is_the_mean_adjacency_with_self_loops():
    users = torch.tensor([0, 0, 1, 2, 2, 2])
    items = torch.tensor([0, 3, 1, 1, 2, 3])
    graph = mean_bipartite(users, items, 3, 4)
    a = torch.zeros(7, 7)
    a[users, 3 + items] = 1.0
    a[3 + items, users] = 1.0
    a = a + torch.eye(7)
    dense = a / a.sum(1, keepdim=True)  # D^-1 (A + I)
    x = torch.randn(7, 5)
    u = spmm(graph.users, x[3:]) + graph.self_users[:, None] * x[:3]
    i = spmm(graph.items, x[:3]) + graph.self_items[:, None] * x[3:]
    torch.testing.assert_close(torch.cat([u, i]), dense @ x)


def test_the_learned_graph_is_rebuilt_with_its_gradient_once_an_epoch(catalog, extractor):
    config = LATTICEConfig(dim=4, feat_dim=4, knn_k=4)
    model = LATTICE.on(extractor, catalog, config).train()
    loss = LATTICELoss(model, reg_weight=1e-5)
    users, pos, neg = torch.arange(8), torch.as_tensor(catalog.train_items[:8]), torch.arange(8)
    projection = model.projections["image"].weight
    loss.start_epoch(np.random.default_rng(0))
    (first,) = torch.autograd.grad(loss(users, pos, neg), projection)
    assert first.abs().sum() > 0  # the epoch's first batch rebuilds it: W learns
    second = torch.autograd.grad(loss(users, pos, neg), projection, allow_unused=True)[0]
    assert second is None or second.abs().sum() == 0  # the others reuse it, constant
    with torch.no_grad():
        projection.mul_(-1.5)
    loss.start_epoch(np.random.default_rng(0))
    (third,) = torch.autograd.grad(loss(users, pos, neg), projection)
    assert third.abs().sum() > 0


def test_a_cold_items_neighbours_change_with_its_image(catalog, model):
    cold = catalog.cold_items[0]
    warm = np.flatnonzero(catalog.warm_mask())

    def neighbours(item: int) -> set[int]:
        row = model.cold_rows(to_float(catalog.images[[item]]))[0]
        return set(row.nonzero().flatten().tolist())

    before = neighbours(cold)
    assert 0 < len(before) <= 2 * model.knn_k and before <= set(warm.tolist())
    # shown with warm item j's picture, the cold item has j among its neighbours
    j = next(int(i) for i in warm if int(i) not in before)
    after = neighbours(j)
    assert after != before and j in after


def test_the_relaxed_top_k_tends_to_the_hard_score_and_reaches_the_pixels(catalog, model):
    users = torch.arange(30)
    x = to_float(catalog.images[catalog.cold_items[:4]])
    hard = model.score_images(users, x).sum(0)
    sharp = LATTICE(**{**model.init_args, "relax": 1e-4})
    sharp.load_state_dict(model.state_dict())
    sharp.eval().requires_grad_(False)
    torch.testing.assert_close(sharp.preference(users, x), hard, atol=1e-5, rtol=1e-4)
    pixels = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.preference(users, pixels).sum(), pixels)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()


def test_with_neighbour_codes_a_cold_item_reads_its_row_over_the_warm_codes(catalog, model):
    # cold_code: neighbours: the same row S_c over the warm items' whole codes, not normalised
    imputed = LATTICE(**{**model.init_args, "cold_code": "neighbours"})
    imputed.load_state_dict(model.state_dict())
    imputed.eval().requires_grad_(False)
    x = to_float(catalog.images[catalog.cold_items[:3]])
    rows = model.cold_rows(x)
    torch.testing.assert_close(imputed.encode_items(x), rows @ model.warm_codes())
    torch.testing.assert_close(
        model.encode_items(x), torch.nn.functional.normalize(rows @ model.tables().reach, dim=1)
    )
    pixels = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(imputed.preference(torch.arange(30), pixels).sum(), pixels)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()


def test_insa_runs_against_it_unchanged_and_raises_the_hard_scores(catalog, model):
    ids = catalog.cold_items[:6]
    x = to_float(catalog.images[ids])
    attack = aip.attack("insa", model, catalog, eps=32, epochs=4, user_batch=40, lr=0.01)
    adv = attack(x, torch.as_tensor(ids))
    users = torch.arange(model.n_users)
    assert model.score_images(users, adv).mean() > model.score_images(users, x).mean()


def test_its_cold_items_rank_above_random_for_the_users_who_like_them(catalog, extractor):
    """A cold item's score comes from its features alone. Given features that carry the
    marketplace's styles (one-hot shape, hue and texture: the untrained tiny extractor's carry
    little, and the testbed measures the real one's), a cold item ranks above the middle of the
    full ranking (the share of each user's rankable items it outscores: 0.5 at random), clearly
    so for the quarter of users whose own taste (the generator's logits) likes it most, and
    higher for them than for the quarter that likes it least."""
    config = LATTICEConfig(
        dim=8, feat_dim=8, knn_k=4, epochs=10, lr=0.01, batch_size=256, patience=None
    )
    world = SyntheticConfig(n_users=80, n_items=120, n_cold=8, image_size=16, seed=2)
    features = torch.zeros(catalog.n_items, extractor.feature_dim)
    offset = 0
    for labels in style_labels(world).values():
        features[torch.arange(catalog.n_items), offset + torch.as_tensor(labels)] = 1.0
        offset += int(labels.max()) + 1
    torch.manual_seed(0)
    model = LATTICE.on(extractor, catalog, config, features)
    groups = [{"params": list(model.parameters())}]
    objective = LATTICELoss(model, config.reg_weight)
    fit_with(model, catalog, config, groups, device="cpu", seed=0, reg=0.0, objective=objective)
    model.eval().requires_grad_(False)
    model.modality_features = lambda x, *_: {"image": x}  # the "images" are the features here
    users = torch.arange(catalog.n_users)
    with torch.no_grad():
        table = model.score_codes(users, model.tables().items).numpy()
        cold = model.score_codes(users, model.encode_items(features[catalog.cold_items])).numpy()
    allowed = full_ranking_sets(catalog)
    outscored = np.stack([(table[u, allowed[u]][:, None] < cold[u]).mean(0) for u in range(80)])
    _, logits = true_preferences(world)
    taste = logits(np.arange(catalog.n_users))[:, catalog.cold_items]
    low, high = np.quantile(taste, [0.25, 0.75], axis=0)
    liked = (outscored * (taste >= high)).sum(0) / (taste >= high).sum(0)
    disliked = (outscored * (taste <= low)).sum(0) / (taste <= low).sum(0)
    assert outscored.mean() > 0.5
    assert liked.mean() > 0.55 and liked.mean() > disliked.mean() + 0.1


def test_its_full_ranking_matches_a_slow_argsort(catalog, model):
    users = torch.arange(catalog.n_users)
    full = aip.full_ranking_scores(model, catalog)
    with torch.no_grad():
        table = (model.tables().users @ model.tables().items.T).numpy()
        cold = model.score_images(users, to_float(catalog.images[catalog.cold_items])).numpy()
    allowed = full_ranking_sets(catalog)
    ranks = injected_ranks(full, torch.as_tensor(cold))
    for k in FULL_CUTOFFS:
        slow = hit_rates_by_argsort(table, allowed, cold, k)
        np.testing.assert_allclose(hit_rates(ranks, (k,))[k].numpy(), slow, atol=1e-6)


def test_its_config_fails_at_parse_time_in_one_line():
    with pytest.raises(SettingError, match="lambda_coeff") as error:
        LATTICEConfig(lambda_coeff=1.5)
    assert "\n" not in str(error.value)
    with pytest.raises(SettingError, match="knn_k"):
        LATTICEConfig(knn_k=0)


def test_knn_values_chunk_by_chunk_equal_the_whole_product_and_keep_the_gradient():
    from aipray.models.graphs import knn_values

    torch.manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(11, 5), dim=1).requires_grad_(True)
    neighbours = torch.randint(0, 11, (11, 3))
    whole = (unit[:, None, :] * unit[neighbours]).sum(-1)
    chunked = knn_values(unit, unit, neighbours, chunk=4)
    torch.testing.assert_close(chunked, whole)
    (grad,) = torch.autograd.grad(chunked.sum(), unit)
    (expected,) = torch.autograd.grad(whole.sum(), unit)
    torch.testing.assert_close(grad, expected)
