"""Colluding merchants: each trial's cold items in groups of k injected together into every
candidate set (AIP's "simultaneous presence of multiple adversarial items"; the metrics are
:func:`aipray.protocol.aip.collusion_metrics`'s). One row per (model, attack, ε, defence, k)."""

from __future__ import annotations

import math
import re

import pandas as pd

from aipray.metrics.ranking import COLLUSION
from aipray.report.common import (
    Table,
    attack_order,
    datasets_of,
    fmt_value,
    mean,
    row_labels,
    rows_of,
    select,
)

#: column → the metric under ``collusion/k<k>/`` it shows
COLUMNS = {
    "k": None,
    "items HR@5": "adversarial/hr_at_5",
    "alone HR@5": "alone/hr_at_5",
    "crowding": "crowding_at_5",
    "merchant HR@5": "merchant/hr_at_5",
    "cooperative HR@5": "cooperative/hr_at_5",
    "merchant cooperative HR@5": "merchant_cooperative/hr_at_5",
    "ordinary HR@5": "ordinary/hr_at_5",
    "random HR@5": "random/hr_at_5",
    "random merchant HR@5": "random_merchant/hr_at_5",
}


def group_sizes(frame: pd.DataFrame) -> list[int]:
    """The group sizes k some trial of ``frame`` reports, ascending."""
    found = {re.fullmatch(rf"{COLLUSION}/k(\d+)/groups", c) for c in frame.columns}
    return sorted(int(m.group(1)) for m in found if m is not None)


def collusion_table(frame: pd.DataFrame) -> Table | None:
    """Per (model, attack, ε, defence) and group size k: the colluders' adversarial HR@5 together
    and each alone, their ratio (crowding), the merchant's HR@5 (any of its k items in the top
    5), the same with clean images, the ordinary item's HR@5 with the k adversarial items in the
    set, and the random levels. ``None`` when no trial reports colluding groups."""
    sizes = group_sizes(frame)
    if not sizes:
        return None
    blocks, data = {}, []
    for ds in datasets_of(frame):
        d = frame[frame["dataset"] == ds]
        shown = []
        for r in rows_of(d):
            mine = d[d["row"] == r]
            for a in attack_order(mine["attack"]):
                at = mine[mine["attack"] == a]
                for e in sorted(at["eps"].unique(), key=lambda v: (math.isnan(v), v)):
                    labels = set(select(at, eps=e)["defense"])
                    for label in sorted(labels, key=lambda x: (x != "none", x)):
                        rows = select(at, eps=e, defense=label)
                        for k in sizes:
                            prefix = f"{COLLUSION}/k{k}/"
                            if rows[prefix + "groups"].isna().all():
                                continue
                            head = row_labels(r, a, e, label)
                            nums = {
                                col: float(k) if metric is None else mean(rows, prefix + metric)
                                for col, metric in COLUMNS.items()
                            }
                            cells = {
                                col: str(k) if col == "k" else fmt_value(v)
                                for col, v in nums.items()
                            }
                            shown.append(head | cells)
                            data.append({"dataset": ds, **head, **nums})
        if shown:
            blocks[ds] = pd.DataFrame(shown)
    note = (
        "Each trial's cold items, in groups of k consecutive items (one merchant each), enter "
        "every user's candidate set together. items HR@5: the colluders' HR@5 with all k in "
        "the set; alone: the same items each alone (the trial's own evaluation); crowding: "
        "items / alone (below 1: the colluders push each other down); merchant: users with at "
        "least one of the k in their top 5; ordinary: the ordinary test item's HR@5 with the k "
        "adversarial items in the set; random levels for k items among C + k."
    )
    title = "Colluding merchants: k adversarial items at once"
    return Table("collusion", title, note, blocks, pd.DataFrame(data))
