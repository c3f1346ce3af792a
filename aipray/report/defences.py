"""AIP Table 8: the weakest JPEG / bit-depth level that defends against an attack.

A level *defends* when the item-level paired t-test of adversarial vs cooperative HR@5 under it
(each trial's ``p_value_hr_at_5``) is not significant at p < 0.01, or when the adversarial mean is
not above the cooperative one. Comparing point estimates alone would call a level that leaves a
small, insignificant lift undefended and then pick a stronger, costlier one.
"""

from __future__ import annotations

import math

import pandas as pd

from aipray.report.common import (
    MISSING,
    SIGNIFICANCE,
    Table,
    attack_name,
    attack_order,
    datasets_of,
    fmt_num,
    fmt_p,
    fmt_value,
    mean,
    rows_of,
    select,
)
from aipray.report.runs import LEVELS

ADV, COOP, P = "adversarial/hr_at_5", "cooperative/hr_at_5", "p_value_hr_at_5"


def defended(adversarial: float, cooperative: float, p: float) -> bool:
    """Whether the adversarial item is no longer significantly promoted: p ≥ 0.01, or its
    HR@5 not above the cooperative one (NaN p: only the latter counts)."""
    if not math.isnan(p) and p >= SIGNIFICANCE:
        return True
    return not (math.isnan(adversarial) or math.isnan(cooperative)) and adversarial <= cooperative


def level_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """Per level of one (row, attack, ε, family), weakest first: mean adversarial, cooperative
    HR@5 and cost, and the largest p-value (several runs of a level: the most conservative)."""
    rows = rows.dropna(subset=["level"])
    stats = rows.groupby("level").agg(
        adversarial=(ADV, "mean"),
        cooperative=(COOP, "mean"),
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
        if defended(float(r["adversarial"]), float(r["cooperative"]), float(r["p"])):
            return float(level), r, levels  # type: ignore[arg-type]
    return math.nan, None, levels


def _cells(sel: pd.DataFrame, needless: bool) -> tuple[dict[str, str], dict[str, object]]:
    level, stats, tried = weakest_level(sel)
    values = {"adversarial": math.nan, "cooperative": math.nan, "p": math.nan, "cost": math.nan}
    if stats is not None:
        values = {k: float(stats[k]) for k in values}
    text = fmt_num(level) if stats is not None else "none"
    cells = {
        "weakest defending level": "not needed" if needless else text,
        "adversarial HR@5": fmt_value(values["adversarial"]),
        "cooperative HR@5": fmt_value(values["cooperative"]),
        "p": fmt_p(values["p"]),
        "ordinary cost": fmt_value(values["cost"], signed=True),
        "levels tried": ", ".join(fmt_num(v) for v in tried) or MISSING,
    }
    nums: dict[str, object] = {
        "weakest defending level": level,
        "not needed": needless,
        "adversarial HR@5": values["adversarial"],
        "cooperative HR@5": values["cooperative"],
        "p": values["p"],
        "ordinary cost": values["cost"],
        "levels tried": cells["levels tried"],
    }
    return cells, nums


def table8(frame: pd.DataFrame) -> Table:
    """AIP Table 8: per (model, attack, ε) and defence family, the weakest defending level with
    its adversarial and cooperative HR@5, p-value and cost on the ordinary test item."""
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
                    # an attack that does not significantly lift the item undefended needs none
                    needless = not bare.empty and defended(
                        mean(bare, ADV), mean(bare, COOP), float(bare[P].max())
                    )
                    for fam in LEVELS:
                        sel = select(d, row=r, attack=a, eps=e, family=fam)
                        if sel.empty:
                            continue
                        labels = {
                            "model": r,
                            "attack": attack_name(a),
                            "ε": MISSING if math.isnan(e) else fmt_num(e),
                            "defence": LEVELS[fam][1],
                        }
                        cells, nums = _cells(sel, needless)
                        shown.append(labels | cells)
                        data.append({"dataset": ds, **labels, **nums})
        if shown:
            blocks[ds] = pd.DataFrame(shown)
    note = (
        "Weakest defence level (JPEG: highest quality; bit depth: most bits) that defends: the "
        "item-level paired t-test of the adversarial vs the cooperative cold items' HR@5 under "
        f"that level is not significant (p ≥ {SIGNIFICANCE}), or the adversarial HR@5 is not "
        "above the cooperative one. Shown with that level's adversarial and cooperative HR@5, "
        "its p-value and its cost on the ordinary test item (ordinary − undefended ordinary "
        "HR@5). `none`: no tested level defends; `not needed`: the attack does not "
        "significantly lift the item even undefended. Levels tried are listed weakest first."
    )
    title = "Table 8: defence level needed"
    return Table("table8_defense_levels", title, note, blocks, pd.DataFrame(data))
