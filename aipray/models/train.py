"""Training loops: pairwise BPR for every recommender, cross-entropy for the extractor.

Both keep the parameters of the best epoch on held-out data (validation HR@10 for rankers,
accuracy for the classifier), which is what a grid search over hyper-parameters then compares.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.data.catalog import Catalog
from aipray.metrics.full_ranking import full_hit_rate
from aipray.models.base import Recommender
from aipray.pixels import to_float

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    #: epochs trained (fewer than the maximum when validation stopped improving)
    epochs_run: int = 0
    seconds: float = 0.0
    #: what training derived besides the weights (AMR: the absolute ε of its adversary)
    info: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureAdversary:
    """AMR's training-time adversary (He et al. SIGIR 2018; Tang et al. TKDE 2019): after
    ``clean_epochs`` plain epochs, each batch also pays ``weight · L_BPR`` on visual features moved
    by ``Δ = ε · g/‖g‖`` (``g`` = the BPR loss gradient w.r.t. each item's features). ``unit``
    says what ``eps`` is measured in: ``max_abs`` (AMR's own code: the features the model sees
    are already divided by the warm items' global max |f|, and ε = ``eps`` in those units) or
    ``relative_norm`` (ε = ``eps ×`` the mean L2 norm of the warm items' features).
    ``clean_epochs`` ``None``: the plain phase lasts until validation stops improving (the
    training's ``patience``), at most half the epochs, then its best weights go on with the
    adversary."""

    eps: float
    weight: float
    clean_epochs: int | None = 0
    unit: str = "relative_norm"


class BatchObjective(Protocol):
    """A model's own training loss for :func:`fit_bpr`, for models whose codes are not a
    per-batch function of the items (graph models propagate the whole graph once per batch):
    ``start_epoch`` runs before each epoch (FREEDOM's edge pruning), ``__call__`` is the batch's
    loss of ``(users, positives, negatives)`` ``[B]`` each."""

    def start_epoch(self, rng: np.random.Generator) -> None: ...

    def __call__(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor: ...


def sample_negatives(
    users: np.ndarray,
    warm_items: np.ndarray,
    seen_keys: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One warm item per user that the user has not interacted with (``seen_keys`` sorted
    ``user * n_items + item``); re-draws collisions until none is left."""
    neg = warm_items[rng.integers(0, warm_items.size, size=users.size)]
    for _ in range(100):
        keys = users * n_items + neg
        pos = np.searchsorted(seen_keys, keys)
        clash = seen_keys[np.minimum(pos, seen_keys.size - 1)] == keys
        if not clash.any():
            return neg
        neg[clash] = warm_items[rng.integers(0, warm_items.size, size=int(clash.sum()))]
    return neg


def interaction_keys(catalog: Catalog, *, held_out: bool) -> np.ndarray:
    """Sorted ``user * n_items + item`` keys of the training interactions, plus each user's
    validation and test items when ``held_out``. Training negatives exclude only the training
    set (the model must not know the held-out items); evaluation negatives exclude all three."""
    n = catalog.n_items
    parts = [catalog.train_users * n + catalog.train_items]
    if held_out:
        u = np.arange(catalog.n_users)
        parts += [u * n + catalog.val_items, u * n + catalog.test_items]
    return np.unique(np.concatenate(parts))


#: full-ranking validation reads at most this many users (a seeded sample): every user's item
#: against every warm item would cost more than an epoch at Amazon Men's 34k users x 110k items
VALIDATION_USERS = 5000


def validation_users(catalog: Catalog, seed: int, limit: int = VALIDATION_USERS) -> np.ndarray:
    """The users validation ranks: all of them, or a seeded sample of ``limit`` (sorted)."""
    if catalog.n_users <= limit:
        return np.arange(catalog.n_users)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(catalog.n_users, size=limit, replace=False))


@torch.no_grad()
def validation_hr(
    model: Recommender,
    encoder,
    catalog: Catalog,
    users: np.ndarray,
    device: torch.device,
    k: int = 10,
) -> float:
    """HR@k of each of ``users``' validation item ranked among all warm items outside the
    user's training set and test item (:func:`~aipray.metrics.full_ranking.full_hit_rate`).
    Not against a sample of negatives: with 100 sampled negatives a popular validation item
    wins almost always, so the metric barely separates a popularity-leaning model from one that
    learned the users' taste (Krichene & Rendle, KDD 2020), and early stopping and the recipe
    grid then pick the former."""
    model.eval()
    codes = torch.cat(
        [
            encoder(torch.arange(i, min(i + 512, catalog.n_items), device=device))
            for i in range(0, catalog.n_items, 512)
        ]
    )
    return full_hit_rate(
        lambda u: model.score_codes(u, codes),
        catalog,
        k=k,
        held_out="val",
        device=device,
        users=users,
    )


def fit_bpr(
    model: Recommender,
    catalog: Catalog,
    param_groups: list[dict],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    device: torch.device,
    seed: int = 0,
    reg: float = 0.0,
    adversary: FeatureAdversary | None = None,
    encoder=None,
    patience: int | None = None,
    objective: BatchObjective | None = None,
) -> TrainResult:
    """Train ``model`` with BPR-Opt (Rendle et al. 2009): ``−ln σ(p_ui − p_uj) + reg·‖Θ_uij‖²``
    averaged over (user, positive, negative) triplets, one pass over the training interactions
    per epoch. Negatives are drawn uniformly from warm items outside the user's training set.
    ``‖Θ_uij‖²`` is :meth:`Recommender.penalty`: only the rows the triple uses are regularised
    (Adam's ``weight_decay`` on embedding tables would shrink every row at every step, and
    collapses rarely sampled users and items to zero). Parameters every step uses (VBPR's E,
    DVBPR's CNN) can take weight decay through ``param_groups``. ``adversary`` adds AMR's
    adversarial term (needs an encoder with ``features``/``encode``, as VBPR's); ``encoder``
    replaces ``model.training_encoder(catalog.images)`` (a model that has computed it already).
    Keeps the epoch with the best validation HR@10 over the full ranking (:func:`validation_hr`);
    with ``patience``, ``epochs`` is a maximum and training stops once validation HR@10 has not
    improved for ``patience`` epochs (for AMR: adversarially trained epochs). ``objective``
    replaces the BPR loss on the encoder's codes by the model's own (:class:`BatchObjective`);
    validation still ranks by the encoder's codes."""
    if objective is not None and adversary is not None:
        raise ValueError("fit_bpr: an objective of the model's own cannot take AMR's adversary")
    if adversary is not None and adversary.clean_epochs is None and patience is None:
        raise ValueError("an adversary with clean_epochs=None needs a patience")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if encoder is None:
        encoder = model.training_encoder(catalog.images)  # uint8 [N, 3, H, W], may be a memmap
    warm = np.flatnonzero(catalog.warm_mask())
    train_keys = interaction_keys(catalog, held_out=False)
    val_users = validation_users(catalog, seed + 1)
    if adversary is not None:
        # in the units of the features the model sees (AMR's max_abs: scaled to max |f| = 1)
        norms = encoder.features(torch.as_tensor(warm, device=device)).norm(dim=1)
        adv_eps = adversary.eps
        if adversary.unit == "relative_norm":
            adv_eps = adversary.eps * float(norms.mean())
        result_info = {
            "adv_eps": adv_eps,
            "mean_feature_norm": float(norms.mean()),
            "feature_scale": float(getattr(model, "feature_scale", 1.0)),
        }
    else:
        adv_eps, result_info = 0.0, {}
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    opt = opt_cls(param_groups, lr=lr)
    best_state, best = copy.deepcopy(model.state_dict()), -1.0
    result = TrainResult(best_epoch=0, best_score=-1.0, info=result_info)
    n = catalog.train_users.size
    # AMR: the epoch after which the adversary trains (None: once the plain phase plateaus)
    adv_from = None if adversary is None else adversary.clean_epochs
    plain_state, plain_best, stale = None, -1.0, 0
    for epoch in range(1, epochs + 1):
        adversarial = adv_from is not None and epoch > adv_from
        if objective is not None:
            objective.start_epoch(rng)
        model.train()
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            u = catalog.train_users[idx]
            pos = catalog.train_items[idx]
            neg = sample_negatives(u, warm, train_keys, catalog.n_items, rng)
            ut = torch.as_tensor(u, device=device)
            pos_t = torch.as_tensor(pos, device=device)
            neg_t = torch.as_tensor(neg, device=device)
            if objective is not None:
                loss = objective(ut, pos_t, neg_t)
            else:
                attacker = adversary if adversarial else None
                loss = codes_loss(model, encoder, ut, pos, neg, attacker, adv_eps, device)
            if reg:
                loss = loss + reg * model.penalty(ut, pos_t, neg_t).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.size
        hr = validation_hr(model, encoder, catalog, val_users, device)
        result.history.append({"epoch": epoch, "loss": total / n, "val_hr_at_10": hr})
        log.info("%s epoch %d loss %.4f val HR@10 %.4f", model.name, epoch, total / n, hr)
        result.epochs_run = epoch
        # AMR keeps the best adversarially trained epoch, never a plain-BPR one (unless training
        # ends before the adversary starts: then its last epoch)
        eligible = adversary is None or adversarial or epoch == epochs
        if eligible and hr > best:
            best, best_state = hr, copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_score = epoch, hr
            stale = 0
        elif eligible:
            stale += 1
        if adversary is not None and adv_from is None:  # AMR's plain phase, until it plateaus
            if hr > plain_best:
                plain_best, plain_state, stale = hr, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
            if stale >= patience or epoch >= epochs // 2:
                adv_from, stale = epoch, 0
                model.load_state_dict(plain_state)  # the adversary trains the best plain model
                result.info["clean_epochs"] = float(epoch)
                log.info("%s: plain phase ends at epoch %d (best %.4f)", model.name, epoch, hr)
            continue
        if patience is not None and eligible and stale >= patience and epoch < epochs:
            log.info(
                "%s: stopped at epoch %d of at most %d, no gain for %d epochs; best epoch %d "
                "(val HR@10 %.4f)",
                model.name,
                epoch,
                epochs,
                patience,
                result.best_epoch,
                best,
            )
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def codes_loss(
    model: Recommender,
    encoder,
    users: torch.Tensor,
    pos: np.ndarray,
    neg: np.ndarray,
    adversary: FeatureAdversary | None,
    adv_eps: float,
    device: torch.device,
) -> torch.Tensor:
    """BPR's ``−ln σ(p_ui − p_uj)`` averaged over a batch, each distinct item encoded once by
    ``encoder``; with ``adversary`` (AMR), plus its weight times the same loss on features moved
    by ``adv_eps`` along the loss gradient."""
    uniq, inv = np.unique(np.concatenate([pos, neg]), return_inverse=True)
    uniq_t = torch.as_tensor(uniq, device=device)
    inv_t = torch.as_tensor(inv, device=device)
    uvec = model.user_vectors(users)

    def bpr_loss(codes: torch.Tensor) -> torch.Tensor:
        p_pos = (uvec * codes[inv_t[: pos.size]]).sum(-1)
        p_neg = (uvec * codes[inv_t[pos.size :]]).sum(-1)
        return -F.logsigmoid(p_pos - p_neg).mean()

    if adversary is None:
        return bpr_loss(encoder(uniq_t))
    # AMR: the worst-case feature perturbation of size eps for this batch
    feats = encoder.features(uniq_t).detach().requires_grad_(True)
    loss = bpr_loss(encoder.encode(feats, uniq_t))
    (grad,) = torch.autograd.grad(loss, feats, retain_graph=True)
    delta = adv_eps * F.normalize(grad, dim=1)
    return loss + adversary.weight * bpr_loss(encoder.encode(feats.detach() + delta, uniq_t))


def fit_with(
    model: Recommender,
    catalog: Catalog,
    config: object,
    param_groups: list[dict],
    *,
    device: torch.device,
    seed: int,
    reg: float,
    adversary: FeatureAdversary | None = None,
    encoder=None,
    objective: BatchObjective | None = None,
) -> tuple[Recommender, dict]:
    """:func:`fit_bpr` with a model config's ``epochs``, ``batch_size``, ``lr`` (and
    ``optimizer``, default Adam; ``patience``, default none): the common part of the models'
    training recipes. Returns the trained model and what training recorded."""
    result = fit_bpr(
        model,
        catalog,
        param_groups,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=getattr(config, "optimizer", "adam"),
        device=device,
        seed=seed,
        reg=reg,
        adversary=adversary,
        encoder=encoder,
        patience=getattr(config, "patience", None),
        objective=objective,
    )
    return model, dataclasses.asdict(result)


def classifier_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """Adam, or AdamW (Loshchilov & Hutter, ICLR 2019) when ``weight_decay`` > 0; with
    ``warmup_steps`` > 0 a per-step schedule that rises linearly to ``lr`` over them and then
    decays to zero along a cosine until ``total_steps`` (``None``: a constant ``lr``)."""
    params = model.parameters()
    if weight_decay > 0:
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr)
    if warmup_steps <= 0:
        return opt, None

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
    holdout: float = 0.1,
    weight_decay: float = 0.0,
    warmup: int = 0,
) -> TrainResult:
    """Cross-entropy training on uint8 images ``[N, 3, H, W]``; keeps the best held-out accuracy.
    ``weight_decay`` and ``warmup`` (epochs): :func:`classifier_optimizer`."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(labels.size)
    n_hold = max(1, int(holdout * labels.size))
    hold, train = order[:n_hold], order[n_hold:]
    x = torch.as_tensor(np.asarray(images))
    y = torch.as_tensor(labels)
    per_epoch = math.ceil(train.size / batch_size)
    opt, schedule = classifier_optimizer(
        model,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup * per_epoch,
        total_steps=epochs * per_epoch,
    )
    best_state, best = copy.deepcopy(model.state_dict()), -1.0
    result = TrainResult(best_epoch=0, best_score=-1.0)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = rng.permutation(train)
        for i in range(0, perm.size, batch_size):
            idx = torch.as_tensor(perm[i : i + batch_size])
            xb = to_float(x[idx], device)
            if rng.uniform() < 0.5:
                xb = xb.flip(-1)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
        model.eval()
        with torch.no_grad():
            hold_t = torch.as_tensor(hold)
            pred = torch.cat(
                [
                    model(to_float(x[hold_t[i : i + 512]], device)).argmax(1)
                    for i in range(0, hold.size, 512)
                ]
            )
            acc = float((pred.cpu() == y[hold_t]).float().mean())
        result.history.append({"epoch": epoch, "holdout_accuracy": acc})
        log.info("classifier epoch %d held-out accuracy %.3f", epoch, acc)
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_score = epoch, acc
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
