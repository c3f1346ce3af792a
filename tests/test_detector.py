"""The gatekeeper detector: trained against the trained ranker in its own stage like the
denoiser, a rejected upload is a miss, and a detector-aware INSA keeps its score low."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aipray.attacks import ATTACKS, AttackInputs
from aipray.config import parse_sweep
from aipray.data.synthetic import SyntheticConfig, make_synthetic
from aipray.defenses import DEFENSES, make_defense
from aipray.grid import Component, TrialSpec, attack_against
from aipray.metrics.detection import roc_auc
from aipray.metrics.full_ranking import FULL_CUTOFFS
from aipray.models import MODELS
from aipray.pipeline import stages
from aipray.pixels import to_float
from aipray.protocol import PROTOCOLS, aip, run
from aipray.sweep import trial_plans

Detector = DEFENSES.get("detector")
SMALL = {"width": 8, "train_items": 96, "epochs": 30, "batch_size": 16, "lr": 0.003}
SMALL_ATTACK = {"train_eps": 16, "attack_epochs": 1, "user_batch": 60, "pgd_steps": 4}
INSA = {"eps": 16, "epochs": 4, "user_batch": 30}  # lr: 2ε/255 over 8 steps, as trained on


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    catalog = make_synthetic(
        SyntheticConfig(n_users=60, n_items=200, n_cold=12, image_size=16, seed=1)
    )
    cls = MODELS.get("dvbpr")
    config = cls.Config(dim=4, width=0.05, epochs=2, batch_size=256)
    model, _ = cls.fit(config, catalog, extractor=None, device="cpu", seed=0)
    model = model.eval().requires_grad_(False)
    detector = Detector.fit(
        Detector.Config(**SMALL, **SMALL_ATTACK), catalog, model, device="cpu", seed=0
    )
    return catalog, model, detector


def insa(model, detector, adaptive, **settings):
    cls = ATTACKS.get("insa")
    config = cls.Config(**{**INSA, **settings}, adaptive=adaptive)
    return cls(config, model, AttackInputs(defense=detector))


def test_the_detector_tells_insa_images_from_clean_ones(world):
    """Trained on 72 warm items (INSA and PGD at ε = 16 against the trained ranker), it
    separates the 24 attacked held-out warm items from their clean images, and INSA's images of
    the cold items (another attack run, other items) from theirs, well above chance."""
    catalog, model, detector = world
    info = detector.info
    assert info["source"] == "trained" and info["items"] == 72 and info["heldout_items"] == 24
    assert info["heldout_auc"] > 0.8
    assert info["heldout_recall"] >= 0.95 and info["threshold"] == detector.threshold
    clean = to_float(catalog.images[catalog.cold_items])
    adv = insa(model, detector, adaptive=False)(clean)
    with torch.no_grad():
        auc = roc_auc(detector.detect(adv).numpy(), detector.detect(clean).numpy())
    assert auc > 0.75
    # images pass unchanged; the detector only decides which are shown
    assert torch.equal(detector(adv), adv)


def test_detector_aware_insa_keeps_the_score_low(world):
    """Adaptive INSA subtracts λ × the hinge of the detector's logit under its threshold: its
    images score lower than oblivious INSA's, and most pass the threshold."""
    catalog, model, detector = world
    clean = to_float(catalog.images[catalog.cold_items])
    oblivious = insa(model, detector, adaptive=False)(clean)
    aware = insa(model, detector, adaptive=True)(clean)
    with torch.no_grad():
        scores = {k: detector.detect(x) for k, x in (("oblivious", oblivious), ("aware", aware))}
        rejected = {
            k: detector.rejects(x).float().mean() for k, x in (("o", oblivious), ("a", aware))
        }
    assert scores["aware"].mean() < scores["oblivious"].mean()
    assert rejected["a"] < rejected["o"]
    # it still attacks: the users prefer its images to the clean ones
    users = torch.arange(model.n_users)
    with torch.no_grad():
        assert (
            model.preference(users, aware) > model.preference(users, clean)
        ).float().mean() > 0.5


def test_a_rejected_item_is_a_miss_and_leaves_the_ordinary_item_alone(world):
    """With every upload rejected, cooperative and adversarial HR are 0 at every cut-off, over
    the candidates and the full ranking, and the ordinary item ranks as if no item were
    injected; with none rejected, all is as undefended."""
    catalog, model, detector = world
    rng = np.random.default_rng(0)
    candidates = np.stack([rng.choice(150, 20, replace=False) for _ in range(catalog.n_users)])
    attack = insa(model, detector, adaptive=False)
    bare, bare_rows = aip.evaluate(model, catalog, candidates, attack)
    context = aip.candidate_scores(model, catalog, candidates)
    config = detector.config
    for threshold, rejected in ((-np.inf, 1.0), (np.inf, 0.0)):
        gate = Detector(config, detector.net, threshold)
        metrics, rows = aip.evaluate(model, catalog, candidates, attack, defense=gate)
        assert (rows["rejected_adv"] == rejected).all() and (
            rows["rejected_clean"] == rejected
        ).all()
        assert metrics["detector/recall"] == rejected
        assert metrics["detector/fpr_at_95_recall"] == rejected
        for k in (5, 10, 20):
            for group in ("adversarial", "cooperative"):
                expected = 0.0 if rejected else bare[f"{group}/hr_at_{k}"]
                assert metrics[f"{group}/hr_at_{k}"] == pytest.approx(expected)
            # an item not shown displaces no one: the ordinary item ranks among the fixed set
            alone = float((context.test_rank < k).float().mean())
            ordinary = alone if rejected else bare[f"ordinary/hr_at_{k}"]
            assert metrics[f"ordinary/hr_at_{k}"] == pytest.approx(ordinary)
        for k in FULL_CUTOFFS:
            for group in ("adversarial", "cooperative"):
                key = f"full_ranking/{group}/hr_at_{k}"
                assert metrics[key] == pytest.approx(0.0 if rejected else bare[key])
        # the attack's effect on the model is measured as before
        assert metrics["prediction_shift"] == pytest.approx(bare["prediction_shift"])
    assert 0.0 <= metrics["detector/auc"] <= 1.0
    assert "detector/auc" not in bare and len(bare_rows) == len(rows)


def test_evade_weight_counts_only_for_an_adaptive_attack_on_a_screen():
    cls = ATTACKS.get("insa")
    attack = Component("attack", "insa", cls.Config(adaptive=True, evade_weight=5.0))
    jpeg = DEFENSES.get("jpeg")
    plain = attack_against(attack, Component("defense", "jpeg", jpeg.Config()))
    assert plain.config.adaptive and plain.config.evade_weight == cls.Config().evade_weight
    detector = Component("defense", "detector", Detector.Config())
    screened = attack_against(attack, detector)
    assert screened.config.evade_weight == 5.0
    # a weight other than the default is part of the trial's name and its attack's key
    dataset = Component("dataset", "synthetic", SyntheticConfig())
    model = Component("model", "dvbpr", MODELS.get("dvbpr").Config())
    assert "insa(adaptive,evade=5)" in TrialSpec(dataset, model, screened, detector).name
    default = attack_against(Component("attack", "insa", cls.Config(adaptive=True)), detector)
    assert "evade_weight" not in default.as_dict()["config"]
    assert screened.as_dict()["config"]["evade_weight"] == 5.0


def test_detector_trials_share_its_stage_and_log_its_metrics(tmp_path):
    """A sweep with the detector as its defence: the stage trains and calibrates it once for
    the ranker; the oblivious and the detector-aware INSA trials report its AUC, the clean cold
    items it rejects and the adversarial ones it catches, without Ray."""
    raw = {
        "name": "detector-stage",
        "storage": str(tmp_path / "store"),
        "examples": 0,
        "datasets": {"synthetic": {"n_users": 80, "n_items": 160, "n_cold": 6, "image_size": 16}},
        "first_stage": {"candidates": 20, "bpr": {"epochs": 2, "batch_size": 512}},
        "models": {"dvbpr": {"dim": 4, "width": 0.05, "epochs": 2, "batch_size": 256}},
        "attacks": {"insa": {"eps": [16], "epochs": 2, "lr": 0.01, "adaptive": [False, True]}},
        "defenses": {"detector": {**SMALL, **SMALL_ATTACK, "train_items": 32, "epochs": 3}},
        "resources": {"batch_size": 6},
    }
    sweep = parse_sweep(raw)
    trials = sweep.trials()
    assert [t.adaptive for t in trials] == [False, True]
    paths = [stages.stage_paths(sweep, t) for t in trials]
    assert paths[0].defense == paths[1].defense is not None
    assert paths[0].attack != paths[1].attack
    protocol = PROTOCOLS.get(sweep.protocol)()
    for wave in protocol.stages:
        for kind in wave:
            if kind != "extractor":
                stages.compute_stage(kind, sweep, trials[0], paths[0], torch.device("cpu"))
    assert (paths[0].defense / "detector.pt").is_file()
    loaded = make_defense("detector", trials[0].defense.config, paths[0].defense)
    assert loaded.info["heldout_items"] == 8 and np.isfinite(loaded.threshold)
    for metrics in (run(plan) for plan in trial_plans(sweep, trials)):
        assert metrics["n_items"] == 6
        for key in ("auc", "fpr_at_95_recall", "recall", "fpr_at_trial_95_recall"):
            assert 0.0 <= metrics[f"detector/{key}"] <= 1.0


def test_the_bench_runs_insa_both_ways_against_none_and_the_detector():
    """scripts/detector_bench.py keeps the sweep's testbed and INSA settings and runs INSA
    oblivious and adaptive against no defence and the sweep's detector."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "detector_bench.py"
    spec = importlib.util.spec_from_file_location("detector_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = {
        "name": "bench",
        "datasets": {"synthetic": {"n_users": 80}},
        "models": {"dvbpr": {"dim": 4}, "vbpr": {"dim": 4}},
        "attacks": {"insa": {"eps": [8, 16], "epochs": 3, "eot_samples": 4}, "expa": {}},
        "defenses": {"jpeg": {"quality": 50}, "detector": {"width": 8}},
    }
    sweep = parse_sweep(bench.bench_sweep(raw, ["dvbpr"], [8.0], "somewhere"))
    names = sorted({t.name for t in sweep.trials()})
    assert names == [
        "synthetic/dvbpr(dim=4)/insa(adaptive)/eps=8/detector(train_eps=16)",
        "synthetic/dvbpr(dim=4)/insa/eps=8/detector(train_eps=16)",
        "synthetic/dvbpr(dim=4)/insa/eps=8/none",
    ]
    assert all(t.attack.config.epochs == 3 for t in sweep.trials())
    assert sweep.trials()[-1].defense.config.width == 8
