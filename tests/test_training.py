"""Training recipes: early stopping on validation HR@10 (``patience``), and AMR's feature scale
and adversary size (``adv_eps_unit``). Real training on a tiny synthetic catalog."""

import numpy as np
import pytest
import torch

from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.models.amr import AMR, AMRConfig
from aipray.models.base import load_recommender
from aipray.models.bpr import BPR, BPRConfig
from aipray.models.extractor import build_extractor, extract_features, make_spec
from aipray.models.train import FeatureAdversary, fit_bpr, validation_hr, validation_users
from aipray.params import SettingError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def catalog():
    return make_synthetic(SyntheticConfig(n_users=200, n_items=240, n_cold=24, image_size=16))


@pytest.fixture(scope="module")
def extractor():
    spec = make_spec("alexnet", 8, layout="aipray", input_size=None, image_size=16, width=0.05)
    torch.manual_seed(0)
    return build_extractor(spec).eval()


def val_hr(model, catalog):
    users = validation_users(catalog, seed=1)  # what fit_bpr(seed=0) validates on
    return validation_hr(model, model.training_encoder(catalog.images), catalog, users, CPU)


def test_a_flat_validation_stops_after_patience_epochs(catalog):
    # lr 0: nothing moves, validation never improves after epoch 1
    model = BPR(catalog.n_users, catalog.n_items, 8)
    result = fit_bpr(
        model, catalog, [{"params": model.parameters()}], epochs=50, batch_size=512, lr=0.0,
        device=CPU, patience=3,
    )  # fmt: skip
    assert (result.best_epoch, result.epochs_run) == (1, 4)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]


def test_training_stops_once_validation_stops_improving_and_keeps_the_best_epoch(catalog):
    config = BPRConfig(factors=16, lr=0.05, reg=0.0, epochs=60, batch_size=256, patience=2)
    model, info = BPR.fit(config, catalog, device=CPU, seed=0)
    scores = [h["val_hr_at_10"] for h in info["history"]]
    best, run = info["best_epoch"], info["epochs_run"]
    assert run < 60 and run == best + 2 == len(scores)
    assert max(scores) == scores[best - 1] == info["best_score"]
    assert all(s <= info["best_score"] for s in scores[best:])  # the 2 epochs after: no gain
    assert val_hr(model, catalog) == pytest.approx(info["best_score"])  # the best epoch's model
    # without a patience every epoch runs
    fixed = BPRConfig(factors=16, lr=0.05, reg=0.0, epochs=run + 3, batch_size=256, patience=None)
    _, info = BPR.fit(fixed, catalog, device=CPU, seed=0)
    assert info["epochs_run"] == run + 3
    with pytest.raises(SettingError, match=r"^BPRConfig\.patience: 0 is not allowed"):
        BPRConfig(patience=0)


def test_amr_divides_features_by_their_global_max(catalog, extractor, tmp_path):
    warm = catalog.warm_mask()
    raw = extract_features(extractor, catalog.images, device=CPU)
    peak = float(raw[torch.as_tensor(warm)].abs().max())  # the training items' global max |f|
    config = AMRConfig(dim=4, epochs=6, batch_size=256, clean_epochs=2)
    assert (config.adv_eps_unit, config.eps_value()) == ("max_abs", 0.1)  # AMR's own
    model, info = AMR.fit(config, catalog, extractor=extractor, device=CPU, seed=0)
    assert float(model.feature_scale) == pytest.approx(1 / peak)
    assert info["info"]["feature_scale"] == pytest.approx(1 / peak)
    assert info["info"]["adv_eps"] == pytest.approx(0.1)  # in the scaled units
    # a cold image is scaled by the same constant, through the graph down to its pixels
    cold = torch.as_tensor(catalog.images[catalog.cold_items[:3]]).float() / 255
    with torch.no_grad():
        expected = model.encode_features(extractor.features(cold) / peak)
        torch.testing.assert_close(model.encode_items(cold), expected)
    pixels = cold.clone().requires_grad_(True)
    model.preference(torch.arange(10), pixels).sum().backward()
    assert pixels.grad.abs().sum() > 0
    # the scale is part of the checkpoint
    model.save(tmp_path)
    again = load_recommender(tmp_path)
    assert float(again.feature_scale) == pytest.approx(1 / peak)
    torch.testing.assert_close(again.encode_items(cold), model.encode_items(cold).detach())


class Recording:
    """A training encoder over a fixed feature table that records how far each adversarial call
    moved the features (``encode(features + Δ)``): the size of AMR's Δ as training used it."""

    def __init__(self, table, encode):
        self.table, self._encode, self.moves = table, encode, []

    def features(self, items):
        return self.table[items]

    def encode(self, features, items):
        delta = (features - self.table[items]).detach()
        if delta.abs().max() > 0:
            self.moves.append(delta.norm(dim=1))
        return self._encode(features, items)

    def __call__(self, items):
        return self._encode(self.table[items], items)


@pytest.mark.parametrize("unit", ["max_abs", "relative_norm"])
def test_the_adversary_moves_features_by_eps_in_its_unit(catalog, extractor, unit):
    torch.manual_seed(0)
    model = AMR.on(extractor, catalog.n_users, catalog.n_items, 4)
    # hand-made features with a known global max |f|: 5 (one entry), everything else below
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(catalog.n_items, model.E.in_features, generator=g) * 2 - 1
    warm = np.flatnonzero(catalog.warm_mask())
    raw[warm[7], 3] = -5.0
    scale = 0.2 if unit == "max_abs" else 1.0  # what AMR.fit would set: 1 / 5
    model.set_feature_scale(scale)
    table = raw * scale
    encoder = Recording(table, model.encode_features)
    adversary = FeatureAdversary(eps=0.1, weight=1.0, clean_epochs=1, unit=unit)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    result = fit_bpr(
        model, catalog, groups, epochs=2, batch_size=512, lr=1e-3, device=CPU,
        adversary=adversary, encoder=encoder,
    )  # fmt: skip
    expected = 0.1 if unit == "max_abs" else 0.1 * float(table[warm].norm(dim=1).mean())
    assert result.info["adv_eps"] == pytest.approx(expected)
    moves = torch.cat(encoder.moves)
    assert len(encoder.moves) > 0  # only epoch 2 is adversarial
    torch.testing.assert_close(moves, torch.full_like(moves, expected), rtol=1e-4, atol=1e-6)
    assert result.best_epoch == 2  # never a plain epoch


def test_amr_with_patience_trains_plain_until_plateau_then_adversarially(catalog, extractor):
    config = AMRConfig(dim=4, lr=0.01, epochs=40, batch_size=256, patience=2)
    _, info = AMR.fit(config, catalog, extractor=extractor, device=CPU, seed=0)
    clean = info["info"]["clean_epochs"]
    assert 2 < clean < info["best_epoch"] <= info["epochs_run"] <= 40
    assert info["epochs_run"] == 40 or info["epochs_run"] == info["best_epoch"] + 2


def test_amr_settings():
    assert AMRConfig().adv_eps_unit == "max_abs" and AMRConfig().eps_value() == 0.1
    legacy = AMRConfig(adv_eps_relative=0.2)
    assert (legacy.adv_eps_unit, legacy.eps_value()) == ("relative_norm", 0.2)
    assert AMRConfig(adv_eps_unit="relative_norm").eps_value() == 0.05
    assert AMRConfig(adv_eps=0.3).adversary().eps == 0.3
    with pytest.raises(SettingError, match=r"^AMRConfig\.adv_eps_unit: 'max_abs' is not allowed"):
        AMRConfig(adv_eps_relative=0.05, adv_eps_unit="max_abs")
    with pytest.raises(SettingError, match=r"^AMRConfig\.adv_eps_relative: 0.05 is not allowed"):
        AMRConfig(adv_eps_relative=0.05, adv_eps=0.1)
    with pytest.raises(SettingError, match="expected one of max_abs, relative_norm"):
        AMRConfig(adv_eps_unit="l2")


def test_a_stage_trains_with_the_sweeps_threads_whatever_the_process_has(tmp_path):
    # CPU float reductions round by how many threads split them: BPR at 64 factors over batches
    # of 4096 ends 7e-7 apart at 1 and 2 threads. compute_stage trains with train_cpus threads
    # (1 here), so a driver script at 2 threads stores what a 1-CPU Ray worker stores.
    from aipray.config import parse_sweep
    from aipray.pipeline import stages

    raw = {
        "name": "threads",
        "datasets": {"synthetic": {"n_users": 300, "n_items": 400, "n_cold": 10, "image_size": 16}},
        "first_stage": {"bpr": {"factors": 64, "epochs": 3, "batch_size": 4096}},
        "models": {"vbpr": {"dim": 8, "epochs": 1}},
        "attacks": {"insa": {"eps": [8]}},
        "resources": {"train_cpus": 1},
    }
    weights, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            sweep = parse_sweep({**raw, "storage": str(tmp_path / f"store{threads}")})
            trial = sweep.trials()[0]
            paths = stages.stage_paths(sweep, trial)
            for kind in ("dataset", "bpr"):
                stages.compute_stage(kind, sweep, trial, paths, CPU)
            assert torch.get_num_threads() == threads  # the process's count is restored
            model = load_recommender(paths.bpr)
            weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
