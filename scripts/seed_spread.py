#!/usr/bin/env python
"""How much of a sweep's result is its training seed: run (or resume) the sweep once per seed and
print, per trial, HR@5 under attack and the prediction shift (the mean score gain, which still
moves where no item reaches a top 5) for every seed with the mean and the range, and each
ranker's full-ranking HR@10 per seed.

    python scripts/seed_spread.py sweeps/quick.yaml --seeds 0 1 2 [--defense none]

Every seed retrains the first stage, the extractor and the rankers on the same dataset
(``python -m aipray.sweep SWEEP --seed N`` runs one of them; seeds other than the YAML's are
stored in their own MLflow experiment, ``<name>-seed<N>``). Finished seeds are read back, not
rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.sweep import run_sweep, with_seed

COLUMNS = {
    "adversarial/hr_at_5": "adv@5",
    "cooperative/hr_at_5": "coop@5",
    "prediction_shift": "shift",
    "ranker/full_hr_at_10": "ranker full HR@10",
}


def spread(tables: dict[int, pd.DataFrame], column: str) -> pd.DataFrame:
    """``column`` per trial (rows) and seed (columns), with the mean, min and max over seeds;
    a trial missing under some seed has no mean."""
    wide = pd.DataFrame({seed: t.set_index("trial")[column] for seed, t in tables.items()})
    seeds = wide.columns
    wide["mean"] = wide[seeds].mean(axis=1, skipna=False)
    wide["min"] = wide[seeds].min(axis=1, skipna=False)
    wide["max"] = wide[seeds].max(axis=1, skipna=False)
    return wide.sort_index()


def rankers(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each ranker's full-ranking HR@10 per seed (one value per trained ranker)."""
    out = {}
    for seed, t in tables.items():
        model = t["trial"].str.split("/").str[:2].str.join("/")
        out[seed] = t.assign(ranker=model).groupby("ranker")["ranker full HR@10"].first()
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", help="sweep YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--defense", default=None, help="only trials under this defence label (e.g. none)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        raise SystemExit(f"--seeds: {args.seeds}; give at least two different seeds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = load_sweep(args.sweep)
    tables = {}
    for seed in args.seeds:
        table, failed = run_sweep(with_seed(base, seed), num_cpus=args.num_cpus, columns=COLUMNS)
        if failed:
            raise SystemExit(f"seed {seed}: {len(failed)} trials failed: {', '.join(failed)}")
        tables[seed] = table
    if args.defense is not None:
        tables = {s: t[t["trial"].str.endswith("/" + args.defense)] for s, t in tables.items()}
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for column in ("adv@5", "coop@5"):
            print(f"\nHR@5 {column.split('@')[0]} per seed")
            print(spread(tables, column).to_string(float_format=lambda v: f"{v:.3f}"))
        print("\nprediction shift per seed")
        print(spread(tables, "shift").to_string(float_format=lambda v: f"{v:+.3f}"))
        print("\nranker full-ranking HR@10 per seed")
        print(rankers(tables).to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
