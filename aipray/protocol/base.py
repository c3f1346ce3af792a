"""What a protocol is, and one trial run through it without Ray.

A :class:`Protocol` turns a trial's images into numbers. It owns

- its **stages**: the stored outputs a trial stands on, wave by wave, and how to build the ones
  only it needs (:meth:`Protocol.build_stage`; the shared ones are
  :func:`aipray.pipeline.stages.compute_stage`'s);
- its **items**: the table of images a trial evaluates (:meth:`Protocol.items`);
- its **per-batch evaluator** (:meth:`Protocol.evaluator`): clean images of a batch of items →
  per-item rows and adversarial images;
- its **reduction and example figures** (:meth:`Protocol.finish`): the per-item rows → the
  trial's metrics, with figures written beside them.

Protocols are registered in :data:`PROTOCOLS` by the name a sweep's ``protocol:`` key gives; a
new protocol is one module with one registered class. :func:`run` drives a trial through its
protocol in one process; the sweep's Ray Data actors call the same evaluator on the same
batches (:mod:`aipray.pipeline.trial`), and the sweep runs the same :meth:`Protocol.finish`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from aipray.grid import TrialSpec
from aipray.metrics.perceptual import LPIPSConfig
from aipray.pixels import to_float, to_uint8
from aipray.plan import ResourcesConfig, TrialPlan
from aipray.registry import Registry
from aipray.store import atomic_dir, done

log = logging.getLogger(__name__)

#: ``(clean [B, 3, H, W] in [0, 1], item ids [B], adversarial images or None)`` → per-item rows
#: (numpy columns, ``item_id`` first) and the adversarial images (on the 8-bit grid)
Evaluator = Callable[
    [torch.Tensor, np.ndarray, "torch.Tensor | None"],
    tuple[dict[str, np.ndarray], torch.Tensor],
]


def pick_device(gpus: float) -> torch.device:
    """CUDA when GPUs were requested and one is visible, else CPU."""
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def decode_uint8(column: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A column of raw uint8 ``[3, H, W]`` bytes → uint8 ``[B, 3, H, W]``."""
    return np.stack([np.frombuffer(b, dtype=np.uint8).reshape(shape) for b in column])


def decode_images(column: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A column of raw uint8 ``[3, H, W]`` bytes → float ``[B, 3, H, W]`` in [0, 1]."""
    return to_float(decode_uint8(column, shape))


def encode_images(images: torch.Tensor) -> np.ndarray:
    """Float images on the 8-bit grid → an object column of raw uint8 bytes."""
    raw = to_uint8(images).cpu().numpy()
    out = np.empty(raw.shape[0], dtype=object)
    out[:] = [r.tobytes() for r in raw]
    return out


def lpips_metric(config: LPIPSConfig | None, device: torch.device | str):
    """The LPIPS network ``config`` names on ``device``, or ``None`` when LPIPS is not measured
    (quietly: a sweep's driver has said once whether its backbone is the published one)."""
    if config is None:
        return None
    from aipray.metrics.perceptual import make_lpips

    return make_lpips(config, device, quiet=True)


def images_table(item_ids: np.ndarray, images: Any) -> pa.Table:
    """``item_id`` and ``image`` (raw uint8 ``[3, H, W]`` bytes) of the given items."""
    return pa.table(
        {
            "item_id": pa.array(np.asarray(item_ids), pa.int64()),
            "image": pa.array([np.asarray(im).tobytes() for im in images], pa.binary()),
        }
    )


def evaluate_batch(
    evaluator: Evaluator, batch: dict[str, np.ndarray], shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """One batch ``{"item_id", "image"[, "adv"]}`` of raw image bytes through ``evaluator``:
    its per-item rows with the adversarial images as raw bytes (``adv``). What a sweep's Ray
    Data actor does with each batch, and :func:`map_items` with each slice."""
    clean = decode_images(batch["image"], shape)
    ids = np.array(batch["item_id"])  # a writable copy (Arrow buffers are read-only)
    given = decode_images(batch["adv"], shape) if "adv" in batch else None
    out, adv = evaluator(clean, ids, given)
    out["adv"] = encode_images(adv)
    return out


class Protocol:
    """A way of measuring an attack (see the module's docstring). Subclasses set
    :attr:`stages` and :attr:`columns` and implement the methods that raise here."""

    #: the registered name (set by :data:`PROTOCOLS`)
    name: ClassVar[str]
    #: the stages a trial stands on, wave by wave (a stage depends only on earlier waves); each
    #: stores its output at the :class:`~aipray.plan.StagePaths` field of its name (the
    #: ``ranker``'s at ``model``)
    stages: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: the console's summary columns: metric → short name
    columns: ClassVar[dict[str, str]] = {}
    #: the resources :meth:`finish` runs with in a sweep: ``"actor"`` (it loads what an actor
    #: loads) or ``"train"`` (it trains)
    finish_on: ClassVar[str] = "actor"

    def uses_extractor(self, trial: TrialSpec) -> bool:
        """Whether the trial needs the pretrained extractor stage."""
        return trial.needs_extractor

    def build_stage(self, stage: str, trial: TrialSpec, paths: Any, device: torch.device) -> None:
        """Build a stage output only this protocol has (the generic ones are the pipeline's)."""
        raise KeyError(f"protocol {self.name!r} has no stage {stage!r}")

    def rows_path(self, plan: TrialPlan) -> Path:
        """The stored output the per-item rows belong to (where the batches of a run in
        progress collect, beside it)."""
        return plan.paths.result

    def stored_rows(self, plan: TrialPlan) -> pd.DataFrame | None:
        """Per-item rows an earlier trial stored and this one can use as they are (with
        ``adv``), or ``None``."""
        return None

    def items(self, plan: TrialPlan) -> pa.Table:
        """The items to evaluate: ``item_id``, ``image`` (raw uint8 bytes) and, when stored
        adversarial images serve the trial, ``adv``."""
        raise NotImplementedError

    def evaluator(self, plan: TrialPlan, device: torch.device) -> Evaluator:
        """The per-batch evaluator, built from the plan's stored stage outputs."""
        raise NotImplementedError

    def store_attack(self, plan: TrialPlan, table: pa.Table, rows: pd.DataFrame) -> None:
        """Store what later trials reuse of these rows (the adversarial images)."""

    def finish(
        self, plan: TrialPlan, rows: pd.DataFrame, folder: Path, device: torch.device
    ) -> dict[str, float]:
        """The trial's metrics from its per-item rows (with ``adv``, in item order); example
        figures go into ``folder``."""
        raise NotImplementedError

    def finish_resources(self, resources: ResourcesConfig) -> tuple[float, float]:
        """``(cpus, gpus)`` of :meth:`finish` in a sweep (see :attr:`finish_on`)."""
        if self.finish_on == "train":
            return resources.train_cpus, resources.train_gpus
        return resources.actor_cpus, resources.actor_gpus


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def protocol_of(plan: TrialPlan) -> Protocol:
    """The protocol object of a plan."""
    return PROTOCOLS.get(plan.protocol)()


def map_items(plan: TrialPlan, table: pa.Table, device: torch.device | str = "cpu") -> pd.DataFrame:
    """The per-item rows of ``table``, evaluated in this process in the slices a sweep's Ray
    Data actors get (``resources.batch_size``), in item order, with ``resumed`` (all False)."""
    evaluator = protocol_of(plan).evaluator(plan, torch.device(device))
    step = plan.resources.batch_size
    parts = []
    for start in range(0, table.num_rows, step):
        chunk = table.slice(start, step)
        batch = {c: chunk.column(c).to_numpy(zero_copy_only=False) for c in chunk.column_names}
        out = evaluate_batch(evaluator, batch, plan.image_shape)
        out["resumed"] = np.zeros(len(out["item_id"]), dtype=bool)
        parts.append(pd.DataFrame(out))
    return pd.concat(parts, ignore_index=True).sort_values("item_id", ignore_index=True)


MapItems = Callable[[TrialPlan, pa.Table], pd.DataFrame]
Finish = Callable[[TrialPlan, pd.DataFrame, Path], dict[str, float]]


def run(
    plan: TrialPlan,
    *,
    map_with: MapItems | None = None,
    finish_with: Finish | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Compute (or load) one trial's metrics and store its result folder: ``metrics.json``,
    ``items.parquet`` (per-item rows) and the protocol's example figures.

    ``map_with(plan, table)`` evaluates the items (default :func:`map_items`, in this process;
    a sweep passes Ray Data's actor pool) and ``finish_with(plan, rows, folder)`` runs
    :meth:`Protocol.finish` (default: here, on ``device``; a sweep runs it as a Ray task)."""
    if done(plan.paths.result):
        return json.loads((plan.paths.result / "metrics.json").read_text())
    protocol = protocol_of(plan)
    rows = protocol.stored_rows(plan)
    resumed = 0
    if rows is None:
        table = protocol.items(plan)
        if table.num_rows == 0:
            raise ValueError(f"{plan.name}: no item to evaluate")
        mapped = (map_with or (lambda p, t: map_items(p, t, device)))(plan, table)
        resumed = int(mapped.pop("resumed").sum())
        protocol.store_attack(plan, table, mapped)
        rows = mapped
    if finish_with is None:

        def finish_with(p: TrialPlan, r: pd.DataFrame, folder: Path) -> dict[str, float]:
            return protocol.finish(p, r, folder, torch.device(device))

    with atomic_dir(plan.paths.result) as tmp:
        metrics = finish_with(plan, rows, tmp)
        metrics["items_resumed"] = float(resumed)  # read back from an interrupted run's batches
        pq.write_table(
            pa.Table.from_pandas(rows.drop(columns=["adv"]), preserve_index=False),
            tmp / "items.parquet",
        )
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("%s: %s", plan.name, {k: round(v, 4) for k, v in metrics.items()})
    return metrics
