"""AIP's cold-item protocol (Liu & Larson, WWW 2021, §4), Ray-free.

Per user, a visually-aware ranker re-ranks a fixed candidate set — the first stage's (BPR's)
top-C among warm items outside the user's training and validation items, plus the user's
ordinary test item — into which one cold item is injected, with its original (cooperative) or
its adversarial image. The fixed candidates are scored once per (ranker, defence)
(:func:`candidate_scores`); a batch of cold items is then ranked for every user at once by
counting (:mod:`aipray.metrics.ranking`). Defences apply to every image the ranker sees: the
candidates', the cold items' (cooperative and adversarial alike) and any the ranker keeps of its
own (:meth:`~aipray.models.base.Recommender.under_defense`). Rankers are trained on clean
images: a platform trains before it adds an input defence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from aipray.attacks.base import ATTACKS, Attack, AttackInputs
from aipray.data.catalog import Catalog
from aipray.metrics.detection import fpr_at_recall, roc_auc
from aipray.metrics.full_ranking import (
    FULL_CUTOFFS,
)
from aipray.metrics.image import linf_255, psnr, ssim
from aipray.metrics.ranking import (
    COLLUSION,
    CUTOFFS,
    CandidateScores,
    colluding_hit_rates,
    hit_rates,
    injected_ranks,
    ordinary_hit_rates,
    prediction_shift,
    random_colluding_hit_rate,
    random_hit_rate,
)
from aipray.metrics.stats import paired_t_test
from aipray.models.base import Recommender
from aipray.pixels import ImageMap, to_float
from aipray.protocol.candidates import (  # noqa: F401 - AIP's first stage, as aip.first_stage(...)
    FirstStage,
    first_stage,
    first_stage_health,
    top_candidates,
    top_scored,
)
from aipray.protocol.scores import (  # noqa: F401 - the fixed candidates' scores, as aip.candidate_scores(...)
    candidate_scores,
    full_ranking_scores,
    is_identity,
    no_defense,
    served_scores,
)

#: per-item groups of hit rates: the cold item and the user's ordinary test item
GROUPS = ("cooperative", "adversarial", "ordinary", "ordinary_attacked", "ordinary_undefended")
#: the same groups over each user's full ranking (MLflow: ``full_ranking/adversarial/hr_at_50``)
FULL = "full_ranking"
FULL_GROUPS = ("cooperative", "adversarial", "ordinary", "ordinary_attacked")


# --- cold items -----------------------------------------------------------------------------------
class ColdItemEvaluator:
    """Evaluates batches of cold items for one (ranker, attack, defence).

    Args:
        model: the trained ranker the attacker knows (undefended).
        attack: the attack, or ``None`` when adversarial images are supplied to each call.
        context: fixed candidate scores under the defence (:func:`candidate_scores`).
        bare_context: the same without the defence (the baseline of the defence's cost).
        defense: the input defence (identity for none).
        served: the ranker under the defence (``model.under_defense(defense, images)``).
        lpips: ``(clean, adversarial) → [B]`` perceptual distance
            (:func:`aipray.metrics.perceptual.make_lpips`), or ``None`` to skip it.
        full: every user's full ranking under the defence (:func:`full_ranking_scores`): the
            cold and ordinary items' HR@N over it (``full_ranking/<group>/hr_at_N``, N in
            :data:`~aipray.metrics.full_ranking.FULL_CUTOFFS`) beside AIP's top-C HR@N; ``None``
            to skip them.
    """

    def __init__(
        self,
        model: Recommender,
        attack: Attack | None,
        context: CandidateScores,
        bare_context: CandidateScores | None = None,
        defense: ImageMap | None = None,
        served: Recommender | None = None,
        lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        full: CandidateScores | None = None,
    ) -> None:
        self.lpips = lpips
        self.model = model
        self.attack = attack
        self.context = context
        self.defense = no_defense() if defense is None else defense
        self.defended = not is_identity(self.defense)
        if self.defended and bare_context is None:
            raise ValueError("a defended evaluation needs the undefended candidate scores too")
        self.bare_context = context if bare_context is None else bare_context
        self.served = model if served is None else served
        self.device = context.sorted_scores.device
        self.full = None if full is None else full.to(self.device)
        self.users = torch.arange(model.n_users, device=self.device)
        self.screens = bool(getattr(self.defense, "screens", False))

    def screen(self, clean: torch.Tensor, adv: torch.Tensor) -> dict[str, np.ndarray]:
        """A screening defence's per-item rows: its score of the clean and the adversarial
        upload (``detector_clean``, ``detector_adv``) and whether it rejected each
        (``rejected_clean``, ``rejected_adv``, 0/1)."""
        defense = self.defense
        return {
            "detector_clean": defense.detect(clean).cpu().numpy().astype(np.float64),
            "detector_adv": defense.detect(adv).cpu().numpy().astype(np.float64),
            "rejected_clean": defense.rejects(clean).float().cpu().numpy(),
            "rejected_adv": defense.rejects(adv).float().cpu().numpy(),
        }

    def __call__(
        self,
        clean: torch.Tensor,
        item_ids: np.ndarray,
        adversarial: torch.Tensor | None = None,
    ) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """Per-item rows for ``clean`` images ``[B, 3, H, W]`` in [0, 1] of cold items
        ``item_ids`` and the adversarial images (made by the attack unless given)."""
        clean = clean.to(self.device)
        start = time.perf_counter()
        if adversarial is None:
            if self.attack is None:
                raise ValueError("no attack and no adversarial images to evaluate")
            result = self.attack.run(clean, torch.as_tensor(item_ids, device=self.device))
            adv, steps = result.images, result.steps
            seconds = np.full(clean.shape[0], (time.perf_counter() - start) / len(clean))
        else:
            adv = adversarial.to(self.device)
            seconds = np.full(clean.shape[0], np.nan)
            steps = None
        ids = torch.as_tensor(np.asarray(item_ids), device=self.device)
        with torch.no_grad():
            coop = self.served.score_images(self.users, self.defense(clean), ids)  # [U, B]
            attacked = self.served.score_images(self.users, self.defense(adv), ids)
            bare = self.model.score_images(self.users, clean, ids) if self.defended else coop
            screened = self.screen(clean, adv) if self.screens else {}
            out: dict[str, np.ndarray] = {
                "item_id": np.asarray(item_ids),
                "prediction_shift": prediction_shift(attacked, coop).cpu().numpy(),
                "coop_score": coop.mean(0).cpu().numpy(),
                "adv_score": attacked.mean(0).cpu().numpy(),
                "linf_255": linf_255(clean, adv).cpu().numpy(),
                "ssim": ssim(clean, adv).cpu().numpy(),
                "psnr": psnr(clean, adv).clamp(max=100.0).cpu().numpy(),
                "attack_seconds": seconds,
            }
            if steps is not None:
                out["attack_steps"] = np.asarray(steps, dtype=np.float64)
            if screened:  # what users see, for the hit rates: a rejected upload never is
                coop = never_shown(coop, screened["rejected_clean"])
                attacked = never_shown(attacked, screened["rejected_adv"])
                out |= screened
            groups = {
                "cooperative": hit_rates(injected_ranks(self.context, coop)),
                "adversarial": hit_rates(injected_ranks(self.context, attacked)),
                "ordinary": ordinary_hit_rates(self.context, coop),
                "ordinary_attacked": ordinary_hit_rates(self.context, attacked),
                "ordinary_undefended": ordinary_hit_rates(self.bare_context, bare),
            }
            for group, rates in groups.items():
                for k in CUTOFFS:
                    out[f"{group}/hr_at_{k}"] = rates[k].cpu().numpy()
            if self.full is not None:
                full = {
                    "cooperative": hit_rates(injected_ranks(self.full, coop), FULL_CUTOFFS),
                    "adversarial": hit_rates(injected_ranks(self.full, attacked), FULL_CUTOFFS),
                    "ordinary": ordinary_hit_rates(self.full, coop, FULL_CUTOFFS),
                    "ordinary_attacked": ordinary_hit_rates(self.full, attacked, FULL_CUTOFFS),
                }
                for group, rates in full.items():
                    for k in FULL_CUTOFFS:
                        out[f"{FULL}/{group}/hr_at_{k}"] = rates[k].cpu().numpy()
            if self.lpips is not None:
                out["lpips"] = self.lpips(clean, adv).cpu().numpy()
            success = None if self.attack is None else self.attack.success(adv)
            if success is not None:
                out["success"] = success.float().cpu().numpy()
        return out, adv


def never_shown(scores: torch.Tensor, rejected: np.ndarray) -> torch.Tensor:
    """``scores [U, B]`` with the columns of rejected items (``rejected [B]``, 0/1) at −∞: below
    every candidate, so a miss at every cut-off that displaces no ordinary item."""
    mask = torch.as_tensor(rejected > 0, device=scores.device)
    return scores.masked_fill(mask[None, :], -torch.inf)


def reduce_items(
    items: pd.DataFrame, set_sizes: torch.Tensor, full_sizes: torch.Tensor | None = None
) -> dict[str, float]:
    """Trial metrics from the per-item rows (one row per cold item); ``set_sizes`` are the
    candidate sets' sizes and ``full_sizes`` the full rankings' (for the full-ranking yardstick's
    random level and test, when the rows have it)."""
    metrics: dict[str, float] = {}
    for group in GROUPS:
        for k in CUTOFFS:
            metrics[f"{group}/hr_at_{k}"] = float(items[f"{group}/hr_at_{k}"].mean())
    for k, value in random_hit_rate(set_sizes).items():
        metrics[f"random/hr_at_{k}"] = value
    if full_sizes is not None and f"{FULL}/adversarial/hr_at_{FULL_CUTOFFS[0]}" in items:
        for group in FULL_GROUPS:
            for k in FULL_CUTOFFS:
                key = f"{FULL}/{group}/hr_at_{k}"
                metrics[key] = float(items[key].mean())
        for k, value in random_hit_rate(full_sizes, FULL_CUTOFFS).items():
            metrics[f"{FULL}/random/hr_at_{k}"] = value
        top = max(FULL_CUTOFFS)
        metrics[f"{FULL}/p_value_hr_at_{top}"] = paired_t_test(
            items[f"{FULL}/adversarial/hr_at_{top}"].to_numpy(),
            items[f"{FULL}/cooperative/hr_at_{top}"].to_numpy(),
        )
    if "detector_adv" in items:
        metrics.update(screen_metrics(items))
    metrics["prediction_shift"] = float(items["prediction_shift"].mean())
    metrics["p_value_hr_at_5"] = paired_t_test(
        items["adversarial/hr_at_5"].to_numpy(), items["cooperative/hr_at_5"].to_numpy()
    )
    metrics["linf_255_max"] = float(items["linf_255"].max())
    metrics["ssim_mean"] = float(items["ssim"].mean())
    metrics["psnr_mean"] = float(items["psnr"].mean())
    if "lpips" in items:
        metrics["lpips_mean"] = float(items["lpips"].mean())
    if "success" in items:
        metrics["success_rate"] = float(items["success"].mean())
    seconds = items["attack_seconds"].dropna()
    if len(seconds):
        metrics["attack_seconds_per_item"] = float(seconds.mean())
    if "attack_steps" in items and items["attack_steps"].notna().any():  # an early stop's
        metrics["attack_steps_mean"] = float(items["attack_steps"].mean())
        metrics["attack_steps_max"] = float(items["attack_steps"].max())
    metrics["n_items"] = float(len(items))
    return metrics


# --- colluding merchants --------------------------------------------------------------------------
@torch.no_grad()
def collusion_metrics(
    served: Recommender,
    context: CandidateScores,
    clean: torch.Tensor,
    adversarial: torch.Tensor,
    sizes: Sequence[int],
    defense: ImageMap | None = None,
    chunk: int = 64,
    items: torch.Tensor | None = None,
) -> dict[str, float]:
    """AIP's open question, "the simultaneous presence of multiple adversarial items": the cold
    items (``clean``/``adversarial [n, 3, H, W]``, in item order) form merchants of ``k``
    consecutive items (for each ``k`` in ``sizes``; a last short group is left out), and each
    merchant's ``k`` items enter every user's candidate set together. Metrics, under
    ``collusion/k<k>/``, at every cutoff N:

    - ``adversarial/hr_at_N`` / ``cooperative/hr_at_N``: the items' HR@N with their adversarial
      / clean images (:func:`~aipray.metrics.ranking.colluding_hit_rates`);
    - ``alone/hr_at_N``: the same items' adversarial HR@N each alone in the set, and
      ``crowding_at_N``, the first over this (below 1: the colluders push each other down);
    - ``merchant/hr_at_N`` / ``merchant_cooperative/hr_at_N``: users with at least one of the
      merchant's items in the top N;
    - ``ordinary/hr_at_N``: the ordinary test item's availability with the ``k`` adversarial
      items in the set;
    - ``random/hr_at_N``, ``random_merchant/hr_at_N`` and ``groups``.

    Images are scored by ``served`` after ``defense``, as :class:`ColdItemEvaluator` scores
    them (an upload a screen rejects is never shown); ``items`` ``[n]`` are the items' ids (for a
    ranker that reads their titles)."""
    defense = no_defense() if defense is None else defense
    device = context.sorted_scores.device
    users = torch.arange(served.n_users, device=device)

    def scores(images: torch.Tensor) -> torch.Tensor:
        parts = []
        for i in range(0, images.shape[0], chunk):
            batch = images[i : i + chunk].to(device)
            ids = None if items is None else items[i : i + chunk].to(device)
            s = served.score_images(users, defense(batch), ids)
            if defense.screens:  # a rejected upload is never shown, as in the evaluator
                s = s.masked_fill(defense.rejects(batch)[None, :], -torch.inf)
            parts.append(s)
        return torch.cat(parts, dim=1)  # [U, n]

    coop, adv = scores(clean), scores(adversarial)
    out: dict[str, float] = {}
    for k in sizes:
        groups = adv.shape[1] // k
        if groups == 0:
            continue
        at = f"{COLLUSION}/k{k}"

        def grouped(s: torch.Tensor, size: int, n: int = groups * k) -> torch.Tensor:
            return s[:, :n].reshape(s.shape[0], n // size, size)

        rates = {
            "adversarial": colluding_hit_rates(context, grouped(adv, k)),
            "cooperative": colluding_hit_rates(context, grouped(coop, k)),
            "alone": colluding_hit_rates(context, grouped(adv, 1)),
        }
        chance = random_colluding_hit_rate(context.set_sizes, k)
        for n in CUTOFFS:
            together = float(rates["adversarial"]["items"][n].mean())
            alone = float(rates["alone"]["items"][n].mean())
            out[f"{at}/adversarial/hr_at_{n}"] = together
            out[f"{at}/cooperative/hr_at_{n}"] = float(rates["cooperative"]["items"][n].mean())
            out[f"{at}/alone/hr_at_{n}"] = alone
            out[f"{at}/crowding_at_{n}"] = together / alone if alone > 0 else float("nan")
            out[f"{at}/merchant/hr_at_{n}"] = float(rates["adversarial"]["merchant"][n].mean())
            out[f"{at}/merchant_cooperative/hr_at_{n}"] = float(
                rates["cooperative"]["merchant"][n].mean()
            )
            out[f"{at}/ordinary/hr_at_{n}"] = float(rates["adversarial"]["ordinary"][n].mean())
            out[f"{at}/random/hr_at_{n}"] = chance["items"][n]
            out[f"{at}/random_merchant/hr_at_{n}"] = chance["merchant"][n]
        out[f"{at}/groups"] = float(groups)
    return out


def screen_metrics(items: pd.DataFrame, recall: float = 0.95) -> dict[str, float]:
    """A screening defence's (the detector's) trial metrics from the per-item rows, the trial's
    adversarial cold images the positives and their clean images the negatives:

    - ``detector/auc``: ROC AUC of its scores;
    - ``detector/fpr_at_95_recall``: clean cold items its deployed threshold (calibrated at 95 %
      recall on attacked held-out warm items) rejects: what it costs honest merchants;
    - ``detector/recall``: the trial's adversarial items that threshold rejects;
    - ``detector/fpr_at_trial_95_recall``: clean cold items flagged at the threshold that would
      catch 95 % of this trial's own adversarial items (an oracle's choice: how separable they
      are, whatever the calibration).
    """
    adv, clean = items["detector_adv"].to_numpy(), items["detector_clean"].to_numpy()
    return {
        "detector/auc": roc_auc(adv, clean),
        "detector/fpr_at_95_recall": float(items["rejected_clean"].mean()),
        "detector/recall": float(items["rejected_adv"].mean()),
        "detector/fpr_at_trial_95_recall": fpr_at_recall(adv, clean, recall),
    }


# --- one call -------------------------------------------------------------------------------------
def attack(
    name: str,
    model: Recommender,
    catalog: Catalog,
    *,
    classifier: torch.nn.Module | None = None,
    target_class: int | None = None,
    defense: ImageMap | None = None,
    **settings: Any,
) -> Attack:
    """A registered attack against ``model`` with ``settings`` (its Config's fields; validated),
    knowing the catalog's most-interacted training item (the hook) unless ``hook`` is set, and
    the input ``defense`` (which an ``adaptive=True`` attack optimises through, against the
    ranker served under it)."""
    cls = ATTACKS.get(name)
    config = cls.Config(**settings)
    inputs = attack_inputs(config, catalog, classifier, target_class, defense)
    return cls(config, attacked_model(config, model, defense, catalog), inputs)


def attacked_model(
    config: Any, model: Recommender, defense: ImageMap | None, catalog: Catalog
) -> Recommender:
    """The ranker an attack with ``config`` optimises against: the trained ``model`` when
    oblivious; adaptive, the ranker the platform serves under ``defense``
    (:meth:`~aipray.models.base.Recommender.under_defense`)."""
    if getattr(config, "adaptive", False) and defense is not None:
        return model.under_defense(defense, catalog.images)
    return model


def hook_item(config: Any, catalog: Catalog) -> int:
    """The hook item EXPA and c-SEMA lean on: the attack config's ``hook``, or the catalog's
    most-interacted training item."""
    hook = getattr(config, "hook", None)
    return catalog.most_popular_item() if hook is None else int(hook)


def attack_inputs(
    config: Any,
    catalog: Catalog,
    classifier: torch.nn.Module | None = None,
    target_class: int | None = None,
    defense: ImageMap | None = None,
) -> AttackInputs:
    """What an attack with ``config`` may know besides the ranker: the image of its
    :func:`hook_item`, the classifier and target class (for classifier attacks) and the input
    defence (for adaptive attacks)."""
    return AttackInputs(
        hook_image=to_float(catalog.images[hook_item(config, catalog)]),
        classifier=classifier,
        target_class=target_class,
        defense=defense,
    )


def evaluate(
    model: Recommender,
    catalog: Catalog,
    candidates: np.ndarray,
    attack: Attack,
    *,
    defense: ImageMap | None = None,
    items: Sequence[int] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    collusion: Sequence[int] = (),
) -> tuple[dict[str, float], pd.DataFrame]:
    """The whole protocol in one process: trial metrics and per-item rows for the catalog's cold
    items (or ``items``) under ``attack`` and ``defense``, by both yardsticks (AIP's top-C
    candidates and the full ranking), and for each ``k`` in ``collusion`` the metrics of
    merchants of ``k`` consecutive items injected together (:func:`collusion_metrics`)."""
    model = model.to(device).eval()
    defense = no_defense() if defense is None else defense
    served = model.under_defense(defense, catalog.images)
    context = candidate_scores(model, catalog, candidates, defense, device, served=served)
    bare = None if is_identity(defense) else candidate_scores(model, catalog, candidates)
    full = full_ranking_scores(model, catalog, defense, device, served=served)
    evaluator = ColdItemEvaluator(model, attack, context, bare, defense, served, full=full)
    ids = np.asarray(catalog.cold_items if items is None else items, dtype=np.int64)
    rows, adversarial = [], []
    for start in range(0, ids.size, batch_size):
        chunk = ids[start : start + batch_size]
        out, adv = evaluator(to_float(catalog.images[chunk]), chunk)
        rows.append(pd.DataFrame(out))
        adversarial.append(adv.cpu())
    frame = pd.concat(rows, ignore_index=True)
    metrics = reduce_items(frame, context.set_sizes, full.set_sizes)
    if collusion:
        clean = to_float(catalog.images[ids])
        adv_all = torch.cat(adversarial)
        metrics.update(collusion_metrics(served, context, clean, adv_all, collusion, defense))
    return metrics, frame
