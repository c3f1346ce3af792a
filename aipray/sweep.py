"""Run a sweep: ``python -m aipray.sweep sweeps/quick.yaml``.

1. parse and validate the YAML (every error before Ray starts);
2. ask MLflow which trials already finished (a re-run skips them and adds no runs);
3. compute missing stage outputs (datasets, BPR candidates, extractor, rankers, candidate scores)
   as Ray tasks, in dependency order;
4. run the remaining grid as Ray Tune trials, each driving a Ray Data pipeline of ranker actors,
   mirrored into MLflow child runs;
5. print the main metrics per trial and the command that opens the MLflow UI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from aipray.attacks import ATTACKS
from aipray.config import ConfigError, SweepConfig, TrialSpec, load_sweep
from aipray.grid import source_label
from aipray.pipeline import stages
from aipray.pipeline.stages import StagePaths, stage_paths, trial_key
from aipray.plan import TrialPlan
from aipray.protocol import PROTOCOLS

log = logging.getLogger("aipray")


def flatten(prefix: str, obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: obj}


def trial_params(sweep: SweepConfig, trial: TrialSpec) -> dict[str, Any]:
    """The trial's MLflow params: the grid point's names and every setting, flattened."""
    params: dict[str, Any] = {
        "dataset": trial.dataset.label,
        "model": trial.model.name,
        "attack": trial.attack.name,
        "eps": trial.eps if trial.eps is not None else "none",
        "defense": trial.defense.label,
        "seed": sweep.seed,
        "sweep": sweep.name,
    }
    if ATTACKS.get(trial.attack.name).knowledge != "none":
        # what the images were crafted against (the source model, or what every model shares:
        # the extractor's features or classifier): the report's transfer matrix groups by it
        # (an ensemble's models joined by +)
        params["source"] = source_label(trial.attack.name, trial.sources or (trial.model,))
    params.update(flatten("dataset", trial.dataset.config))
    params.update(flatten("model", trial.model.config))
    params.update(flatten("attack", trial.attack.config))
    params.update(flatten("defense", trial.defense.config))
    params.update(flatten("first_stage", sweep.first_stage))
    if PROTOCOLS.get(sweep.protocol)().uses_extractor(trial):
        params.update(flatten("extractor", trial.extractor_config))
    if sweep.lpips is not None:
        params.update(flatten("lpips", sweep.lpips))
    if sweep.collusion:
        params["collusion"] = ",".join(map(str, sweep.collusion))
    if trial.push is not None:
        params["protocol"] = sweep.protocol
        params["mode"] = trial.push.config.mode
        params["extractor"] = trial.extractor_config.training
        params.update(flatten("perceptual", trial.push.config))
    return params


def trial_plan(
    sweep: SweepConfig, trial: TrialSpec, image_shape: tuple[int, int, int]
) -> TrialPlan:
    """The trial as the value Tune, Ray Data and the protocol receive (``image_shape``: the
    prepared dataset's)."""
    paths = stage_paths(sweep, trial)
    return TrialPlan(
        name=trial.name,
        key=trial_key(paths),
        protocol=sweep.protocol,
        dataset=trial.dataset,
        model=trial.model,
        attack=trial.attack,
        defense=trial.defense,
        extractor=trial.extractor_config,
        paths=paths,
        resources=sweep.resources,
        image_shape=tuple(image_shape),  # type: ignore[arg-type]
        seed=sweep.seed,
        examples=sweep.examples,
        push=None if trial.push is None else trial.push.config,
        lpips=sweep.lpips,
        collusion=sweep.collusion,
        params=trial_params(sweep, trial),
    )


def trial_plans(sweep: SweepConfig, trials: list[TrialSpec]) -> list[TrialPlan]:
    """:func:`trial_plan` of each trial, once its dataset is prepared."""
    from aipray.data import Catalog

    shapes: dict[Path, tuple[int, int, int]] = {}
    plans = []
    for trial in trials:
        dataset = stage_paths(sweep, trial).dataset
        if dataset not in shapes:
            shapes[dataset] = Catalog.load(dataset).image_shape
        plans.append(trial_plan(sweep, trial, shapes[dataset]))
    return plans


# --- stages as Ray tasks -------------------------------------------------------------------------
class StageError(RuntimeError):
    """A stage could not be computed; the message is one line naming it."""


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled every 0.2 s from
    ``/proc/self/statm`` (0 where that does not exist)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _stage(kind: str, sweep: SweepConfig, trial: TrialSpec, paths: StagePaths):
    """One stage in a Ray worker; its wall time and the worker's peak memory while it ran."""
    start = time.perf_counter()
    with PeakMemory() as memory:
        _compute_stage(kind, sweep, trial, paths)
    return {"seconds": time.perf_counter() - start, "peak_rss_gb": memory.peak / 1e9}


def _compute_stage(kind: str, sweep: SweepConfig, trial: TrialSpec, paths: StagePaths) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    device = stages.pick_device(sweep.resources.train_gpus)
    stages.compute_stage(kind, sweep, trial, paths, device)


def run_stages(sweep: SweepConfig, trials: list[TrialSpec]) -> None:
    """Compute every missing stage output, wave by wave; independent work runs in parallel."""
    import ray

    from aipray.store import done

    res = sweep.resources
    # A bounded retry count: a stage killed for memory would otherwise be retried without end
    # (Ray's default for system failures), each time filling the node again.
    task = ray.remote(_stage).options(
        num_cpus=res.train_cpus, num_gpus=res.train_gpus, max_retries=res.max_failures
    )
    for wave in stages.stage_waves(sweep, trials):
        refs = []
        for kind, trial, paths in wave:
            target = stages.stage_output(kind, paths)
            if done(target):
                continue
            log.info("stage %s → %s", kind, target.name)
            refs.append((kind, target, task.remote(kind, sweep, trial, paths)))
        for kind, target, ref in refs:
            try:
                cost = ray.get(ref)
            except ray.exceptions.OutOfMemoryError as err:
                first = str(err).strip().splitlines()[0][:300]
                raise StageError(
                    f"stage {kind} ({target.name}) was killed for memory after "
                    f"{res.max_failures} retries: {first}"
                ) from None
            log.info(
                "stage %s → %s done: %.1f s, peak memory %.2f GB",
                kind,
                target.name,
                cost["seconds"],
                cost["peak_rss_gb"],
            )
            record = {"kind": kind, "output": target.name, **cost, "finished": time.time()}
            with open(Path(sweep.storage) / stages.STAGE_LOG, "a") as fh:
                fh.write(json.dumps(record) + "\n")


# --- the attack grid ----------------------------------------------------------------------------
def run_grid(sweep: SweepConfig, plans: list[TrialPlan], tracker) -> list[str]:
    """Run pending trials with Tune; returns the names of trials that failed."""
    from ray import tune

    from aipray.pipeline.tracking import TrackingCallback
    from aipray.pipeline.trial import run_trial

    res = sweep.resources
    by_key = {p.key: p for p in plans}
    # Tune's console (an experiment box, result paths, a TensorBoard hint) stays off: the
    # TrackingCallback's bar and one line per trial say what a user needs
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    trainable = tune.with_parameters(run_trial, plans=by_key)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.trial_cpus}),
        param_space={"trial": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=res.max_concurrent_trials,
            reuse_actors=True,  # one process serves trial after trial: no start-up and imports
            trial_name_creator=lambda t: by_key[t.config["trial"]].name,
            trial_dirname_creator=lambda t: t.config["trial"],
        ),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(sweep.storage / "tune"),
            callbacks=[TrackingCallback(tracker, by_key)],
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            verbose=0,  # progress comes from TrackingCallback
        ),
    )
    tuner.fit()
    # A trial failed when it stored no result (a failed Tune result may carry no config).
    from aipray.store import done

    return [p.name for p in plans if not done(p.paths.result)]


def summary_table(
    tracker, keys: set[str], protocol: str = "aip", columns: dict[str, str] | None = None
) -> pd.DataFrame:
    """Main metrics (or ``columns``: metric → column name) of the sweep's current trials (runs
    of older settings are left out)."""
    if columns is None:
        columns = PROTOCOLS.get(protocol).columns
    rows = []
    for key, run in tracker.child_runs().items():
        if key not in keys:
            continue
        row = {"trial": run.info.run_name, "status": run.info.status}
        row.update({short: run.data.metrics.get(key) for key, short in columns.items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["trial", "status", *columns.values()])
    return pd.DataFrame(rows).sort_values("trial", ignore_index=True)


def ui_command(sweep: SweepConfig) -> str:
    if sweep.mlflow.tracking_uri is None and sweep.mlflow.artifact_location is None:
        return "scripts/mlflow_ui.sh"
    return f"mlflow ui --backend-store-uri {sweep.tracking_uri()} --host 127.0.0.1"


def _run_pending(sweep, pending, tracker, ray_address, num_cpus) -> list[str]:
    """Stages, then the grid, for the trials MLflow has not seen finish; failed trial names."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # the new default (token authentication on) announced on every start: nothing to do
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray.init(
            address=ray_address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )

    from aipray.pipeline import console

    console.install()  # Ray's unactionable worker lines stay off the console
    try:
        run_stages(sweep, pending)
        return run_grid(sweep, trial_plans(sweep, pending), tracker)
    finally:
        if started_here:
            ray.shutdown()


def with_seed(sweep: SweepConfig, seed: int) -> SweepConfig:
    """The same sweep trained with ``seed``: every training stage and trial is new (their store
    keys hold the seed), the datasets are shared. Another seed than the YAML's gets its own MLflow
    experiment, ``<experiment>-seed<N>``, so that no table or report mixes seeds."""
    if seed == sweep.seed:
        return sweep
    suffix = f"-seed{seed}"
    mlflow = sweep.mlflow
    if mlflow.experiment:
        mlflow = dataclasses.replace(mlflow, experiment=mlflow.experiment + suffix)
    return dataclasses.replace(sweep, seed=seed, name=sweep.name + suffix, mlflow=mlflow)


def run_sweep(
    sweep: SweepConfig,
    *,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    columns: dict[str, str] | None = None,
):
    """Run (or resume) a sweep; returns ``(table, failed trial names)``, the table with the
    main metrics or ``columns`` (:func:`summary_table`)."""
    from aipray.pipeline.tracking import Tracker

    trials = sweep.trials()
    keys = [trial_key(stage_paths(sweep, t)) for t in trials]
    tracker = Tracker(
        sweep.tracking_uri(), sweep.experiment(), sweep.artifact_location(), sweep.name
    )
    finished = tracker.finished_keys()
    pending = [t for t, k in zip(trials, keys, strict=True) if k not in finished]
    log.info(
        "%s: %d trials, %d already finished, %d to run",
        sweep.name,
        len(trials),
        len(trials) - len(pending),
        len(pending),
    )
    if pending and sweep.lpips is not None:
        from aipray.metrics.perceptual import warn_if_unpublished

        warn_if_unpublished(sweep.lpips)  # once here; the trials' actors stay quiet
    failed: list[str] = []
    tracker.start()
    status = "FAILED"  # unless the grid completes: a stage error or an exception ends here too
    try:
        if pending:
            failed = _run_pending(sweep, pending, tracker, ray_address, num_cpus)
        status = "FAILED" if failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
    return summary_table(tracker, set(keys), sweep.protocol, columns), failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aipray.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep", help="sweep YAML, e.g. sweeps/quick.yaml")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="train with this seed instead of the YAML's (its own experiment, <name>-seed<N>)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sweep = load_sweep(args.sweep)
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    if args.seed is not None:
        sweep = with_seed(sweep, args.seed)
    return drive(sweep, ray_address=args.address, num_cpus=args.num_cpus)


def drive(sweep: SweepConfig, *, ray_address: str | None, num_cpus: int | None) -> int:
    """Run (or resume) a parsed sweep from the command line: the summary table and the MLflow
    UI command on stdout, failures on stderr; returns the exit status."""
    start = time.perf_counter()
    try:
        table, failed = run_sweep(sweep, ray_address=ray_address, num_cpus=num_cpus)
    except StageError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        sys.stdout.write(
            "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4g}") + "\n"
        )
    sys.stdout.write(
        f"\n{len(table)} trials in MLflow experiment {sweep.experiment()!r} "
        f"({time.perf_counter() - start:.0f}s). Open the UI with: {ui_command(sweep)}\n"
    )
    if failed:
        sys.stderr.write(f"error: {len(failed)} trials failed: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
