"""The AIP report on a hand-made sweep in a real MLflow SQLite store (no Ray, no mocks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from aipray.report import main
from aipray.report.common import MISSING, model_name, prepare, row_label, setting_text
from aipray.report.runs import Source, load_runs
from aipray.report.tables import choose_eps, table4

SWEEP = "tiny"
# display names come from the model registry (the report names no model itself)
VBPR, DVBPR, AMR = model_name("vbpr"), model_name("dvbpr"), model_name("amr")
# Per (model, dim): cooperative and ordinary HR@5 of every trial without a defence.
BASE = {("vbpr", 20): (0.01, 0.02), ("dvbpr", 20): (0.002, 0.03), ("dvbpr", 10): (0.004, 0.025)}
# Undefended trials: model, dim, attack, eps, adversarial HR@5, ordinary (attacked) HR@5,
# prediction shift, p-value.
UNDEFENDED = [
    ("vbpr", 20, "insa", 8, 0.30, 0.018, 1.5, 0.001),
    ("vbpr", 20, "insa", 32, 0.50, 0.015, 3.25, 1e-4),
    ("vbpr", 20, "expa", 8, 0.012, 0.0199, 0.1, 0.2),
    ("vbpr", 20, "expa", 32, 0.05, 0.019, 0.4, 0.005),
    ("vbpr", 20, "csema", None, 0.011, 0.02, 0.05, 0.5),
    ("vbpr", 20, "fgsm", 8, 0.013, 0.0199, 0.02, 0.3),
    ("dvbpr", 20, "insa", 8, 0.04, 0.029, 0.8, 0.02),
    ("dvbpr", 20, "insa", 32, 0.70, 0.02, 5.5, 1e-5),
    ("dvbpr", 20, "expa", 8, 0.003, 0.03, -0.2, 0.9),
    ("dvbpr", 20, "expa", 32, 0.06, 0.028, 0.6, 0.009),
    ("dvbpr", 10, "insa", 8, 0.2, 0.024, 1.0, 0.001),
    ("dvbpr", 10, "insa", 32, 0.9, 0.02, 6.0, 1e-6),
]
# Defended trials of INSA ε=32: model, family, level, adversarial, cooperative, ordinary HR@5
# (undefended ordinary HR@5 is BASE's), p-value. Logged in shuffled level order.
DEFENDED = [
    ("vbpr", "jpeg", 10, 0.001, 0.003, 0.005, 0.5),
    ("vbpr", "jpeg", 50, 0.009, 0.008, 0.015, 0.6),  # 0.009 > its coop 0.008, not significant
    ("vbpr", "jpeg", 90, 0.45, 0.01, 0.019, 1e-6),
    # weakest defended (AIP's rule): first with adversarial ≤ cooperative (cost -0.008)
    ("vbpr", "jpeg", 30, 0.005, 0.007, 0.012, 0.4),
    # not defended: p = 0.03 ≥ 0.01, but the adversarial item is still above the cooperative one
    ("vbpr", "jpeg", 70, 0.05, 0.01, 0.018, 0.03),
    ("vbpr", "bitdepth", 2, 0.0, 0.005, 0.004, 0.2),
    ("vbpr", "bitdepth", 6, 0.3, 0.01, 0.02, 1e-4),
    # significant, but the adversarial item is pushed below the cooperative one: 4 bits
    ("vbpr", "bitdepth", 4, 0.004, 0.01, 0.017, 0.001),
    ("dvbpr", "jpeg", 90, 0.6, 0.002, 0.03, 1e-5),
    ("dvbpr", "jpeg", 50, 0.3, 0.002, 0.025, 0.001),  # significant lift at every level: none
]
LEVEL_KEY = {"jpeg": "quality", "bitdepth": "bits"}


def _metrics(
    coop: float,
    adv: float,
    ordinary: float,
    attacked: float,
    undefended: float,
    shift: float,
    p: float,
) -> dict[str, float]:
    out = {"prediction_shift": shift, "p_value_hr_at_5": p, "linf_255_max": 8.0, "n_items": 5.0}
    for k in (5, 10, 20):
        out |= {
            f"cooperative/hr_at_{k}": coop,
            f"adversarial/hr_at_{k}": adv,
            f"ordinary/hr_at_{k}": ordinary,
            f"ordinary_attacked/hr_at_{k}": attacked,
            f"ordinary_undefended/hr_at_{k}": undefended,
            f"random/hr_at_{k}": 0.05,
        }
    return out


def _child(client, exp_id, parent, params, metrics, status="FINISHED", files=()):
    key = "/".join(str(v) for v in params.values())
    run = client.create_run(
        exp_id,
        run_name=key,
        tags={
            "mlflow.parentRunId": parent,
            "aipray.role": "trial",
            "aipray.trial_key": key,
            "aipray.sweep": SWEEP,
        },
    )
    rid = run.info.run_id
    client.log_batch(
        rid,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    for path in files:
        client.log_artifact(rid, str(path))
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid


def _artifacts(folder: Path, attack: str, seed: int, size=8, items=(3, 7)) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    clean = rng.integers(0, 256, (len(items), 3, size, size), dtype=np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    np.savez(
        folder / "examples.npz",
        clean=clean,
        adversarial=adv,
        defended=adv,
        item_ids=np.array(items),
    )
    emb = {
        "reference": rng.normal(size=(40, 4)).astype(np.float32),
        "reference_category": np.repeat(np.arange(-1, 4), 8),
        "clean": rng.normal(size=(5, 4)).astype(np.float32),
        "adversarial": rng.normal(size=(5, 4)).astype(np.float32),
    }
    if attack == "expa":
        emb["hook"] = rng.normal(size=4).astype(np.float32)
    np.savez(folder / "embeddings.npz", **emb)
    (folder / "metrics.json").write_text(json.dumps({}))
    return [folder / "examples.npz", folder / "embeddings.npz", folder / "metrics.json"]


def _params(model, dim, attack, eps, defense="none", **extra):
    params = {
        "dataset": "synthetic",
        "model": model,
        "attack": attack,
        "eps": "none" if eps is None else eps,
        "defense": defense,
        "model.dim": dim,
        "first_stage.candidates": 98,  # random HR@5 = 5 / (98 + 2) = 0.05, as _metrics logs
    }
    return params | extra


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    for i, (model, dim, attack, eps, adv, attacked, shift, p) in enumerate(UNDEFENDED):
        coop, ordinary = BASE[(model, dim)]
        files = _artifacts(root / f"a{i}", attack, i)
        _child(
            client,
            exp_id,
            parent,
            _params(model, dim, attack, eps),
            _metrics(coop, adv, ordinary, attacked, ordinary, shift, p),
            files=files,
        )
    for model, family, level, adv, coop, ordinary, p in DEFENDED:
        undefended = BASE[(model, 20)][1]
        params = _params(
            model,
            20,
            "insa",
            32,
            f"{family}({LEVEL_KEY[family]}={level})",
            **{f"defense.{LEVEL_KEY[family]}": level},
        )
        _child(
            client,
            exp_id,
            parent,
            params,
            _metrics(coop, adv, ordinary, ordinary, undefended, 1.0, p),
        )
    # Must be ignored: a failed duplicate and a trial still running.
    _child(
        client,
        exp_id,
        parent,
        _params("vbpr", 20, "insa", 32, attack_config="x"),
        _metrics(0.01, 0.99, 0.02, 0.02, 0.02, 9.0, 0.0),
        status="FAILED",
    )
    _child(
        client,
        exp_id,
        parent,
        _params("dvbpr", 20, "csema", None),
        _metrics(0.002, 0.5, 0.03, 0.03, 0.03, 9.0, 0.0),
        status="RUNNING",
    )
    sweep_yaml = root / "tiny.yaml"
    sweep_yaml.write_text(
        yaml.safe_dump(
            {
                "name": SWEEP,
                "mlflow": {"tracking_uri": uri},
                "datasets": {"synthetic": {}},
                "models": {"vbpr": {}},
                "attacks": {"insa": {"eps": 8}},
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        # by experiment name: every finished run counts (the YAML would keep only the runs
        # of its current settings, see test_report_of_a_sweep_file_leaves_out_stale_runs)
        assert main([SWEEP, "--tracking-uri", uri]) == 0
    out = root / "reports" / SWEEP
    return {
        "root": root,
        "uri": uri,
        "client": client,
        "parent": parent,
        "out": out,
        "text": (out / "report.md").read_text(),
    }


def table(text: str, title: str, dataset: str = "synthetic") -> dict[str, dict[str, str]]:
    """The Markdown table under ``## <title>`` / ``### <dataset>`` as {row key: {column: cell}};
    the row key joins the label columns (those before the first numeric column) with ' / '."""
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"### {dataset}\n", 1)[1].strip().split("\n\n", 1)[0]
    lines = [line.strip("|").split(" | ") for line in block.splitlines() if line.startswith("|")]
    head = [h.strip() for h in lines[0]]
    n_labels = {
        "model": 1,
        "model attack": 2,
        "model ε": 2,
        "model ε_adv": 2,
        "model attack ε": 3,
        "model attack ε defence": 4,
    }
    k = max(n for key, n in n_labels.items() if " ".join(head[:n]) == key)
    out = {}
    for cells in lines[2:]:
        cells = [c.strip() for c in cells]
        out[" / ".join(cells[:k])] = dict(zip(head[k:], cells[k:], strict=True))
    return out


def test_table3_prediction_shift(store):
    t = table(store["text"], "Table 3")
    assert t[VBPR] == {
        "INSA ε=32": "+3.2500",
        "EXPA ε=32": "+0.4000",
        "c-SEMA": "+0.0500",
        "FGSM ε=8": "+0.0200",
    }
    assert t[f"{DVBPR} (K=10)"] == {
        "INSA ε=32": "+6.0000",
        "EXPA ε=32": "–",
        "c-SEMA": "–",
        "FGSM ε=8": "–",
    }
    assert t[f"{DVBPR} (K=20)"]["EXPA ε=32"] == "+0.6000"
    assert list(t) == [VBPR, f"{DVBPR} (K=10)", f"{DVBPR} (K=20)"]


def test_table4_hr_and_significance(store):
    t = table(store["text"], "Table 4")
    assert t[VBPR] == {
        "random": "0.0500",
        "cooperative": "0.0100",
        "ordinary": "0.0200",
        "INSA ε=32": "0.5000**",  # the FAILED run with 0.99 is ignored
        "INSA ε=32 ordinary": "0.0150",
        "EXPA ε=32": "0.0500**",  # p = 0.005
        "EXPA ε=32 ordinary": "0.0190",
        "c-SEMA": "0.0110",  # p = 0.5
        "c-SEMA ordinary": "0.0200",
        "FGSM ε=8": "0.0130",
        "FGSM ε=8 ordinary": "0.0199",
    }
    dv = t[f"{DVBPR} (K=20)"]
    assert (dv["cooperative"], dv["ordinary"]) == ("0.0020", "0.0300")
    assert (dv["INSA ε=32"], dv["EXPA ε=32"]) == ("0.7000**", "0.0600**")  # p = 0.009
    assert dv["c-SEMA"] == "–"  # only a RUNNING c-SEMA trial exists for DVBPR
    assert t[f"{DVBPR} (K=10)"]["EXPA ε=32"] == "–"
    marked = [c for row in t.values() for c in row.values() if c.endswith("**")]
    assert len(marked) == 5


def test_table4_with_chosen_eps(store):
    runs = load_runs(Source(store["uri"], SWEEP))
    frame = prepare(runs.frame)
    eps = choose_eps(frame, 8.0)
    assert eps["insa"] == 8.0 and math.isnan(eps["csema"])
    block = table4(frame, eps).blocks["synthetic"].set_index("model")
    assert block.loc[VBPR, "INSA ε=8"] == "0.3000**"  # p = 0.001
    assert block.loc[f"{DVBPR} (K=20)", "INSA ε=8"] == "0.0400"  # p = 0.02: not significant
    assert block.loc[f"{DVBPR} (K=20)", "EXPA ε=8"] == "0.0030"
    assert block.loc[VBPR, "c-SEMA"] == "0.0110"
    runs.close()


def test_table5_and_table6(store):
    t5 = table(store["text"], "Table 5")
    assert t5[VBPR]["INSA ε=32"] == "+0.4900"
    assert t5[f"{DVBPR} (K=10)"]["INSA ε=32"] == "+0.8960"
    assert t5[f"{DVBPR} (K=20)"]["EXPA ε=32"] == "+0.0580"
    assert t5[VBPR]["c-SEMA"] == "+0.0010"
    t6 = table(store["text"], "Table 6")
    coop = {"random": "0.0500", "cooperative": "0.0100"}
    assert t6[f"{VBPR} / INSA"] == coop | {"ε=8": "0.3000", "ε=32": "0.5000"}
    assert t6[f"{VBPR} / EXPA"] == coop | {"ε=8": "0.0120", "ε=32": "0.0500"}
    assert t6[f"{DVBPR} (K=10) / INSA"] == {
        "random": "0.0500",
        "cooperative": "0.0040",
        "ε=8": "0.2000",
        "ε=32": "0.9000",
    }
    assert t6[f"{VBPR} / FGSM"] == coop | {"ε=8": "0.0130", "ε=32": "–"}
    assert f"{VBPR} / c-SEMA" not in t6


def test_table7_classifier_attack(store):
    t7 = table(store["text"], "Table 7")
    assert list(t7) == [f"{VBPR} / 8"]
    assert t7[f"{VBPR} / 8"] == {
        "INSA ΔHR@5": "+0.2900",
        "FGSM ΔHR@5": "+0.0030",
        "INSA Δordinary": "-0.0020",
        "FGSM Δordinary": "-0.0001",
    }


def test_table8_weakest_defended_level(store):
    t8 = table(store["text"], "Table 8")
    jpeg = t8[f"{VBPR} / INSA / 32 / JPEG quality"]
    assert jpeg == {
        # not 70, whose lift is not significant (p = 0.03) but still above the cooperative
        # level, nor 50 (0.009 > 0.008): AIP's rule compares HR@5, the p-value stands beside
        "weakest defending level": "30",
        "adversarial HR@5": "0.0050",
        "cooperative HR@5": "0.0070",
        "random HR@5": "0.0500",
        "p": "0.4",
        "p < 0.01": "no",
        "ordinary cost": "-0.0080",
        "levels tried": "90, 70, 50, 30, 10",
    }
    bits = t8[f"{VBPR} / INSA / 32 / bit depth"]
    assert bits["weakest defending level"] == "4"  # p = 0.001 but adversarial < cooperative
    assert (bits["p"], bits["p < 0.01"], bits["ordinary cost"], bits["levels tried"]) == (
        "0.001",
        "yes",
        "-0.0030",
        "6, 4, 2",
    )
    dvbpr = t8[f"{DVBPR} (K=20) / INSA / 32 / JPEG quality"]
    assert dvbpr["weakest defending level"] == "none" and dvbpr["ordinary cost"] == "–"
    assert dvbpr["p"] == "–" and dvbpr["p < 0.01"] == "–" and dvbpr["levels tried"] == "90, 50"
    assert len(t8) == 3  # DVBPR has no bit-depth trial
    caption = store["text"].split("## Table 8", 1)[1].split("###", 1)[0]
    assert "AIP's rule" in caption and "at most the mean cooperative HR@5" in caption
    assert "paired t-test" in caption


def test_aip_table8_rule_ignores_the_p_value():
    from aipray.report.defences import defended, weakest_level

    # AIP's Table 8: defended iff adversarial HR@5 ≤ mean cooperative HR@5, whatever p says
    assert not defended(0.05, 0.01)  # (p = 0.3 would call this "not significant")
    assert defended(0.004, 0.01) and defended(0.01, 0.01)  # (even with p = 1e-6)
    assert not defended(math.nan, 0.01) and not defended(0.0, math.nan)
    import pandas as pd

    rows = pd.DataFrame(
        {
            "level": [90.0, 70.0, 50.0],
            "adversarial/hr_at_5": [0.30, 0.02, 0.004],
            "cooperative/hr_at_5": [0.01, 0.01, 0.01],
            "random/hr_at_5": [0.05, 0.05, 0.05],
            "cost_hr_at_5": [0.0, -0.001, -0.002],
            "p_value_hr_at_5": [1e-6, 0.5, 1e-4],  # 70: p ≥ 0.01 but 0.02 > 0.01
        }
    )
    level, stats, tried = weakest_level(rows)
    assert level == 50.0 and tried == [90.0, 70.0, 50.0]
    assert stats["p"] == pytest.approx(1e-4)  # significant, and defended: pushed below


# Robustness table: INSA ε=8 on VBPR, each defence against the oblivious and adaptive attack:
# defence, adaptive, adversarial HR@5, cooperative HR@5, ordinary HR@5 (undefended: 0.02), p.
ROBUSTNESS = [
    ("none", False, 0.30, 0.01, 0.02, 0.001),
    ("jpeg(quality=50)", False, 0.008, 0.009, 0.017, 0.6),  # holds: 0.008 ≤ 0.009
    ("jpeg(quality=50)", True, 0.25, 0.009, 0.017, 1e-4),  # broken through BPDA
    ("bitdepth(bits=3)", False, 0.012, 0.01, 0.019, 0.4),  # p ≥ 0.01 but above: does not hold
    ("bitdepth(bits=3)", True, 0.01, 0.01, 0.019, 1.0),  # equal: holds
    ("denoiser(train_eps=16)", True, 0.2, 0.008, 0.018, 1e-5),  # no oblivious trial
]


def test_robustness_table_oblivious_and_adaptive(tmp_path):
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    for defense, adaptive, adv, coop, ordinary, p in ROBUSTNESS:
        extra = {"attack.adaptive": adaptive}
        params = _params("vbpr", 20, "insa", 8, defense, **extra)
        _child(client, exp_id, parent, params, _metrics(coop, adv, ordinary, ordinary, 0.02, 1, p))
    # an attack without an adaptive run stays out of the table
    params = _params("vbpr", 20, "expa", 8, "jpeg(quality=50)", **{"attack.adaptive": False})
    _child(client, exp_id, parent, params, _metrics(0.009, 0.5, 0.017, 0.017, 0.02, 1, 0.01))
    out = tmp_path / "report"
    assert main([SWEEP, "--tracking-uri", uri, "--out", str(out)]) == 0
    t = table((out / "report.md").read_text(), "Robustness: oblivious and adaptive attacks")
    assert list(t) == [  # no defence first, then by name
        f"{VBPR} / INSA / 8 / none",
        f"{VBPR} / INSA / 8 / bitdepth(bits=3)",
        f"{VBPR} / INSA / 8 / denoiser(train_eps=16)",
        f"{VBPR} / INSA / 8 / jpeg(quality=50)",
    ]
    # against no defence the adaptive attack is the oblivious one; nothing there to hold
    assert t[f"{VBPR} / INSA / 8 / none"] == {
        "cooperative HR@5": "0.0100",
        "oblivious HR@5": "0.3000",
        "oblivious p": "0.001",
        "holds vs oblivious": "–",
        "adaptive HR@5": "0.3000",
        "adaptive p": "0.001",
        "holds vs adaptive": "–",
        "ordinary cost": "+0.0000",
        "adaptive BPDA": "–",
    }
    assert t[f"{VBPR} / INSA / 8 / jpeg(quality=50)"] == {
        "cooperative HR@5": "0.0090",
        "oblivious HR@5": "0.0080",
        "oblivious p": "0.6",
        "holds vs oblivious": "yes",
        "adaptive HR@5": "0.2500",
        "adaptive p": "0.0001",
        "holds vs adaptive": "no",
        "ordinary cost": "-0.0030",  # 0.017 − 0.02
        "adaptive BPDA": "identity",
    }
    bits = t[f"{VBPR} / INSA / 8 / bitdepth(bits=3)"]
    assert (bits["holds vs oblivious"], bits["holds vs adaptive"]) == ("no", "yes")
    assert bits["ordinary cost"] == "-0.0010"
    denoiser = t[f"{VBPR} / INSA / 8 / denoiser(train_eps=16)"]
    assert (denoiser["oblivious HR@5"], denoiser["oblivious p"]) == ("–", "–")
    assert denoiser["holds vs oblivious"] == "–" and denoiser["holds vs adaptive"] == "no"
    assert denoiser["adaptive BPDA"] == "–"  # an exact gradient: no BPDA
    assert (denoiser["cooperative HR@5"], denoiser["ordinary cost"]) == ("0.0080", "-0.0020")
    # the CSV holds the numbers, and goes to the sweep's parent run with the other tables
    csv = pd.read_csv(out / "tables" / "robustness.csv")
    jpeg = csv[csv["defence"] == "jpeg(quality=50)"].iloc[0]
    assert jpeg["adaptive HR@5"] == pytest.approx(0.25) and jpeg["adaptive p"] == pytest.approx(
        1e-4
    )
    assert jpeg["holds vs oblivious"] and not jpeg["holds vs adaptive"]
    assert set(csv["attack"]) == {"INSA"}
    logged = {a.path for a in client.list_artifacts(parent, "report/tables")}
    assert "report/tables/robustness.csv" in logged


def test_random_level_is_the_protocols():
    import torch

    from aipray.metrics.ranking import random_hit_rate
    from aipray.report.common import random_level

    # C = 100 candidates + the ordinary test item + the cold item: 102 items, 5 of them in the top 5
    assert random_level(5, 100) == pytest.approx(5 / 102)
    assert random_level(10, 1000) == pytest.approx(10 / 1002)
    # the protocol's set sizes count the fixed items (C candidates and the test item)
    assert random_hit_rate(torch.tensor([101]))[5] == pytest.approx(random_level(5, 100))


def test_hr_tables_state_their_magnitudes(store):
    for title in ("Table 4", "Table 6", "Table 8"):
        section = store["text"].split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        assert (
            "Magnitudes: C = 98 candidates per user; random HR@5 = 5/(C+2) = 0.0500; "
            "logged random HR@5 0.0500; cooperative HR@5 0.0020–0.0100." in section
        )


def test_csv_tables(store):
    import pandas as pd

    tables = store["out"] / "tables"
    t4 = pd.read_csv(tables / "table4_hr_at_5.csv")
    row = t4[t4["model"] == VBPR].iloc[0]
    assert row["INSA ε=32"] == pytest.approx(0.5) and row["INSA ε=32 p"] == pytest.approx(1e-4)
    assert math.isnan(t4[t4["model"] == f"{DVBPR} (K=20)"].iloc[0]["c-SEMA"])
    assert {p.name for p in tables.glob("*.csv")} == {
        "first_stage_and_rankers.csv",
        "table3_prediction_shift.csv",
        "table4_hr_at_5.csv",
        "table5_delta_hr_at_5.csv",
        "table6_hr_at_5_vs_eps.csv",
        "table7_classifier_attacks.csv",
        "table8_defense_levels.csv",
    }


def test_figures_written_and_linked(store):
    figures = store["out"] / "figures"
    names = {p.name for p in figures.glob("*.png")}
    for kind in ("examples", "hr_vs_eps", "embedding_map"):
        assert {f"{kind}_synthetic_vbpr.png", f"{kind}_synthetic_dvbpr-k-20.png"} <= names
    assert {
        "hr_vs_dim_synthetic.png",
        "defense_jpeg_synthetic_vbpr.png",
        "defense_bitdepth_synthetic_vbpr.png",
        "defense_jpeg_synthetic_dvbpr-k-20.png",
    } <= names
    assert "defense_bitdepth_synthetic_dvbpr-k-20.png" not in names
    for path in figures.glob("*.png"):
        assert path.stat().st_size > 5000
        with Image.open(path) as im:
            assert im.width >= 150 and im.height >= 150
            assert len(set(im.convert("L").getdata())) > 10  # more than a blank canvas
        assert f"](figures/{path.name})" in store["text"]
    for section in (
        "Example images",
        "HR@5 vs ε",
        "HR@5 vs embedding length",
        "Embedding maps",
        "Defence curves",
    ):
        assert store["text"].count(f"\n### {section}\n") == 1


def test_header_and_ignored_runs(store):
    text = store["text"]
    assert text.startswith(f"# Adversarial item promotion report: {SWEEP}")
    assert "22 finished trial runs reported; 2 unfinished or failed ignored" in text
    assert "ε of the tables that fix one: INSA 32, EXPA 32, FGSM 8\n" in text
    assert "defences: none, bitdepth (3 levels), jpeg (5 levels)\n" in text


def test_report_logged_to_parent_run(store):
    client = store["client"]
    logged = {a.path for a in client.list_artifacts(store["parent"], "report")}
    assert {"report/report.md", "report/tables", "report/figures"} <= logged
    figs = client.list_artifacts(store["parent"], "report/figures")
    assert len(figs) == len(list((store["out"] / "figures").glob("*.png")))


def test_unknown_experiment_and_sweep(store, tmp_path, capsys):
    assert main(["nope", "--tracking-uri", store["uri"], "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: experiment 'nope' not found")
        and "tiny" in err.split("known experiments:")[1]
    )
    assert "\n" not in err
    other = tmp_path / "other.yaml"
    other.write_text(
        yaml.safe_dump(
            {
                "name": "other",
                "mlflow": {"tracking_uri": store["uri"]},
                "datasets": {"synthetic": {}},
                "models": {"vbpr": {}},
                "attacks": {"insa": {"eps": 8}},
            }
        )
    )
    assert main([str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: experiment 'other' not found") and "\n" not in err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep file:") and "does not exist" in err
    assert not (tmp_path / "r").exists()


def test_report_of_a_sweep_file_leaves_out_stale_runs(tmp_path, monkeypatch):
    """Runs made with earlier settings of the same sweep stay in MLflow but not in the report."""
    from aipray.config import load_sweep
    from aipray.pipeline.stages import stage_paths, trial_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_yaml = tmp_path / "stale.yaml"
    sweep_yaml.write_text(
        yaml.safe_dump(
            {
                "name": "stale",
                "mlflow": {"tracking_uri": uri},
                "datasets": {"synthetic": {}},
                "models": {"vbpr": {}},
                "attacks": {"insa": {"eps": 8}},
            }
        )
    )
    sweep = load_sweep(sweep_yaml)
    (current,) = [trial_key(stage_paths(sweep, t)) for t in sweep.trials()]
    client = MlflowClient(uri)
    exp_id = client.create_experiment("stale", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(
        exp_id, tags={"aipray.role": "sweep", "aipray.sweep": "stale"}
    ).info.run_id
    for key, adv in ((current, 0.4), ("an-older-setting", 0.9)):
        run = client.create_run(
            exp_id,
            run_name="synthetic/vbpr(dim=100)/insa/eps=8/none",
            tags={"mlflow.parentRunId": parent, "aipray.role": "trial", "aipray.trial_key": key},
        )
        params = _params("vbpr", 100, "insa", 8)
        client.log_batch(
            run.info.run_id,
            metrics=[
                Metric(k, float(v), 0, 0)
                for k, v in _metrics(0.01, adv, 0.2, 0.2, 0.2, 1.0, 0.001).items()
            ],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    monkeypatch.chdir(tmp_path)
    assert main([str(sweep_yaml), "--no-log"]) == 0
    text = (tmp_path / "reports" / "stale" / "report.md").read_text()
    assert "1 finished trial runs reported" in text
    assert "1 runs of earlier settings left out" in text
    assert "0.4000**" in text and "0.9000" not in text


# --- model settings in labels, first-stage health, AMR's ε, examples on a second dataset ---------
RANDOM_HR = 10 / 101
# dataset → first stage: validation HR@10, full HR@10, popularity full HR@10, test in top-C,
# test in popularity's top-C
FIRST_STAGE = {
    "synthetic": (0.5, 0.2, 0.1, 0.8, 0.6),
    "synthetic_large": (0.12, 0.05, 0.06, 0.4, 0.3),
}
# dataset, model, model settings, attack, eps, cooperative HR@5, adversarial HR@5, p, ranker
# validation HR@10 (None: not logged)
VARIANTS = [
    ("synthetic", "vbpr", {"dim": 20, "visual_bias": False}, "insa", 8, 0.01, 0.3, 1e-4, 0.40),
    ("synthetic", "vbpr", {"dim": 20, "visual_bias": True}, "insa", 8, 0.012, 0.35, 1e-4, 0.42),
    ("synthetic", "vbpr", {"dim": 50, "visual_bias": False}, "insa", 8, 0.011, 0.32, 1e-4, 0.45),
    ("synthetic_large", "vbpr", {"dim": 20}, "insa", 8, 0.02, 0.2, 1e-3, 0.3),
    ("synthetic_large", "vbpr", {"dim": 20}, "csema", None, 0.02, 0.03, 0.4, 0.3),
    (
        "synthetic_large",
        "amr",
        {"dim": 20, "adv_eps_relative": 0.5},
        "insa",
        8,
        0.02,
        0.1,
        1e-3,
        None,
    ),
]
# AMR on "synthetic": adversarial-training ε → (cooperative, {INSA ε: (adversarial HR@5, p)})
AMR_CURVE = {
    0.1: (0.01, {4: (0.2, 1e-4), 16: (0.6, 1e-5)}),
    0.5: (0.011, {4: (0.1, 1e-3), 16: (0.4, 1e-4)}),
    1.0: (0.012, {4: (0.05, 0.2), 16: (0.2, 1e-3)}),
}
for _rel, (_coop, _points) in AMR_CURVE.items():
    for _eps, (_adv, _p) in _points.items():
        _settings = {"dim": 20, "visual_bias": False, "adv_eps_relative": _rel, "adv_weight": 1.0}
        VARIANTS.append(
            ("synthetic", "amr", _settings, "insa", _eps, _coop, _adv, _p, 0.4 - _rel / 10)
        )


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("variants", artifact_location=(root / "a").as_uri())
    parent = client.create_run(
        exp_id, tags={"aipray.role": "sweep", "aipray.sweep": "variants"}
    ).info.run_id
    for i, (ds, model, settings, attack, eps, coop, adv, p, ranker) in enumerate(VARIANTS):
        params = {
            "dataset": ds,
            "model": model,
            "attack": attack,
            "eps": "none" if eps is None else eps,
            "defense": "none",
        } | {f"model.{k}": v for k, v in settings.items()}
        val, full, pop, top, pop_top = FIRST_STAGE[ds]
        metrics = _metrics(coop, adv, 0.02, 0.02, 0.02, 1.0, p) | {
            "first_stage/val_hr_at_10": val,
            "first_stage/val_random_hr_at_10": RANDOM_HR,
            "first_stage/full_hr_at_10": full,
            "first_stage/full_popularity_hr_at_10": pop,
            "first_stage/test_in_top_c": top,
            "first_stage/popularity_test_in_top_c": pop_top,
        }
        if ranker is not None:
            metrics["ranker/val_hr_at_10"] = ranker
        files = ()
        if ds == "synthetic_large" and model == "vbpr":
            # larger images; c-SEMA's examples show other cold items than INSA's
            items = (11, 12) if attack == "csema" else (3, 7)
            files = _artifacts(root / f"v{i}", attack, i, size=32, items=items)
        _child(client, exp_id, parent, params, metrics, files=files)
    out = root / "report"
    assert main(["variants", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    return {"out": out, "text": (out / "report.md").read_text()}


def test_setting_text_and_row_label():
    assert setting_text("dim", "20") == "K=20"
    assert (
        setting_text("visual_bias", "True") == "β′" and setting_text("visual_bias", "False") == ""
    )
    assert setting_text("adv_eps_relative", "0.25") == "ε_adv=0.25·mean‖f‖"
    assert setting_text("lr", "0.001") == "lr=0.001" and setting_text("dim", None) == ""
    parts = (("dim", "K=20"), ("visual_bias", "β′"))
    assert row_label("VBPR", parts) == "VBPR (K=20, β′)"
    assert row_label("VBPR", parts, drop=["dim"]) == "VBPR (β′)"
    assert row_label("VBPR", (("dim", "K=20"), ("visual_bias", ""))) == "VBPR (K=20)"


def test_labels_show_every_varying_setting(variants):
    t = table(variants["text"], "First stage and rankers")
    assert list(t) == [
        "first stage (BPR)",
        f"{VBPR} (K=20)",
        f"{VBPR} (K=20, β′)",
        f"{VBPR} (K=50)",
        f"{AMR} (ε_adv=0.1·mean‖f‖)",
        f"{AMR} (ε_adv=0.5·mean‖f‖)",
        f"{AMR} (ε_adv=1·mean‖f‖)",
    ]
    # on the other dataset nothing varies within a model: bare names
    assert list(table(variants["text"], "First stage and rankers", "synthetic_large")) == [
        "first stage (BPR)",
        VBPR,
        AMR,
    ]
    t4 = table(variants["text"], "Table 4")
    assert t4[f"{VBPR} (K=20, β′)"]["INSA ε=16"] == "–"
    assert t4[f"{VBPR} (K=20, β′)"]["INSA ε=16 ordinary"] == "–"
    assert t4[f"{AMR} (ε_adv=1·mean‖f‖)"]["INSA ε=16"] == "0.2000**"


def test_first_stage_table_first_with_warning(variants, store):
    text = variants["text"]
    assert text.split("\n## ", 2)[1].startswith("First stage and rankers")
    t = table(text, "First stage and rankers")
    assert t["first stage (BPR)"] == {
        "val HR@10": "0.5000",
        "random val HR@10": "0.0990",
        "full HR@10": "0.2000",
        "popularity full HR@10": "0.1000",
        "test in top-C": "0.8000",
        "popularity test in top-C": "0.6000",
    }
    assert t[f"{VBPR} (K=50)"]["val HR@10"] == "0.4500"
    assert t[f"{VBPR} (K=50)"]["full HR@10"] == "–"  # not logged by these runs
    assert t[f"{VBPR} (K=50)"]["test in top-C"] == ""  # the first stage's column only
    assert t[f"{AMR} (ε_adv=0.5·mean‖f‖)"]["val HR@10"] == "0.3500"
    large = table(text, "First stage and rankers", "synthetic_large")
    assert large["first stage (BPR)"]["val HR@10"] == "0.1200"
    assert large[AMR]["val HR@10"] == "–"  # not logged: no training
    section = text.split("## First stage and rankers", 1)[1].split("\n## ", 1)[0]
    by_dataset = dict(b.split("\n", 1) for b in section.split("### ")[1:])
    # 0.12 < 1.5 × 10/101, 0.5 is not
    assert "within 1.5× of a random" in by_dataset["synthetic_large"]
    assert "Warning" not in by_dataset["synthetic"]
    # older runs log none of it
    old = table(store["text"], "First stage and rankers")
    assert set(old["first stage (BPR)"].values()) == {"–"}
    assert old[VBPR]["val HR@10"] == "–" and "Warning" not in store["text"]


def test_hr_vs_adv_eps(variants):
    figures = variants["out"] / "figures"
    path = figures / "hr_vs_adv_eps_synthetic.png"
    assert path.is_file() and f"](figures/{path.name})" in variants["text"]
    with Image.open(path) as im:
        assert len(set(im.convert("L").getdata())) > 10
    # one ε_adv only on the larger dataset: no curve
    assert not (figures / "hr_vs_adv_eps_synthetic_large.png").exists()
    title = f"HR@5 under INSA vs {AMR}'s ε"
    t = table(variants["text"], title)
    assert t[f"{AMR} / 0.1·mean‖f‖"] == {
        "random": "0.0500",
        "cooperative": "0.0100",
        "INSA ε=4": "0.2000**",
        "INSA ε=16": "0.6000**",
    }
    assert t[f"{AMR} / 1·mean‖f‖"] == {
        "random": "0.0500",
        "cooperative": "0.0120",
        "INSA ε=4": "0.0500",
        "INSA ε=16": "0.2000**",
    }
    assert list(t) == [f"{AMR} / 0.1·mean‖f‖", f"{AMR} / 0.5·mean‖f‖", f"{AMR} / 1·mean‖f‖"]
    section = variants["text"].split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    assert "### synthetic_large" not in section
    assert (figures / "hr_vs_dim_synthetic.png").is_file()  # VBPR at K = 20 and 50


def test_examples_of_every_attack_per_dataset(variants):
    path = variants["out"] / "figures" / "examples_synthetic_large_vbpr.png"
    assert path.is_file()
    with Image.open(path) as im:
        assert im.height == 360  # two rows: INSA and c-SEMA (no ε), 1.8 in at 100 dpi each
        assert len(set(im.convert("L").getdata())) > 10
    assert "examples_synthetic_large_vbpr.png" in variants["text"]


def test_datasets_with_different_settings_get_different_labels():
    import pandas as pd

    from aipray.report.runs import distinguish_datasets

    frame = pd.DataFrame(
        {
            "dataset": ["synthetic", "synthetic", "synthetic", "amazon_men"],
            "dataset.image_size": ["32", "64", "32", "224"],
            "dataset.n_users": ["1200", "1200", "1200", None],
        }
    )
    out = distinguish_datasets(frame)
    assert list(out["dataset"]) == [
        "synthetic (image_size=32)",
        "synthetic (image_size=64)",
        "synthetic (image_size=32)",
        "amazon_men",
    ]
    assert frame["dataset"].iloc[0] == "synthetic"  # the input is left as it was


def test_amr_eps_labels_name_their_unit():
    import pandas as pd

    from aipray.report.tables import adv_eps_trials, table_adv_eps

    runs = []
    for unit, value, relative, adv in (
        ("max_abs", "0.1", "None", 0.3),  # AMR's own scaling
        ("max_abs", "0.5", "None", 0.1),
        ("max_abs", "None", "None", 0.3),  # null: the unit's default, 0.1
        ("relative_norm", "None", "0.05", 0.2),  # the earlier spelling
        (None, None, "0.2", 0.15),  # a run from before adv_eps_unit existed
    ):
        runs.append(
            {
                "dataset": "synthetic",
                "model": "amr",
                "attack": "insa",
                "eps": 8.0,
                "family": "none",
                "model.adv_eps": value,
                "model.adv_eps_unit": unit,
                "model.adv_eps_relative": relative,
                "adversarial/hr_at_5": adv,
                "cooperative/hr_at_5": 0.01,
                "random/hr_at_5": 0.05,
                "p_value_hr_at_5": 1e-3,
                "ordinary/hr_at_5": 0.2,
                "ordinary_attacked/hr_at_5": 0.2,
                "ordinary_undefended/hr_at_5": 0.2,
            }
        )
    frame = prepare(pd.DataFrame(runs))
    assert list(frame["row"]) == [
        f"{AMR} (ε_adv=0.1·max|f|)",
        f"{AMR} (ε_adv=0.5·max|f|)",
        f"{AMR} (ε_adv=0.1·max|f|)",
        f"{AMR} (ε_adv=0.05·mean‖f‖)",
        f"{AMR} (ε_adv=0.2·mean‖f‖)",
    ]
    trials = adv_eps_trials(frame)
    assert set(trials["series"]) == {
        f"{AMR} [ε_adv in max|f|]",
        f"{AMR} [ε_adv in mean‖f‖]",
    }
    t = table_adv_eps(frame)
    block = t.blocks["synthetic"]
    assert list(block["ε_adv"]) == ["0.05·mean‖f‖", "0.2·mean‖f‖", "0.1·max|f|", "0.5·max|f|"]
    assert "global max |f| (AMR's code)" in t.note and "mean feature norm" in t.note


def test_collusion_table_per_group_size(tmp_path):
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    metrics = _metrics(0.01, 0.3, 0.02, 0.017, 0.02, 1, 0.001)
    for k, together in ((2, 0.25), (5, 0.12)):
        at = f"collusion/k{k}"
        metrics |= {
            f"{at}/groups": 10 // k,
            f"{at}/adversarial/hr_at_5": together,
            f"{at}/alone/hr_at_5": 0.3,
            f"{at}/crowding_at_5": together / 0.3,
            f"{at}/merchant/hr_at_5": 0.5,
            f"{at}/cooperative/hr_at_5": 0.01,
            f"{at}/merchant_cooperative/hr_at_5": 0.02 * k,
            f"{at}/ordinary/hr_at_5": 0.015,
            f"{at}/random/hr_at_5": 0.05,
            f"{at}/random_merchant/hr_at_5": 0.1,
        }
    _child(client, exp_id, parent, _params("vbpr", 20, "insa", 8), metrics)
    # a trial without colluding groups has no row
    _child(
        client,
        exp_id,
        parent,
        _params("vbpr", 20, "expa", 8),
        _metrics(0.01, 0.2, 0.02, 0.017, 0.02, 1, 0.01),
    )
    out = tmp_path / "report"
    assert main([SWEEP, "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    assert "## Colluding merchants: k adversarial items at once" in (out / "report.md").read_text()
    csv = pd.read_csv(out / "tables" / "collusion.csv")
    assert csv["k"].tolist() == [2, 5] and set(csv["attack"]) == {"INSA"}
    assert csv["items HR@5"].tolist() == pytest.approx([0.25, 0.12])
    assert csv["crowding"].tolist() == pytest.approx([0.25 / 0.3, 0.12 / 0.3])
    assert csv["merchant cooperative HR@5"].tolist() == pytest.approx([0.04, 0.1])


def test_robustness_shows_the_stronger_bpda_gradient(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    for extra, adv, p in (
        ({"attack.adaptive": False}, 0.008, 0.6),
        ({"attack.adaptive": True}, 0.25, 1e-4),
        ({"attack.adaptive": True, "attack.bpda": "approximation"}, 0.31, 1e-6),
    ):
        params = _params("vbpr", 20, "insa", 8, "jpeg(quality=50)", **extra)
        _child(client, exp_id, parent, params, _metrics(0.009, adv, 0.017, 0.017, 0.02, 1, p))
    out = tmp_path / "report"
    assert main([SWEEP, "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    t = table((out / "report.md").read_text(), "Robustness: oblivious and adaptive attacks")
    cell = t[f"{VBPR} / INSA / 8 / jpeg(quality=50)"]
    assert (cell["adaptive HR@5"], cell["adaptive p"]) == ("0.3100", "1e-06")
    assert cell["adaptive BPDA"] == "approximation"


def test_transfer_matrix_source_by_target(tmp_path, capsys):
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    # target, source (None: direct), adversarial HR@5, full-ranking HR@50
    insa = [
        ("vbpr", None, 0.30, 0.40),
        ("dvbpr", None, 0.70, 0.80),
        ("vbpr", "dvbpr", 0.05, 0.10),
        ("dvbpr", "vbpr", 0.02, 0.03),
    ]
    for target, source, adv, full in insa:
        extra = {"source": source or target, "attack.source": source}
        metrics = _metrics(0.01, adv, 0.02, 0.02, 0.02, 1, 0.01)
        metrics |= {"full_ranking/adversarial/hr_at_50": full}
        metrics |= {"full_ranking/cooperative/hr_at_50": 0.05}
        _child(client, exp_id, parent, _params(target, 20, "insa", 8, **extra), metrics)
    for target in ("vbpr", "dvbpr"):  # PGD: the classifier's images on both
        metrics = _metrics(0.01, 0.02 if target == "vbpr" else 0.04, 0.02, 0.02, 0.02, 1, 0.5)
        _child(client, exp_id, parent, _params(target, 20, "pgd", 8, source="classifier"), metrics)
    out = tmp_path / "report"
    args = [SWEEP, "--tracking-uri", uri, "--out", str(out), "--no-log", "--show", "transfer"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "## Transfer: source × target" in printed
    text = (out / "report.md").read_text()
    section = text.split("## Transfer: source × target", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip("|").split(" | ") for line in section.splitlines() if line[:1] == "|"]
    cells = {tuple(c.strip() for c in line[:4]): [c.strip() for c in line[4:]] for line in lines}
    assert [c.strip() for c in lines[0][4:]] == [VBPR, DVBPR]  # targets, in row order
    assert cells[("INSA", "8", "none", VBPR)] == ["0.3000 (0.4000)", "0.0200 (0.0300)"]
    assert cells[("INSA", "8", "none", DVBPR)] == ["0.0500 (0.1000)", "0.7000 (0.8000)"]
    assert cells[("INSA", "8", "none", "cooperative (clean)")] == [
        "0.0100 (0.0500)",
        "0.0100 (0.0500)",
    ]
    assert cells[("PGD", "8", "none", "extractor's classifier")] == ["0.0200", "0.0400"]
    # the other tables show only direct trials: Table 4's INSA is the diagonal
    t4 = table(text, "Table 4")
    assert (t4[VBPR]["INSA ε=8"], t4[DVBPR]["INSA ε=8"]) == ("0.3000", "0.7000")
    csv = pd.read_csv(out / "tables" / "transfer.csv")
    diagonal = csv[csv["direct"]]
    assert sorted(diagonal["hr_at_5"]) == pytest.approx([0.3, 0.7])


def test_transfer_matrix_has_a_row_per_ensemble_beside_the_single_models(tmp_path):
    """An ensemble source (``dvbpr+vbpr``, as the sweep logs it) is a row below the single
    models', its models' row labels joined by +, with a cell on each target it ran on."""
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    alexrank = model_name("alexrank")
    # target, source (None: direct), adversarial HR@5
    insa = [
        ("vbpr", None, 0.30),
        ("dvbpr", None, 0.70),
        ("alexrank", None, 0.20),
        ("alexrank", "vbpr", 0.03),
        ("alexrank", "dvbpr+vbpr", 0.09),
    ]
    for target, source, adv in insa:
        extra = {"source": source or target, "attack.source": source}
        metrics = _metrics(0.01, adv, 0.02, 0.02, 0.02, 1, 0.01)
        _child(client, exp_id, parent, _params(target, 20, "insa", 32, **extra), metrics)
    out = tmp_path / "report"
    assert main([SWEEP, "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    text = (out / "report.md").read_text()
    section = text.split("## Transfer: source × target", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip("|").split(" | ") for line in section.splitlines() if line[:1] == "|"]
    cells = {line[3].strip(): [c.strip() for c in line[4:]] for line in lines[2:]}
    assert [c.strip() for c in lines[0][4:]] == [VBPR, DVBPR, alexrank]
    assert list(cells)[-1] == f"{DVBPR} + {VBPR}"  # below the single models
    assert cells[f"{DVBPR} + {VBPR}"] == [MISSING, MISSING, "0.0900"]
    assert cells[VBPR] == ["0.3000", MISSING, "0.0300"]
    csv = pd.read_csv(out / "tables" / "transfer.csv")
    row = csv[(csv["source"] == f"{DVBPR} + {VBPR}") & (csv["target"] == alexrank)]
    assert row["hr_at_5"].tolist() == pytest.approx([0.09]) and not row["direct"].any()


def test_detection_table_oblivious_and_adaptive(tmp_path):
    """The detector's trials get a table of their own: AUC, recall and HR@5 behind it for the
    oblivious and the adaptive attack, its clean cost, and the attack's undefended HR@5."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"aipray.role": "sweep", "aipray.sweep": SWEEP}
    ).info.run_id
    detector = "detector(train_eps=16)"
    # defence, adaptive, adversarial HR@5, AUC, recall, clean cold items rejected
    runs = [
        ("none", False, 0.30, None, None, None),
        (detector, False, 0.01, 0.98, 0.9, 0.05),
        (detector, True, 0.2, 0.55, 0.0, 0.05),
    ]
    for defense, adaptive, adv, auc, recall, fpr in runs:
        params = _params("vbpr", 20, "insa", 8, defense, **{"attack.adaptive": adaptive})
        metrics = _metrics(0.01, adv, 0.02, 0.02, 0.02, 1, 0.01)
        if auc is not None:
            metrics |= {
                "detector/auc": auc,
                "detector/recall": recall,
                "detector/fpr_at_95_recall": fpr,
                "detector/fpr_at_trial_95_recall": 0.5,
            }
        _child(client, exp_id, parent, params, metrics)
    out = tmp_path / "report"
    assert main([SWEEP, "--tracking-uri", uri, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    t = table(text, "Detection: a gatekeeper against oblivious and adaptive attacks")
    assert t == {
        f"{VBPR} / INSA / 8 / {detector}": {
            "undefended HR@5": "0.3000",
            "FPR@95 (clean cold)": "0.0500",
            "oblivious AUC": "0.9800",
            "oblivious recall": "0.9000",
            "oblivious HR@5": "0.0100",
            "adaptive AUC": "0.5500",
            "adaptive recall": "0.0000",
            "adaptive HR@5": "0.2000",
        }
    }
    # the detector is also a row of the robustness table
    robust = table(text, "Robustness: oblivious and adaptive attacks")
    assert robust[f"{VBPR} / INSA / 8 / {detector}"]["adaptive HR@5"] == "0.2000"
