"""AIP Table 8, the weakest JPEG / bit-depth level that defends against an attack, the
robustness table, each defence against the oblivious and the adaptive attack, and the detection
table, a gatekeeper detector against both.

AIP's rule (Table 8's caption): a level *defends* when the adversarial item's HR@5 under it is at
most the mean cooperative HR@5 under it. Significance is shown beside it, not instead of it: the
item-level paired t-test of adversarial vs cooperative HR@5 (each trial's ``p_value_hr_at_5``)
and whether p < 0.01. A level that leaves a lift too small to be significant (p ≥ 0.01) but
still above the cooperative level does not defend under AIP's rule; the table says both.
"""

from __future__ import annotations

import math

import pandas as pd

from aipray.defenses import DEFENSES
from aipray.report.common import (
    ADAPTIVE,
    MISSING,
    SIGNIFICANCE,
    Table,
    attack_order,
    datasets_of,
    fmt_num,
    fmt_p,
    fmt_value,
    mean,
    row_labels,
    rows_of,
    select,
)
from aipray.report.runs import LEVELS

ADV, COOP, P = "adversarial/hr_at_5", "cooperative/hr_at_5", "p_value_hr_at_5"
RANDOM = "random/hr_at_5"
AUC, FPR, RECALL = "detector/auc", "detector/fpr_at_95_recall", "detector/recall"


def defended(adversarial: float, cooperative: float) -> bool:
    """AIP's rule (Table 8): the adversarial item's HR@5 is at most the mean cooperative HR@5.
    The p-value plays no part (it is shown beside); NaN on either side: not defended."""
    return not (math.isnan(adversarial) or math.isnan(cooperative)) and adversarial <= cooperative


def significance_text(p: float) -> str:
    """``yes`` / ``no`` for p < 0.01, ``–`` when there is no p-value."""
    return MISSING if math.isnan(p) else ("yes" if p < SIGNIFICANCE else "no")


def level_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """Per level of one (row, attack, ε, family), weakest first: mean adversarial, cooperative
    and random HR@5 and cost, and the largest p-value (several runs of a level: the most
    conservative)."""
    rows = rows.dropna(subset=["level"])
    stats = rows.groupby("level").agg(
        adversarial=(ADV, "mean"),
        cooperative=(COOP, "mean"),
        random=(RANDOM, "mean"),
        cost=("cost_hr_at_5", "mean"),
        p=(P, "max"),
    )
    return stats.sort_index(ascending=False)


def weakest_level(rows: pd.DataFrame) -> tuple[float, pd.Series | None, list[float]]:
    """The weakest defending level (largest value: highest JPEG quality, most bits), its
    :func:`level_stats` row, and the levels tried weakest first; NaN and None when none defends."""
    stats = level_stats(rows)
    levels = [float(v) for v in stats.index]
    for level, r in stats.iterrows():
        if defended(float(r["adversarial"]), float(r["cooperative"])):
            return float(level), r, levels  # type: ignore[arg-type]
    return math.nan, None, levels


def _cells(sel: pd.DataFrame, needless: bool) -> tuple[dict[str, str], dict[str, object]]:
    level, stats, tried = weakest_level(sel)
    keys = ("adversarial", "cooperative", "random", "p", "cost")
    values = dict.fromkeys(keys, math.nan)
    if stats is not None:
        values = {k: float(stats[k]) for k in values}
    text = fmt_num(level) if stats is not None else "none"
    cells = {
        "weakest defending level": "not needed" if needless else text,
        "adversarial HR@5": fmt_value(values["adversarial"]),
        "cooperative HR@5": fmt_value(values["cooperative"]),
        "random HR@5": fmt_value(values["random"]),
        "p": fmt_p(values["p"]),
        "p < 0.01": significance_text(values["p"]),
        "ordinary cost": fmt_value(values["cost"], signed=True),
        "levels tried": ", ".join(fmt_num(v) for v in tried) or MISSING,
    }
    nums: dict[str, object] = {
        "weakest defending level": level,
        "not needed": needless,
        "adversarial HR@5": values["adversarial"],
        "cooperative HR@5": values["cooperative"],
        "random HR@5": values["random"],
        "p": values["p"],
        "ordinary cost": values["cost"],
        "levels tried": cells["levels tried"],
    }
    return cells, nums


def table8(frame: pd.DataFrame) -> Table:
    """AIP Table 8: per (model, attack, ε) and defence family, the weakest defending level (AIP's
    rule, :func:`defended`) with its adversarial, cooperative and random HR@5, its p-value and
    whether p < 0.01, and its cost on the ordinary test item."""
    tested = frame[frame["family"].isin(list(LEVELS))]
    undefended = frame[frame["family"] == "none"]
    blocks, data = {}, []
    for ds in datasets_of(tested):
        d = tested[tested["dataset"] == ds]
        shown = []
        keys = d[["row", "attack", "eps", "family"]].drop_duplicates()
        for r in rows_of(d):
            mine = keys[keys["row"] == r]
            for a in attack_order(mine["attack"]):
                eps_values = mine.loc[mine["attack"] == a, "eps"].unique()
                for e in sorted(eps_values, key=lambda v: (math.isnan(v), v)):
                    bare = select(undefended, dataset=ds, row=r, attack=a, eps=e)
                    # an attack that does not lift the item above its cooperative level needs none
                    needless = not bare.empty and defended(mean(bare, ADV), mean(bare, COOP))
                    for fam in LEVELS:
                        sel = select(d, row=r, attack=a, eps=e, family=fam)
                        if sel.empty:
                            continue
                        labels = row_labels(r, a, e, LEVELS[fam][1])
                        cells, nums = _cells(sel, needless)
                        shown.append(labels | cells)
                        data.append({"dataset": ds, **labels, **nums})
        if shown:
            blocks[ds] = pd.DataFrame(shown)
    note = (
        "Weakest defence level (JPEG: highest quality; bit depth: most bits) that defends by "
        "AIP's rule (its Table 8): the adversarial cold items' HR@5 under that level is at most "
        "the mean cooperative HR@5 under it. Shown with that level's adversarial, cooperative and "
        "random-ranker HR@5, the item-level paired t-test of adversarial vs cooperative HR@5 "
        f"(p, and whether p < {SIGNIFICANCE}: beside the rule, not part of it) and its cost on "
        "the ordinary test item (ordinary − undefended ordinary HR@5). `none`: no tested level "
        "defends; `not needed`: the attack does not lift the item above its cooperative level "
        "even undefended. Levels tried are listed weakest first."
    )
    title = "Table 8: defence level needed"
    return Table("table8_defense_levels", title, note, blocks, pd.DataFrame(data))


def robustness_table(frame: pd.DataFrame) -> Table | None:
    """Defence × {oblivious, adaptive} per (model, attack, ε), RobustBench-style: each defence's
    cooperative HR@5, the oblivious and the adaptive attack's adversarial HR@5 under it with
    their item-level p-values and whether the defence holds by AIP's rule (:func:`defended`)
    against each, and its cost on the ordinary test item. Only attacks with an adaptive run;
    ``None`` when none has one. Against no defence the adaptive attack is the oblivious one (the
    grid runs it once, as the oblivious trial)."""
    bases = {a.removesuffix(ADAPTIVE) for a in frame["attack"] if a.endswith(ADAPTIVE)}
    if not bases:
        return None
    blocks, data = {}, []
    for ds in datasets_of(frame):
        d = frame[frame["dataset"] == ds]
        shown = []
        for r in rows_of(d):
            mine = d[d["row"] == r]
            for a in [a for a in attack_order(mine["attack"]) if a in bases]:
                both = mine[mine["attack"].isin([a, a + ADAPTIVE])]
                for e in sorted(both["eps"].unique(), key=lambda v: (math.isnan(v), v)):
                    at = select(both, eps=e)
                    for label in sorted(set(at["defense"]), key=lambda x: (x != "none", x)):
                        head = row_labels(r, a, e, label)
                        cells, nums = _robustness_cells(select(at, defense=label), a, label)
                        shown.append(head | cells)
                        data.append({"dataset": ds, **head, **nums})
        if shown:
            blocks[ds] = pd.DataFrame(shown)
    note = (
        "Each input defence against the attack that does not know it (oblivious: AIP's and "
        "Denoise-to-protect's setting) and the one that optimises through it (adaptive: BPDA for "
        "JPEG and bit depth, the exact gradient of a differentiable defence such as the "
        "denoiser, EOT over draws of a randomised one). HR@5 of the adversarial cold items, "
        "with the item-level paired t-test against the cooperative ones (p); `holds`: the "
        "adversarial HR@5 under the defence is at most the cooperative HR@5 under it (AIP's "
        f"rule; p < {SIGNIFICANCE} stands beside it, not in it); ordinary cost: ordinary − "
        "undefended ordinary HR@5. Against `none` the adaptive attack is the oblivious one. "
        "Where the adaptive attack ran with both BPDA gradients (the identity's, straight-"
        "through, and a differentiable approximation's: JPEG's), the stronger one is shown and "
        "`adaptive BPDA` names it. "
        "Training-time defences (AMR, adversarially trained extractors) are rows of their own: "
        "every attack on them goes through the defended model's gradients, adaptive by "
        "construction."
    )
    title = "Robustness: oblivious and adaptive attacks"
    return Table("robustness", title, note, blocks, pd.DataFrame(data))


def detection_table(frame: pd.DataFrame) -> Table | None:
    """A screening defence (the detector) per (model, attack, ε, detector), against the
    oblivious and the adaptive attack: its ROC AUC on the trial's adversarial vs clean cold
    images, the adversarial items its calibrated threshold rejects (recall), and the HR@5 the
    attack still reaches with rejected items counted as misses; with the clean cold items that
    threshold rejects (the cost to honest merchants). ``None`` without detector trials."""
    if AUC not in frame or frame[AUC].isna().all():
        return None
    screened = frame[frame[AUC].notna()]
    blocks, data = {}, []
    for ds in datasets_of(screened):
        d = screened[screened["dataset"] == ds]
        shown = []
        for r in rows_of(d):
            mine = d[d["row"] == r]
            bases = dict.fromkeys(a.removesuffix(ADAPTIVE) for a in attack_order(mine["attack"]))
            for a in bases:
                both = mine[mine["attack"].isin([a, a + ADAPTIVE])]
                for e in sorted(both["eps"].unique(), key=lambda v: (math.isnan(v), v)):
                    at = select(both, eps=e)
                    for label in sorted(set(at["defense"])):
                        head = row_labels(r, a, e, label)
                        cells, nums = _detection_cells(select(at, defense=label), a)
                        bare = select(frame, dataset=ds, row=r, attack=a, eps=e, defense="none")
                        undefended = mean(bare, ADV) if not bare.empty else math.nan
                        cells = {"undefended HR@5": fmt_value(undefended)} | cells
                        nums = {"undefended HR@5": undefended} | nums
                        shown.append(head | cells)
                        data.append({"dataset": ds, **head, **nums})
        if shown:
            blocks[ds] = pd.DataFrame(shown)
    note = (
        "A gatekeeper detector of adversarial item images, trained on clean and attacked images "
        "of warm items; the platform rejects an upload whose score reaches the threshold that "
        "catches 95 % of attacked held-out warm images, and a rejected item is never shown (a "
        "miss). AUC: its ROC AUC on the trial's adversarial vs clean cold images; recall: the "
        "adversarial cold items it rejects; FPR@95: the clean cold items it rejects (what honest "
        "merchants pay); HR@5: the adversarial items' HR@5 behind it, rejected ones counted as "
        "misses (undefended: the same attack without it). The adaptive attack also keeps the "
        "detector's score under the threshold."
    )
    title = "Detection: a gatekeeper against oblivious and adaptive attacks"
    return Table("detection", title, note, blocks, pd.DataFrame(data))


def _detection_cells(rows: pd.DataFrame, attack: str) -> tuple[dict[str, str], dict[str, object]]:
    """One detector's cells: its trials of the oblivious ``attack`` and of its adaptive form."""
    runs = {
        "oblivious": select(rows, attack=attack),
        "adaptive": select(rows, attack=attack + ADAPTIVE),
    }
    one = runs["oblivious"] if not runs["oblivious"].empty else runs["adaptive"]
    fpr = mean(one, FPR)
    cells: dict[str, str] = {"FPR@95 (clean cold)": fmt_value(fpr)}
    nums: dict[str, object] = {"FPR@95 (clean cold)": fpr}
    for kind, sel in runs.items():
        values = {"AUC": mean(sel, AUC), "recall": mean(sel, RECALL), "HR@5": mean(sel, ADV)}
        cells |= {f"{kind} {k}": fmt_value(v) for k, v in values.items()}
        nums |= {f"{kind} {k}": v for k, v in values.items()}
    return cells, nums


def _robustness_cells(
    rows: pd.DataFrame, attack: str, defence: str
) -> tuple[dict[str, str], dict[str, object]]:
    """One defence's cells: its trials of the oblivious ``attack`` and of its adaptive form;
    where the adaptive attack ran in several variants (BPDA with the identity's gradient and
    with a differentiable approximation's), the strongest, as RobustBench counts the worst
    case over attacks, and which it was (``adaptive BPDA``)."""
    adaptive = select(rows, attack=attack + ADAPTIVE)
    if adaptive["bpda"].nunique() > 1:
        adaptive = adaptive.loc[[adaptive[ADV].idxmax()]]
    runs = {"oblivious": select(rows, attack=attack), "adaptive": adaptive}
    if defence == "none":  # nothing to adapt to: the adaptive attack is the oblivious one
        runs["adaptive"] = runs["oblivious"] if runs["adaptive"].empty else runs["adaptive"]
    # both trials serve the same clean images through the same ranker and defence: one of them
    one = runs["oblivious"] if not runs["oblivious"].empty else runs["adaptive"]
    coop, cost = mean(one, COOP), mean(one, "cost_hr_at_5")
    cells = {"cooperative HR@5": fmt_value(coop)}
    nums: dict[str, object] = {"cooperative HR@5": coop}
    for kind, sel in runs.items():
        adv, p = mean(sel, ADV), mean(sel, P)
        holds = None if defence == "none" or math.isnan(adv) else defended(adv, coop)
        cells |= {
            f"{kind} HR@5": fmt_value(adv),
            f"{kind} p": fmt_p(p),
            f"holds vs {kind}": MISSING if holds is None else ("yes" if holds else "no"),
        }
        nums |= {f"{kind} HR@5": adv, f"{kind} p": p, f"holds vs {kind}": holds}
    cells["ordinary cost"] = fmt_value(cost, signed=True)
    nums["ordinary cost"] = cost
    # the gradient the adaptive attack took through a BPDA defence (– for any other defence)
    variant = adaptive["bpda"].dropna()
    kind = defence.split("(", 1)[0]
    cls = DEFENSES.get(kind) if kind in DEFENSES else None
    through_bpda = cls is not None and cls.gradient == "bpda" and not cls.identity
    bpda = str(variant.iloc[0]) if len(variant) and through_bpda else MISSING
    cells["adaptive BPDA"] = nums["adaptive BPDA"] = bpda
    return cells, nums
