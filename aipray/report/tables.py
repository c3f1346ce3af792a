"""The AIP tables from the trial frame, as Markdown blocks per dataset and as CSV data.

Rows are models (with every model setting that varies, see :mod:`aipray.report.common`),
columns attacks; cells average the matching FINISHED trials (normally exactly one) and show
``–`` where none exists. Table 8 is in :mod:`aipray.report.defences`, the first-stage table in
:mod:`aipray.report.health`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from aipray.report.collusion import collusion_table
from aipray.report.common import (
    ADV_EPS_UNIT_TEXT,
    ADV_EPS_UNIT_WORDS,
    CLASSIFIER_ATTACKS,
    MISSING,
    SIGNIFICANCE,
    Column,
    Table,
    adv_eps_text,
    attack_name,
    attack_order,
    datasets_of,
    eps_mask,
    eps_text,
    fmt_num,
    fmt_value,
    grid,
    label_without,
    magnitude_notes,
    mean,
    model_name,
    models_in,
    prepare,
    rows_of,
    select,
)
from aipray.report.defences import detection_table, robustness_table, table8
from aipray.report.health import first_stage_table
from aipray.report.transfer import transfer_table

__all__ = [
    "MISSING",
    "Column",
    "Table",
    "all_tables",
    "attack_name",
    "attack_order",
    "choose_eps",
    "datasets_of",
    "eps_mask",
    "eps_text",
    "fmt_num",
    "fmt_value",
    "mean",
    "model_name",
    "models_in",
    "prepare",
    "rows_of",
    "select",
]

log = logging.getLogger(__name__)


def choose_eps(frame: pd.DataFrame, override: float | None = None) -> dict[str, float]:
    """The ε of the tables that fix one, per attack: ``override`` if given, else the largest ε
    of the attack's undefended trials; NaN for attacks without ε."""
    out: dict[str, float] = {}
    for attack in attack_order(frame["attack"]):
        rows = frame[frame["attack"] == attack]
        values = rows["eps"].dropna()
        if values.empty:
            out[attack] = math.nan
        elif override is not None:
            if not np.isclose(values, override).any():
                log.warning("--eps %s: no %s trial at that ε", fmt_num(override), attack)
            out[attack] = float(override)
        else:
            undefended = rows.loc[rows["family"] == "none", "eps"].dropna()
            out[attack] = float((undefended if len(undefended) else values).max())
    return out


def _model_rows(frame: pd.DataFrame) -> dict[str, list[tuple[dict[str, str], dict[str, object]]]]:
    return {
        ds: [({"model": r}, {"row": r}) for r in rows_of(frame[frame["dataset"] == ds])]
        for ds in datasets_of(frame)
    }


def _attack_cols(
    frame: pd.DataFrame, eps: dict[str, float], metric: str, suffix: str = "", **kw: bool
) -> list[Column]:
    cols = []
    for attack in attack_order(frame["attack"]):
        e = eps.get(attack, math.nan)
        name = " ".join(x for x in (attack_name(attack), eps_text(e), suffix) if x)
        cols.append(Column(name, metric, {"attack": attack, "eps": e}, **kw))
    return cols


def _eps_note(eps: dict[str, float]) -> str:
    fixed = [f"{attack_name(a)} {fmt_num(e)}" for a, e in eps.items() if not math.isnan(e)]
    return f" ε: {', '.join(fixed)}." if fixed else ""


def table3(frame: pd.DataFrame, eps: dict[str, float]) -> Table:
    """AIP Table 3: mean prediction shift Δset of the adversarial cold items, per attack."""
    base = frame[frame["family"] == "none"]
    cols = _attack_cols(base, eps, "prediction_shift", signed=True)
    note = "Mean prediction shift Δset (p′ − p), no defence; positive = promoted." + _eps_note(eps)
    columns = {ds: cols for ds in datasets_of(base)}
    return grid(
        "table3_prediction_shift",
        "Table 3: prediction shift",
        note,
        base,
        _model_rows(base),
        columns,
    )


def table4(frame: pd.DataFrame, eps: dict[str, float]) -> Table:
    """AIP Table 4: HR@5 of cooperative and adversarial cold items and of the ordinary test item
    (with the cooperative item, and with each attack's adversarial item: availability)."""
    base = frame[frame["family"] == "none"]
    cols = [
        Column("random", "random/hr_at_5"),
        Column("cooperative", "cooperative/hr_at_5"),
        Column("ordinary", "ordinary/hr_at_5"),
    ]
    for adv, ordn in zip(
        _attack_cols(base, eps, "adversarial/hr_at_5", mark=True),
        _attack_cols(base, eps, "ordinary_attacked/hr_at_5", "ordinary"),
        strict=True,
    ):
        cols += [adv, ordn]
    note = (
        "HR@5, no defence: a random ranker's on these candidate sets (`random`), cooperative "
        "and adversarial cold items, ordinary test item with the "
        "cooperative item (`ordinary`) and with the attack's adversarial item (`<attack> "
        f"ordinary`). `**`: item-level paired t-test adversarial vs cooperative p < {SIGNIFICANCE}."
        + _eps_note(eps)
    )
    columns = {ds: cols for ds in datasets_of(base)}
    return grid("table4_hr_at_5", "Table 4: HR@5", note, base, _model_rows(base), columns)


def table5(frame: pd.DataFrame, eps: dict[str, float]) -> Table:
    """AIP Table 5: ΔHR@5 = adversarial − cooperative, per attack."""
    base = frame[frame["family"] == "none"]
    cols = _attack_cols(base, eps, "delta_hr_at_5", signed=True)
    note = "ΔHR@5 = adversarial − cooperative HR@5 of the cold items, no defence." + _eps_note(eps)
    columns = {ds: cols for ds in datasets_of(base)}
    return grid("table5_delta_hr_at_5", "Table 5: ΔHR@5", note, base, _model_rows(base), columns)


def table6(frame: pd.DataFrame) -> Table:
    """AIP Table 6: HR@5 of the adversarial cold items vs ε, per (model, attack)."""
    base = frame[(frame["family"] == "none") & frame["eps"].notna()]
    rows, columns = {}, {}
    for ds in datasets_of(base):
        d = base[base["dataset"] == ds]
        rows[ds] = [
            ({"model": r, "attack": attack_name(a)}, {"row": r, "attack": a})
            for r in rows_of(d)
            for a in attack_order(d.loc[d["row"] == r, "attack"])
        ]
        columns[ds] = [
            Column("random", "random/hr_at_5"),
            Column("cooperative", "cooperative/hr_at_5"),
        ] + [
            Column(eps_text(e), "adversarial/hr_at_5", {"eps": e})
            for e in sorted(d["eps"].unique())
        ]
    note = (
        "HR@5 of the adversarial cold items per ε, no defence (cooperative: the clean items; "
        "random: a random ranker on the same candidate sets)."
    )
    return grid("table6_hr_at_5_vs_eps", "Table 6: HR@5 vs ε", note, base, rows, columns)


def table7(frame: pd.DataFrame) -> Table | None:
    """AIP Table 7: classifier-targeted FGSM / PGD vs INSA at the same ε (ΔHR@5 of the cold
    item and of the ordinary test item); None when the sweep has no FGSM / PGD trial."""
    base = frame[(frame["family"] == "none") & frame["eps"].notna()]
    classifier = base[base["attack"].isin(CLASSIFIER_ATTACKS)]
    if classifier.empty:
        return None
    attacks = attack_order([*classifier["attack"].unique(), "insa"])
    rows, columns = {}, {}
    for ds in datasets_of(classifier):
        c = classifier[classifier["dataset"] == ds]
        rows[ds] = [
            ({"model": r, "ε": fmt_num(e)}, {"row": r, "eps": e})
            for r in rows_of(c)
            for e in sorted(c.loc[c["row"] == r, "eps"].unique())
        ]
        columns[ds] = [
            Column(f"{attack_name(a)} ΔHR@5", "delta_hr_at_5", {"attack": a}, signed=True)
            for a in attacks
        ] + [
            Column(
                f"{attack_name(a)} Δordinary", "delta_ordinary_hr_at_5", {"attack": a}, signed=True
            )
            for a in attacks
        ]
    note = (
        "Classifier-targeted attacks vs INSA at the same ε, no defence: ΔHR@5 of the cold item "
        "(adversarial − cooperative) and of the ordinary test item (attacked − cooperative)."
    )
    return grid(
        "table7_classifier_attacks",
        "Table 7: classifier-targeted attacks",
        note,
        base,
        rows,
        columns,
    )


def adv_eps_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """The undefended INSA trials (with ε) of every ranker trained adversarially at two or more
    sizes in one unit (AMR's ``adv_eps`` in ``adv_eps_unit``, or ``adv_eps_relative``; the
    ``adv_eps`` and ``adv_eps_unit`` columns of :func:`prepare`), with a column ``series`` (the
    row label without ε_adv, and with its unit where a dataset has more than one)."""
    base = frame[(frame["family"] == "none") & (frame["attack"] == "insa") & frame["eps"].notna()]
    base = base.dropna(subset=["adv_eps"]) if "adv_eps" in base else base.iloc[:0]
    if base.empty:
        return base.assign(series=pd.Series(dtype=object))
    series = label_without(base, "adv_eps")
    mixed = base.groupby("dataset")["adv_eps_unit"].transform("nunique") > 1
    unit = base["adv_eps_unit"].map(lambda u: f" [ε_adv in {ADV_EPS_UNIT_TEXT.get(u, u)}]")
    base = base.assign(series=series.where(~mixed, series + unit))
    n = base.groupby(["dataset", "series"])["adv_eps"].transform("nunique")
    return base[n >= 2]


def adv_eps_units_note(trials: pd.DataFrame) -> str:
    """What the ε_adv values of ``trials`` are measured in, in words."""
    units = dict.fromkeys(trials["adv_eps_unit"])
    return "; ".join(
        f"ε_adv·{ADV_EPS_UNIT_TEXT.get(u, u)}: {ADV_EPS_UNIT_WORDS.get(u, u)}" for u in units
    )


def series_of(trials: pd.DataFrame) -> list[str]:
    """The ``series`` of :func:`adv_eps_trials` in row order."""
    order = trials.groupby("series")["row_order"].min()
    return sorted(order.index, key=lambda s: order[s])


def table_adv_eps(frame: pd.DataFrame) -> Table | None:
    """HR@5 of INSA's adversarial items vs the ranker's adversarial-training ε (AMR), per INSA ε;
    None when no ranker was trained at two or more such ε."""
    trials = adv_eps_trials(frame)
    if trials.empty:
        return None
    rows, columns = {}, {}
    for ds in datasets_of(trials):
        d = trials[trials["dataset"] == ds]
        units = d.groupby("series")["adv_eps_unit"].first()
        rows[ds] = [
            ({"model": s, "ε_adv": adv_eps_text(a, units[s])}, {"series": s, "adv_eps": a})
            for s in series_of(d)
            for a in sorted(d.loc[d["series"] == s, "adv_eps"].unique())
        ]
        eps_values = sorted(d["eps"].unique())
        first = {"eps": eps_values[0]}
        columns[ds] = [
            Column("random", "random/hr_at_5", first),
            Column("cooperative", "cooperative/hr_at_5", first),
        ] + [
            Column(f"INSA {eps_text(e)}", "adversarial/hr_at_5", {"eps": e}, mark=True)
            for e in eps_values
        ]
    names = ", ".join(dict.fromkeys(model_name(m) for m in models_in(trials)))
    note = (
        f"HR@5 of INSA's adversarial cold items, no defence, for {names} trained with several "
        "adversarial-training sizes ε_adv, each a multiple of a statistic of the training items' "
        f"raw features ({adv_eps_units_note(trials)}); `cooperative`: the clean items. "
        f"`**`: paired t-test adversarial vs cooperative p < {SIGNIFICANCE}."
    )
    title = f"HR@5 under INSA vs {names}'s ε"
    return grid("hr_at_5_vs_adv_eps", title, note, trials, rows, columns)


def all_tables(frame: pd.DataFrame, eps: dict[str, float]) -> list[Table]:
    """The first-stage table, Tables 3–6, the ε_adv table and Table 7 (each only when its
    trials exist), then Table 8, the robustness table when some attack was also run
    adaptively, the detection table when a detector screened uploads, the colluding merchants'
    table when some trial reports them and, when some attack ran a transfer trial, the transfer
    matrix. Only the transfer matrix shows transfer trials."""
    transfer = transfer_table(frame)
    frame = direct_runs(frame)  # the other tables: each attack on the model it was crafted on
    magnitudes = magnitude_notes(frame)
    hr = [
        table4(frame, eps),
        table6(frame),
        table_adv_eps(frame),
        table8(frame),
        robustness_table(frame),
        collusion_table(frame),
    ]
    for t in hr:  # every HR@5 table says C, the random level and the cooperative level
        for ds in [] if t is None else t.blocks:
            t.notes.setdefault(ds, []).extend(magnitudes.get(ds, []))
    four, six, adv_eps, eight, robust, colluding = hr
    tables = [first_stage_table(frame)]
    tables += [table3(frame, eps), four, table5(frame, eps), six]
    tables += [t for t in (adv_eps, table7(frame)) if t is not None]
    tables.append(eight)
    tables += [t for t in (robust, detection_table(frame), colluding) if t is not None]
    if transfer is not None:
        for ds in transfer.blocks:
            transfer.notes.setdefault(ds, []).extend(magnitudes.get(ds, []))
        tables.append(transfer)
    return tables


def direct_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs whose attack was crafted on the model they evaluate (all but transfer trials,
    which only the transfer matrix shows)."""
    return frame[~frame["transfer"]] if "transfer" in frame else frame
