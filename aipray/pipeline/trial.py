"""One Tune trial: the plan's protocol object, its items mapped by a Ray Data actor pool and its
finish (reduction and example figures) run as a Ray task.

The trial stores everything it computed under its content-addressed result folder
(``metrics.json``, per-item ``items.parquet``, the protocol's figures) before reporting to Tune,
and the adversarial images under the attack's folder, so a retried or re-run trial recomputes
nothing that already exists. While it runs, every finished batch is stored too (``.partial-*``
beside the output the rows belong to): a trial that dies halfway resumes from its batches
(``items_resumed`` counts the items read back). Without Ray, :func:`aipray.protocol.run` runs
the same trial in one process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from aipray.pipeline.actor import BatchFolder, TrialActor, map_with_actors, partial_folder
from aipray.plan import TrialPlan
from aipray.protocol.base import pick_device, protocol_of, run

log = logging.getLogger(__name__)


def map_items(plan: TrialPlan, table: pa.Table) -> pd.DataFrame:
    """The plan's items through :class:`TrialActor` on a Ray Data actor pool, resumable from the
    batches a killed run stored."""
    folder = partial_folder(protocol_of(plan).rows_path(plan))
    return map_with_actors(table, TrialActor, {"plan": plan}, plan.resources, folder)


def _finish(plan: TrialPlan, rows: pd.DataFrame, folder: str, gpus: float, threads: int):
    torch.set_num_threads(max(1, threads))
    return protocol_of(plan).finish(plan, rows, Path(folder), pick_device(gpus))


def finish_as_task(plan: TrialPlan, rows: pd.DataFrame, folder: Path) -> dict[str, float]:
    """:meth:`~aipray.protocol.base.Protocol.finish` as a Ray task with the resources the
    protocol asks for, outside the trial's placement group (a light bundle): the Tune process
    loads no catalog, model or extractor."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cpus, gpus = protocol_of(plan).finish_resources(plan.resources)
    task = ray.remote(_finish).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_retries=1,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    return ray.get(task.remote(plan, rows, str(folder), gpus, max(1, round(cpus))))


def evaluate(plan: TrialPlan) -> dict[str, float]:
    """Compute (or load) one trial's metrics through Ray (usable without Tune)."""
    metrics = run(plan, map_with=map_items, finish_with=finish_as_task)
    BatchFolder(partial_folder(protocol_of(plan).rows_path(plan))).clear()
    return metrics


def run_trial(config: dict[str, Any], plans: dict[str, TrialPlan]) -> None:
    """The Tune trainable. ``config["trial"]`` is the trial key; ``plans`` (shared through the
    object store by ``tune.with_parameters``) maps keys to the plans :mod:`aipray.sweep` made.
    Only the key is a Tune parameter, so Tune's console and result files stay small."""
    import ray
    from ray import tune

    # trials run side by side: per-operator bars would interleave; the driver shows one bar,
    # and Ray Data's per-dataset lines (plan, start, finish) would be three more per trial
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    tune.report(evaluate(plans[config["trial"]]))
