#!/usr/bin/env python
"""Prepare datasets (decode images, filter, split, pick cold items) without running a sweep.

    python scripts/prepare_data.py sweeps/my.yaml
    python scripts/prepare_data.py --dataset amazon_men [--path data/AmazonMen...npy]
    python scripts/prepare_data.py --dataset folder --path data/amazon_women --set k_core=10

Only the prepare stage runs (no Ray). Each catalog lands where a sweep with the same dataset
settings and storage looks for it (``<storage>/datasets/<name>-<hash of the settings>/``), so
the sweep then reuses it. A catalog already there is left alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.attacks import ATTACKS
from aipray.config import Component, ConfigError, SweepConfig, load_sweep, parse_sweep
from aipray.data import DATASETS
from aipray.data.images import WORKERS_ENV
from aipray.models import MODELS
from aipray.pipeline.stages import prepare_dataset, stage_paths
from aipray.store import done


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def sweep_for_dataset(name: str, settings: dict[str, Any], storage: str) -> SweepConfig:
    """A minimal sweep around one dataset: its dataset paths are those of any real sweep with the
    same dataset settings and storage (the dataset key depends on the dataset settings only)."""
    raw = {"name": "prepare", "storage": storage, "datasets": {name: settings}}
    pairs = [("dvbpr", "insa")] + [
        (m, a)
        for m in MODELS.names()
        if MODELS.get(m).visual
        for a in ATTACKS.names()
        if not ATTACKS.get(a).missing(MODELS.get(m))
    ]
    error: ConfigError | None = None
    for model, attack in pairs:
        if model not in MODELS or attack not in ATTACKS:
            continue
        trial_raw = copy.deepcopy(raw) | {"models": {model: {}}, "attacks": {attack: {}}}
        try:
            return parse_sweep(trial_raw, source=f"--dataset {name}")
        except ConfigError as err:
            if "datasets" in str(err):
                raise
            error = err
    raise error or ConfigError("no model and attack to build a sweep around the dataset")


def dataset_targets(sweep: SweepConfig) -> list[tuple[Component, Path]]:
    """Each distinct dataset of the sweep with the folder its catalog goes to."""
    seen: dict[Path, Component] = {}
    for trial in sweep.trials():
        seen.setdefault(stage_paths(sweep, trial).dataset, trial.dataset)
    return [(component, path) for path, component in seen.items()]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, prepare every missing catalog, print where each one is."""
    parser = argparse.ArgumentParser(
        prog="scripts/prepare_data.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep", nargs="?", help="sweep YAML whose datasets to prepare")
    parser.add_argument("--dataset", choices=DATASETS.names(), help="prepare one dataset")
    parser.add_argument("--path", help="with --dataset: its path setting")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_setting,
        default=[],
        metavar="KEY=VALUE",
        help="with --dataset: another setting (YAML value), e.g. n_cold=500; repeatable",
    )
    parser.add_argument("--storage", default=".aipray", help="with --dataset: storage folder")
    parser.add_argument("--workers", type=int, help="image decoding threads (default: CPUs, ≤ 8)")
    args = parser.parse_args(argv)
    if (args.sweep is None) == (args.dataset is None):
        parser.error("give either a sweep YAML or --dataset NAME")
    if args.sweep and (args.path or args.settings):
        parser.error("--path and --set go with --dataset; a sweep YAML has its own settings")
    if args.workers:
        os.environ[WORKERS_ENV] = str(args.workers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        if args.sweep:
            sweep = load_sweep(args.sweep)
        else:
            settings = dict(args.settings)
            if args.path:
                settings["path"] = args.path
            sweep = sweep_for_dataset(args.dataset, settings, args.storage)
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2

    targets = dataset_targets(sweep)
    done_before = {path for _, path in targets if done(path)}
    with logging_redirect_tqdm():
        for component, path in tqdm(targets, desc="datasets", unit="dataset", disable=None):
            prepare_dataset(component, path)
    for component, path in targets:
        summary = json.loads((path / "summary.json").read_text())
        counts = ", ".join(
            f"{key}={summary[key]}"
            for key in ("n_users", "n_items", "n_cold", "images_missing", "images_corrupt")
            if key in summary
        )
        state = "already prepared" if path in done_before else "prepared"
        print(f"{component.label}: {state} in {path} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
