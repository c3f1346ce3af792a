#!/usr/bin/env python
"""Whole-attack throughput at AIP's size: INSA and EXPA images per second per ranker at 224 × 224
against Amazon-Men-sized user tables, a batch of images vs one image at a time, and the cold-item
evaluation of 1,000 items × 34,244 users × 1,002 candidates.

    python scripts/attack_bench.py [--device cuda] [--batch 64] [--rankers alexrank,vbpr,dvbpr]

The rankers are aipray's own classes at full size with random weights (the cost of a step does
not depend on the values): AlexRank on the torchvision AlexNet (fc7, 4096-d) with a profile
feature table of every item users trained on; VBPR (K = 100; AMR has the same attack cost) on the
same network; DVBPR (K = 100) with its CNN-F. Each attack is the real one (``INSA``, ``EXPA``
through :func:`aipray.attacks.base.linf_ascent`), run for a measured number of steps: INSA for
``--insa-epochs`` passes over all users in batches of 512 (67 steps per pass on Amazon Men), EXPA
for ``--expa-steps``. Every step of an attack costs the same, so the time of a whole attack (INSA:
10 passes; EXPA: 5,000 steps, or the early stop's measured mean) is the time per step times its
steps; the table prints both. The evaluation is :class:`aipray.protocol.aip.ColdItemEvaluator` on
given adversarial images: scores of the clean and attacked images for every user, ranks among
each user's fixed candidates, hit rates, L∞/SSIM/PSNR.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import aipray  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aipray.attacks.base import AttackInputs
from aipray.attacks.expa import EXPA, EXPAConfig
from aipray.attacks.insa import INSA, INSAConfig
from aipray.metrics.ranking import CandidateScores, hit_rates, injected_ranks, ordinary_hit_rates
from aipray.models.alexrank import AlexRank
from aipray.models.base import Recommender
from aipray.models.dvbpr import DVBPR
from aipray.models.extractor import make_spec
from aipray.models.vbpr import VBPR
from aipray.protocol.aip import ColdItemEvaluator

AIP_INSA_IMAGES_PER_S = 1000 / 7200  # the AIP code: 1,000 INSA images in ~2 h, one at a time


def ranker(name: str, users: int, items: int, size: int, dim: int, rng) -> Recommender:
    """A full-size ranker with random weights (and, for AlexRank, random user profiles with
    Amazon Men's ~7.9 training items per user)."""
    spec = make_spec("alexnet", 1000, layout="torchvision", input_size=224)  # full.yaml's
    if name == "dvbpr":
        return DVBPR(users, dim, image_size=size)
    if name == "vbpr":
        return VBPR(users, items, dim, spec)
    if name != "alexrank":
        raise SystemExit(f"--rankers: {name!r} is not allowed; allowed: alexrank, vbpr, dvbpr")
    counts = rng.integers(1, 16, size=users)
    bought = rng.integers(0, items, size=int(counts.sum()))
    profile, slots = np.unique(bought, return_inverse=True)
    model = AlexRank(users, items, bought.size, profile.size, spec)
    model.indptr.copy_(torch.as_tensor(np.concatenate([[0], np.cumsum(counts)])))
    model.slots.copy_(torch.as_tensor(slots))
    model.profile_items.copy_(torch.as_tensor(profile))
    model.profile_features.copy_(torch.rand(profile.size, model.extractor.feature_dim) * 3)
    return model


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=34244)
    parser.add_argument("--items", type=int, default=110636, help="catalog items")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dim", type=int, default=100, help="VBPR/DVBPR embedding length")
    parser.add_argument("--batch", type=int, default=16, help="images attacked together")
    parser.add_argument("--insa-epochs", type=int, default=1, help="passes timed (AIP: 10)")
    parser.add_argument("--expa-steps", type=int, default=20, help="steps timed (AIP: 5,000)")
    parser.add_argument("--expa-early", type=float, default=1068, help="early stop's mean steps")
    parser.add_argument("--cold", type=int, default=1000, help="items evaluated")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--rankers", default="alexrank,vbpr,dvbpr")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for key in ("users", "items", "image_size", "batch", "insa_epochs", "expa_steps", "cold"):
        if getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')}: {getattr(args, key)}; must be >= 1")
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    size = args.image_size
    hook = torch.rand(3, size, size)
    insa_steps = -(-args.users // 512)  # one pass over the users
    full_insa = 10 * insa_steps
    print(
        f"device {device}; {args.users:,} users, {args.items:,} items, {size}x{size} images; "
        f"INSA timed over {args.insa_epochs * insa_steps} steps (a whole attack: {full_insa}), "
        f"EXPA over {args.expa_steps} (a whole attack: 5,000, early stop ~{args.expa_early:.0f})"
    )
    print(
        f"{'ranker':9s} {'attack':17s} {'s/step, 1':>10s} {f's/step, {args.batch}':>11s} "
        f"{'images/s, 1':>12s} {f'images/s, {args.batch}':>13s} {'batched/one':>11s}"
    )
    evals = []
    shared_network = False  # EXPA on VBPR/AMR makes AlexRank's images (one feature network)
    for name in args.rankers.split(","):
        model = ranker(name, args.users, args.items, size, args.dim, rng).to(device).eval()
        model.requires_grad_(False)
        inputs = AttackInputs(hook_image=hook)
        attacks = [("INSA", INSA(INSAConfig(eps=32, epochs=args.insa_epochs), model, inputs))]
        if not (shared_network and model.uses_extractor):
            attacks.append(("EXPA", EXPA(EXPAConfig(eps=32, steps=args.expa_steps), model, inputs)))
        shared_network |= model.uses_extractor
        for attack_name, attack in attacks:
            steps = args.expa_steps if attack_name == "EXPA" else args.insa_epochs * insa_steps
            per_step = {}
            for batch in (1, args.batch):
                images = torch.rand(batch, 3, size, size, device=device)
                EXPA(EXPAConfig(eps=32, steps=2), model, inputs)(images)  # warm-up
                per_step[batch] = timed(lambda a=attack, x=images: a(x), device) / steps
            whole = {"": full_insa}
            if attack_name == "EXPA":
                whole = {" 5,000 steps": 5000, f" {args.expa_early:.0f} steps": args.expa_early}
            for label, n in whole.items():
                one, many = 1 / (per_step[1] * n), args.batch / (per_step[args.batch] * n)
                print(
                    f"{name:9s} {attack_name + label:17s} {per_step[1]:10.4g} "
                    f"{per_step[args.batch]:11.4g} {one:12.4g} {many:13.4g} {many / one:10.3g}x"
                )
        evals.append((name, evaluate(model, args, device)))
        del model, attacks
    print(
        f"cold-item evaluation, {args.cold:,} items x {args.users:,} users x "
        f"{args.candidates + 2:,} candidates (batches of {args.eval_batch}):"
    )
    for name, (total, ranking) in evals:
        print(f"  {name:9s} {total:7.1f} s in all, of which ranking and hit rates {ranking:.2f} s")
    print(f"AIP's reference code: {AIP_INSA_IMAGES_PER_S:.2f} INSA images/s on an RTX 2080 Ti")
    return 0


def evaluate(model: Recommender, args, device: torch.device) -> tuple[float, float]:
    """Seconds for the cold-item evaluation of ``args.cold`` items (given adversarial images),
    and the seconds of it spent ranking (scores given)."""
    gen = torch.Generator().manual_seed(1)
    fixed = torch.randn(args.users, args.candidates + 1, generator=gen)
    valid = torch.ones_like(fixed, dtype=torch.bool)
    context = CandidateScores.build(fixed, valid, fixed[:, -1].clone())
    context = context.to(device)
    evaluator = ColdItemEvaluator(model, None, context)
    size, total, ranking = args.image_size, 0.0, 0.0
    scores = torch.randn(args.users, args.eval_batch, generator=gen).to(device)
    for start in range(0, args.cold, args.eval_batch):
        n = min(args.eval_batch, args.cold - start)
        clean = torch.rand(n, 3, size, size, generator=gen).to(device)
        adv = (clean + (torch.rand(clean.shape, generator=gen).to(device) - 0.5) / 8).clamp(0, 1)
        ids = np.arange(start, start + n)
        total += timed(lambda c=clean, a=adv, i=ids: evaluator(c, i, adversarial=a), device)
        ranking += timed(lambda s=scores[:, :n]: rank_only(context, s), device)
    return total, ranking


def rank_only(context: CandidateScores, scores: torch.Tensor) -> None:
    """The ranking work of one evaluated batch: the evaluator's two injected rankings
    (cooperative, adversarial) and three availabilities."""
    for _ in range(2):
        hit_rates(injected_ranks(context, scores))
    for _ in range(3):
        ordinary_hit_rates(context, scores)


if __name__ == "__main__":
    sys.exit(main())
