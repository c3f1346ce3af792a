#!/usr/bin/env python
"""The spine at AIP's size: the synthetic marketplace at Amazon Men's counts (34,244 users,
110,636 items, 1,000 cold items, C = 1000 candidates) through every stage of a real sweep and one
INSA trial per visual ranker, on a local Ray. Prints, per stage, its wall time and the peak
resident memory of the process that ran it, and the peak over the driver and every Ray process
together.

    python scripts/scale_bench.py --storage /data/scale                  # Amazon Men size
    python scripts/scale_bench.py --storage /data/scale-t --items 326393 --stages-only
                                                    # Tradesy's item count, stages only
    python scripts/scale_bench.py --storage /data/scale-g --stages-only --models freedom lattice
                                                    # the graph rankers at Amazon Men size

Small images (``--image-size``, default 32) and short training (``--epochs``) keep it a
benchmark of the spine's memory and time, not of the models' quality. A re-run reuses finished
stages (delete the storage folder to measure again).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import yaml

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.config import load_sweep
from aipray.pipeline.stages import STAGE_LOG


class TreeMemory:
    """Samples the resident memory of this process and all its descendants (the Ray processes a
    local ``ray.init`` starts) every ``period`` seconds; ``peak`` in bytes."""

    def __init__(self, period: float = 0.5) -> None:
        import psutil

        self.root = psutil.Process()
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.period)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


#: each ranker's settings here: its papers' sizes, ``epochs`` from the command line
MODELS = {
    "alexrank": {},
    "vbpr": {"dim": 100, "batch_size": 4096},
    "dvbpr": {"dim": 100, "width": 0.25, "batch_size": 256},
    "freedom": {"dim": 64, "knn_k": 10, "batch_size": 2048},
    "lattice": {"dim": 64, "feat_dim": 64, "knn_k": 10, "batch_size": 1024},
}


def sweep_yaml(args: argparse.Namespace) -> dict:
    models = {
        name: {**MODELS[name], **({"epochs": args.epochs} if MODELS[name] else {})}
        for name in args.models
    }
    return {
        "name": "scale",
        "storage": str(args.storage / "store"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{args.storage / 'mlflow.db'}",
            "artifact_location": (args.storage / "artifacts").as_uri(),
        },
        "examples": 4,
        "datasets": {
            "synthetic": {
                "n_users": args.users,
                "n_items": args.items,
                "n_cold": args.cold,
                "image_size": args.image_size,
            }
        },
        "first_stage": {
            "candidates": args.candidates,
            "bpr": {"factors": 64, "epochs": args.epochs, "batch_size": 4096, "reg": 0.03},
        },
        "extractor": {"width": 0.25, "epochs": 1},
        "models": models,
        "attacks": {"insa": {"eps": 32, "epochs": 1, "user_batch": 4096}},
        "defenses": {"none": {}},
        "resources": {
            "max_concurrent_trials": 1,
            "actor_cpus": 1,
            "train_cpus": 2,
            "batch_size": 100,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", type=Path, required=True, help="folder for store and MLflow")
    parser.add_argument("--users", type=int, default=34244)
    parser.add_argument("--items", type=int, default=110636)
    parser.add_argument("--cold", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--stages-only", action="store_true", help="stages up to candidate scores, no trials"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=None,
        help="rankers (default: alexrank vbpr dvbpr; alexrank vbpr with --stages-only)",
    )
    args = parser.parse_args(argv)
    if args.models is None:
        args.models = ["alexrank", "vbpr"] if args.stages_only else ["alexrank", "vbpr", "dvbpr"]
    args.storage.mkdir(parents=True, exist_ok=True)
    path = args.storage / "scale.yaml"
    path.write_text(yaml.safe_dump(sweep_yaml(args)))
    sweep = load_sweep(path)

    import logging

    import ray

    from aipray.sweep import run_stages, run_sweep

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    with TreeMemory() as memory:
        if args.stages_only:
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            run_stages(sweep, sweep.trials())
            ray.shutdown()
            failed: list[str] = []
        else:
            _table, failed = run_sweep(sweep, num_cpus=2)
    total = time.perf_counter() - start

    log_file = Path(sweep.storage) / STAGE_LOG
    lines = log_file.read_text().splitlines() if log_file.is_file() else []
    records = [json.loads(line) for line in lines]
    print(
        f"\n{args.users} users × {args.items} items, {args.cold} cold, C = {args.candidates}, "
        f"{args.image_size}-px images, {args.epochs} epoch(s)"
    )
    print(f"{'stage':<20} {'output':<34} {'wall s':>8} {'peak RSS GB':>12}")
    for r in records:
        print(f"{r['kind']:<20} {r['output']:<34} {r['seconds']:>8.1f} {r['peak_rss_gb']:>12.2f}")
    results = sorted((Path(sweep.storage) / "trials").glob("[!.]*"))
    for result in results:
        metrics = json.loads((result / "metrics.json").read_text())
        print(
            f"trial {result.name}: {metrics.get('attack_seconds_per_item', float('nan')):.3f} "
            f"s/item attack, HR@5 {metrics['cooperative/hr_at_5']:.3f} → "
            f"{metrics['adversarial/hr_at_5']:.3f}"
        )
    print(
        f"total {total:.0f} s; peak resident memory of the driver and all Ray processes "
        f"{memory.peak / 1e9:.2f} GB" + (f"; FAILED: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
