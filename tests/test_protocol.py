"""The AIP cold-item protocol without Ray: a user's own ranker, slow references, first-stage
health, defences on every image the ranker sees, determinism."""

import dataclasses
import sys

import numpy as np
import pytest
import torch

import aipray
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.defenses import DEFENSES
from aipray.metrics.full_ranking import (
    FULL_CUTOFFS,
    full_hit_rate,
    full_random_hit_rate,
    full_ranking_context,
    popularity_scores,
)
from aipray.metrics.ranking import (
    hit_rates,
    hit_rates_by_argsort,
    injected_ranks,
    ordinary_hit_rates,
    random_hit_rate,
)
from aipray.models.bpr import BPRConfig
from aipray.pixels import to_float
from aipray.protocol import aip
from tests.rankers import PooledRanker


@pytest.fixture(scope="module")
def catalog():
    cfg = SyntheticConfig(n_users=200, n_items=240, n_cold=24, image_size=16, seed=3)
    return make_synthetic(cfg)


@pytest.fixture(scope="module")
def first(catalog):
    cfg = BPRConfig(factors=16, lr=0.01, reg=0.03, epochs=20, batch_size=256)
    return aip.first_stage(catalog, cfg, candidates=40, seed=0)


def own_ranker(catalog):
    torch.manual_seed(0)
    return PooledRanker(catalog.n_users).eval().requires_grad_(False)


def test_protocol_does_not_import_ray():
    import subprocess

    code = "import sys, aipray.protocol; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_own_ranker_attacked_with_insa_and_expa_under_the_protocol(catalog, first):
    ranker = own_ranker(catalog)
    results = {}
    for name, settings in (
        ("insa", {"eps": 32, "epochs": 5, "user_batch": 50}),
        ("expa", {"eps": 32, "steps": 60, "patience": 5, "tol": 0.01}),
    ):
        attack = aip.attack(name, ranker, catalog, **settings)
        results[name] = aip.evaluate(ranker, catalog, first.candidates, attack)
    metrics, items = results["insa"]
    assert len(items) == catalog.cold_items.size
    assert metrics["adversarial/hr_at_5"] > metrics["cooperative/hr_at_5"] + 0.15
    assert metrics["p_value_hr_at_5"] < 0.01
    assert metrics["prediction_shift"] > 0
    for m, _ in results.values():
        assert m["linf_255_max"] <= 32
    # the early stop's steps, per item and on average
    metrics, items = results["expa"]
    assert items["attack_steps"].between(5, 60).all()
    assert metrics["attack_steps_mean"] == pytest.approx(items["attack_steps"].mean())
    assert "attack_steps_mean" not in results["insa"][0]


def test_evaluate_matches_a_slow_argsort(catalog, first):
    """HR@N from counting against sorted candidate scores equals a per-user argsort over the
    candidate set recomputed score by score."""
    ranker = own_ranker(catalog)
    attack = aip.attack("insa", ranker, catalog, eps=8, epochs=2, user_batch=100)
    metrics, items = aip.evaluate(ranker, catalog, first.candidates, attack)
    ids = items["item_id"].to_numpy()
    users = torch.arange(catalog.n_users)
    with torch.no_grad():
        fixed = np.concatenate([first.candidates, catalog.test_items[:, None]], axis=1)
        fixed_scores = np.stack(
            [
                ranker.score_codes(
                    users[u : u + 1],
                    ranker.encode_items(to_float(catalog.images[fixed[u]])),
                )[0].numpy()
                for u in range(catalog.n_users)
            ]
        )
        coop = ranker.score_images(users, to_float(catalog.images[ids])).numpy()
    valid = np.ones(fixed.shape, dtype=bool)
    valid[:, -1] = ~(first.candidates == catalog.test_items[:, None]).any(1)
    for k in (5, 10):
        slow = hit_rates_by_argsort(fixed_scores, valid, coop, k)
        np.testing.assert_allclose(items[f"cooperative/hr_at_{k}"].to_numpy(), slow, atol=1e-6)
        assert metrics[f"cooperative/hr_at_{k}"] == pytest.approx(slow.mean(), abs=1e-6)


def full_ranking_sets(catalog):
    """``[U, n_items]`` bool: what each user's full ranking holds (warm items outside the
    user's training and validation items), by a plain loop."""
    indptr, train_items = catalog.train_csr()
    allowed = np.tile(catalog.warm_mask(), (catalog.n_users, 1))
    for u in range(catalog.n_users):
        allowed[u, train_items[indptr[u] : indptr[u + 1]]] = False
        allowed[u, catalog.val_items[u]] = False
    return allowed


def test_the_full_ranking_yardstick_matches_a_slow_argsort(catalog, first):
    """HR@N over each user's full ranking (the evaluator's ``full_ranking/...`` rows, from the
    top-50 scores only) equals an argsort of every rankable item plus the injected one."""
    ranker = own_ranker(catalog)
    attack = aip.attack("insa", ranker, catalog, eps=8, epochs=1, user_batch=100)
    metrics, items = aip.evaluate(ranker, catalog, first.candidates, attack)
    ids = items["item_id"].to_numpy()
    users = torch.arange(catalog.n_users)
    with torch.no_grad():
        codes = ranker.encode_items(to_float(catalog.images))
        table = ranker.score_codes(users, codes).numpy()
        coop = ranker.score_images(users, to_float(catalog.images[ids])).numpy()
    allowed = full_ranking_sets(catalog)
    for k in FULL_CUTOFFS:
        slow = hit_rates_by_argsort(table, allowed, coop, k)
        fast = items[f"full_ranking/cooperative/hr_at_{k}"].to_numpy()
        np.testing.assert_allclose(fast, slow, atol=1e-6)
        assert metrics[f"full_ranking/cooperative/hr_at_{k}"] == pytest.approx(slow.mean())
    sizes = allowed.sum(1) + 1
    assert metrics["full_ranking/random/hr_at_50"] == pytest.approx(
        np.mean(np.minimum(sizes, 50) / sizes)
    )
    assert metrics["cooperative/hr_at_10"] >= metrics["full_ranking/cooperative/hr_at_10"]


def test_full_ranking_context_with_ties_against_a_loop(catalog):
    """Ranks of injected items and of each user's test item over the full ranking, with many
    tied scores (ties count against the item ranked), against a per-user loop."""
    rng = np.random.default_rng(1)
    table = np.round(rng.normal(size=(catalog.n_users, catalog.n_items)), 1).astype(np.float32)
    injected = np.round(rng.normal(size=(catalog.n_users, 7)), 1).astype(np.float32)
    full = full_ranking_context(lambda u: torch.as_tensor(table)[u], catalog, depth=20, chunk=33)
    allowed = full_ranking_sets(catalog)
    ranks = injected_ranks(full, torch.as_tensor(injected))
    ordinary = ordinary_hit_rates(full, torch.as_tensor(injected), (5, 20))
    for k in (5, 20):
        slow = hit_rates_by_argsort(table, allowed, injected, k)
        np.testing.assert_allclose(hit_rates(ranks, (k,))[k].numpy(), slow, atol=1e-6)
    test_hits = {5: np.zeros(7), 20: np.zeros(7)}
    for u in range(catalog.n_users):
        own = table[u, catalog.test_items[u]]
        ahead = (table[u][allowed[u]] >= own).sum() - 1  # the test item itself is in the set
        for b in range(7):
            rank = ahead + int(injected[u, b] >= own)
            for k in test_hits:
                test_hits[k][b] += rank < k
    for k, hits in test_hits.items():
        np.testing.assert_allclose(ordinary[k].numpy(), hits / catalog.n_users, atol=1e-6)
    assert full.set_sizes.tolist() == allowed.sum(1).tolist()
    assert random_hit_rate(full.set_sizes, (20,))[20] < 0.2


def test_first_stage_beats_popularity_and_keeps_user_vectors(catalog, first):
    health = first.health
    assert health["val_hr_at_10"] > 2 * health["val_random_hr_at_10"]
    assert health["full_hr_at_10"] > 1.25 * health["full_popularity_hr_at_10"]
    assert health["full_popularity_hr_at_10"] == pytest.approx(
        full_hit_rate(popularity_scores(catalog), catalog, k=10)
    )
    # popularity's top-C, independently: the test item is surely in it when fewer than C
    # eligible items are at least as popular, surely not when C or more are more popular
    pop = catalog.item_popularity()
    indptr, train_items = catalog.train_csr()
    c = first.candidates.shape[1]
    sure, possible = 0, 0
    for u in range(catalog.n_users):
        eligible = catalog.warm_mask().copy()
        eligible[train_items[indptr[u] : indptr[u + 1]]] = False
        eligible[catalog.val_items[u]] = False
        own = pop[catalog.test_items[u]]
        sure += int((eligible & (pop >= own)).sum() <= c)
        possible += int((eligible & (pop > own)).sum() < c)
    share = health["popularity_test_in_top_c"]
    assert sure / catalog.n_users <= share <= possible / catalog.n_users
    assert health["test_in_top_c"] > share
    norms = first.model.user_emb.weight.norm(dim=1)
    assert norms.min() > 0.05, "user vectors collapsed"
    assert first.candidates.shape == (catalog.n_users, 40)
    # candidates never include the user's training or validation items, nor cold items
    indptr, train_items = catalog.train_csr()
    cold = set(catalog.cold_items.tolist())
    for u in range(0, catalog.n_users, 17):
        row = set(first.candidates[u].tolist())
        assert not row & set(train_items[indptr[u] : indptr[u + 1]].tolist())
        assert catalog.val_items[u] not in row and not row & cold


def test_full_hit_rate_against_a_loop(catalog):
    """Full-ranking HR@10 of a fixed score table against a per-user Python loop."""
    rng = np.random.default_rng(0)
    table = torch.as_tensor(
        rng.normal(size=(catalog.n_users, catalog.n_items)), dtype=torch.float32
    )
    fast = full_hit_rate(lambda users: table[users], catalog, k=10, chunk=37)
    indptr, train_items = catalog.train_csr()
    warm = catalog.warm_mask()
    hit = np.zeros(catalog.n_users, dtype=bool)
    for u in range(catalog.n_users):
        allowed = warm.copy()
        allowed[train_items[indptr[u] : indptr[u + 1]]] = False
        allowed[catalog.test_items[u]] = False
        allowed[catalog.val_items[u]] = False
        own = table[u, catalog.val_items[u]].item()
        hit[u] = (table[u].numpy()[allowed] >= own).sum() < 10
    assert fast == pytest.approx(hit.mean())
    # a subset of users in any order (what validation reads at scale): their mean only
    some = rng.choice(catalog.n_users, size=catalog.n_users // 3, replace=False)
    subset = full_hit_rate(lambda users: table[users], catalog, k=10, chunk=11, users=some)
    assert subset == pytest.approx(hit[some].mean())


def test_full_random_hit_rate_is_a_random_rankers_mean(catalog):
    """The random level of the full-ranking HR@10: scores drawn afresh 200 times average to it."""
    gen = torch.Generator().manual_seed(0)
    draws = [
        full_hit_rate(
            lambda users: torch.rand(users.numel(), catalog.n_items, generator=gen), catalog, k=10
        )
        for _ in range(200)
    ]
    expected = full_random_hit_rate(catalog, k=10)
    assert 0 < expected < 0.5
    assert np.mean(draws) == pytest.approx(expected, abs=4 * np.std(draws) / np.sqrt(200))


def test_a_defence_reaches_alexrank_profiles(catalog, first):
    from aipray.models.alexrank import AlexRank
    from aipray.models.extractor import build_extractor, extract_features, make_spec

    spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
    torch.manual_seed(0)
    extractor = build_extractor(spec).eval()
    indptr, items = catalog.train_csr()
    model = AlexRank.from_profiles(indptr, items, catalog.n_items, extractor, catalog.images)
    jpeg = DEFENSES.get("jpeg")(DEFENSES.get("jpeg").Config(quality=10))
    assert model.under_defense(aip.no_defense(), catalog.images) is model
    served = model.under_defense(jpeg, catalog.images)
    expected = extract_features(
        extractor, catalog.images, items=model.profile_items.numpy(), transform=jpeg
    )
    torch.testing.assert_close(served.profile_features, expected)
    assert not torch.allclose(served.profile_features, model.profile_features)
    # the undefended model is untouched, and the defended scores use defended profiles
    clean = extract_features(extractor, catalog.images, items=model.profile_items.numpy())
    torch.testing.assert_close(model.profile_features, clean)
    ctx = aip.candidate_scores(model, catalog, first.candidates[:, :5], jpeg)
    ctx_served = aip.candidate_scores(served, catalog, first.candidates[:, :5], jpeg, served=served)
    torch.testing.assert_close(ctx.sorted_scores, ctx_served.sorted_scores)


def test_evaluation_is_deterministic(catalog, first):
    runs = []
    for _ in range(2):
        ranker = own_ranker(catalog)
        attack = aip.attack("insa", ranker, catalog, eps=8, epochs=2, user_batch=64)
        metrics = aip.evaluate(ranker, catalog, first.candidates, attack)[0]
        metrics.pop("attack_seconds_per_item")  # wall time
        runs.append(metrics)
    assert runs[0] == runs[1]


def test_readme_own_ranker_block_runs(capsys):
    """The README's own-ranker example runs as written and shows INSA's rise."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- own-ranker:start -->")[1].split("<!-- own-ranker:end -->")[0]
    code = block.split("```python")[1].split("```")[0]
    usage = code.split("catalog = ")[1]
    assert len(("catalog = " + usage).strip().splitlines()) <= 10
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.strip().splitlines())
    coop, adv = map(float, lines["insa"].split())
    assert adv > coop + 0.1


@pytest.mark.parametrize("name", aipray.MODELS.names())
def test_training_recipes_are_deterministic(catalog, name, one_thread):
    """Each registered model's own recipe, run twice with one seed: identical weights (CPU, at
    one thread count: stages train with the sweep's, and LATTICE's edge-wise sums round by how
    many threads split them)."""
    from aipray.models.extractor import build_extractor, make_spec

    cls = aipray.MODELS.get(name)
    extractor = None
    if cls.uses_extractor:
        spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
        torch.manual_seed(0)
        extractor = build_extractor(spec).eval()
    small = {"epochs": 2, "batch_size": 256, "dim": 4, "factors": 8, "width": 0.05}
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = cls.Config(**{k: v for k, v in small.items() if k in fields})
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # the recipe must not depend on the global generator
        model, training = cls.fit(config, catalog, extractor=extractor, device="cpu", seed=7)
        states.append((model.state_dict(), (training or {}).get("best_score")))
        torch.manual_seed(456)
    (a, score_a), (b, score_b) = states
    assert score_a == score_b
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_cw_is_a_taamr_baseline_under_aip(catalog, first):
    """C&W against the extractor's classifier, evaluated under AIP's protocol like FGSM/PGD:
    the rows carry its success after the 8-bit round trip."""
    from aipray.models.extractor import ExtractorConfig, make_extractor, popular_class

    warm = np.flatnonzero(catalog.warm_mask())
    extractor, _ = make_extractor(
        ExtractorConfig(width=0.1, epochs=3),
        np.asarray(catalog.images[warm]),
        catalog.categories[warm],
        seed=0,
    )
    target = popular_class(
        extractor, catalog.images, items=np.flatnonzero(catalog.item_popularity())
    )
    ranker = own_ranker(catalog)
    attack = aip.attack(
        "cw", ranker, catalog, classifier=extractor, target_class=target, steps=60, binary_steps=2
    )
    metrics, items = aip.evaluate(
        ranker, catalog, first.candidates, attack, items=catalog.cold_items[:12]
    )
    assert len(items) == 12 and 0 <= metrics["success_rate"] <= 1
    assert metrics["success_rate"] > 0  # an undefended small classifier is easy to move
    # an unchanged image is a failure left alone or an item already of the target class
    with torch.no_grad():
        clean = extractor(to_float(catalog.images[items["item_id"].to_numpy()])).argmax(1)
    unchanged = (items["linf_255"] == 0).to_numpy()
    already = (clean == target).numpy()
    np.testing.assert_array_equal(items["success"].to_numpy()[unchanged], already[unchanged])


def test_colluding_merchants_under_the_protocol(catalog, first):
    ranker = own_ranker(catalog)
    attack = aip.attack("insa", ranker, catalog, eps=32, epochs=3, user_batch=100)
    metrics, items = aip.evaluate(ranker, catalog, first.candidates, attack, collusion=(2, 5))
    for k in (2, 5):
        at = f"collusion/k{k}"
        groups = catalog.cold_items.size // k
        assert metrics[f"{at}/groups"] == groups
        # each item alone, scored again from its adversarial image, is the per-item evaluation
        alone = items["adversarial/hr_at_5"].to_numpy()[: groups * k].mean()
        assert metrics[f"{at}/alone/hr_at_5"] == pytest.approx(alone, abs=1e-6)
        for n in (5, 10, 20):
            # a colluder can only push its partners down, and a merchant hits when any item does
            together = metrics[f"{at}/adversarial/hr_at_{n}"]
            assert together <= metrics[f"{at}/alone/hr_at_{n}"]
            assert metrics[f"{at}/merchant/hr_at_{n}"] >= together
            assert metrics[f"{at}/random_merchant/hr_at_{n}"] >= metrics[f"{at}/random/hr_at_{n}"]
        # k adversarial items in the set push the ordinary item down at least as far as one
        one = items["ordinary_attacked/hr_at_5"].to_numpy()[: groups * k].mean()
        assert metrics[f"{at}/ordinary/hr_at_5"] <= one + 1e-9
    assert metrics["collusion/k2/adversarial/hr_at_5"] > metrics["collusion/k2/cooperative/hr_at_5"]
