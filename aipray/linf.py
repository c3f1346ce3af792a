"""The L∞ projected-gradient engine: every optimisation attack's (INSA, EXPA, FGSM/PGD) and
adversarial training's (:mod:`aipray.models.extractor.robust`).

An attack differs from another only by its *objective*: a function of the current adversarial
images ``[B, 3, H, W]`` (and the step number) returning one value per image ``[B]`` to maximise.
Items in a batch are independent (the objective is a sum of per-item terms and Adam is
element-wise), so a batch optimises exactly as the items would one by one; with a
:class:`Plateau` each item also stops on its own.

Plain torch, no aipray import: the models (adversarial training) and the attacks both build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Objective = Callable[[torch.Tensor, int], torch.Tensor]


def quantize_within(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """Round to the 8-bit grid while keeping ``|round(x_adv) − x| ≤ eps/255`` and ``[0, 1]``
    (``eps`` a number, or a tensor broadcast over ``x``, e.g. ``[1, 3, 1, 1]`` per channel).

    When ``x`` is itself on the 8-bit grid (stored images are), plain rounding already keeps the
    bound; the clamp makes it hold for off-grid inputs too (e.g. resized images).
    """
    if isinstance(eps, torch.Tensor):
        eps = eps.to(x.device, x.dtype)
    q = torch.round(x_adv * 255.0)
    lo = torch.clamp(torch.ceil(x * 255.0 - eps - 1e-4), min=0.0)
    hi = torch.clamp(torch.floor(x * 255.0 + eps + 1e-4), max=255.0)
    return torch.minimum(torch.maximum(q, lo), hi) / 255.0


@dataclass(frozen=True)
class Plateau:
    """Early stop, image by image: an image stops (its δ is kept from then on) once its objective
    has not exceeded its best value by more than ``tol · |best|`` for ``patience`` steps; the
    ascent ends when every image has stopped. The objective is then called on the images still
    running only, so it must treat images independently of their position in the batch."""

    patience: int
    tol: float = 1e-3


def linf_ascent(
    images: torch.Tensor,
    objective: Objective,
    *,
    eps: float | torch.Tensor,
    steps: int,
    lr: float | torch.Tensor,
    method: str = "adam",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    plateau: Plateau | None = None,
    steps_taken: torch.Tensor | None = None,
    quantize: bool = True,
) -> torch.Tensor:
    """Maximise ``objective`` over ``δ`` with ``‖δ‖∞ ≤ eps/255`` and ``x + δ ∈ [0, 1]``.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1]; never modified.
        objective: ``(x_adv, step) → [B]`` values to maximise.
        eps: L∞ bound in 0..255 pixel units: a number, or a tensor broadcast over the images
            (``[1, 3, 1, 1]``: one bound per channel, as ε in a classifier's normalised space).
        steps: number of updates.
        lr: Adam learning rate (``method="adam"``) or step size in [0, 1] units (``"sign"``: PGD;
            a tensor like ``eps`` for a per-channel step).
        method: ``"adam"`` (AIP's INSA/EXPA) or ``"sign"`` (signed-gradient PGD; FGSM = 1 step).
        random_start: start from a uniform point of the ε-ball (Madry et al.).
        plateau: stop each image once its objective stops improving (default: ``steps`` each).
        steps_taken: an int64 ``[B]`` tensor to fill with the updates each image received.
        quantize: round the result to the 8-bit grid (keeping the bound); adversarial training
            keeps its images off the grid.

    Returns:
        Adversarial images ``[B, 3, H, W]`` in [0, 1] (on the 8-bit grid unless ``quantize`` is
        off), detached.
    """
    x = images.detach()
    if isinstance(eps, torch.Tensor):
        eps = eps.to(x.device, x.dtype)
        if bool((eps < 0).any()) or not bool(torch.isfinite(eps).all()):
            raise ValueError(f"eps must be finite numbers >= 0, got {eps.flatten().tolist()}")
        no_room = bool((eps == 0).all())
    else:
        if eps < 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        no_room = eps == 0
    if isinstance(lr, torch.Tensor):
        lr = lr.to(x.device, x.dtype)
    bound = eps / 255.0
    if steps_taken is not None:
        steps_taken.fill_(0 if no_room else steps)
    if no_room or steps == 0:
        return quantize_within(x, x, eps) if quantize else x
    delta = torch.zeros_like(x)
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)  # CPU: reproducible
        delta = (2 * noise - 1).to(x.device) * bound
        delta = (x + delta).clamp(0, 1) - x
    delta.requires_grad_(True)
    if method == "adam" and isinstance(lr, torch.Tensor):
        raise ValueError("a per-channel lr needs method='sign'")
    opt = torch.optim.Adam([delta], lr=lr) if method == "adam" else None
    running = torch.arange(x.shape[0], device=x.device)  # images still being optimised
    if plateau is not None:
        best = torch.full((x.shape[0],), -math.inf, device=x.device)
        stale = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for step in range(steps):
        if plateau is None:
            value = objective(x + delta, step)
        else:
            value = objective(x[running] + delta[running], step)
            with torch.no_grad():
                v = value.detach()
                b = best[running]
                better = torch.isinf(b) | (v > b + plateau.tol * b.abs())
                best[running] = torch.where(better, v, b)
                stale[running] = torch.where(better, 0, stale[running] + 1)
                done = stale[running] >= plateau.patience
            if done.any():
                if steps_taken is not None:
                    steps_taken[running[done].to(steps_taken.device)] = step
                keep = ~done
                if not keep.any():
                    break
                running, value = running[keep], value[keep]
        (grad,) = torch.autograd.grad(value.sum(), delta)
        with torch.no_grad():
            before = None if plateau is None else delta.detach().clone()
            if opt is None:
                delta += lr * grad.sign()
            else:
                delta.grad = -grad  # Adam minimises
                opt.step()
            delta.copy_(torch.clamp(delta, -bound, bound))
            delta.copy_((x + delta).clamp(0.0, 1.0) - x)
            if before is not None and running.numel() < x.shape[0]:
                # stopped images keep their δ (Adam's momentum would still move them)
                moved = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                moved[running] = True
                delta.copy_(torch.where(moved[:, None, None, None], delta, before))
    out = (x + delta).detach()
    return quantize_within(out, x, eps) if quantize else out
