#!/usr/bin/env python
"""Does EXPA's early stop measure the same thing as AIP's fixed 5,000 steps? Runs both on the
same cold items against the rankers a sweep trained, and prints, per ranker and ε, HR@5 under
each, their paired difference over items (mean, 95 % interval, paired t-test p), the steps the
early stop used and the measured time ratio.

    python -m aipray.sweep sweeps/paper_synthetic.yaml        # trains the rankers (once)
    python scripts/expa_early_stop.py sweeps/paper_synthetic.yaml --patience 100 --tol 1e-3

Only the ``attacks`` grid's undefended EXPA trials are used (one per ranker and ε); the stages
they stand on must exist (the command above builds them), nothing else is computed or stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.data import Catalog
from aipray.metrics.stats import paired_t_test
from aipray.models import load_recommender
from aipray.pipeline.stages import load_context, stage_paths
from aipray.pixels import to_float
from aipray.protocol import aip
from aipray.store import done


def run(
    evaluator: aip.ColdItemEvaluator,
    catalog: Catalog,
    batch: int,
    made: tuple[list[torch.Tensor], float, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, float, list[torch.Tensor]]:
    """Per-item rows of every cold item, the attack's wall seconds and its images per batch;
    with ``made`` (images, seconds, steps of an attack on the same Φ) only the evaluation runs."""
    ids = np.asarray(catalog.cold_items, dtype=np.int64)
    rows, advs = [], []
    start = time.perf_counter()
    for k, i in enumerate(range(0, ids.size, batch)):
        clean = to_float(catalog.images[ids[i : i + batch]])
        out, adv = evaluator(clean, ids[i : i + batch], None if made is None else made[0][k])
        rows.append(pd.DataFrame(out))
        advs.append(adv)
    frame = pd.concat(rows, ignore_index=True)
    if made is not None:
        frame["attack_steps"] = made[2]
        return frame, made[1], advs
    return frame, time.perf_counter() - start, advs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep", help="the sweep whose rankers to attack, e.g. sweeps/paper_synthetic.yaml"
    )
    parser.add_argument("--grid", default="attacks", help="the grid whose EXPA trials to use")
    parser.add_argument("--steps", type=int, default=5000, help="AIP's fixed step count")
    parser.add_argument("--patience", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--eps", type=float, nargs="*", help="only these ε (default: the grid's)")
    parser.add_argument("--models", nargs="*", help="only these rankers (default: the grid's)")
    parser.add_argument(
        "--batch", type=int, default=None, help="items per batch (default: the sweep's)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    sweep = load_sweep(args.sweep)
    batch = args.batch or sweep.resources.batch_size
    grids = [g for g in sweep.grids if g.name == args.grid]
    if sweep.grids and not grids:
        names = ", ".join(g.name for g in sweep.grids)
        raise SystemExit(
            f"--grid: {args.grid!r} is not a grid of {args.sweep}; expected one of {names}"
        )
    in_grid = {
        t.key() for g in grids for t in dataclasses.replace(g, extractors=sweep.extractors).trials()
    }
    trials = [
        t
        for t in sweep.trials()
        if (not grids or t.key() in in_grid)
        and t.attack.name == "expa"
        and t.defense.name == "none"
        and (not args.eps or t.eps in args.eps)
        and (not args.models or t.model.name in args.models)
    ]
    if not trials:
        raise SystemExit(f"--grid {args.grid}: no undefended EXPA trial matches")
    for t in trials:
        paths = stage_paths(sweep, t)
        missing = [k for k in ("dataset", "model", "context") if not done(getattr(paths, k))]
        if missing:
            raise SystemExit(
                f"{t.model.label}: the {missing[0]} stage is not built; run "
                f"`python -m aipray.sweep {args.sweep}` first"
            )

    print(
        f"EXPA, AIP's {args.steps} steps vs an early stop (patience {args.patience}, "
        f"tol {args.tol:g}); {args.sweep}, grid {args.grid}; HR@5 of the cold items"
    )
    cols = (("eps", 5), ("fixed", 8), ("±", 7), ("early", 8), ("diff", 9), ("95% CI", 18))
    cols += (("p", 7),)
    cols += (("steps", 8), ("time", 7))
    print(f"{'ranker':<36}" + "".join(f"{name:>{width}}" for name, width in cols))
    rows = []
    made_by: dict = {}
    for t in trials:
        paths = stage_paths(sweep, t)
        catalog = Catalog.load(paths.dataset)
        model = load_recommender(paths.model).eval().requires_grad_(False)
        context = load_context(paths.context)
        cfg = {
            k: v for k, v in vars(t.attack.config).items() if k not in ("steps", "patience", "tol")
        }
        out = {}
        for name, extra in (("fixed", {}), ("early", {"patience": args.patience, "tol": args.tol})):
            attack = aip.attack("expa", model, catalog, **cfg, steps=args.steps, **extra)
            # AlexRank, VBPR and AMR share Φ: their EXPA images are made once (as in a sweep)
            made = made_by.get((paths.attack, name))
            frame, seconds, advs = run(
                aip.ColdItemEvaluator(model, attack, context), catalog, batch, made
            )
            made_by[paths.attack, name] = (advs, seconds, frame["attack_steps"].to_numpy())
            out[name] = frame, seconds
        (fixed, t_fixed), (early, t_early) = out["fixed"], out["early"]
        a, b = early["adversarial/hr_at_5"].to_numpy(), fixed["adversarial/hr_at_5"].to_numpy()
        diff = a - b
        half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float("nan")
        p = paired_t_test(a, b)
        spread = 1.96 * b.std(ddof=1) / np.sqrt(b.size)  # HR@5's own 95 % half-width over items
        row = {
            "ranker": t.model.label,
            "eps": t.eps,
            "fixed": b.mean(),
            "early": a.mean(),
            "diff": diff.mean(),
            "ci_low": diff.mean() - half,
            "ci_high": diff.mean() + half,
            "p": p,
            "spread": spread,
            "steps": early["attack_steps"].mean(),
            "time_ratio": t_fixed / t_early,
        }
        rows.append(row)
        ci = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        print(
            f"{row['ranker']:<36}{row['eps']:>5g}{row['fixed']:>8.3f}{spread:>7.3f}"
            f"{row['early']:>8.3f}"
            f"{row['diff']:>+9.3f}{ci:>18}{p:>7.2f}{row['steps']:>8.0f}{row['time_ratio']:>6.1f}x",
            flush=True,
        )
    frame = pd.DataFrame(rows)
    inside = ((frame.ci_low <= 0) & (frame.ci_high >= 0)).sum()
    print(
        "fixed ± : the 95 % half-width of HR@5 itself over the cold items (its sampling noise); "
        "diff, 95% CI, p: early − fixed, paired over the same items"
    )
    early = [(v[1], v[2].mean()) for (_, name), v in made_by.items() if name == "early"]
    fixed = [v[1] for (_, name), v in made_by.items() if name == "fixed"]
    print(
        f"{inside} of {len(frame)} paired differences have 0 in their 95 % interval; largest "
        f"|diff| {frame['diff'].abs().max():.4f}, smallest p {frame.p.min():.2f} "
        f"({len(frame)} comparisons); over the {len(early)} distinct attacks (rankers on one Φ "
        f"share one) the early stop took {np.mean([s for _, s in early]):.0f} of {args.steps} "
        f"steps on average and {sum(fixed) / sum(t for t, _ in early):.1f}x less time"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
