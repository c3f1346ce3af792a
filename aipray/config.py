"""The sweep YAML: parsing, validation and expansion into the grid of trials.

Every error is found here, before Ray starts, and reported as one line naming the key, the value
and what is allowed. Unknown keys are errors, never silently ignored. The values themselves are
checked by the config classes when they are built (:class:`aipray.params.Settings`); this module
only puts the YAML location in front of their messages.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aipray.attacks import ATTACKS
from aipray.data import DATASETS
from aipray.defenses import DEFENSES
from aipray.grid import (  # re-exported: the grid's values were defined here before
    PROTOCOLS,
    Component,
    Grid,
    PerceptualConfig,
    TrialSpec,
)
from aipray.grid_checks import (
    check_adaptive,
    check_cold_items,
    check_perceptual,
    check_pretrain_possible,
    check_sources,
    check_text_readable,
    check_transfer,
)
from aipray.metrics.perceptual import LPIPSConfig
from aipray.models import MODELS
from aipray.models.bpr import BPRConfig
from aipray.models.extractor import ExtractorConfig
from aipray.params import (  # build_dataclass is re-exported: pipeline and tests use it here
    ConfigError,
    Settings,
    build_dataclass,
    param,
)
from aipray.plan import ResourcesConfig  # re-exported: it was defined here


@dataclass(frozen=True)
class FirstStageConfig(Settings):
    """BPR candidate generation: each user's top ``candidates`` items (AIP: 1000)."""

    candidates: int = param(1000, min=1)
    bpr: BPRConfig = field(default_factory=BPRConfig)


@dataclass(frozen=True)
class MLflowConfig(Settings):
    """Tracking store; ``None`` = SQLite at ``mlflow/mlflow.db`` with artifacts in
    ``mlflow/artifacts`` under the working directory. ``experiment`` defaults to the sweep name."""

    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    """A whole study. ``datasets``/``models``/``attacks``/``defenses`` are the top-level axes;
    ``grids`` the products actually run (by default the one top-level product; a YAML ``grids``
    list replaces axes per sub-grid, e.g. defences only for INSA, as in AIP's tables)."""

    name: str
    source: Path
    seed: int
    storage: Path
    mlflow: MLflowConfig
    datasets: tuple[Component, ...]
    first_stage: FirstStageConfig
    extractors: tuple[Component, ...]
    models: tuple[Component, ...]
    attacks: tuple[Component, ...]
    defenses: tuple[Component, ...]
    resources: ResourcesConfig
    examples: int
    grids: tuple[Grid, ...] = ()
    protocol: str = "aip"
    pushes: tuple[Component, ...] = ()
    #: the LPIPS network; ``None`` (no ``lpips`` key) = LPIPS is not measured
    lpips: LPIPSConfig | None = None
    #: group sizes ``k`` of colluding cold items (one merchant's ``k`` items in every candidate
    #: set at once) each AIP trial also reports; empty: none
    collusion: tuple[int, ...] = ()

    @property
    def extractor(self) -> ExtractorConfig:
        """The first (under AIP's protocol: the only) extractor."""
        return self.extractors[0].config

    def trials(self) -> list[TrialSpec]:
        """Every grid's trials, each once, defence-major within a grid so concurrent trials
        rarely compute the same attack (a non-adaptive attack's images serve every defence)."""
        grids = self.grids or (
            Grid("main", self.datasets, self.models, self.attacks, self.defenses),
        )
        pushes: tuple[Component | None, ...] = self.pushes or (None,)
        grids = tuple(
            dataclasses.replace(g, extractors=self.extractors, pushes=pushes, sources=self.models)
            for g in grids
        )
        seen: set[str] = set()
        out: list[TrialSpec] = []
        for grid in grids:
            for trial in grid.trials():
                key = trial.key()
                if key not in seen:
                    seen.add(key)
                    out.append(trial)
        return out

    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow' / 'mlflow.db'}"

    def artifact_location(self) -> str:
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        return (Path.cwd().resolve() / "mlflow" / "artifacts").as_uri()

    def experiment(self) -> str:
        return self.mlflow.experiment or self.name


def _components(kind: str, registry, raw: Any, where: str, allowed=None) -> tuple[Component, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: {raw!r} is not allowed; expected a mapping of {kind} names")
    names = (
        allowed
        if allowed is not None
        else [*registry.names(), *_import_paths(registry, raw, where)]
    )
    out: list[Component] = []
    for name, settings in raw.items():
        if name not in names:
            raise ConfigError(
                f"{where}: unknown {kind} {name!r}; allowed: {', '.join(names)} or the import "
                "path module:Class of one"
            )
        cls = registry.get(name)
        if not isinstance(getattr(cls, "Config", None), type):
            raise ConfigError(
                f"{where}.{name}: {cls.__name__} has no Config (the frozen dataclass of its "
                "sweep settings); give it one to name it in a sweep"
            )
        configs, _ = build_dataclass(cls.Config, settings, f"{where}.{name}", allow_axes=True)
        out.extend(Component(kind, name, c) for c in configs)
    return tuple(out)


def _import_paths(registry, raw: Any, where: str) -> list[str]:
    """The names in ``raw`` that are import paths (``module:Class``), each checked to import."""
    paths = [n for n in (raw if isinstance(raw, dict) else ()) if isinstance(n, str) and ":" in n]
    for name in paths:
        try:
            registry.get(name)
        except KeyError as err:
            raise ConfigError(f"{where}: {err.args[0]}") from None
    return paths


TOP_KEYS = {
    "name": "the sweep's name (experiment name in MLflow)",
    "description": "free text",
    "seed": "integer seed of every training stage",
    "storage": "folder for datasets, models and trial results",
    "mlflow": "tracking settings",
    "datasets": "datasets and their settings",
    "first_stage": "BPR candidate generation",
    "extractor": "the pretrained feature extractor (a list of them: an axis of protocol: "
    "perceptual)",
    "models": "visually-aware rankers",
    "attacks": "attacks with their eps lists",
    "defenses": "input defences",
    "resources": "cluster resources",
    "examples": "number of items in each trial's example image grid",
    "grids": "sub-grids that replace some of datasets/models/attacks/defenses each",
    "protocol": "aip (cold items, two stages) or perceptual (category push)",
    "perceptual": "the category push of protocol: perceptual",
    "lpips": "the LPIPS network of the perceptual metrics (absent: LPIPS is not measured)",
    "collusion": "group sizes k of colluding cold items each trial also reports (protocol: aip)",
}
GRID_KEYS = ("name", "datasets", "models", "attacks", "defenses")


def load_sweep(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a sweep YAML; raises :class:`ConfigError` on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file: {str(path)!r} does not exist; give the path of a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    return parse_sweep(raw, source=path)


def parse_sweep(raw: Any, source: Path | str = "<sweep>") -> SweepConfig:
    where = str(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    for key in ("name", "datasets", "models", "attacks"):
        if key not in raw:
            raise ConfigError(f"{where}: {key}: missing; expected {TOP_KEYS[key]}")
    name = raw["name"]
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(
            f"{where}: name: {name!r} is not allowed; expected letters, digits, - _ ."
        )
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{where}: seed: {seed!r} is not allowed; expected an integer")
    examples = raw.get("examples", 6)
    if not isinstance(examples, int) or isinstance(examples, bool) or not 0 <= examples <= 64:
        raise ConfigError(f"{where}: examples: {examples!r} is not allowed; expected 0..64")
    collusion = _collusion(raw.get("collusion", []), where)
    storage = raw.get("storage", ".aipray")
    if not isinstance(storage, str) or not storage:
        raise ConfigError(f"{where}: storage: {storage!r} is not allowed; expected a folder path")

    datasets, models, attacks, defenses = _axes(raw, where)
    grids: list[Grid] = []
    raw_grids = raw.get("grids", [])
    if not isinstance(raw_grids, list):
        raise ConfigError(f"{where}: grids: expected a list of sub-grids, got {raw_grids!r}")
    for n, g in enumerate(raw_grids):
        at = f"{where}: grids[{n}]"
        if not isinstance(g, dict) or not g:
            raise ConfigError(f"{at}: expected a mapping with some of {', '.join(GRID_KEYS)}")
        bad = sorted(set(map(str, g)) - set(GRID_KEYS))
        if bad:
            raise ConfigError(f"{at}: unknown key {bad[0]!r}; allowed: {', '.join(GRID_KEYS)}")
        merged = {k: g.get(k, raw.get(k)) for k in ("datasets", "models", "attacks", "defenses")}
        grids.append(Grid(str(g.get("name", f"grid{n}")), *_axes(merged, at), sources=models))
    protocol = raw.get("protocol", "aip")
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{where}: protocol: {protocol!r} is not allowed; allowed: {', '.join(PROTOCOLS)}"
        )
    raw_extractors = raw.get("extractor")
    if not isinstance(raw_extractors, list):
        raw_extractors = [raw_extractors]
    if not raw_extractors:
        raise ConfigError(f"{where}: extractor: an empty list is not allowed; give >= 1 mapping")
    extractor_configs = []
    for n, one in enumerate(raw_extractors):
        at = f"{where}: extractor" + (f"[{n}]" if len(raw_extractors) > 1 else "")
        extractor_configs += build_dataclass(ExtractorConfig, one, at, allow_axes=True)[0]
    fingerprints = [repr(c.fingerprint()) for c in extractor_configs]
    if len(set(fingerprints)) < len(fingerprints):
        raise ConfigError(f"{where}: extractor: two entries describe the same extractor")
    extractors = tuple(Component("extractor", c.arch, c) for c in extractor_configs)
    if protocol == "aip" and len(extractors) > 1:
        raise ConfigError(
            f"{where}: extractor: a list is not allowed with protocol: aip; give one extractor "
            "(several extractors are an axis of protocol: perceptual)"
        )
    all_grids = grids or [Grid("main", datasets, models, attacks, defenses)]
    check_sources(all_grids, models, f"{where}: attacks")
    if any(c.weights == "pretrain" for c in extractor_configs):
        check_pretrain_possible(all_grids, where, force=protocol == "perceptual")
    for extractor_config in extractor_configs:
        check_text_readable(all_grids, extractor_config, where)
    pushes: tuple[Component, ...] = ()
    if protocol == "perceptual":
        push_configs, _ = build_dataclass(
            PerceptualConfig, raw.get("perceptual"), f"{where}: perceptual", allow_axes=True
        )
        pushes = tuple(Component("push", c.mode, c) for c in push_configs)
        check_perceptual(all_grids, push_configs, extractor_configs, where)
    else:
        if "perceptual" in raw:
            raise ConfigError(f"{where}: perceptual: only allowed with protocol: perceptual")
        check_cold_items(all_grids, where)
    if collusion and protocol != "aip":
        raise ConfigError(f"{where}: collusion: only allowed with protocol: aip")
    lpips_cfg = None
    if raw.get("lpips") is not None:
        (lpips_cfg,), _ = build_dataclass(LPIPSConfig, raw["lpips"], f"{where}: lpips")
    (first_stage,), _ = build_dataclass(
        FirstStageConfig, raw.get("first_stage"), f"{where}: first_stage"
    )
    (resources,), _ = build_dataclass(ResourcesConfig, raw.get("resources"), f"{where}: resources")
    (mlflow_cfg,), _ = build_dataclass(MLflowConfig, raw.get("mlflow"), f"{where}: mlflow")
    return SweepConfig(
        name=name,
        source=Path(source),
        seed=seed,
        storage=Path(storage).expanduser().resolve(),
        mlflow=mlflow_cfg,
        datasets=datasets,
        first_stage=first_stage,
        extractors=extractors,
        models=models,
        attacks=attacks,
        defenses=defenses,
        resources=resources,
        examples=examples,
        grids=tuple(grids),
        protocol=protocol,
        pushes=pushes,
        lpips=lpips_cfg,
        collusion=collusion,
    )


MAX_COLLUSION = 64


def _collusion(raw: Any, where: str) -> tuple[int, ...]:
    """``collusion``: a list of distinct group sizes ``k`` in 2..64 (k = 1 is every trial's
    ordinary evaluation), sorted."""
    values = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in values) or not all(
        2 <= k <= MAX_COLLUSION for k in values
    ):
        raise ConfigError(
            f"{where}: collusion: {raw!r} is not allowed; expected a list of group sizes "
            f"2..{MAX_COLLUSION}"
        )
    return tuple(sorted(set(values)))


def _axes(raw: dict[str, Any], where: str) -> tuple[tuple[Component, ...], ...]:
    datasets = _components("dataset", DATASETS, raw["datasets"], f"{where}: datasets")
    paths = _import_paths(MODELS, raw["models"], f"{where}: models")
    visual_models = [n for n in [*MODELS.names(), *paths] if MODELS.get(n).visual]
    models = _components("model", MODELS, raw["models"], f"{where}: models", visual_models)
    check_adaptive(raw["attacks"], f"{where}: attacks")
    check_transfer(raw["attacks"], f"{where}: attacks")
    attacks = _components("attack", ATTACKS, raw["attacks"], f"{where}: attacks")
    defenses = _components(
        "defense", DEFENSES, raw.get("defenses") or {"none": {}}, f"{where}: defenses"
    )
    for attack in attacks:
        attack_cls = ATTACKS.get(attack.name)
        for model in models:
            missing = attack_cls.missing(MODELS.get(model.name))
            if missing:
                raise ConfigError(
                    f"{where}: attacks.{attack.name}: not available for model {model.name!r}; "
                    f"it needs the model's {missing}, which {model.name!r} does not implement"
                )
    return datasets, models, attacks, defenses
