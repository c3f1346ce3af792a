#!/usr/bin/env python
"""The gatekeeper detector on a sweep's testbed, in one process: its ROC AUC, the clean cold
items it rejects at its calibrated threshold (95 % recall on attacked held-out warm items), the
adversarial ones it catches, and the HR@5 INSA still reaches, oblivious and detector-aware.

    python scripts/detector_bench.py sweeps/defences_synthetic.yaml [--models dvbpr] [--eps 8]

It takes the sweep's dataset, first stage, extractor, rankers, INSA settings and ``detector``
settings (defaults when the sweep has none), and runs INSA oblivious and adaptive against the
detector and, for reference, against no defence. Stages and trials are stored under the sweep's
storage and reused, as a sweep's are (``--storage`` to put them elsewhere).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import parse_sweep
from aipray.pipeline import stages
from aipray.protocol import PROTOCOLS, run
from aipray.sweep import trial_plans

COLUMNS = {
    "detector/auc": "AUC",
    "detector/fpr_at_95_recall": "FPR@95 (clean cold)",
    "detector/recall": "recall",
    "detector/fpr_at_trial_95_recall": "FPR@95 (trial's own)",
    "adversarial/hr_at_5": "adv HR@5",
    "cooperative/hr_at_5": "coop HR@5",
    "ordinary/hr_at_5": "ord HR@5",
}


def bench_sweep(
    raw: dict, models: list[str] | None, eps: list[float] | None, storage: str | None
) -> dict:
    """The sweep restricted to INSA (oblivious and adaptive) against no defence and the
    detector, on ``models`` and ``eps`` when given."""
    out = dict(raw)
    if models:
        out["models"] = {m: raw["models"][m] for m in models}
    insa = dict(raw.get("attacks", {}).get("insa", {}))
    if eps:
        insa["eps"] = eps
    insa["adaptive"] = [False, True]
    insa.pop("eot_samples", None)
    out["attacks"] = {"insa": insa}
    out["defenses"] = {"none": {}, "detector": raw.get("defenses", {}).get("detector") or {}}
    out["examples"] = 0
    if storage:
        out["storage"] = storage
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="sweep YAML (the testbed and its settings)")
    parser.add_argument("--models", nargs="*", default=None, help="rankers (default: all)")
    parser.add_argument("--eps", type=float, nargs="*", default=None, help="INSA's ε values")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: YAML's)")
    parser.add_argument("--storage", default=None, help="store folder (default: the sweep's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    raw = yaml.safe_load(args.sweep.read_text())
    if args.seed is not None:
        raw["seed"] = args.seed
    sweep = parse_sweep(bench_sweep(raw, args.models, args.eps, args.storage), args.sweep)
    trials = [t for t in sweep.trials() if not (t.adaptive and t.defense.name == "none")]
    trials = list({t.key(): t for t in trials}.values())
    protocol = PROTOCOLS.get(sweep.protocol)()
    device = torch.device("cpu")
    for trial in trials:
        paths = stages.stage_paths(sweep, trial)
        for wave in protocol.stages:
            for kind in wave:
                if kind == "extractor" and not trial.needs_extractor:
                    continue
                stages.compute_stage(kind, sweep, trial, paths, device)
    rows = []
    for plan, trial in zip(trial_plans(sweep, trials), trials, strict=True):
        metrics = run(plan)
        attack = "INSA (adaptive)" if trial.adaptive else "INSA"
        row = {"model": trial.model.label, "ε": trial.eps, "defence": trial.defense.label}
        row |= {"attack": attack, **{v: metrics.get(k) for k, v in COLUMNS.items()}}
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["model", "ε", "defence", "attack"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
