"""Adversarially trained extractors, Perceptual-Rec's defences (Anelli et al.): PGD adversarial
training (Madry et al., ICLR 2018) and Free Adversarial Training (Shafahi et al., NeurIPS 2019),
plus :func:`robust_accuracy`, a classifier's accuracy under an untargeted L∞ PGD.

Everything works on pixel-space images in ``[0, 1]`` (the :class:`Extractor` normalises inside)
and takes ε and step sizes in 0..255 pixel units, as the rest of aipray. The held-out split,
the batch order, the flip augmentation and the choice of the best epoch (held-out *clean*
accuracy) are those of :func:`~aipray.models.train.fit_classifier`, so a robust and a standard
extractor of the same seed see the same images in the same order.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.linf import linf_ascent
from aipray.models.train import TrainResult, classifier_optimizer
from aipray.pixels import to_float

log = logging.getLogger(__package__)

METHODS = ("adversarial", "free")


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted L∞ PGD (Madry et al. 2018): ``steps`` signed-gradient ascents of the
    cross-entropy of ``step_size``, each projected onto ``‖δ‖∞ ≤ eps/255`` and ``[0, 1]``
    (the attacks' engine, :func:`~aipray.linf.linf_ascent`, without the 8-bit rounding).

    Args:
        model: images ``[B, 3, H, W]`` in [0, 1] → logits ``[B, K]``; used in whatever mode
            it is in (the caller chooses train or eval mode).
        images: ``[B, 3, H, W]`` float in [0, 1]; never modified.
        labels: ``[B]`` true classes.
        eps: L∞ bound in 0..255 pixel units.
        steps: number of ascent steps.
        step_size: step in 0..255 pixel units.
        random_start: start from a uniform point of the ε-ball (drawn on the CPU with
            ``generator``, so a seed reproduces it on any device).

    Returns:
        ``[B, 3, H, W]`` adversarial images in [0, 1], detached (not quantised to 8 bits).
    """

    def objective(x_adv: torch.Tensor, step: int) -> torch.Tensor:
        return F.cross_entropy(model(x_adv), labels, reduction="none")

    return linf_ascent(
        images,
        objective,
        eps=eps,
        steps=steps,
        lr=step_size / 255.0,
        method="sign",
        random_start=random_start,
        generator=generator,
        quantize=False,
    )


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    batch_size: int = 256,
) -> float:
    """Accuracy of ``model`` (eval mode; its mode is restored) on ``images`` ``[N, 3, H, W]``
    float in [0, 1] under an untargeted L∞ PGD without random start: ε and ``step_size`` in
    0..255 pixel units, ``step_size`` ``None`` = 2.5·ε/steps. ``eps = 0`` is clean accuracy.
    Batches run on the model's device."""
    if images.shape[0] == 0:
        raise ValueError("robust_accuracy needs at least one image")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {images.dtype} (divide by 255)")
    step = 2.5 * eps / max(1, steps) if step_size is None else step_size
    y = torch.as_tensor(labels)
    batches = (
        (images[i : i + batch_size], y[i : i + batch_size])
        for i in range(0, images.shape[0], batch_size)
    )
    return _correct(model, batches, eps=eps, steps=steps, step_size=step) / images.shape[0]


def _correct(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    eps: float,
    steps: int,
    step_size: float,
) -> int:
    """Number of ``(images in [0, 1], labels)`` pairs still classified right after PGD (no
    random start), with the model in eval mode; its mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for xb, yb in batches:
            xb, yb = xb.to(device, torch.float32), yb.to(device)
            if eps > 0 and steps > 0:
                xb = pgd(model, xb, yb, eps=eps, steps=steps, step_size=step_size)
            with torch.no_grad():
                correct += int((model(xb).argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return correct


def fit_robust_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    method: str,
    eps: float,
    steps: int,
    step_size: float | None = None,
    replays: int = 4,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device | str,
    seed: int = 0,
    holdout: float = 0.1,
    weight_decay: float = 0.0,
    warmup: int = 0,
) -> TrainResult:
    """Adversarial training of the classifier ``model`` on uint8 images ``[N, 3, H, W]`` with
    Adam, keeping the epoch of the best held-out clean accuracy.

    ``method="adversarial"`` (Madry et al. 2018): every minibatch is replaced by its untargeted
    L∞ PGD adversarial (random start in the ε-ball, ``steps`` signed steps of ``step_size``,
    cross-entropy maximised, images kept in [0, 1]) and the model trains on those. The attack
    runs with the model in eval mode (batch norm on running statistics, no dropout), then
    training continues in train mode, as MadryLab's ``robustness`` library does
    (``AttackerModel.forward``); each epoch costs ``steps + 1`` gradient computations per batch.

    ``method="free"`` (Shafahi et al. 2019): every minibatch is replayed ``replays`` (``m``)
    times in train mode; each replay is ONE forward/backward pass whose gradients update the
    weights (an optimiser step) and the perturbation ``δ ← clip(δ + ε·sign(∇_δ), −ε, ε)`` (the
    model sees ``clip(x + δ, 0, 1)``). ``δ`` is carried over from one minibatch to the next; it
    has the shape of a full batch and a smaller last batch uses its first rows (the authors'
    code). ``ceil(epochs / m)`` epochs run, so that the number of gradient computations is that
    of ``epochs`` standard epochs, as in the paper. ``steps``/``step_size`` only set the held-out
    check.

    Args:
        model: ``[B, 3, H, W]`` in [0, 1] → logits, e.g. an
            :class:`~aipray.models.extractor.Extractor`.
        images: uint8 ``[N, 3, H, W]``.
        labels: ``[N]`` int classes.
        method: ``adversarial`` or ``free``.
        eps: L∞ bound in 0..255 pixel units (Perceptual-Rec's defences: 4).
        steps: PGD steps of Madry training and of the held-out check.
        step_size: PGD step in pixel units; ``None`` = 2.5·ε/steps.
        replays: Free-AT's ``m``.
        epochs, batch_size, lr, weight_decay, warmup: as
            :func:`~aipray.models.train.fit_classifier` (``epochs`` is divided by ``m`` for
            ``free``, whose schedule counts each replay as a step).
        device: where to train.
        seed: seed of the held-out split, batch order, flips and PGD's random starts.
        holdout: share of the images held out (at least one).

    Returns:
        A :class:`~aipray.models.train.TrainResult`: ``best_score`` is the held-out clean
        accuracy of the kept epoch; ``history`` has per epoch ``loss`` (mean training loss on
        the adversarial images), ``holdout_accuracy`` and ``robust_holdout_accuracy`` (PGD at
        ``eps`` with ``steps`` steps of ``step_size``, no random start); ``info`` the settings.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not allowed; expected one of {', '.join(METHODS)}")
    if eps <= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number > 0 (0..255 pixel units), got {eps}")
    if steps < 1 or replays < 1:
        raise ValueError(f"steps and replays must be >= 1, got {steps} and {replays}")
    began = time.perf_counter()
    device = torch.device(device)
    step = 2.5 * eps / steps if step_size is None else float(step_size)
    # The split, batch order and flips draw from rng exactly as fit_classifier does.
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    starts = torch.Generator().manual_seed(seed + 1)  # PGD's random starts (CPU)
    order = rng.permutation(labels.size)
    n_hold = max(1, int(holdout * labels.size))
    hold, train = order[:n_hold], order[n_hold:]
    x = torch.as_tensor(np.asarray(images))
    y = torch.as_tensor(labels)

    def holdout_accuracy(eps: float) -> float:  # uint8 → [0, 1] one batch at a time
        batches = (
            (to_float(x[torch.as_tensor(rows)]), y[torch.as_tensor(rows)])
            for rows in np.array_split(hold, math.ceil(hold.size / 256))
        )
        return _correct(model, batches, eps=eps, steps=steps, step_size=step) / hold.size

    n_epochs = math.ceil(epochs / replays) if method == "free" else epochs
    per_epoch = math.ceil(train.size / batch_size) * (replays if method == "free" else 1)
    opt, schedule = classifier_optimizer(
        model,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup * per_epoch,
        total_steps=n_epochs * per_epoch,
    )
    delta: torch.Tensor | None = None  # Free-AT's perturbation, carried between minibatches
    bound = eps / 255.0
    best_state, best = copy.deepcopy(model.state_dict()), (-1.0, -1.0)
    result = TrainResult(
        best_epoch=0,
        best_score=-1.0,
        info={"eps": float(eps), "steps": float(steps), "step_size": step, "epochs": n_epochs},
    )
    if method == "free":
        result.info["replays"] = float(replays)
    for epoch in range(1, n_epochs + 1):
        model.train()
        perm = rng.permutation(train)
        total, count = 0.0, 0
        for i in range(0, perm.size, batch_size):
            idx = torch.as_tensor(perm[i : i + batch_size])
            xb = to_float(x[idx], device)
            if rng.uniform() < 0.5:
                xb = xb.flip(-1)
            yb = y[idx].to(device)
            if method == "adversarial":
                model.eval()  # attack on running statistics, without dropout (robustness lib)
                xb = pgd(
                    model,
                    xb,
                    yb,
                    eps=eps,
                    steps=steps,
                    step_size=step,
                    random_start=True,
                    generator=starts,
                )
                model.train()
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
                total, count = total + float(loss.detach()) * yb.numel(), count + yb.numel()
            else:
                if delta is None or delta.shape[1:] != xb.shape[1:]:
                    delta = torch.zeros((batch_size, *xb.shape[1:]), device=device)
                for _ in range(replays):
                    d = delta[: xb.shape[0]].clone().requires_grad_(True)
                    loss = F.cross_entropy(model((xb + d).clamp(0.0, 1.0)), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # one pass: gradients of the weights and of δ
                    with torch.no_grad():
                        delta[: xb.shape[0]] = (d + bound * d.grad.sign()).clamp(-bound, bound)
                    opt.step()
                    if schedule is not None:
                        schedule.step()
                    total, count = total + float(loss.detach()) * yb.numel(), count + yb.numel()
        model.eval()
        acc, robust = holdout_accuracy(0.0), holdout_accuracy(eps)
        loss_mean = total / max(1, count)
        result.history.append(
            {
                "epoch": epoch,
                "loss": loss_mean,
                "holdout_accuracy": acc,
                "robust_holdout_accuracy": robust,
            }
        )
        log.info(
            "%s training epoch %d loss %.4f held-out accuracy %.3f, under PGD ε=%g %.3f",
            method,
            epoch,
            loss_mean,
            acc,
            eps,
            robust,
        )
        if (acc, robust) > best:  # the best clean accuracy; ties go to the more robust epoch
            best, best_state = (acc, robust), copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_score = epoch, acc
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - began
    return result
