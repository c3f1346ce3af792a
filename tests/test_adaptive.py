"""Adaptive attacks (Athalye et al. 2018): through the defence, by its exact gradient or BPDA,
averaged over a randomised defence's draws (EOT); separate trials, keyed by the defence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from aipray.attacks import ATTACKS, AttackInputs
from aipray.attacks.base import through_defense
from aipray.config import load_sweep, parse_sweep
from aipray.defenses.base import Defense
from aipray.models.base import Recommender
from aipray.params import ConfigError
from aipray.pipeline.stages import stage_paths

SIZE = 8  # 8×8 images: 192 pixels


def checker() -> torch.Tensor:
    """``[3·8·8]`` ±1 alternating pixel by pixel: what a 2×2 blur removes entirely."""
    ij = torch.arange(SIZE)
    board = ((ij[:, None] + ij[None, :]) % 2) * 2.0 - 1.0
    return board.expand(3, SIZE, SIZE).flatten()


#: pixel weights of the tiny models: a strong pattern the blur removes, a weak one it keeps
WEIGHTS = checker() + 0.3


class Blur(Defense):
    """A fixed 2×2 box blur (average each 2×2 block), differentiable: attacked exactly."""

    gradient = "exact"

    def __init__(self) -> None:
        super().__init__(None)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")


class PixelRanker(Recommender):
    """``score(u, x) = θ_u · (w · x)``: a linear ranker on raw pixels, ``θ`` positive."""

    def __init__(self, n_users: int = 6) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(0.5, 1.5, n_users)[:, None], requires_grad=False)
        self.w = nn.Parameter(WEIGHTS[None, :].clone(), requires_grad=False)

    @property
    def n_users(self) -> int:
        return self.theta.shape[0]

    def encode_items(self, images, items=None):
        return images.flatten(1) @ self.w.T

    def user_vectors(self, users):
        return self.theta[users]


def grey(n: int = 2) -> torch.Tensor:
    return torch.full((n, 3, SIZE, SIZE), 128 / 255)


class Draws(Defense):
    """A randomised defence for the hand case: each draw multiplies the images by 1, 2 or 3,
    taken from the attacker's generator; it counts its draws."""

    gradient = "exact"
    randomised = True

    def __init__(self) -> None:
        super().__init__(None)
        self.factors: list[float] = []

    def __call__(self, images):
        return images

    def draw(self, images, generator):
        factor = float(torch.randint(1, 4, (1,), generator=generator))
        self.factors.append(factor)
        return images * factor


def test_eot_averages_n_draws_by_hand():
    """Σx through n = 5 draws of ×{1, 2, 3}: the objective and its gradient are the mean
    factor of exactly those draws (replayed from the same seed)."""
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    defense = Draws()
    objective = through_defense(
        lambda images, step: images.flatten(1).sum(1), defense, 5, torch.Generator().manual_seed(9)
    )
    value = objective(x, 0)
    (grad,) = torch.autograd.grad(value.sum(), x)
    replay = torch.Generator().manual_seed(9)
    factors = [float(torch.randint(1, 4, (1,), generator=replay)) for _ in range(5)]
    assert defense.factors == factors and len(set(factors)) > 1
    mean = sum(factors) / 5
    torch.testing.assert_close(value, x.detach().flatten(1).sum(1) * mean)
    torch.testing.assert_close(grad, torch.full_like(x, mean))


def test_an_attack_takes_eot_draws_only_of_a_randomised_defence():
    """INSA adaptive with ``eot_samples = 4``: 4 draws per step of a randomised defence, 1 of
    a deterministic one; oblivious, the defence is never drawn."""
    model = PixelRanker()
    steps = 3
    for adaptive, randomised, per_step in ((True, True, 4), (True, False, 1), (False, True, 0)):
        defense = Draws()
        defense.randomised = randomised
        cls = ATTACKS.get("insa")
        config = cls.Config(
            eps=8, epochs=steps, user_batch=6, lr=0.01, adaptive=adaptive, eot_samples=4
        )
        cls(config, model, AttackInputs(defense=defense))(grey())
        assert len(defense.factors) == steps * per_step


def test_adaptive_insa_beats_oblivious_through_a_blur():
    """INSA on a pixel-linear ranker whose weights are mostly a checkerboard, behind a 2×2
    blur. Oblivious, Adam follows the checkerboard, which the blur erases: the defended score
    barely moves. Adaptive, the gradient through the blur is the weights' smooth part: every
    pixel +ε, a defended gain of 0.3·ε per pixel and unit of Σθ."""
    model, blur = PixelRanker(), Blur()
    x = grey()
    cls = ATTACKS.get("insa")
    users = torch.arange(model.n_users)
    before = model.preference(users, blur(x))
    gains = {}
    for adaptive in (False, True):
        config = cls.Config(eps=8, epochs=6, user_batch=6, lr=0.01, adaptive=adaptive)
        adv = cls(config, model, AttackInputs(defense=blur))(x)
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6
        gains[adaptive] = (model.preference(users, blur(adv)) - before).min().item()
    best = 0.3 * 8 / 255 * WEIGHTS.numel() * model.theta.sum().item()  # every pixel +ε
    assert gains[True] == pytest.approx(best, rel=0.02)
    assert abs(gains[False]) < 0.02 * best


class PixelClassifier(nn.Module):
    """Two classes; class 1's logit is ``w · x + b``, with ``b`` so that the grey image, blurred,
    is 0.6/255·Σ0.3 short of class 1 (class 0's logit is 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(WEIGHTS.clone(), requires_grad=False)
        self.b = -(0.3 * WEIGHTS.numel()) * (128 + 0.6) / 255

    def forward(self, images):
        one = images.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(one), one], 1)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("pgd", {"eps": 4, "steps": 8}),
        ("cw", {"steps": 60, "lr": 0.05, "binary_steps": 3, "initial_const": 1.0}),
    ],
)
def test_adaptive_classifier_attacks_fool_the_classifier_behind_a_blur(name, settings):
    """Targeted PGD and C&W towards class 1 of a pixel-linear classifier behind a 2×2 blur:
    the oblivious images reach class 1 undefended but not through the blur; the adaptive ones
    reach it through the blur, and their ``success`` is judged on the blurred image."""
    clf, blur = PixelClassifier(), Blur()
    x = grey(1)
    assert clf(blur(x)).argmax(1).item() == 0
    cls = ATTACKS.get(name)
    reached = {}
    for adaptive in (False, True):
        inputs = AttackInputs(classifier=clf, target_class=1, defense=blur)
        attack = cls(cls.Config(adaptive=adaptive, **settings), None, inputs)
        adv = attack(x)
        reached[adaptive] = (
            clf(adv).argmax(1).item(),
            clf(blur(adv)).argmax(1).item(),
            attack.success(adv).item(),
        )
    assert reached[False] == (1, 0, True)  # fools the bare classifier, and says so
    assert reached[True][1:] == (1, True)  # fools it through the blur, and says so


# --- the grid and its store keys ------------------------------------------------------------------
SWEEP = {
    "name": "adaptive-keys",
    "storage": "/store",
    "datasets": {"synthetic": {"n_users": 300, "n_items": 260, "n_cold": 24, "image_size": 16}},
    "first_stage": {"candidates": 30},
    "models": {"vbpr": {"dim": 10, "epochs": 5}},
    "attacks": {"insa": {"eps": [32], "epochs": 10}},
    "defenses": {"none": {}, "jpeg": {"quality": 50}, "bitdepth": {"bits": 3}},
}


def _attack_paths(raw):
    sweep = parse_sweep(raw)
    return {t.name: stage_paths(sweep, t).attack for t in sweep.trials()}


def test_adaptive_trials_are_separate_and_keyed_by_their_defence():
    oblivious = _attack_paths(SWEEP)
    both = _attack_paths(
        {**SWEEP, "attacks": {"insa": {"eps": [32], "epochs": 10, "adaptive": [False, True]}}}
    )
    # the oblivious trials keep their attack images, one set for every defence
    assert len(set(oblivious.values())) == 1
    assert {k: v for k, v in both.items() if "adaptive" not in k} == oblivious
    # adaptive: one trial per defence, none against no defence (that is the oblivious attack)
    adaptive = {k: v for k, v in both.items() if "adaptive" in k}
    assert sorted(adaptive) == [
        "synthetic/vbpr(dim=10)/insa(adaptive)/eps=32/bitdepth(bits=3)",
        "synthetic/vbpr(dim=10)/insa(adaptive)/eps=32/jpeg(quality=50)",
    ]
    assert len(set(adaptive.values()) | set(oblivious.values())) == 3
    # written out at their defaults, the switches change no key
    explicit = {"eps": [32], "epochs": 10, "adaptive": False, "eot_samples": 1}
    assert _attack_paths({**SWEEP, "attacks": {"insa": explicit}}) == oblivious


def test_eot_samples_count_only_against_a_randomised_defence():
    raw = {
        **SWEEP,
        "attacks": {"insa": {"eps": [32], "epochs": 10, "adaptive": True, "eot_samples": 8}},
        "defenses": {"jpeg": {"quality": 50}, "random_resize_pad": {"min_scale": 0.8}},
    }
    names = sorted(_attack_paths(raw))
    assert names == [
        "synthetic/vbpr(dim=10)/insa(adaptive)/eps=32/jpeg(quality=50)",
        "synthetic/vbpr(dim=10)/insa(adaptive,eot=8)/eps=32/random_resize_pad(min_scale=0.8)",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"attacks": {"fgsm": {"eps": [4], "adaptive": True}}},
            "attacks.fgsm.adaptive: True is not allowed; fgsm cannot optimise through a defence "
            "(adaptive attacks: cw, expa, insa, pgd)",
        ),
        (
            {"attacks": {"noise": {"eps": [4], "eot_samples": 4}}},
            "attacks.noise.eot_samples: 4 is not allowed",
        ),
        (
            {"attacks": {"insa": {"eps": [4], "adaptive": "yes"}}},
            "attacks.insa.adaptive: 'yes' is not allowed; expected true/false",
        ),
        (
            {"attacks": {"insa": {"eps": [4], "adaptive": True, "eot_samples": 0}}},
            "attacks.insa.eot_samples: 0 is not allowed; expected an integer >= 1",
        ),
        (
            {
                "protocol": "perceptual",
                "datasets": {"synthetic": {"n_cold": 1}},
                "defenses": {"none": {}},
                "attacks": {"pgd": {"eps": [4], "adaptive": True}},
            },
            "attacks.pgd.adaptive: True is not allowed with protocol: perceptual",
        ),
    ],
)
def test_bad_adaptive_settings_fail_in_one_line_before_anything_runs(change, message):
    with pytest.raises(ConfigError) as err:
        parse_sweep({**SWEEP, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


# --- through Ray and MLflow -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_with_an_adaptive_trial_runs_through_ray_into_mlflow(tmp_path, one_thread):
    """A tiny sweep of adaptive INSA against no defence and bit depth 3 on a local Ray: against
    no defence it is the oblivious attack, so two trials, one MLflow run each, each with its
    own images; the report tells them apart."""
    import ray
    from mlflow.tracking import MlflowClient

    from aipray.report import build_report
    from aipray.report.runs import load_runs, resolve_source
    from aipray.sweep import run_sweep

    raw = {
        "name": "adaptive-e2e",
        "storage": str(tmp_path / "store"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": (tmp_path / "artifacts").as_uri(),
        },
        "examples": 0,
        "datasets": {"synthetic": {"n_users": 120, "n_items": 160, "n_cold": 8, "image_size": 16}},
        "first_stage": {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 512}},
        "models": {"dvbpr": {"dim": 8, "width": 0.125, "epochs": 2, "batch_size": 256}},
        "attacks": {"insa": {"eps": [16], "epochs": 2, "lr": 0.01, "adaptive": True}},
        "defenses": {"none": {}, "bitdepth": {"bits": 3}},
        "resources": {"max_concurrent_trials": 2, "actor_cpus": 0.5, "batch_size": 8},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    sweep = load_sweep(path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _, failed = run_sweep(sweep)
    finally:
        ray.shutdown()
    assert failed == []
    client = MlflowClient(sweep.tracking_uri())
    experiment = client.get_experiment_by_name(sweep.experiment())
    runs = client.search_runs([experiment.experiment_id], "tags.`aipray.role` = 'trial'")
    adaptive = "synthetic/dvbpr(dim=8)/insa(adaptive)/eps=16/bitdepth(bits=3)"
    oblivious = "synthetic/dvbpr(dim=8)/insa/eps=16/none"
    assert sorted(r.info.run_name for r in runs) == sorted([adaptive, oblivious])
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["n_items"] == 8
        assert "attack_seconds_per_item" in run.data.metrics  # each made its images
        assert run.data.params["attack.adaptive"] == str(run.info.run_name == adaptive)
    assert len(list((tmp_path / "store" / "attacks").iterdir())) == 2
    frame = load_runs(resolve_source(str(path))).frame
    assert sorted(frame["attack"]) == ["insa", "insa(adaptive)"]
    # the report's robustness table: each defence against the oblivious and adaptive attack
    text = (
        build_report(str(path), tmp_path / "report", log_to_mlflow=False) / "report.md"
    ).read_text()
    section = text.split("## Robustness: oblivious and adaptive attacks", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| DVBPR")]
    metric = {r.info.run_name: r.data.metrics["adversarial/hr_at_5"] for r in runs}
    none_row, bits_row = (line.split(" | ") for line in lines)
    assert none_row[3:4] == ["none"] and bits_row[3:4] == ["bitdepth(bits=3)"]
    assert none_row[5] == none_row[8] == f"{metric[oblivious]:.4f}"  # adaptive = oblivious
    assert bits_row[5] == "–" and bits_row[8] == f"{metric[adaptive]:.4f}"  # no oblivious run


def test_bpda_with_an_approximation_is_a_trial_only_against_an_approximable_defence():
    raw = {
        **SWEEP,
        "attacks": {
            "insa": {
                "eps": [32],
                "epochs": 10,
                "adaptive": [False, True],
                "bpda": ["identity", "approximation"],
            }
        },
    }
    paths = _attack_paths(raw)
    # JPEG has a differentiable approximation; bit depth and no defence do not
    assert sorted(k for k in paths if "adaptive" in k) == [
        "synthetic/vbpr(dim=10)/insa(adaptive)/eps=32/bitdepth(bits=3)",
        "synthetic/vbpr(dim=10)/insa(adaptive)/eps=32/jpeg(quality=50)",
        "synthetic/vbpr(dim=10)/insa(adaptive,bpda=approximation)/eps=32/jpeg(quality=50)",
    ]
    # its images are its own; the identity's keep the keys they had
    assert len(set(paths.values())) == 4
    plain = {**SWEEP, "attacks": {"insa": {"eps": [32], "epochs": 10, "adaptive": [False, True]}}}
    assert {k: v for k, v in paths.items() if "bpda" not in k} == _attack_paths(plain)
    with pytest.raises(ConfigError, match=r"attacks\.insa\.bpda: 'exact' is not allowed"):
        parse_sweep({**SWEEP, "attacks": {"insa": {"eps": [4], "bpda": "exact"}}})
