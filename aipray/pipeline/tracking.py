"""MLflow tracking from the sweep driver: one experiment per sweep, one parent run per sweep,
exactly one child run per trial.

Only the driver writes to MLflow (through a Tune callback), so a SQLite store on the head node
serves a whole cluster without a server and no two processes write the database at once. A child
run is found by its trial key tag, so a retried trial or a re-run sweep reuses it instead of adding
another. (Ray's ``MLflowLoggerCallback`` adds a run per retry and fails on nested params.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from tqdm.auto import tqdm

from aipray.pipeline.tags import PARENT_TAG, TAG_KEY, TAG_ROLE, TAG_SWEEP
from aipray.plan import TrialPlan

log = logging.getLogger(__name__)


class Tracker:
    """Experiment, parent run and child-run lookup for one sweep."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, sweep: str):
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # "Creating initial MLflow database tables..." and the like, on a new store
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location
            )
        else:
            self.experiment_id = exp.experiment_id
        self.sweep = sweep
        self.parent_id = self._parent_run()

    def _parent_run(self) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_SWEEP}` = '{self.sweep}'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.sweep,
            tags={TAG_ROLE: "sweep", TAG_SWEEP: self.sweep},
        )
        return run.info.run_id

    def child_runs(self) -> dict[str, Any]:
        """Trial key → MLflow run, for this sweep's children."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
            max_results=50000,
        )
        return {r.data.tags[TAG_KEY]: r for r in runs if TAG_KEY in r.data.tags}

    def finished_keys(self) -> set[str]:
        return {
            k
            for k, r in self.child_runs().items()
            if r.info.status == RunStatus.to_string(RunStatus.FINISHED)
        }

    def child_run(self, key: str, name: str, params: dict[str, Any]) -> str:
        """The trial's run: the existing one for ``key``, or a new child of the sweep run."""
        query = f"tags.`{TAG_KEY}` = '{key}' and tags.`{PARENT_TAG}` = '{self.parent_id}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: self.parent_id,
                TAG_KEY: key,
                TAG_ROLE: "trial",
                TAG_SWEEP: self.sweep,
            },
        )
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_result(self, run_id: str, metrics: dict[str, float], files: list[Path]) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 200):
            self.client.log_batch(run_id, metrics=batch[i : i + 200])
        for path in files:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str) -> None:
        self.client.set_terminated(run_id, "FAILED")

    def start(self) -> None:
        """Mark the sweep's run as running (a re-run reopens a run an earlier driver closed or
        left behind when it was killed)."""
        self.client.update_run(self.parent_id, status="RUNNING")

    def end(self, status: str) -> None:
        """Close the sweep's run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self.client.set_terminated(self.parent_id, status)


def headline(metrics: dict[str, float]) -> str:
    """A finished trial's main numbers, for its console line."""
    if "clean/chr_count_at_20" in metrics:
        return (
            f"CHR@20 (count) clean {metrics['clean/chr_count_at_20']:.3f} attacked "
            f"{metrics['attacked/chr_count_at_20']:.3f} (p {metrics['p_value_chr_at_20']:.2g}), "
            f"success {metrics.get('success_mean', float('nan')):.2f}"
        )
    return (
        f"HR@5 cooperative {metrics['cooperative/hr_at_5']:.3f} "
        f"adversarial {metrics['adversarial/hr_at_5']:.3f} (p {metrics['p_value_hr_at_5']:.2g})"
    )


class TrackingCallback(Callback):
    """Mirrors Tune trials into MLflow child runs (driver side), with a progress bar that names
    each finished trial and its headline numbers (Tune's own console output is turned off: its
    per-trial tables drown everything else on a grid of hundreds of trials)."""

    def __init__(self, tracker: Tracker, plans: dict[str, TrialPlan]) -> None:
        self.tracker = tracker
        self.plans = plans
        self.run_ids: dict[str, str] = {}
        self.bar: tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a progress bar holds a stream
        return {k: v for k, v in self.__dict__.items() if k != "bar"} | {"bar": None}

    def setup(self, **info) -> None:
        self.bar = tqdm(total=len(self.plans), desc="trials", unit="trial", dynamic_ncols=True)

    def _say(self, line: str) -> None:
        if self.bar is None:
            log.info(line)
        else:
            self.bar.write(line)

    def _plan(self, trial) -> TrialPlan:
        return self.plans[trial.config["trial"]]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        p = self._plan(trial)
        self.run_ids[p.key] = self.tracker.child_run(p.key, p.name, p.params)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        p = self._plan(trial)
        run_id = self.run_ids.get(p.key) or self.tracker.child_run(p.key, p.name, p.params)
        result = p.paths.result
        metrics = json.loads((result / "metrics.json").read_text())
        files = [f for f in sorted(result.iterdir()) if f.is_file()]
        self.tracker.log_result(run_id, metrics, files)
        if self.bar is not None:
            self.bar.update(1)
        self._say(f"done {p.name}: {headline(metrics)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        p = self._plan(trial)
        if p.key in self.run_ids:
            self.tracker.fail(self.run_ids[p.key])
        self._say(f"FAILED {p.name} (Tune retries it up to resources.max_failures times)")

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()
