"""Re-evaluate a stored image set against other defences or models, without re-attacking:
``python -m aipray.reevaluate <storage>/attacks/<attack>-<key> sweeps/quick.yaml``.

The set is a folder an AIP trial stored (``adv.parquet`` and ``provenance.json``, see
:func:`aipray.protocol.cold_items.provenance`). The command reads its provenance, takes the
sweep file's dataset that made it, its models and defences (all, or those ``--models`` and
``--defenses`` name), and runs them as a sweep whose one attack is ``provided`` with that
folder: the sweep driver (:func:`aipray.sweep.drive`) trains what is missing, evaluates the
set's images on each model under each defence and logs one MLflow run per trial, in the
experiment ``<sweep>-reeval-<set>`` unless ``--name`` gives another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from aipray.attacks import ATTACKS
from aipray.attacks.sema import STORED_SET
from aipray.config import Component, ConfigError, SweepConfig, load_sweep
from aipray.params import build_dataclass
from aipray.store import file_sha256

log = logging.getLogger("aipray")

PROVENANCE = "provenance.json"


def read_provenance(folder: Path) -> dict[str, Any]:
    """The provenance of a stored image set; a one-line :class:`ConfigError` when ``folder`` is
    not one."""
    missing = [n for n in (STORED_SET, PROVENANCE) if not (folder / n).is_file()]
    if missing:
        raise ConfigError(
            f"image set: {str(folder)!r} has no {' and no '.join(missing)}; expected the folder "
            "of a stored image set, <storage>/attacks/<attack>-<key>/"
        )
    try:
        made = json.loads((folder / PROVENANCE).read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"image set: {str(folder / PROVENANCE)!r} is not valid JSON") from None
    if not isinstance(made, dict) or "dataset" not in made:
        raise ConfigError(
            f"image set: {str(folder / PROVENANCE)!r} names no dataset; expected the "
            "provenance a sweep writes beside a stored image set"
        )
    return made


def _pick(kind: str, given: list[str] | None, have: tuple[Component, ...]) -> tuple[Component, ...]:
    """The components of ``have`` named (by name or label) in ``given``; all when ``None``."""
    if given is None:
        return have
    out: list[Component] = []
    for name in given:
        found = [c for c in have if name in (c.name, c.label)]
        if not found:
            allowed = ", ".join(dict.fromkeys(c.label for c in have))
            raise ConfigError(
                f"--{kind}: {name!r} is not allowed; expected one of the sweep's {kind}: {allowed}"
            )
        out += [c for c in found if c not in out]
    return tuple(out)


def reevaluation(
    sweep: SweepConfig,
    folder: Path | str,
    *,
    models: list[str] | None = None,
    defenses: list[str] | None = None,
    name: str | None = None,
) -> SweepConfig:
    """The sweep that evaluates the stored set in ``folder`` on ``sweep``'s dataset that made
    it, with its models and defences (those named, or all), the attack ``provided``."""
    from aipray.pipeline.stages import stage_paths

    folder = Path(folder).expanduser().resolve()
    made = read_provenance(folder)
    if sweep.protocol != "aip":
        raise ConfigError(
            f"{sweep.source}: protocol: {sweep.protocol!r} is not allowed; a stored image set "
            "is re-evaluated under protocol: aip"
        )
    if file_sha256(folder / STORED_SET) != made.get("sha256"):
        log.warning(
            "%s: the images differ from those its provenance describes; they are evaluated as "
            "they are now (a trial of their own)",
            folder / STORED_SET,
        )
    datasets = {stage_paths(sweep, t).dataset.name: t.dataset for t in sweep.trials()}
    if made["dataset"] not in datasets:
        shown = ", ".join(sorted(datasets)) or "(none)"
        raise ConfigError(
            f"image set: dataset {made['dataset']!r} is not allowed; the set was made on it, and "
            f"{sweep.source} prepares {shown}: give the sweep file that made the set"
        )
    (config,), _ = build_dataclass(
        ATTACKS.get("provided").Config, {"path": str(folder)}, "attacks.provided"
    )
    attack = Component("attack", "provided", config)
    name = name or f"{sweep.name}-reeval-{folder.name}"
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"--name: {name!r} is not allowed; expected letters, digits, - _ .")
    mlflow = sweep.mlflow
    if mlflow.experiment:
        mlflow = dataclasses.replace(mlflow, experiment=name)
    return dataclasses.replace(
        sweep,
        name=name,
        mlflow=mlflow,
        datasets=(datasets[made["dataset"]],),
        models=_pick("models", models, sweep.models),
        attacks=(attack,),
        defenses=_pick("defenses", defenses, sweep.defenses),
        grids=(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aipray.reevaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("images", help="a stored image set, <storage>/attacks/<attack>-<key>/")
    parser.add_argument("sweep", help="the sweep YAML whose dataset made it (its models, defences)")
    parser.add_argument("--models", nargs="+", default=None, help="the sweep's models to use")
    parser.add_argument("--defenses", nargs="+", default=None, help="the sweep's defences to use")
    parser.add_argument("--name", default=None, help="sweep / experiment name")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sweep = reevaluation(
            load_sweep(args.sweep),
            args.images,
            models=args.models,
            defenses=args.defenses,
            name=args.name,
        )
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    from aipray.sweep import drive

    return drive(sweep, ray_address=args.address, num_cpus=args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
