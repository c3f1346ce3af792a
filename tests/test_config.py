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
        (("datasets", "mnist"), {}, "unknown dataset 'mnist'; allowed: synthetic"),
        (("models", "resnet"), {}, "unknown model 'resnet'; allowed: dvbpr, vbpr"),
        (("attacks", "fgsm2"), {}, "unknown attack 'fgsm2'; allowed: expa, insa"),
        (("defenses", "blur"), {}, "unknown defense 'blur'; allowed: jpeg, none"),
        (("attacks", "insa", "eps"), -4, "attacks.insa.eps: -4 is not allowed"),
        (("attacks", "insa", "eps"), "big", "attacks.insa.eps: 'big' is not allowed"),
        (("attacks", "insa", "eps"), [8, -1], "attacks.insa.eps: -1 is not allowed"),
        (("attacks", "insa", "epsilon"), 8, "unknown key 'epsilon'"),
        (("resourcez",), {}, "unknown key 'resourcez'"),
        (("defenses", "jpeg", "quality"), 0, "defenses.jpeg.quality: 0 is not allowed"),
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


def test_shipped_sweeps_parse():
    from pathlib import Path

    for path in sorted(Path("sweeps").glob("*.yaml")):
        assert load_sweep(path).trials()
