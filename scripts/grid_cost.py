#!/usr/bin/env python
"""What a sweep's grid costs, before it runs: the work it holds and the time it takes here.

Counts the image passes the grid makes through each network (the extractor, each DVBPR CNN),
after the sharing the store does (one attack per ranker, per Φ or per extractor; one attack for
every defence), by kind: attack steps (forward + gradient to the image), evaluation and context
forwards, training steps (forward + backward to the weights). Then measures, on this machine's
device, each network's throughput for each kind at the sweep's image size and batch, counts its
FLOPs, and prints per row the count, the FLOPs, the measured rate and the hours, with totals on
one device and on ``--devices N`` (trials and training runs spread over devices; a single attack
or training run is not split).

    python scripts/grid_cost.py sweeps/full.yaml [--device cuda] [--expa-steps 1217] [--devices 8]

Dataset sizes come from the synthetic config, or for AIP's datasets from the paper's counts. The
first stage (BPR), AlexRank's profile features, VBPR/AMR training on stored features and the
ranking arithmetic are left out: they are small next to image passes at AIP's sizes (measured:
scripts/scale_bench.py).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.attacks import ATTACKS
from aipray.config import SweepConfig, TrialSpec, load_sweep
from aipray.data.surrogate import SurrogateConfig
from aipray.models import MODELS
from aipray.models.dvbpr import DVBPR
from aipray.models.extractor import IN_PROCESS, ON_SURROGATE, build_extractor, make_spec
from aipray.models.extractor.pretrain import in_process_spec
from aipray.params import without_file_checks
from aipray.pipeline.stages import stage_paths

#: users, items, interactions of AIP's datasets (AIP Table 2)
PAPER_SIZES = {"amazon_men": (34_244, 110_636, 254_870), "tradesy": (33_864, 326_393, 655_409)}
KINDS = ("attack", "forward", "train")


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    interactions: int
    cold: int
    image: int


def dataset_size(trial: TrialSpec) -> Size:
    cfg = trial.dataset.config
    if hasattr(cfg, "n_users"):
        users, items = cfg.n_users, cfg.n_items
        interactions = int(users * cfg.mean_interactions)
    elif trial.dataset.name in PAPER_SIZES:
        users, items, interactions = PAPER_SIZES[trial.dataset.name]
    else:
        raise SystemExit(f"datasets.{trial.dataset.name}: size unknown to this estimate")
    return Size(users, items, interactions, cfg.n_cold, cfg.image_size)


def network_of(trial: TrialSpec, attack_side: bool) -> str:
    """The network an image passes through: the extractor, or the ranker's own (DVBPR)."""
    model_cls = MODELS.get(trial.model.name)
    if attack_side and ATTACKS.get(trial.attack.name).knowledge == "classifier":
        return "extractor"
    return "extractor" if model_cls.uses_extractor else trial.model.label


def attack_steps(trial: TrialSpec, size: Size, expa_steps: int | None) -> int:
    """Updates per image of the trial's attack, each counted once per EOT draw (an adaptive
    attack on a randomised defence passes ``eot_samples`` images through the network)."""
    cls, cfg = ATTACKS.get(trial.attack.name), trial.attack.config
    draws = getattr(cfg, "eot_samples", 1)  # 1 unless adaptive against a randomised defence
    if cls.knowledge == "none":
        return 0
    if hasattr(cfg, "user_batch"):  # INSA: epochs over batches of users
        return draws * cfg.epochs * math.ceil(size.users / cfg.user_batch)
    if expa_steps is not None and getattr(cfg, "patience", None) is not None:  # early-stopped
        return draws * min(expa_steps, cfg.steps)
    return draws * getattr(cfg, "steps", 1) * getattr(cfg, "binary_steps", 1)


def count_work(
    sweep: SweepConfig, expa_steps: int | None
) -> tuple[dict[tuple[str, int, str], float], list[tuple[str, int, str, float]]]:
    """``{(network, image size, kind): images}`` and the jobs (one attack set or training run)
    as ``(network, size, kind, images)``."""
    work: dict[tuple[str, int, str], float] = defaultdict(float)
    jobs: list[tuple[str, int, str, float]] = []
    seen: set[Path] = set()
    for trial in sweep.trials():
        paths, size = stage_paths(sweep, trial), dataset_size(trial)
        net = network_of(trial, attack_side=False)
        if paths.attack not in seen:
            seen.add(paths.attack)
            n = size.cold * attack_steps(trial, size, expa_steps)
            # a transfer: the source's network; an ensemble: each of its models' at every step
            # (listed as one job per model, so the longest job is a little short for it)
            for crafted in trial.crafted_on_each() or (trial,):
                anet = network_of(crafted, attack_side=True)
                work[anet, size.image, "attack"] += n
                jobs.append((anet, size.image, "attack", n))
        # the trial scores clean and attacked cold images (and clean ones undefended)
        defended = trial.defense.name != "none"
        work[net, size.image, "forward"] += size.cold * (3 if defended else 2)
        for context in (paths.context, paths.context_undefended):
            if context not in seen:  # the candidate items' images, once per context
                seen.add(context)
                work[net, size.image, "forward"] += size.items
        if paths.model not in seen:
            seen.add(paths.model)
            if net != "extractor":  # DVBPR: a positive and a negative image per interaction
                n = trial.model.config.epochs * size.interactions * 2
                work[net, size.image, "train"] += n
                jobs.append((net, size.image, "train", n))
        if paths.extractor not in seen and trial.needs_extractor:
            seen.add(paths.extractor)
            work["extractor", size.image, "forward"] += size.items  # the stored features
            n = pretraining_passes(trial.extractor_config, size.items - size.cold)
            if n:
                work["extractor", size.image, "train"] += n
                jobs.append(("extractor", size.image, "train", n))
    return work, jobs


def pretraining_passes(config, warm_items: int) -> int:
    """Image passes (forward and backward) of the extractor's in-process pretraining: its
    images times its epochs, times ``adv_steps + 1`` for Madry's PGD training (Free AT replays
    each batch ``m`` times over ``epochs / m`` epochs: the same as standard training)."""
    if config.weights not in IN_PROCESS:
        return 0
    images = warm_items
    if config.weights in ON_SURROGATE:
        images = SurrogateConfig().n_classes * config.surrogate_per_class
    factor = config.adv_steps + 1 if config.training == "adversarial" else 1
    return images * config.epochs * factor


def build(network: str, image: int, sweep: SweepConfig, device: torch.device) -> torch.nn.Module:
    """A network of the right shape (weights do not change its speed)."""
    if network == "extractor":
        ext = sweep.extractor
        if ext.weights in IN_PROCESS:
            n_classes = SurrogateConfig().n_classes if ext.weights in ON_SURROGATE else 8
            spec = in_process_spec(ext, n_classes, (image, image))
        else:
            spec = make_spec(ext.arch, 1000, input_size=ext.input_size or 224)
        net = build_extractor(spec)
        module = _Features(net)
    else:
        cfg = next(t.model.config for t in sweep.trials() if t.model.label == network)
        module = _Features(DVBPR(1, cfg.dim, image, cfg.width))
    return module.to(device)


class _Features(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.model
        return inner.features(x) if hasattr(inner, "features") else inner.feature_network(x)


def one_pass(module: torch.nn.Module, x: torch.Tensor, kind: str) -> None:
    if kind == "forward":
        module.eval()
        with torch.no_grad():
            module(x)
        return
    if kind == "attack":
        module.eval().requires_grad_(False)
        module(x.clone().requires_grad_(True)).square().sum().backward()
        return
    module.train().requires_grad_(True)
    module(x).square().sum().backward()
    module.zero_grad(set_to_none=True)


def flops_per_image(module: torch.nn.Module, image: int, kind: str, device: torch.device) -> float:
    x = torch.rand(2, 3, image, image, device=device)
    with FlopCounterMode(display=False) as counter:
        one_pass(module, x, kind)
    return counter.get_total_flops() / 2


def images_per_second(
    module: torch.nn.Module, image: int, batch: int, kind: str, device: torch.device
) -> float:
    """Measured: the best of three passes over a batch, after a warm-up."""
    x = torch.rand(batch, 3, image, image, device=device)
    one_pass(module, x, kind)
    best = math.inf
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_pass(module, x, kind)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--expa-steps",
        type=int,
        help="mean steps an early-stopped EXPA takes (scripts/expa_early_stop.py measures it); "
        "default: its full step budget",
    )
    parser.add_argument("--devices", type=int, default=8, help="devices of a cluster")
    parser.add_argument("--batch", type=int, help="images per pass (default: the sweep's)")
    parser.add_argument(
        "--assume-tflops",
        type=float,
        help="instead of measuring, assume this sustained rate (TFLOP/s) for every pass",
    )
    args = parser.parse_args(argv)
    with without_file_checks():  # an estimate needs no data
        sweep = load_sweep(args.sweep)
    device = torch.device(args.device)
    batch = args.batch or sweep.resources.batch_size
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    work, jobs = count_work(sweep, args.expa_steps)

    if args.assume_tflops:
        where = f"assuming a sustained {args.assume_tflops:g} TFLOP/s"
    elif device.type == "cuda":
        where = f"measured on {torch.cuda.get_device_name(device)}, batch {batch}"
    else:
        where = f"measured on the CPU ({torch.get_num_threads()} threads), batch {batch}"
    print(f"{args.sweep}: {len(sweep.trials())} trials; {where}")
    print(
        f"{'network':<20}{'px':>5}{'kind':>9}{'images':>14}{'GFLOP/img':>11}{'img/s':>10}{'hours':>9}"
    )
    rate: dict[tuple[str, int, str], float] = {}
    total_s = total_flop = 0.0
    for (network, image, kind), n in sorted(work.items()):
        if n == 0:
            continue
        module = build(network, image, sweep, device)
        flops = flops_per_image(module, image, kind, device)
        if args.assume_tflops:
            per_s = args.assume_tflops * 1e12 / flops
        else:
            per_s = images_per_second(module, image, batch, kind, device)
        rate[network, image, kind] = per_s
        seconds = n / per_s
        total_s += seconds
        total_flop += n * flops
        print(
            f"{network:<20}{image:>5}{kind:>9}{n:>14,.0f}{flops / 1e9:>11.2f}{per_s:>10.0f}"
            f"{seconds / 3600:>9.2f}"
        )
    longest = max((n / rate[net, img, kind] for net, img, kind, n in jobs if n), default=0.0)
    spread = max(total_s / args.devices, longest)
    print(
        f"total {total_flop / 1e15:.1f} PFLOP: {total_s / 3600:.1f} h on one device, "
        f"{spread / 3600:.2f} h on {args.devices} (longest single job {longest / 3600:.2f} h); "
        f"{total_flop / total_s / 1e12:.2f} TFLOP/s sustained"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
