"""Another training seed is another study on the same data: every trained stage and trial is new,
the dataset is shared, and its runs go to their own experiment; scripts/seed_spread.py's table
is the per-seed values with their mean and range."""

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

from aipray.config import load_sweep
from aipray.pipeline.stages import stage_paths
from aipray.sweep import main, trial_params, with_seed

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("seed_spread", ROOT / "scripts/seed_spread.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_another_seed_retrains_everything_on_the_same_data():
    sweep = load_sweep(ROOT / "sweeps/quick.yaml")
    assert with_seed(sweep, sweep.seed) is sweep
    other = with_seed(sweep, 7)
    assert (other.seed, other.name, other.experiment()) == (7, "quick-seed7", "quick-seed7")
    for trial, again in zip(sweep.trials(), other.trials(), strict=True):
        before, after = stage_paths(sweep, trial), stage_paths(other, again)
        assert after.dataset == before.dataset
        for stage in ("bpr", "candidates", "extractor", "model", "context", "attack", "result"):
            assert getattr(after, stage) != getattr(before, stage), stage
        assert trial_params(other, again)["seed"] == 7


def test_seed_keeps_a_named_experiment_apart(tmp_path):
    text = (ROOT / "sweeps/quick.yaml").read_text()
    path = tmp_path / "named.yaml"
    path.write_text(text + "\nmlflow: {experiment: study}\n")
    assert with_seed(load_sweep(path), 3).experiment() == "study-seed3"


def test_bad_seed_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(ROOT / "sweeps/quick.yaml"), "--seed", "one"])
    assert exit_.value.code == 2
    assert "--seed: invalid int value: 'one'" in capsys.readouterr().err


def test_spread_gives_each_seed_and_its_mean_and_range():
    spread = _script().spread
    tables = {
        0: pd.DataFrame({"trial": ["a", "b"], "adv@5": [0.2, 0.6]}),
        1: pd.DataFrame({"trial": ["a", "b"], "adv@5": [0.3, 0.5]}),
        2: pd.DataFrame({"trial": ["a"], "adv@5": [0.05]}),
    }
    out = spread(tables, "adv@5")
    assert out.loc["a", [0, 1, 2]].tolist() == [0.2, 0.3, 0.05]
    assert math.isclose(out.loc["a", "mean"], 0.55 / 3)
    assert (out.loc["a", "min"], out.loc["a", "max"]) == (0.05, 0.3)
    assert math.isnan(out.loc["b", "mean"])  # not finished under seed 2: no mean
