import numpy as np
import pytest

from aipray.config import ConfigError, load_sweep, parse_sweep

BASE = {
    "name": "t",
    "datasets": {"synthetic": {}},
    "models": {"dvbpr": {}, "vbpr": {}},
    "attacks": {"insa": {"eps": [8, 32]}, "expa": {"eps": 8}},
    "defenses": {"none": {}, "jpeg": {"quality": [75, 50]}},
}


def with_(path, value):
    import copy

    raw = copy.deepcopy(BASE)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


def test_grid_skips_missing_combinations():
    sweep = parse_sweep(BASE)
    trials = sweep.trials()
    # 2 models x (insa x 2 eps + expa x 1 eps) x 3 defences
    assert len(trials) == 2 * 3 * 3
    names = {t.name for t in trials}
    assert "synthetic/dvbpr(dim=100)/insa/eps=32/jpeg(quality=50)" in names
    assert len(names) == len(trials)


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (
            ("datasets", "mnist"),
            {},
            "unknown dataset 'mnist'; allowed: amazon_men, amazon_men_5core, "
            "amazon_women_10core, folder, mmrec_baby, mmrec_clothing, mmrec_sports, synthetic, "
            "tradesy",
        ),
        (
            ("models", "resnet"),
            {},
            "unknown model 'resnet'; allowed: alexrank, amr, dvbpr, freedom, lattice, vbpr",
        ),
        (
            ("attacks", "fgsm2"),
            {},
            "unknown attack 'fgsm2'; allowed: csema, cw, expa, fgsm, insa, noise, pgd, provided",
        ),
        (
            ("defenses", "blur"),
            {},
            "unknown defense 'blur'; allowed: bitdepth, denoiser, detector, jpeg, none, "
            "random_resize_pad",
        ),
        (("attacks", "insa", "eps"), -4, "attacks.insa.eps: -4 is not allowed"),
        (("attacks", "insa", "eps"), "big", "attacks.insa.eps: 'big' is not allowed"),
        (("attacks", "insa", "eps"), [8, -1], "attacks.insa.eps: -1 is not allowed"),
        (("attacks", "insa", "epsilon"), 8, "unknown key 'epsilon'"),
        (("resourcez",), {}, "unknown key 'resourcez'"),
        (("defenses", "jpeg", "quality"), 0, "defenses.jpeg.quality: 0 is not allowed"),
        (("collusion",), [2, 1], "collusion: [2, 1] is not allowed; expected a list of group"),
        (("collusion",), [2.5], "collusion: [2.5] is not allowed"),
    ],
)
def test_bad_input_is_one_clear_line(path, value, needle):
    with pytest.raises(ConfigError) as err:
        parse_sweep(with_(path, value), "s.yaml")
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")


def test_shipped_sweeps_parse(tmp_path, monkeypatch):
    from pathlib import Path

    sweeps = sorted(Path("sweeps").resolve().glob("*.yaml"))
    assert {p.name for p in sweeps} >= {"quick.yaml", "paper_synthetic.yaml", "full.yaml"}
    # full.yaml names the DVBPR release files under data/: without them it stops at the path,
    with pytest.raises(ConfigError, match=r"datasets\.amazon_men\.path"):
        load_sweep(Path("sweeps/full.yaml"))
    # and with them in place (stand-ins: parsing only checks they are .npy files) it parses
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("AmazonMenWithImgPartitioned.npy", "TradesyImgPartitioned.npy"):
        np.save(tmp_path / "data" / name, np.zeros(1))
    # perceptual.yaml: a folder dataset and the robust ResNet50 checkpoints under models/
    (tmp_path / "data" / "amazon_men" / "images").mkdir(parents=True)
    (tmp_path / "data" / "amazon_men" / "interactions.tsv").write_text("u\ti\t1\n")
    # mmrec_amazon.yaml: MMRec's three datasets in the folder format
    for name in ("baby", "sports", "clothing"):
        (tmp_path / "data" / "mmrec" / name / "images").mkdir(parents=True)
        (tmp_path / "data" / "mmrec" / name / f"{name}.inter").write_text(
            "userID\titemID\trating\ttimestamp\tx_label\n"
        )
    (tmp_path / "models").mkdir()
    for name in ("imagenet_linf_4.pt", "model_best.pth.tar"):
        (tmp_path / "models" / name).write_bytes(b"stand-in")
    counts = {p.name: len(load_sweep(p).trials()) for p in sweeps}
    # 2 rankers x 3 extractors x (noise, FGSM, PGD at 2 eps + C&W)
    assert counts["perceptual_synthetic.yaml"] == counts["perceptual.yaml"] == 2 * 3 * 7
    assert counts["quick.yaml"] == 16
    # the AIP grids (172) + VBPR with β′ x INSA (4) + AMR's ε axis in AMR's unit (6 x 2 ε; none
    # shared with the main AMR, whose ε is relative to the mean norm) + c-SEMA at 64 px on 4
    # rankers
    assert counts["paper_synthetic.yaml"] == 172 + 4 + 12 + 4
    # attacks: 2 datasets x 12 rankers (AMR at 4 ε) x 17; defences: 2 x 4 x 2 x 12, minus the
    # 16 shared
    assert counts["full.yaml"] == 2 * 12 * 17 + 2 * 4 * 2 * 12 - 2 * 4 * 2
    # 3 datasets x 6 rankers (two cold paths per graph ranker) x 3 attacks x 2 eps, then INSA
    # transferred between 4 rankers (3 sources each)
    assert counts["mmrec_amazon.yaml"] == 3 * 6 * 6 + 3 * 4 * 3


def test_sub_grids_replace_axes_and_trials_are_unique():
    raw = dict(BASE)
    raw["grids"] = [
        {"name": "attacks", "defenses": {"none": {}}},
        {
            "name": "defences",
            "attacks": {"insa": {"eps": 32}},
            "defenses": {"bitdepth": {"bits": [4, 2]}, "none": {}},
        },
    ]
    trials = parse_sweep(raw).trials()
    names = [t.name for t in trials]
    assert len(names) == len(set(names))
    # grid 1: 2 models x 3 (attack, eps) x none; grid 2 adds 2 models x insa/32 x 2 bit depths
    # (its insa/32/none trials are already in grid 1)
    assert len(trials) == 2 * 3 + 2 * 2
    assert "synthetic/vbpr(dim=100)/insa/eps=32/bitdepth(bits=2)" in names
    assert not any("jpeg" in n for n in names)  # top-level defences replaced in both grids


@pytest.mark.parametrize(
    "grids, needle",
    [
        ({"models": {}}, "grids: expected a list"),
        ([{"modles": {"vbpr": {}}}], "grids[0]: unknown key 'modles'"),
        ([{"attacks": {"insa": {"eps": -1}}}], "grids[0]: attacks.insa.eps: -1 is not allowed"),
    ],
)
def test_bad_sub_grid_is_one_clear_line(grids, needle):
    raw = dict(BASE)
    raw["grids"] = grids
    with pytest.raises(ConfigError) as err:
        parse_sweep(raw, "s.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_yaml_exponent_without_dot_is_a_number():
    # YAML 1.1 reads 1e-4 as a string; a float field accepts it
    raw = with_(("models", "vbpr"), {"lr": "1e-4"})
    (vbpr,) = [m for m in parse_sweep(raw).models if m.name == "vbpr"]
    assert vbpr.config.lr == 1e-4
    with pytest.raises(ConfigError, match=r"models\.vbpr\.lr: 'fast' is not allowed"):
        parse_sweep(with_(("models", "vbpr"), {"lr": "fast"}))


def test_amr_needs_adversarial_epochs():
    raw = with_(("models",), {"amr": {"epochs": 5, "clean_epochs": 5}})
    with pytest.raises(ConfigError, match=r"models\.amr\.clean_epochs: 5 is not allowed"):
        parse_sweep(raw)


def test_provided_images_are_part_of_the_attack_key(tmp_path):
    from PIL import Image

    from aipray.pipeline.stages import stage_paths

    folder = tmp_path / "adv"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "3.png")
    raw = with_(("attacks",), {"provided": {"path": str(folder)}})
    sweep = parse_sweep(raw)
    before = stage_paths(sweep, sweep.trials()[0]).attack
    Image.new("RGB", (8, 8), "blue").save(folder / "3.png")  # the same file name, new content
    assert stage_paths(sweep, sweep.trials()[0]).attack != before


def test_attack_images_are_shared_as_far_as_the_attacker_knowledge_is():
    """EXPA knows only Φ: AlexRank, VBPR and AMR share the pretrained extractor's, so they share
    one set of EXPA images; DVBPR's Φ is its own CNN. INSA knows each trained ranker. FGSM knows
    the extractor's classifier only."""
    from aipray.pipeline.stages import stage_paths

    models = {"alexrank": {}, "vbpr": {}, "amr": {}, "dvbpr": {}}
    raw = with_(("models",), models)
    raw["attacks"] = {"insa": {"eps": 8}, "expa": {"eps": 8}, "fgsm": {"eps": 8}}
    raw["defenses"] = {"none": {}}
    sweep = parse_sweep(raw)
    folders = {(t.attack.name, t.model.name): stage_paths(sweep, t).attack for t in sweep.trials()}
    expa = {m: folders["expa", m] for m in models}
    assert expa["alexrank"] == expa["vbpr"] == expa["amr"] != expa["dvbpr"]
    assert len({folders["insa", m] for m in models}) == 4
    assert len({folders["fgsm", m] for m in models}) == 1


def test_pretraining_needs_categories(tmp_path):
    # the real datasets have no item categories: an extractor cannot be pretrained on them
    np.save(tmp_path / "men.npy", np.zeros(1))
    raw = with_(("datasets",), {"amazon_men": {"path": str(tmp_path / "men.npy")}})
    with pytest.raises(ConfigError, match=r"extractor\.weights: 'pretrain' is not allowed"):
        parse_sweep(raw)
    raw["models"] = {"dvbpr": {}}  # DVBPR learns its own CNN: no extractor needed
    raw["attacks"] = {"insa": {"eps": 8}}
    assert parse_sweep(raw).trials()


# --- one validation path: configs check themselves when built, from Python or from YAML ---------
def all_config_classes() -> list[type]:
    from aipray.attacks import ATTACKS
    from aipray.config import FirstStageConfig, MLflowConfig, ResourcesConfig
    from aipray.data import DATASETS
    from aipray.defenses import DEFENSES
    from aipray.models import MODELS
    from aipray.models.extractor import ExtractorConfig

    classes = [FirstStageConfig, ResourcesConfig, MLflowConfig, ExtractorConfig]
    for registry in (ATTACKS, DEFENSES, DATASETS, MODELS):
        classes += [registry.get(name).Config for name in registry.names()]
    return list(dict.fromkeys(classes))


def yaml_error(path, value) -> str:
    with pytest.raises(ConfigError) as err:
        parse_sweep(with_(path, value), "s.yaml")
    return str(err.value)


@pytest.mark.parametrize(
    "cls_path, kwargs, yaml_path, yaml_value",
    [
        ("aipray.attacks.expa.EXPAConfig", {"eps": 300}, ("attacks", "expa", "eps"), 300),
        ("aipray.attacks.expa.EXPAConfig", {"eps": 300}, ("attacks", "expa", "eps"), [8, 300]),
        ("aipray.attacks.expa.EXPAConfig", {"steps": 2.5}, ("attacks", "expa", "steps"), 2.5),
        ("aipray.defenses.jpeg.JPEGConfig", {"quality": 0}, ("defenses", "jpeg", "quality"), 0),
        ("aipray.attacks.sema.CSEMAConfig", {"caption": 3}, ("attacks", "csema"), {"caption": 3}),
        (  # a cross check
            "aipray.data.synthetic.SyntheticConfig",
            {"n_items": 100, "n_cold": 100},
            ("datasets", "synthetic"),
            {"n_items": 100, "n_cold": 100},
        ),
    ],
)
def test_python_and_yaml_give_the_same_message(cls_path, kwargs, yaml_path, yaml_value):
    import importlib

    module, name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{name}.") and " is not allowed; expected " in message
    assert "\n" not in message
    key_and_rest = message.removeprefix(f"{name}.")
    where = ".".join(yaml_path[:2] if isinstance(yaml_value, dict) else yaml_path[:-1])
    assert yaml_error(yaml_path, yaml_value) == f"s.yaml: {where}.{key_and_rest}"


def test_expa_and_jpeg_bounds_from_python():
    from aipray.attacks.expa import EXPAConfig
    from aipray.defenses.jpeg import JPEGConfig

    with pytest.raises(ConfigError) as err:
        EXPAConfig(eps=300)
    tail = ": 300 is not allowed; expected a number in 0..255 (or a list of them)"
    assert str(err.value) == "EXPAConfig.eps" + tail
    assert yaml_error(("attacks", "expa", "eps"), 300).endswith("attacks.expa.eps" + tail)
    with pytest.raises(ConfigError) as err:
        JPEGConfig(quality=0)
    tail = ": 0 is not allowed; expected an integer in 1..100 (or a list of them)"
    assert str(err.value) == "JPEGConfig.quality" + tail
    assert yaml_error(("defenses", "jpeg", "quality"), 0).endswith("defenses.jpeg.quality" + tail)


def test_values_are_coerced_and_stored():
    from aipray.attacks.expa import EXPAConfig
    from aipray.config import Component

    config = EXPAConfig(eps=32)
    assert type(config.eps) is float and config.eps == 32.0
    assert config == EXPAConfig(eps=32.0)
    # cache keys hash dataclasses.asdict: 32 and 32.0 must give the same key
    assert (
        Component("attack", "expa", config).key()
        == Component("attack", "expa", EXPAConfig(eps=32.0)).key()
    )
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float field accepts it, from Python too
    lr = EXPAConfig(lr="1e-4").lr
    assert type(lr) is float and lr == 1e-4
    for bad in ({"steps": True}, {"eps": True}, {"lr": "nan"}, {"lr": "fast"}, {"hook": 1.0}):
        with pytest.raises(ConfigError, match=r"^EXPAConfig\.\w+: .* is not allowed; expected "):
            EXPAConfig(**bad)


def test_nested_configs_are_built_by_the_parser_only():
    from aipray.config import FirstStageConfig
    from aipray.models.bpr import BPRConfig

    with pytest.raises(ConfigError, match=r"^FirstStageConfig\.bpr: \{.*\} is not allowed"):
        FirstStageConfig(bpr={"factors": 8})
    assert FirstStageConfig(bpr=BPRConfig(factors=8)).bpr.factors == 8
    message = yaml_error(("first_stage",), {"bpr": {"factors": 0}})
    assert message == "s.yaml: first_stage.bpr.factors: 0 is not allowed; expected an integer >= 1"


def test_building_a_config_does_not_look_at_files(tmp_path, monkeypatch):
    from aipray.data import DATASETS

    monkeypatch.chdir(tmp_path)  # no data/ here: the default release files are missing
    assert DATASETS.get("amazon_men").Config().path == str(
        tmp_path / "data" / "AmazonMenWithImgPartitioned.npy"
    )
    assert [k for k, _, _ in DATASETS.get("amazon_men").Config().file_checks()] == ["path"]
    assert DATASETS.get("folder").Config().path == ""  # required, but only when parsed
    assert "datasets.amazon_men.path" in yaml_error(("datasets",), {"amazon_men": {}})


@pytest.mark.parametrize("cls", all_config_classes(), ids=lambda c: c.__name__)
def test_every_config_checks_its_bounds(cls):
    import dataclasses

    from aipray.params import Settings

    assert issubclass(cls, Settings), f"{cls.__name__} must inherit aipray.params.Settings"
    cls()  # the defaults are allowed
    for f in dataclasses.fields(cls):
        for bound, step in (("min", -1), ("max", 1)):
            limit = f.metadata.get(bound)
            if limit is None:
                continue
            bad = limit + step
            with pytest.raises(ConfigError) as err:
                cls(**{f.name: bad})
            assert str(err.value).startswith(f"{cls.__name__}.{f.name}: {bad!r} is not allowed")


def test_lpips_is_measured_only_when_named_and_missing_imagenet_weights_fail_early(
    tmp_path, monkeypatch
):
    assert parse_sweep(dict(BASE)).lpips is None
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    raw = dict(BASE, lpips={"net": "vgg"})
    with pytest.raises(ConfigError, match=r"lpips\.backbone: 'imagenet' is not allowed"):
        parse_sweep(raw)
    assert parse_sweep(dict(BASE, lpips={"net": "vgg", "download": True})).lpips.download
    assert parse_sweep(dict(BASE, lpips={"backbone": "random"})).lpips.backbone == "random"


def test_a_model_named_by_import_path():
    """A ranker outside aipray names itself by ``module:Class``; a bad path is one clear line."""
    sweep = parse_sweep(with_(["models"], {"tests.rankers:PooledRanker": {"dim": [4, 8]}}))
    labels = sorted({t.model.label for t in sweep.trials()})
    assert labels == ["tests.rankers:PooledRanker(dim=4)", "tests.rankers:PooledRanker(dim=8)"]
    for name, needle in (
        ("nowhere.rankers:Mine", "models: model 'nowhere.rankers:Mine' cannot be imported"),
        ("tests.rankers:Missing", "has no attribute 'Missing'"),
        ("aipray.models.base:Recommender", "Recommender has no Config"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_sweep(with_(["models"], {name: {}}))
        assert needle in str(err.value) and "\n" not in str(err.value)
