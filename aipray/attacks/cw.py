"""Carlini–Wagner L2 (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
IEEE S&P 2017), targeted, as the Perceptual-Rec study runs it through CleverHans.

Minimise ``‖x′ − x‖²₂ + c·max(max_{i≠t} Z_i − Z_t + κ, 0)`` over ``w``, with
``x′ = (tanh(w) + 1)/2`` (the box constraint) and ``Z`` the classifier's logits, by Adam from
``w = atanh(2x − 1)``; a per-image binary search sets ``c``. Knows the classifier only, like
FGSM/PGD, so one set of images serves every ranker on that extractor.

Kept from CleverHans: Adam and ``w`` restart at every binary step; the binary search (``c ×10``
until a success, then bisection); unsuccessful images come back unchanged. C&W is there to find the
smallest perturbation, so every step of every binary step is a candidate: the image returned is
the successful one (judged on the image as returned, ε-clipped and rounded to 8 bits, so a κ = 0
adversarial that rounding pushes back across the boundary is not kept) with the smallest L2 over
all of them; the distance is to ``x`` itself, not to ``tanh(atanh(x))``.

CleverHans's early abort (every ``steps/10`` iterations, stop when the loss has not fallen by
0.01 %) is an option, ``abort_early``, off by default because it can only lengthen the
perturbation (``scripts/cw_early_stop.py``: 0.6 % longer on 15 of 16 images). Its saving depends
on the batch, since a stopped image still rides along until all have stopped: none in one
measurement (44.0 vs 43.7 ms per image), 1.7× in that script's batch of 16. When on, it is per
image, not on the batch's total loss (so a batch gives what its images would one by one, and the
first check cannot fire on a large loss).

Adaptive (``adaptive: true``), the margin is that of the classifier on the defended image (BPDA
or the defence's own gradient; a randomised defence's margins averaged over ``eot_samples``
draws, EOT), and success is judged on the image as the defence serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aipray.attacks.base import ATTACKS, AdaptiveConfig, quantize_within
from aipray.attacks.taamr import _ClassifierAttack
from aipray.params import param


@dataclass(frozen=True)
class CWConfig(AdaptiveConfig):
    """Perceptual-Rec (CleverHans): 1000 steps of Adam lr 5e-3, 5 binary steps from c = 1e-2,
    κ = 0. ``eps`` (0..255 pixel units) clips the final perturbation in L∞, ``None`` = no clip;
    ``target`` ``None`` = most popular class among training items; ``adaptive``,
    ``eot_samples``: :class:`~aipray.attacks.base.AdaptiveConfig`."""

    steps: int = param(1000, min=1)
    lr: float = param(5e-3, min=0)
    binary_steps: int = param(5, min=1)
    initial_const: float = param(1e-2, min=0)
    confidence: float = param(0.0, min=0)
    abort_early: bool = False
    eps: float | None = param(None, axis=True, min=0, max=255)
    target: int | None = param(None, min=0)


@ATTACKS.register("cw")
class CW(_ClassifierAttack):
    """Targeted C&W L2 on the extractor's classifier.

    Args (``CWConfig``):
        steps: Adam iterations per binary step (1000).
        lr: Adam learning rate on ``w`` (5e-3).
        binary_steps: rounds of the search over ``c`` (5).
        initial_const: the first ``c`` of every image (1e-2).
        confidence: κ, the logit margin asked of the target class (0).
        abort_early: stop a binary step early for an image whose loss has stalled (False: it
            costs L2, see the module docstring).
        eps: optional L∞ clip of the final perturbation, pixel units (None: no clip).
        target: target class (None: the most popular class among training items).
        adaptive, eot_samples: through the trial's defence (see the module docstring).

    Call: ``images [B, 3, H, W]`` float in [0, 1] (never modified) → ``[B, 3, H, W]`` on the
    8-bit grid: per image, the successful adversarial (argmax = target) with the smallest L2
    distance found, or the image itself when no success was found.
    """

    Config = CWConfig

    def __call__(self, images: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg, clf = self.config, self.inputs.classifier
        x = images.detach().clamp(0.0, 1.0)
        n, eps = x.shape[0], 255.0 if cfg.eps is None else cfg.eps
        view = (n, 1, 1, 1)
        target = torch.full((n, 1), self.target, device=x.device, dtype=torch.long)
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        const = torch.full((n,), cfg.initial_const, device=x.device, dtype=x.dtype)
        lower, upper = torch.zeros_like(const), torch.full_like(const, 1e10)
        best = quantize_within(x, x, eps)
        best_l2 = torch.full_like(const, float("inf"))
        check_every = max(cfg.steps // 10, 1)

        def margin_of(images: torch.Tensor, step: int) -> torch.Tensor:
            logits = clf(images)
            real = logits.gather(1, target)[:, 0]
            other = logits.scatter(1, target, float("-inf")).amax(1)
            return (other - real + cfg.confidence).clamp(min=0)

        for _ in range(cfg.binary_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=cfg.lr)
            step_l2 = torch.full_like(const, float("inf"))  # this binary step's best
            active = torch.ones(n, dtype=torch.bool, device=x.device)
            prev = torch.full_like(const, float("inf"))
            margin_fn = self.through_defense(margin_of)  # a fresh EOT generator per binary step
            for step in range(cfg.steps):
                x_new = (torch.tanh(w) + 1) / 2
                margin = margin_fn(x_new, step)
                loss = (x_new - x).pow(2).flatten(1).sum(1) + const * margin
                (grad,) = torch.autograd.grad(loss.sum(), w)
                with torch.no_grad():
                    q = quantize_within(x_new, x, eps)  # the image as it would be returned
                    l2 = (q - x).pow(2).flatten(1).sum(1)
                    hit = (margin <= 0) & (l2 < step_l2)
                    if hit.any():  # confirm on the rounded (and clipped) image, as served
                        hit[hit.clone()] = clf(self.served(q[hit])).argmax(1) == self.target
                    step_l2 = torch.where(hit, l2, step_l2)
                    better = hit & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best = torch.where(better.view(view), q, best)
                    if cfg.abort_early and step % check_every == 0:
                        active &= ~(loss > prev * 0.9999)
                        prev = loss.detach()
                        if not active.any():
                            break
                    w_old = w.detach().clone()
                    w.grad = grad
                    opt.step()
                    w.copy_(torch.where(active.view(view), w, w_old))  # stalled images stay put
            found = step_l2 < float("inf")
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        return best
