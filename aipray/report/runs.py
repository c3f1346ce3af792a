"""A sweep's finished trial runs, read from MLflow into one flat frame (one row per trial)."""

from __future__ import annotations

import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aipray.metrics.ranking import COLLUSION
from aipray.pipeline.tags import PARENT_TAG, TAG_KEY, TAG_ROLE, TAG_SWEEP
from aipray.report.common import ADAPTIVE

log = logging.getLogger(__name__)


CUTOFFS = (5, 10, 20)
GROUPS = ("cooperative", "adversarial", "ordinary", "ordinary_attacked", "ordinary_undefended")
METRICS = [f"{g}/hr_at_{k}" for g in (*GROUPS, "random") for k in CUTOFFS] + [
    "prediction_shift",
    "p_value_hr_at_5",
    "linf_255_max",
    "ssim_mean",
    "psnr_mean",
    "n_items",
    # the first stage (BPR) of the trial's dataset and the trial's ranker, see report.health
    "first_stage/val_hr_at_10",
    "first_stage/val_random_hr_at_10",
    "first_stage/full_hr_at_10",
    "first_stage/full_popularity_hr_at_10",
    "first_stage/test_in_top_c",
    "first_stage/popularity_test_in_top_c",
    "ranker/val_hr_at_10",
    "ranker/full_hr_at_10",
    # the second yardstick, HR@50 over the full ranking (the transfer matrix shows it)
    "full_ranking/cooperative/hr_at_50",
    "full_ranking/adversarial/hr_at_50",
    # a screening defence (the detector), see aipray.protocol.aip.screen_metrics
    "detector/auc",
    "detector/fpr_at_95_recall",
    "detector/recall",
    "detector/fpr_at_trial_95_recall",
]
# Model settings (flattened ``model.*`` params) every frame has as columns, None where a run did
# not log them; any other ``model.*`` param a run logged becomes a column too.
MODEL_SETTINGS = (
    "model.dim",
    "model.visual_bias",
    "model.adv_eps_relative",
    "model.adv_eps",
    "model.adv_eps_unit",
)
# Defence family → (param whose value is the level, display name). A larger value is a weaker
# defence for both: higher JPEG quality, more bits.
LEVELS = {"jpeg": ("quality", "JPEG quality"), "bitdepth": ("bits", "bit depth")}


class ReportError(Exception):
    """A report cannot be made; the message is one line saying what is missing."""


@dataclass(frozen=True)
class Source:
    """Where a sweep's runs are: tracking URI, experiment name and (if known) sweep name."""

    tracking_uri: str
    experiment: str
    sweep: str | None = None
    #: trial keys of the sweep file as it is now; runs of older settings are left out
    keys: frozenset[str] | None = None


def default_tracking_uri() -> str:
    """The project's SQLite store, resolved like :meth:`aipray.config.SweepConfig.tracking_uri`."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow' / 'mlflow.db'}"


def resolve_source(target: str, tracking_uri: str | None = None) -> Source:
    """A sweep YAML path (its name and MLflow settings) or an experiment name."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from aipray.config import ConfigError, load_sweep  # imports torch: only when needed

        try:
            sweep = load_sweep(path)
        except ConfigError as err:
            raise ReportError(str(err)) from None
        from aipray.pipeline.stages import stage_paths, trial_key

        keys = frozenset(trial_key(stage_paths(sweep, t)) for t in sweep.trials())
        return Source(tracking_uri or sweep.tracking_uri(), sweep.experiment(), sweep.name, keys)
    return Source(tracking_uri or default_tracking_uri(), target)


@dataclass
class SweepRuns:
    """The finished trial runs of one sweep, as a frame, plus where they came from."""

    source: Source
    client: MlflowClient
    experiment_id: str
    parent_id: str
    sweep: str
    frame: pd.DataFrame
    n_children: int
    n_ignored: int
    n_stale: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    _cache: dict[tuple[str, str], dict[str, np.ndarray] | None] = field(default_factory=dict)
    _listing: dict[str, set[str]] = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = None

    def artifact(self, run_id: str, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of an ``.npz`` artifact at the run's artifact root; None (counted in
        :attr:`missing`) if the run has none or it cannot be read."""
        key = (run_id, name)
        if key in self._cache:
            return self._cache[key]
        self._cache[key] = None
        try:
            if run_id not in self._listing:
                self._listing[run_id] = {a.path for a in self.client.list_artifacts(run_id)}
            if name not in self._listing[run_id]:
                self.missing[name] = self.missing.get(name, 0) + 1
                return None
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="aipray-report-")
            dst = Path(self._tmp.name) / run_id
            dst.mkdir(exist_ok=True)
            local = self.client.download_artifacts(run_id, name, str(dst))
            with np.load(local) as npz:
                self._cache[key] = {k: npz[k] for k in npz.files}
        except (MlflowException, OSError, ValueError) as err:
            log.warning("run %s: unreadable %s (%s)", run_id, name, str(err).splitlines()[0])
            self.missing[name] = self.missing.get(name, 0) + 1
        return self._cache[key]

    def close(self) -> None:
        """Remove downloaded artifacts."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _number(value: str | None) -> float:
    try:
        out = float(value) if value is not None else math.nan
    except ValueError:
        return math.nan
    return out if math.isfinite(out) else math.nan


def _level(family: str, params: dict[str, str], label: str) -> float:
    if family not in LEVELS:
        return math.nan
    key = LEVELS[family][0]
    if f"defense.{key}" in params:
        return _number(params[f"defense.{key}"])
    found = re.search(rf"{key}=([0-9.]+)", label)
    return _number(found.group(1)) if found else math.nan


def run_row(run: Any) -> dict[str, Any]:
    """One trial run as a flat record: its grid point, its model settings (``model.*`` params
    as logged, strings; None where absent) and its metrics (NaN where absent)."""
    params = run.data.params
    defense = params.get("defense", "none")
    family = defense.split("(", 1)[0]
    adaptive = params.get("attack.adaptive") == "True"
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "start_time": run.info.start_time or 0,
        "dataset": params.get("dataset", "?"),
        "model": params.get("model", "?"),
        "dim": _number(params.get("model.dim")),
        # an adaptive attack is another attack in every table: it saw the defence
        "attack": params.get("attack", "?") + (ADAPTIVE if adaptive else ""),
        # the gradient an adaptive attack took through a BPDA defence (identity / approximation)
        "bpda": params.get("attack.bpda", "identity") if adaptive else None,
        "eps": _number(params.get("eps")),
        "defense": defense,
        # the model the images were crafted against (``source``, on attacks that take one) and
        # whether it is another than the evaluated one (a transfer attack)
        "source": params.get("source"),
        "transfer": params.get("attack.source", "None") != "None",
        "family": family,
        "level": _level(family, params, defense),
        # C: BPR's candidates per user (the random level of HR@N is N / (C + 2))
        "candidates": _number(params.get("first_stage.candidates")),
    }
    row.update(dict.fromkeys(MODEL_SETTINGS))
    row.update({k: v for k, v in params.items() if k.startswith(("model.", "dataset."))})
    row.update({m: float(run.data.metrics.get(m, math.nan)) for m in METRICS})
    # colluding merchants: one set of metrics per group size k the sweep asked for
    row.update({m: float(v) for m, v in run.data.metrics.items() if m.startswith(f"{COLLUSION}/")})
    row["protocol"] = params.get("protocol", "aip")
    if row["protocol"] == "perceptual":  # its metrics are another set: keep them all
        row.update({m: float(v) for m, v in run.data.metrics.items()})
        row["extractor"] = params.get("extractor", "standard")
        row["mode"] = params.get("mode", "poisoning")
    return row


def distinguish_datasets(frame: pd.DataFrame) -> pd.DataFrame:
    """Give runs of one dataset name with different settings (e.g. the synthetic marketplace at
    32 and at 64 px) different dataset labels: ``synthetic (image_size=64)``. Settings every run
    of the name shares stay out of the label."""
    frame = frame.copy()
    columns = [c for c in frame.columns if c.startswith("dataset.")]
    for name, group in frame.groupby("dataset", sort=False):
        varying = [c for c in columns if group[c].dropna().nunique() > 1]
        if not varying:
            continue
        for index, run in group.iterrows():
            parts = ", ".join(
                f"{c.split('.', 1)[1]}={run[c]}" for c in varying if isinstance(run[c], str)
            )
            frame.at[index, "dataset"] = f"{name} ({parts})" if parts else name
    return frame


def _parent(client: MlflowClient, experiment_id: str, source: Source) -> Any:
    query = f"tags.`{TAG_ROLE}` = 'sweep'"
    if source.sweep is not None:
        query += f" and tags.`{TAG_SWEEP}` = '{source.sweep}'"
    parents = _search(client, experiment_id, query)
    if not parents:
        what = f"sweep {source.sweep!r}" if source.sweep else "any sweep"
        raise ReportError(
            f"experiment {source.experiment!r} has no parent run of {what} "
            f"(tag {TAG_ROLE}=sweep); run the sweep first"
        )
    if len(parents) > 1:
        same = [p for p in parents if p.data.tags.get(TAG_SWEEP) == source.experiment]
        parents = same or sorted(parents, key=lambda p: p.info.start_time or 0, reverse=True)
        log.warning(
            "experiment %r holds several sweeps; reporting on %r",
            source.experiment,
            parents[0].data.tags.get(TAG_SWEEP),
        )
    return parents[0]


def load_runs(source: Source) -> SweepRuns:
    """The FINISHED child trial runs of the sweep's parent run; raises :class:`ReportError`."""
    uri = source.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {uri}; run a sweep first or pass --tracking-uri")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(source.experiment)
    if exp is None or exp.lifecycle_stage != "active":
        known = sorted(e.name for e in client.search_experiments())
        raise ReportError(
            f"experiment {source.experiment!r} not found in {uri}; "
            f"known experiments: {', '.join(known) or '(none)'}"
        )
    parent = _parent(client, exp.experiment_id, source)
    sweep = parent.data.tags.get(TAG_SWEEP) or source.sweep or source.experiment
    children = _search(client, exp.experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    trials = [r for r in children if r.data.tags.get(TAG_ROLE, "trial") == "trial"]
    n_stale = 0
    if source.keys is not None:
        current = [r for r in trials if r.data.tags.get(TAG_KEY) in source.keys]
        n_stale = len(trials) - len(current)
        if n_stale:
            log.warning(
                "%d runs of this sweep were made with other settings than the sweep file's "
                "now; they are left out (report the experiment by name to include them)",
                n_stale,
            )
        trials = current
    finished = [r for r in trials if r.info.status == "FINISHED"]
    if not finished:
        raise ReportError(
            f"sweep {sweep!r} (experiment {source.experiment!r}) has no finished trial runs "
            f"({len(trials)} unfinished or failed)"
        )
    # in start order (ties by run id): the report's rows follow each model's first trial
    frame = distinguish_datasets(pd.DataFrame([run_row(r) for r in finished]))
    frame = frame.sort_values(["start_time", "run_id"], kind="stable", ignore_index=True)
    log.info(
        "sweep %s: %d finished trial runs, %d unfinished or failed ignored",
        sweep,
        len(finished),
        len(trials) - len(finished),
    )
    return SweepRuns(
        source=source,
        client=client,
        experiment_id=exp.experiment_id,
        parent_id=parent.info.run_id,
        sweep=sweep,
        frame=frame,
        n_children=len(trials) + n_stale,
        n_ignored=len(trials) - len(finished),
        n_stale=n_stale,
    )
