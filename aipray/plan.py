"""What one trial of a sweep is, as a value: :class:`TrialPlan`, with its :class:`StagePaths`
and the sweep's :class:`ResourcesConfig`.

The sweep driver (:mod:`aipray.sweep`) parses the YAML and makes one plan per trial, once. Tune,
Ray Data and the protocol objects (:mod:`aipray.protocol`) receive it by value and read typed
fields; nothing below the sweep parses a dict. A plan holds configs and paths, never arrays, so
an actor that Ray restarts rebuilds what it needs from the store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aipray.grid import Component, PerceptualConfig
from aipray.metrics.perceptual import LPIPSConfig
from aipray.models.extractor import ExtractorConfig
from aipray.params import Settings, param


@dataclass(frozen=True)
class StagePaths:
    """Where every stage output of one trial lives, derived from the config alone
    (:func:`aipray.pipeline.stages.stage_paths`)."""

    dataset: Path
    extractor: Path
    bpr: Path
    candidates: Path
    model: Path
    context: Path
    context_undefended: Path
    attack: Path
    result: Path
    #: protocol perceptual: item classes, origin and target (unused under AIP's protocol)
    push: Path | None = None
    #: a defence with weights (the denoiser), built for the trial's ranker; ``None`` for the
    #: others
    defense: Path | None = None
    #: a transfer attack's source model (the ranker its images are crafted against); ``None``:
    #: the trial's own ``model``, or an ensemble
    source: Path | None = None
    #: an ensemble transfer attack's source models; empty otherwise
    ensemble: tuple[Path, ...] = ()

    def as_dict(self) -> dict[str, str | list[str]]:
        return {
            k: [str(p) for p in v] if isinstance(v, tuple) else str(v)
            for k, v in dataclasses.asdict(self).items()
            if v is not None and v != ()
        }

    @classmethod
    def from_dict(cls, d: dict[str, str | list[str]]) -> StagePaths:
        return cls(
            **{k: tuple(map(Path, v)) if isinstance(v, list) else Path(v) for k, v in d.items()}
        )


@dataclass(frozen=True)
class ResourcesConfig(Settings):
    """How trials use the cluster.

    Each trial is a light Tune function (``trial_cpus``) that drives a Ray Data pipeline whose
    ``actors`` each hold one trained ranker (``actor_cpus`` / ``actor_gpus`` each) and process
    ``batch_size`` cold items at a time. Training stages run as Ray tasks with ``train_cpus`` /
    ``train_gpus``. GPUs are used only where requested and present.
    """

    max_concurrent_trials: int = param(2, min=1)
    trial_cpus: float = param(0.01, min=0)
    actors: int = param(1, min=1)
    actor_cpus: float = param(0.5, min=0)
    actor_gpus: float = param(0.0, min=0)
    batch_size: int = param(64, min=1)
    train_cpus: float = param(1.0, min=0)
    train_gpus: float = param(0.0, min=0)
    max_failures: int = param(2, min=0)


@dataclass(frozen=True)
class TrialPlan:
    """One trial, fully resolved: the built configs of its grid point, where its stage outputs
    live, the resources it runs with and the protocol (a name in
    :data:`aipray.protocol.PROTOCOLS`) that turns its images into numbers.

    ``key`` is the trial's identity (its result folder's key, the MLflow tag that finds its run);
    ``params`` are the MLflow params the sweep logs for it (flattened, for the UI only: nothing
    reads them back). ``image_shape`` is the dataset's ``(3, H, W)``, read from the prepared
    catalog when the sweep makes the plan.
    """

    name: str
    key: str
    protocol: str
    dataset: Component
    model: Component
    attack: Component
    defense: Component
    extractor: ExtractorConfig
    paths: StagePaths
    resources: ResourcesConfig
    image_shape: tuple[int, int, int]
    seed: int = 0
    #: number of items in the trial's example figure
    examples: int = 0
    #: the category push of ``protocol: perceptual`` (its mode, origin and target)
    push: PerceptualConfig | None = None
    #: the LPIPS network; ``None``: LPIPS is not measured
    lpips: LPIPSConfig | None = None
    #: group sizes of colluding cold items the trial also reports (:mod:`aipray.protocol.aip`)
    collusion: tuple[int, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, compare=False)
