"""The report's first table: is the first stage (BPR) any good, and are the rankers trained?

Every trial logs its dataset's first-stage numbers (the same for all trials of a dataset) and its
ranker's validation HR@10; runs older than these metrics show ``–``.
"""

from __future__ import annotations

import math

import pandas as pd

from aipray.report.common import MISSING, Table, datasets_of, fmt_value, rows_of, shared

FIRST_STAGE = {
    "val HR@10": "first_stage/val_hr_at_10",
    "random val HR@10": "first_stage/val_random_hr_at_10",
    "full HR@10": "first_stage/full_hr_at_10",
    "popularity full HR@10": "first_stage/full_popularity_hr_at_10",
    "test in top-C": "first_stage/test_in_top_c",
    "popularity test in top-C": "first_stage/popularity_test_in_top_c",
}
RANKER_VAL = "ranker/val_hr_at_10"
RANKER_FULL = "ranker/full_hr_at_10"
FIRST_STAGE_NAME = "first stage (BPR)"
#: warn when the first stage's validation HR@10 is below this multiple of a random ranker's
WARN_RATIO = 1.5


def weak_first_stage(val: float, random: float) -> str | None:
    """The warning line when BPR's validation HR@10 is within :data:`WARN_RATIO`× of random."""
    if math.isnan(val) or math.isnan(random) or val >= WARN_RATIO * random:
        return None
    return (
        f"> **Warning**: BPR's validation HR@10 ({val:.4f}) is within {WARN_RATIO:g}× of a random "
        f"ranker's ({random:.4f}): the first stage barely beats chance, so the candidate lists the "
        "rankers re-rank are close to random and their HR@k says little."
    )


def first_stage_table(frame: pd.DataFrame) -> Table:
    """Per dataset: BPR's validation HR@10 (what training selected on) with a random ranker's, its
    HR@10 among all warm items with a popularity ranker's, the share of users whose test item is
    in the top-C candidates; then each ranker row's validation HR@10 (same protocol)."""
    blocks, data, notes = {}, [], {}
    for ds in datasets_of(frame):
        d = frame[frame["dataset"] == ds]
        first = {name: shared(d, metric) for name, metric in FIRST_STAGE.items()}
        shown = [{"model": FIRST_STAGE_NAME, **{k: fmt_value(v) for k, v in first.items()}}]
        data.append({"dataset": ds, "model": FIRST_STAGE_NAME, **first})
        for row in rows_of(d):
            mine = d[d["row"] == row]
            val = shared(mine, RANKER_VAL)
            full = shared(mine, RANKER_FULL)
            shown.append({"model": row, "val HR@10": fmt_value(val), "full HR@10": fmt_value(full)})
            data.append({"dataset": ds, "model": row, "val HR@10": val, "full HR@10": full})
        blocks[ds] = pd.DataFrame(shown).fillna("")
        warning = weak_first_stage(first["val HR@10"], first["random val HR@10"])
        if warning:
            notes[ds] = [warning]
    note = (
        "Validation HR@10 of each user's validation item among all warm items outside the "
        "user's training set: `val` is what training selected its best epoch on (at most 5,000 "
        "sampled users; a random ranker's beside it), `full` the same over every user (vs a "
        "popularity ranker); and the share of users whose test item is among BPR's top-C "
        "candidates (vs among the C most popular items). Ranker rows: the second-stage "
        "ranker's validation HR@10, as selected and over every user "
        f"(`{MISSING}`: not trained or not logged)."
    )
    title = "First stage and rankers"
    return Table("first_stage_and_rankers", title, note, blocks, pd.DataFrame(data), notes)
