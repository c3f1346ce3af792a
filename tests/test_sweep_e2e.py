"""End-to-end: a tiny real sweep on a local Ray, checked through MLflow."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from aipray.config import load_sweep
from aipray.sweep import main, run_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


def tiny_sweep(tmp_path, defended=False):
    """A tiny AIP sweep: DVBPR and VBPR × INSA ε 32 and EXPA ε 8, undefended (4 trials); with
    ``defended``, a second grid adds DVBPR's INSA under JPEG 75 (5 trials)."""
    cfg = {
        "name": "tiny",
        "storage": str(tmp_path / "store"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": (tmp_path / "artifacts").as_uri(),
        },
        "examples": 2,
        "datasets": {"synthetic": {"n_users": 300, "n_items": 260, "n_cold": 24, "image_size": 16}},
        "first_stage": {"candidates": 30, "bpr": {"epochs": 5, "batch_size": 512}},
        "extractor": {"width": 0.1, "epochs": 2},
        "models": {
            "dvbpr": {"dim": 10, "width": 0.125, "lr": 0.001, "lambda_cnn": 0.0001, "epochs": 6},
            "vbpr": {"dim": 10, "lr": 0.003, "epochs": 5, "batch_size": 256},
        },
        "attacks": {
            "insa": {"eps": [32], "epochs": 10, "user_batch": 64, "lr": 0.01},
            "expa": {"eps": [8], "steps": 10},
        },
        "defenses": {"none": {}},
        "resources": {"max_concurrent_trials": 2, "actor_cpus": 0.5, "batch_size": 4},
    }
    if defended:
        jpeg = {
            "name": "jpeg",
            "models": {"dvbpr": cfg["models"]["dvbpr"]},
            "attacks": {"insa": cfg["attacks"]["insa"]},
            "defenses": {"jpeg": {"quality": 75}},
        }
        cfg["grids"] = [{"name": "undefended"}, jpeg]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def child_runs(sweep):
    client = MlflowClient(sweep.tracking_uri())
    exp = client.get_experiment_by_name(sweep.experiment())
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if r.data.tags.get("aipray.role") == "trial"], runs


@pytest.fixture(scope="module")
def tiny_first(tmp_path_factory, ray_local):
    """The tiny sweep, run once in a fresh store: ``(folder, yaml path, sweep, table, failed)``."""
    tmp_path = tmp_path_factory.mktemp("first")
    path = tiny_sweep(tmp_path, defended=True)
    sweep = load_sweep(path)
    table, failed = run_sweep(sweep)
    return tmp_path, path, sweep, table, failed


def metrics_by_trial(sweep, resumed=True):
    """Every trial's metrics but wall times (and, when not ``resumed``, the resumed-item count),
    by run name."""
    children, _ = child_runs(sweep)
    drop = ("seconds",) if resumed else ("seconds", "items_resumed")
    return {
        r.info.run_name: {k: v for k, v in r.data.metrics.items() if not any(d in k for d in drop)}
        for r in children
    }


def batch_files(folder):
    """The stored batches of a trial in progress (none once it finished and cleared them)."""
    try:
        return [f for f in os.listdir(folder) if f.startswith("batch-")]
    except FileNotFoundError:
        return []


def wait_for_no_process(title, timeout=60.0):
    """Whether every process whose command line (a Ray worker's title) names ``title`` ended."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
        if not any(title in name for name in names):
            return True
        time.sleep(0.2)
    return False


def kill_processes(*titles):
    """SIGKILL every process whose command line (a Ray worker's title) names one of ``titles``;
    their command lines."""
    import psutil

    killed = []
    for proc in psutil.process_iter(["cmdline"]):
        name = " ".join(proc.info["cmdline"] or [])
        if any(t in name for t in titles):
            try:
                proc.kill()
                killed.append(name)
            except psutil.NoSuchProcess:
                pass
    return killed


def ray_address():
    import ray

    return ray.get_runtime_context().gcs_address


def test_tiny_sweep_end_to_end(tiny_first):
    tmp_path, path, sweep, table, failed = tiny_first
    n_grid = len(sweep.trials())
    assert n_grid == 2 * 2 + 1
    assert failed == []
    assert len(table) == n_grid
    children, all_runs = child_runs(sweep)
    assert len(children) == n_grid
    assert len(all_runs) == n_grid + 1  # plus the sweep's parent run
    assert all(r.info.status == "FINISHED" for r in children)

    by_name = {r.info.run_name: r for r in children}
    run = by_name["synthetic/dvbpr(dim=10)/insa/eps=32/none"]
    params = run.data.params
    assert (params["dataset"], params["model"], params["attack"]) == ("synthetic", "dvbpr", "insa")
    assert (float(params["eps"]), params["defense"]) == (32.0, "none")
    assert params["dataset.n_users"] == "300" and params["model.dim"] == "10"
    m = run.data.metrics
    assert m["adversarial/hr_at_5"] > 3 * m["cooperative/hr_at_5"]
    assert m["p_value_hr_at_5"] < 0.01
    assert m["prediction_shift"] != 0
    for r in children:
        eps = float(r.data.params["eps"])
        assert r.data.metrics["linf_255_max"] <= eps
        for k in (5, 10, 20):
            assert 0 <= r.data.metrics[f"adversarial/hr_at_{k}"] <= 1
    artifacts = {a.path for a in MlflowClient(sweep.tracking_uri()).list_artifacts(run.info.run_id)}
    assert {"examples.png", "items.parquet", "metrics.json"} <= artifacts

    # every stage computed left one line with its cost; none ran twice
    import json

    from aipray.pipeline.stages import STAGE_LOG

    costs = [json.loads(line) for line in (tmp_path / "store" / STAGE_LOG).read_text().splitlines()]
    kinds = sorted(c["kind"] for c in costs)
    assert kinds.count("dataset") == 1 and kinds.count("ranker") == 2
    assert len({c["output"] + c["kind"] for c in costs}) == len(costs)
    assert all(c["seconds"] > 0 and c["peak_rss_gb"] > 0.05 for c in costs)

    # A JPEG trial reuses the undefended trial's adversarial images: same L-inf, same SSIM.
    jpeg = by_name["synthetic/dvbpr(dim=10)/insa/eps=32/jpeg(quality=75)"].data.metrics
    assert jpeg["ssim_mean"] == pytest.approx(m["ssim_mean"])

    # Running the sweep again adds no runs and recomputes nothing.
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "store").rglob("*.pt")}
    assert main([str(path)]) == 0
    children_again, all_again = child_runs(sweep)
    assert len(children_again) == n_grid and len(all_again) == n_grid + 1
    assert {p: p.stat().st_mtime for p in (tmp_path / "store").rglob("*.pt")} == mtimes


def test_rerun_after_lost_tracking_reuses_results(tiny_first):
    """If MLflow lost a trial's run (a crash between compute and logging), a re-run logs it again
    from the stored result without recomputing it, and still one run per trial."""
    tmp_path, _path, sweep, _table, _failed = tiny_first
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "store").rglob("*.pt")}
    children, _ = child_runs(sweep)
    client = MlflowClient(sweep.tracking_uri())
    victim = children[0]
    client.delete_run(victim.info.run_id)
    _table, failed = run_sweep(sweep)
    assert failed == []
    children, _ = child_runs(sweep)
    assert len(children) == len(sweep.trials())
    assert victim.info.run_name in {r.info.run_name for r in children}
    assert {p: p.stat().st_mtime for p in (tmp_path / "store").rglob("*.pt")} == mtimes


def test_transfer_trial_evaluates_the_stored_set_on_another_ranker(tiny_first, capsys):
    """INSA crafted on DVBPR, evaluated on VBPR through Ray: DVBPR's stored set (no new
    attack), with the numbers of ``python -m aipray.reevaluate`` of that set on VBPR (which
    logs to MLflow through the sweep driver and re-attacks nothing), and the report's transfer
    matrix printed by the report command."""
    import json

    from aipray.reevaluate import main as reevaluate
    from aipray.report import main as report_main

    tmp_path, path, _sweep, _table, _failed = tiny_first
    store = tmp_path / "store"
    cfg = yaml.safe_load(path.read_text())
    cfg["name"] = "tiny-transfer"
    del cfg["grids"]
    cfg["attacks"] = {"insa": {**cfg["attacks"]["insa"], "source": "dvbpr"}}
    cfg["defenses"] = {"none": {}}
    transfer_path = tmp_path / "transfer.yaml"
    transfer_path.write_text(yaml.safe_dump(cfg))
    attacks = sorted(p.name for p in (store / "attacks").iterdir())
    assert main([str(transfer_path)]) == 0
    assert sorted(p.name for p in (store / "attacks").iterdir()) == attacks
    transfer = load_sweep(transfer_path)
    runs = {r.info.run_name: r for r in child_runs(transfer)[0]}
    assert len(runs) == 2  # on DVBPR, the direct trial (its result reused)
    run = runs["synthetic/vbpr(dim=10)/insa(from=dvbpr(dim=10))/eps=32/none"]
    assert run.data.params["source"] == "dvbpr(dim=10)"
    [images] = [
        p
        for p in (store / "attacks").glob("insa-*")
        if json.loads((p / "provenance.json").read_text())["model"].startswith("dvbpr-")
    ]
    argv = [str(images), str(path), "--models", "vbpr", "--defenses", "none"]
    assert reevaluate(argv) == 0
    again = dataclasses.replace(transfer, name=f"tiny-reeval-{images.name}")
    [provided] = child_runs(again)[0]
    assert provided.data.params["attack"] == "provided"
    got = {k: v for k, v in run.data.metrics.items() if "seconds" not in k}
    assert got == {k: v for k, v in provided.data.metrics.items() if "seconds" not in k}
    # nothing re-attacked: the one new set is the provided trial's own record of its images
    new = sorted(set(p.name for p in (store / "attacks").iterdir()) - set(attacks))
    assert len(new) == 1 and new[0].startswith("provided-")

    out = tmp_path / "transfer-report"
    capsys.readouterr()
    args = [str(transfer_path), "--out", str(out), "--no-log", "--show", "transfer"]
    assert report_main(args) == 0
    printed = capsys.readouterr().out
    assert "## Transfer: source × target" in printed and "| INSA | 32 | none | DVBPR |" in printed


def test_a_ranker_named_by_import_path_runs_in_the_grid(tiny_first):
    """A user's ranker defined in a test module (``tests/rankers.py``, never registered), named
    in the YAML by import path: trained as a stage, attacked on Ray Data actors, one MLflow run
    per trial; its checkpoint reloads from the constructor arguments it recorded."""
    from aipray.models import load_recommender
    from tests.rankers import PooledRanker

    tmp_path, path, _sweep, _table, _failed = tiny_first
    cfg = yaml.safe_load(path.read_text())
    del cfg["grids"]
    cfg.update(
        name="own",
        models={"tests.rankers:PooledRanker": {"dim": 8, "epochs": 3}},
        attacks={"insa": {"eps": [32], "epochs": 3, "user_batch": 64}},
        defenses={"none": {}},
    )
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(own)  # same dataset and first stage as the tiny sweep: reused
    _table, failed = run_sweep(sweep)
    assert failed == []
    children, _ = child_runs(sweep)
    head = "synthetic/tests.rankers:PooledRanker(dim=8)"
    assert {r.info.run_name for r in children} == {f"{head}/insa/eps=32/none"}
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.params["model"] == "tests.rankers:PooledRanker" for r in children)
    assert all(r.data.metrics["n_items"] == 24 for r in children)
    (folder,) = (tmp_path / "store" / "models").glob("tests.rankers.PooledRanker-*")
    model = load_recommender(folder)
    assert isinstance(model, PooledRanker) and model.init_args == {"n_users": 300, "dim": 8}


def test_killed_driver_resumes_finished_trials_and_batches(tmp_path, ray_local, tiny_first):
    """SIGKILL the sweep's driver once two trials finished and a third stored some batches; the
    re-run runs only what is left, resumes the cut trial from its stored batches, adds no MLflow
    run and closes the sweep's run FINISHED. Both drivers started from an empty store, so the
    metrics equalling the first sweep's also show that a seeded sweep is reproducible on CPU."""
    path = tiny_sweep(tmp_path, defended=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["models"] = {"dvbpr": cfg["models"]["dvbpr"]}  # three of the first sweep's five trials
    cfg["resources"]["max_concurrent_trials"] = 1
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    results = tmp_path / "store" / "trials"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "aipray.sweep", str(path), "--address", ray_address()],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 600
    partial: list[Path] = []
    while not partial:  # two trials stored, then (polling fast: a batch takes ~0.05 s) a batch
        assert driver.poll() is None, "the sweep ended before it could be killed"
        assert time.monotonic() < deadline, "no partial trial within ten minutes"
        names = os.listdir(results) if results.is_dir() else []
        if sum(not n.startswith(".") for n in names) >= 2:
            partial = [results / n for n in names if n.startswith(".partial-")]
            # a finished trial's batches stay until just after its result is renamed into place
            partial = [
                p
                for p in partial
                if batch_files(p) and not (results / p.name.removeprefix(".partial-")).exists()
            ]
        time.sleep(0.002)
    # the whole sweep dies at once, as on a crashed node: left alive for the moment Ray takes to
    # reap them, the trial and its ranker actor could finish the cut trial
    driver.send_signal(signal.SIGKILL)
    killed = kill_processes("ImplicitFunc", "ResumableBatches")
    driver.wait()
    assert any("ImplicitFunc" in k for k in killed), "no trial was running at the kill"
    assert wait_for_no_process("ResumableBatches"), "the dead driver's actors outlived it"
    (cut,) = partial
    stored = {p.name: p.stat().st_mtime_ns for p in cut.glob("batch-*.parquet")}
    finished_at = {p.name: p.stat().st_mtime_ns for p in results.glob("[!.]*")}
    n_batches = -(-24 // cfg["resources"]["batch_size"])
    assert 0 < len(stored) < n_batches, "the kill came too late to cut a trial"
    client = MlflowClient(sweep.tracking_uri())
    parent = [r for r in child_runs(sweep)[1] if r.data.tags.get("aipray.role") == "sweep"]
    assert [r.info.status for r in parent] == ["RUNNING"]  # nobody could close it

    _table, failed = run_sweep(sweep)
    assert failed == []
    children, runs = child_runs(sweep)
    assert len(children) == len(sweep.trials()) and len(runs) == len(children) + 1
    assert {
        p.name: p.stat().st_mtime_ns for p in results.glob("[!.]*") if p.name in finished_at
    } == finished_at  # finished trials were not re-run
    assert not list(results.glob(".partial-*"))
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"
    resumed = {r.info.run_name: r.data.metrics["items_resumed"] for r in children}
    assert sorted(resumed.values())[-1] > 0 and sum(v > 0 for v in resumed.values()) == 1
    assert max(resumed.values()) == len(stored) * cfg["resources"]["batch_size"]
    first = metrics_by_trial(tiny_first[2], resumed=False)
    assert metrics_by_trial(sweep, resumed=False) == {name: first[name] for name in resumed}


def test_every_ranker_attack_kind_and_defence_with_report(tmp_path, ray_local):
    """AlexRank and AMR under a model-free attack (c-SEMA) and a classifier one (FGSM); in a
    second grid AlexRank under a ranker attack (INSA), undefended and at bit depth 3; then the
    report from MLflow, logged to the parent run."""
    path = tiny_sweep(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["name"] = "kinds"
    cfg["models"] = {"alexrank": {}, "amr": {"dim": 10, "lr": 0.003, "epochs": 3}}
    cfg["attacks"] = {
        "insa": {"eps": 16, "epochs": 4, "user_batch": 64, "lr": 0.01},
        "csema": {},
        "fgsm": {"eps": 8},
    }
    cfg["defenses"] = {"none": {}}
    cfg["lpips"] = {"net": "alex", "backbone": "random"}  # no ImageNet weights offline
    cfg["grids"] = [
        {"name": "shared", "attacks": {k: cfg["attacks"][k] for k in ("csema", "fgsm")}},
        {
            "name": "defences",
            "models": {"alexrank": {}},
            "attacks": {"insa": cfg["attacks"]["insa"]},
            "defenses": {"none": {}, "bitdepth": {"bits": 3}},
        },
    ]
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    assert len(sweep.trials()) == 2 * 2 + 2
    _table, failed = run_sweep(sweep)
    assert failed == []
    children, _ = child_runs(sweep)
    by_name = {r.info.run_name: r.data for r in children}
    assert len(by_name) == 6

    insa = by_name["synthetic/alexrank/insa/eps=16/none"]
    assert insa.metrics["adversarial/hr_at_5"] > insa.metrics["cooperative/hr_at_5"]
    assert insa.metrics["linf_255_max"] <= 16
    csema = by_name["synthetic/amr(dim=10)/csema/none"]  # AMR's own ε: 0.1 of max |f|
    assert csema.params["eps"] == "none" and csema.metrics["linf_255_max"] > 16
    fgsm = by_name["synthetic/amr(dim=10)/fgsm/eps=8/none"]
    # every trial reports the health of what it stands on; AMR its absolute adversary size
    # (a random ranker's full-ranking HR@10 is pinned in test_protocol; here: one dataset, one
    # value, and the first stage beats it)
    randoms = {run.metrics["first_stage/val_random_hr_at_10"] for run in by_name.values()}
    assert len(randoms) == 1
    for run in by_name.values():
        val = run.metrics["first_stage/val_hr_at_10"]
        assert 0 < run.metrics["first_stage/val_random_hr_at_10"] < val <= 1
    assert fgsm.metrics["ranker/adv_eps"] == pytest.approx(0.1)  # in features / max |f|
    assert 0 < fgsm.metrics["ranker/val_hr_at_10"] <= 1
    assert 0 <= fgsm.metrics["success_rate"] <= 1 and fgsm.metrics["linf_255_max"] <= 8
    # c-SEMA and FGSM know no ranker: their images are computed once and shared by both rankers
    alex_fgsm = by_name["synthetic/alexrank/fgsm/eps=8/none"]
    assert alex_fgsm.metrics["ssim_mean"] == pytest.approx(fgsm.metrics["ssim_mean"])
    # LPIPS is logged with its network for every trial of a sweep that names one
    for run in by_name.values():
        assert run.metrics["lpips_mean"] > 0 and run.params["lpips.backbone"] == "random"
    assert alex_fgsm.metrics["lpips_mean"] == pytest.approx(fgsm.metrics["lpips_mean"])
    # the defence's cost is measured against the same ranker without it
    bits = by_name["synthetic/alexrank/insa/eps=16/bitdepth(bits=3)"]
    assert bits.metrics["ordinary_undefended/hr_at_5"] == pytest.approx(
        insa.metrics["ordinary/hr_at_5"]
    )
    assert insa.metrics["ordinary_undefended/hr_at_5"] == insa.metrics["ordinary/hr_at_5"]

    from aipray.report import main as report_main

    out = tmp_path / "report"
    assert report_main([str(path), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "AlexRank" in text and "c-SEMA" in text
    assert any(out.rglob("*.png"))
    client = MlflowClient(sweep.tracking_uri())
    parent = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("kinds").experiment_id])
        if r.data.tags.get("aipray.role") == "sweep"
    )
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.md" in logged


def write_folder_dataset(root, n_users=80, n_items=60, seed=0):
    """A small marketplace in the sisinflab folder layout: users like one of four colours."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (220, 200, 40)]
    item_colour = rng.integers(0, 4, n_items)
    (root / "images").mkdir(parents=True)
    for i in range(n_items):
        img = np.full((20, 20, 3), 235, np.uint8)
        img[4:16, 4:16] = colours[item_colour[i]]
        Image.fromarray(img).save(root / "images" / f"item{i}.jpg", quality=95)
    lines = ["user_id\titem_id\ttimestamp"]
    for u in range(n_users):
        liked = np.flatnonzero(item_colour == u % 4)
        for t, i in enumerate(rng.choice(liked, size=6, replace=False)):
            lines.append(f"user{u}\titem{i}\t{1000 + t}")
    (root / "interactions.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_folder_dataset_sweep_end_to_end(tmp_path, ray_local):
    """Real-data path: the folder format is prepared inside the sweep and attacked."""
    path = tiny_sweep(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["name"] = "folder"
    data = write_folder_dataset(tmp_path / "shop")
    cfg["datasets"] = {
        "folder": {"path": str(data), "k_core": 2, "n_cold": 6, "image_size": 16, "seed": 1}
    }
    cfg["first_stage"] = {"candidates": 20, "bpr": {"epochs": 3, "batch_size": 256}}
    cfg["models"] = {"dvbpr": cfg["models"]["dvbpr"] | {"epochs": 3}}
    cfg["attacks"] = {"insa": {"eps": 16, "epochs": 3, "user_batch": 32, "lr": 0.01}}
    cfg["defenses"] = {"none": {}}
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    _table, failed = run_sweep(sweep)
    assert failed == []
    (run,) = child_runs(sweep)[0]
    assert run.data.params["dataset"] == "folder"
    assert run.data.metrics["n_items"] == 6
    assert run.data.metrics["linf_255_max"] <= 16
    assert 0 <= run.data.metrics["ordinary/hr_at_20"] <= 1


def test_perceptual_sweep_poisoning_and_evasion(tmp_path, ray_local):
    """Perceptual-Rec's category push through Ray: two extractors × PGD × both modes; the
    attacked images are made once per (extractor, attack) and shared by the modes."""
    from aipray.report import build_report

    cfg = {
        "name": "push",
        "protocol": "perceptual",
        "storage": str(tmp_path / "store"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": (tmp_path / "artifacts").as_uri(),
        },
        "examples": 2,
        "datasets": {"synthetic": {"n_users": 300, "n_items": 260, "n_cold": 1, "image_size": 16}},
        "first_stage": {"bpr": {"epochs": 5, "batch_size": 512}},
        "extractor": {"width": 0.1, "epochs": 2, "training": ["standard", "free"]},
        "perceptual": {"mode": ["poisoning", "evasion"]},
        "lpips": {"net": "alex", "backbone": "random"},
        "models": {"vbpr": {"dim": 10, "lr": 0.003, "epochs": 5, "batch_size": 256}},
        "attacks": {"pgd": {"eps": [8], "steps": 5}},
        "resources": {"max_concurrent_trials": 2, "actor_cpus": 0.5, "batch_size": 16},
    }
    path = tmp_path / "push.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sweep = load_sweep(path)
    table, failed = run_sweep(sweep)
    assert failed == []
    assert len(table) == 4 and table["chr@20"].notna().all()  # the console's summary columns
    children, _ = child_runs(sweep)
    assert len(children) == 4
    assert {r.info.status for r in children} == {"FINISHED"}
    runs = {
        (r.data.params["extractor"], r.data.params["attack"], r.data.params["mode"]): r.data.metrics
        for r in children
    }
    assert len(runs) == 4
    for extractor in ("standard", "free"):
        for attack in ("pgd",):
            poison, evade = runs[extractor, attack, "poisoning"], runs[extractor, attack, "evasion"]
            # one set of attacked images serves both modes; the clean ranking is the same model
            for key in ("success_mean", "feature_loss_mean", "lpips_mean", "n_items"):
                assert poison[key] == evade[key]
            assert poison["clean/chr_count_at_20"] == evade["clean/chr_count_at_20"]
            assert poison["linf_255_max"] <= 8
            assert 0 <= poison["success_mean"] <= 1
    assert len(list((tmp_path / "store" / "pushes").glob("pgd-*"))) == 2
    assert runs["standard", "pgd", "poisoning"]["success_mean"] > 0.5
    folder = build_report(str(path), out=tmp_path / "report", log_to_mlflow=False)
    text = (folder / "report.md").read_text()
    assert "Table 1: CHR@20 of the origin class" in text and "evasion" in text
    assert (folder / "tables" / "perceptual_table2.csv").is_file()
