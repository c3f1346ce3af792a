"""The transfer matrix: images crafted against one model (the source) and evaluated on another
(the target), per attack, ε and defence, with the direct attack on the diagonal.

A transfer trial (an attack with ``source``) evaluates the very images its source model's
direct trial stored, so a column is the target's ranker facing every source's images; the
target's cooperative row is the clean baseline. Classifier attacks (FGSM, PGD) craft their
images against the extractor's classifier, which every model built on it shares: their matrix
has one source row, the classifier.
"""

from __future__ import annotations

import math

import pandas as pd

from aipray.report.common import (
    CLASSIFIER_ATTACKS,
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
#: the source row of a classifier attack
CLASSIFIER = "extractor's classifier"
COOPERATIVE = "cooperative (clean)"


def source_label(source: str, labels: dict[str, str]) -> str:
    """A source model's row label: the report's label of its direct trials (``labels``: the
    ``source`` param of a direct run → its row), else its display name with its settings."""
    if source in labels:
        return labels[source]
    name, _, rest = source.partition("(")
    return model_name(name) + (f" ({rest.rstrip(')')})" if rest else "")


def with_sources(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``source_row``: the row label of the model each run's images were crafted
    against (the run's own row for a direct attack, the classifier for FGSM/PGD, None for
    attacks that know no model)."""
    frame = frame.copy()
    direct = frame[~frame["transfer"] & frame["source"].notna()]
    labels = dict(zip(direct["source"], direct["row"], strict=True))
    rows = []
    for _, run in frame.iterrows():
        base = run["attack"].split("(", 1)[0]
        if run["transfer"]:
            rows.append(source_label(str(run["source"]), labels))
        elif base in CLASSIFIER_ATTACKS:
            rows.append(CLASSIFIER)
        elif isinstance(run["source"], str):
            rows.append(run["row"])
        else:
            rows.append(None)
    frame["source_row"] = rows
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
            classifier = attack.split("(", 1)[0] in CLASSIFIER_ATTACKS
            if not (at["transfer"].any() or (classifier and at["row"].nunique() > 1)):
                continue
            cols = [t for t in targets if t in set(at["row"])]
            sources = [s for s in [CLASSIFIER, *targets] if s in set(at["source_row"])]
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
                    for source in [COOPERATIVE, *sources]:
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
        "is the target's clean items. FGSM and PGD craft against the extractor's classifier, "
        "which every model on it shares: one source row."
    )
    return Table("transfer", "Transfer: source × target", note, blocks, pd.DataFrame(data))
