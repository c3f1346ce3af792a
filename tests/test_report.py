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
from aipray.report.runs import Source, load_runs
from aipray.report.tables import choose_eps, prepare, table4

SWEEP = "tiny"
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
# (undefended ordinary HR@5 is BASE's). Logged in shuffled level order.
DEFENDED = [
    ("vbpr", "jpeg", 10, 0.001, 0.003, 0.005),
    ("vbpr", "jpeg", 50, 0.009, 0.008, 0.015),  # 0.009 > its own coop 0.008 (< undefended 0.01)
    ("vbpr", "jpeg", 90, 0.45, 0.01, 0.019),
    ("vbpr", "jpeg", 30, 0.005, 0.007, 0.012),  # weakest success: quality 30, cost -0.008
    ("vbpr", "jpeg", 70, 0.2, 0.01, 0.018),
    ("vbpr", "bitdepth", 2, 0.0, 0.005, 0.004),
    ("vbpr", "bitdepth", 6, 0.3, 0.01, 0.02),
    ("vbpr", "bitdepth", 4, 0.01, 0.01, 0.017),  # equal counts: 4 bits, cost -0.003
    ("dvbpr", "jpeg", 90, 0.6, 0.002, 0.03),
    ("dvbpr", "jpeg", 50, 0.3, 0.002, 0.025),  # never reaches cooperative: none
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


def _artifacts(folder: Path, attack: str, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    clean = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    np.savez(
        folder / "examples.npz",
        clean=clean,
        adversarial=adv,
        defended=adv,
        item_ids=np.array([3, 7]),
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
    for model, family, level, adv, coop, ordinary in DEFENDED:
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
            _metrics(coop, adv, ordinary, ordinary, undefended, 1.0, 0.5),
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
    n_labels = {"model": 1, "model attack": 2, "model ε": 2, "model attack ε": 3}
    k = max(n for key, n in n_labels.items() if " ".join(head[:n]) == key)
    out = {}
    for cells in lines[2:]:
        cells = [c.strip() for c in cells]
        out[" / ".join(cells[:k])] = dict(zip(head[k:], cells[k:], strict=True))
    return out


def test_table3_prediction_shift(store):
    t = table(store["text"], "Table 3")
    assert t["VBPR"] == {
        "INSA ε=32": "+3.2500",
        "EXPA ε=32": "+0.4000",
        "c-SEMA": "+0.0500",
        "FGSM ε=8": "+0.0200",
    }
    assert t["DVBPR (dim=10)"] == {
        "INSA ε=32": "+6.0000",
        "EXPA ε=32": "–",
        "c-SEMA": "–",
        "FGSM ε=8": "–",
    }
    assert t["DVBPR (dim=20)"]["EXPA ε=32"] == "+0.6000"
    assert list(t) == ["VBPR", "DVBPR (dim=10)", "DVBPR (dim=20)"]


def test_table4_hr_and_significance(store):
    t = table(store["text"], "Table 4")
    assert t["VBPR"] == {
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
    dv = t["DVBPR (dim=20)"]
    assert (dv["cooperative"], dv["ordinary"]) == ("0.0020", "0.0300")
    assert (dv["INSA ε=32"], dv["EXPA ε=32"]) == ("0.7000**", "0.0600**")  # p = 0.009
    assert dv["c-SEMA"] == "–"  # only a RUNNING c-SEMA trial exists for DVBPR
    assert t["DVBPR (dim=10)"]["EXPA ε=32"] == "–"
    marked = [c for row in t.values() for c in row.values() if c.endswith("**")]
    assert len(marked) == 5


def test_table4_with_chosen_eps(store):
    runs = load_runs(Source(store["uri"], SWEEP))
    frame = prepare(runs.frame)
    eps = choose_eps(frame, 8.0)
    assert eps["insa"] == 8.0 and math.isnan(eps["csema"])
    block = table4(frame, eps).blocks["synthetic"].set_index("model")
    assert block.loc["VBPR", "INSA ε=8"] == "0.3000**"  # p = 0.001
    assert block.loc["DVBPR (dim=20)", "INSA ε=8"] == "0.0400"  # p = 0.02: not significant
    assert block.loc["DVBPR (dim=20)", "EXPA ε=8"] == "0.0030"
    assert block.loc["VBPR", "c-SEMA"] == "0.0110"
    runs.close()


def test_table5_and_table6(store):
    t5 = table(store["text"], "Table 5")
    assert t5["VBPR"]["INSA ε=32"] == "+0.4900"
    assert t5["DVBPR (dim=10)"]["INSA ε=32"] == "+0.8960"
    assert t5["DVBPR (dim=20)"]["EXPA ε=32"] == "+0.0580"
    assert t5["VBPR"]["c-SEMA"] == "+0.0010"
    t6 = table(store["text"], "Table 6")
    assert t6["VBPR / INSA"] == {"cooperative": "0.0100", "ε=8": "0.3000", "ε=32": "0.5000"}
    assert t6["VBPR / EXPA"] == {"cooperative": "0.0100", "ε=8": "0.0120", "ε=32": "0.0500"}
    assert t6["DVBPR (dim=10) / INSA"] == {
        "cooperative": "0.0040",
        "ε=8": "0.2000",
        "ε=32": "0.9000",
    }
    assert t6["VBPR / FGSM"] == {"cooperative": "0.0100", "ε=8": "0.0130", "ε=32": "–"}
    assert "VBPR / c-SEMA" not in t6


def test_table7_classifier_attack(store):
    t7 = table(store["text"], "Table 7")
    assert list(t7) == ["VBPR / 8"]
    assert t7["VBPR / 8"] == {
        "INSA ΔHR@5": "+0.2900",
        "FGSM ΔHR@5": "+0.0030",
        "INSA Δordinary": "-0.0020",
        "FGSM Δordinary": "-0.0001",
    }


def test_table8_weakest_defence_level(store):
    t8 = table(store["text"], "Table 8")
    vbpr = t8["VBPR / INSA / 32"]
    assert vbpr["JPEG quality"] == "30"  # not 50: its adversarial 0.009 > its cooperative 0.008
    assert vbpr["JPEG quality cost"] == "-0.0080"
    assert vbpr["JPEG quality levels"] == "90, 70, 50, 30, 10"
    assert vbpr["bit depth"] == "4"  # adversarial == cooperative counts
    assert vbpr["bit depth cost"] == "-0.0030"
    assert vbpr["bit depth levels"] == "6, 4, 2"
    dvbpr = t8["DVBPR (dim=20) / INSA / 32"]
    assert dvbpr["JPEG quality"] == "none" and dvbpr["JPEG quality cost"] == "–"
    assert dvbpr["bit depth"] == "–" and dvbpr["bit depth levels"] == "–"
    assert len(t8) == 2


def test_csv_tables(store):
    import pandas as pd

    tables = store["out"] / "tables"
    t4 = pd.read_csv(tables / "table4_hr_at_5.csv")
    row = t4[t4["model"] == "VBPR"].iloc[0]
    assert row["INSA ε=32"] == pytest.approx(0.5) and row["INSA ε=32 p"] == pytest.approx(1e-4)
    assert math.isnan(t4[t4["model"] == "DVBPR (dim=20)"].iloc[0]["c-SEMA"])
    assert {p.name for p in tables.glob("*.csv")} == {
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
        assert {f"{kind}_synthetic_vbpr.png", f"{kind}_synthetic_dvbpr-dim-20.png"} <= names
    assert {
        "hr_vs_dim_synthetic.png",
        "defense_jpeg_synthetic_vbpr.png",
        "defense_bitdepth_synthetic_vbpr.png",
        "defense_jpeg_synthetic_dvbpr-dim-20.png",
    } <= names
    assert "defense_bitdepth_synthetic_dvbpr-dim-20.png" not in names
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
