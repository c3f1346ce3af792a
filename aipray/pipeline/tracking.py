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

log = logging.getLogger(__name__)

TAG_ROLE = "aipray.role"
TAG_SWEEP = "aipray.sweep"
TAG_KEY = "aipray.trial_key"
PARENT_TAG = "mlflow.parentRunId"


class Tracker:
    """Experiment, parent run and child-run lookup for one sweep."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str, sweep: str):
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
            k for k, r in self.child_runs().items() if r.info.status == RunStatus.to_string(RunStatus.FINISHED)
        }

    def child_run(self, key: str, name: str, params: dict[str, Any]) -> str:
        """The trial's run: the existing one for ``key``, or a new child of the sweep run."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KEY}` = '{key}' and tags.`{PARENT_TAG}` = '{self.parent_id}'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_TAG: self.parent_id, TAG_KEY: key, TAG_ROLE: "trial", TAG_SWEEP: self.sweep},
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


class TrackingCallback(Callback):
    """Mirrors Tune trials into MLflow child runs (driver side)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.run_ids: dict[str, str] = {}

    def _payload(self, trial) -> dict[str, Any]:
        return trial.config["trial"]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        p = self._payload(trial)
        self.run_ids[p["key"]] = self.tracker.child_run(p["key"], p["name"], p["params"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        p = self._payload(trial)
        run_id = self.run_ids.get(p["key"]) or self.tracker.child_run(p["key"], p["name"], p["params"])
        result = Path(p["paths"]["result"])
        metrics = json.loads((result / "metrics.json").read_text())
        files = [f for f in sorted(result.iterdir()) if f.is_file()]
        self.tracker.log_result(run_id, metrics, files)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        p = self._payload(trial)
        if p["key"] in self.run_ids:
            self.tracker.fail(self.run_ids[p["key"]])
