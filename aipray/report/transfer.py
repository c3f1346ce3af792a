"""The transfer matrix: images crafted against one model (the source) and evaluated on another
(the target), per attack, ε and defence, with the direct attack on the diagonal.

A transfer trial (an attack with ``source``) evaluates the very images its source model's
direct trial stored, so a column is the target's ranker facing every source's images; the
target's cooperative row is the clean baseline. Images crafted against what every model
shares have one source row: the extractor's classifier (FGSM, PGD, C&W) or the extractor's
features (EXPA on AlexRank, VBPR, AMR, FREEDOM). An ensemble source (``vbpr+dvbpr``: images
crafted against several models at once) is a row of its own below the single models', with a
cell on each target outside it.
"""

from __future__ import annotations

import math

import pandas as pd

from aipray.grid import ENSEMBLE
from aipray.report.common import (
    MISSING,
    Table,
    attack_name,
    attack_order,
    datasets_of,
    fmt_num,
    fmt_value,
    mean,
    model_name,
    rows_of,
    select,
    shared,
)

HR5, FULL50 = "adversarial/hr_at_5", "full_ranking/adversarial/hr_at_50"
COOP5, COOP50 = "cooperative/hr_at_5", "full_ranking/cooperative/hr_at_50"
#: the source rows of images crafted against what every model shares (the trial's ``source``
#: param), rather than against one model
SHARED = {
    "classifier": "extractor's classifier",
    "extractor": "extractor's features",
    "dataset": "no model",
}
COOPERATIVE = "cooperative (clean)"


def source_label(source: str, labels: dict[str, str]) -> str:
    """A source's row label: what every model shares (:data:`SHARED`), the report's label of
    the source model's direct trials (``labels``: the ``source`` param of a direct run → its
    row), else the model's display name with its settings; an ensemble's (``vbpr+dvbpr``, its
    models in the canonical order the sweep logged) is its models' labels joined by `` + ``."""
    if ENSEMBLE in source:
        return " + ".join(source_label(part, labels) for part in source.split(ENSEMBLE))
    if source in SHARED:
        return SHARED[source]
    if source in labels:
        return labels[source]
    name, _, rest = source.partition("(")
    return model_name(name) + (f" ({rest.rstrip(')')})" if rest else "")


def with_sources(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``source_row``: the row label of what each run's images were crafted
    against (a model's row, or what every model shares); None for runs without a ``source``
    param (attacks that know no model, earlier runs)."""
    frame = frame.copy()
    direct = frame[~frame["transfer"] & frame["source"].notna()]
    labels = dict(zip(direct["source"], direct["row"], strict=True))
    frame["source_row"] = [
        None if not isinstance(s, str) else source_label(s, labels) for s in frame["source"]
    ]
    return frame


def _cell(runs: pd.DataFrame, hr: str, full: str) -> tuple[str, float, float]:
    # the cooperative items are the same in every trial on a target: shared, not averaged
    of = shared if hr == COOP5 else mean
    at5, at50 = of(runs, hr), of(runs, full)
    if math.isnan(at5):
        return MISSING, at5, at50
    text = fmt_value(at5) + ("" if math.isnan(at50) else f" ({fmt_value(at50)})")
    return text, at5, at50


def transfer_table(frame: pd.DataFrame) -> Table | None:
    """Source × target adversarial HR@5 (with HR@50 over the full ranking in brackets, where
    logged) per dataset, attack, ε and defence; only attacks that ran a transfer trial, and
    classifier attacks evaluated on more than one model. ``None`` when there is none."""
    if not {"source", "transfer"} <= set(frame.columns):
        return None
    frame = with_sources(frame)
    blocks, data = {}, []
    for ds in datasets_of(frame):
        d = frame[(frame["dataset"] == ds) & frame["source_row"].notna()]
        targets = rows_of(d) if not d.empty else []
        shown = []
        for attack in attack_order(d["attack"]):
            at = d[d["attack"] == attack]
            # a matrix when some images were evaluated on more than the model they were made on
            spread = at.groupby("source_row")["row"].nunique().max() > 1
            if not (at["transfer"].any() or spread):
                continue
            cols = [t for t in targets if t in set(at["row"])]
            sources = [s for s in [*SHARED.values(), *targets] if s in set(at["source_row"])]
            sources += sorted(set(at["source_row"]) - set(sources))
            for e in sorted(at["eps"].unique(), key=lambda v: (math.isnan(v), v)):
                for defence in sorted(set(at["defense"]), key=lambda x: (x != "none", x)):
                    runs = select(at, eps=e, defense=defence)
                    if runs.empty:
                        continue
                    head = {
                        "attack": attack_name(attack),
                        "ε": MISSING if math.isnan(e) else fmt_num(e),
                        "defence": defence,
                    }
                    made = set(runs["source_row"])
                    for source in [COOPERATIVE, *(s for s in sources if s in made)]:
                        cells = {**head, "source ↓ / target →": source}
                        for target in cols:
                            on = select(runs, row=target)
                            if source == COOPERATIVE:
                                text, at5, at50 = _cell(on, COOP5, COOP50)
                            else:
                                text, at5, at50 = _cell(select(on, source_row=source), HR5, FULL50)
                            cells[target] = text
                            data.append(
                                {
                                    "dataset": ds,
                                    **head,
                                    "source": source,
                                    "target": target,
                                    "direct": source == target,
                                    "hr_at_5": at5,
                                    "full_hr_at_50": at50,
                                }
                            )
                        shown.append(cells)
        if shown:
            blocks[ds] = pd.DataFrame(shown).fillna(MISSING)
    if not blocks:
        return None
    note = (
        "Images crafted against the source model (rows) and evaluated on the target model "
        "(columns), from the source's stored image set without re-attacking: the adversarial "
        "cold items' HR@5 among the top-C candidates, with their HR@50 over the full ranking "
        "in brackets where logged. The diagonal is the direct (white-box) attack; `cooperative` "
        "is the target's clean items. Images crafted against what every model shares are one "
        "row: the extractor's classifier (FGSM, PGD, C&W) or its features (EXPA on the rankers "
        "built on them; DVBPR's own CNN is a row of its own). A row of models joined by + is "
        "an ensemble: images crafted against all of them at once, evaluated on the others."
    )
    return Table("transfer", "Transfer: source × target", note, blocks, pd.DataFrame(data))
