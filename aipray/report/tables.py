"""The AIP tables (3–8) from the trial frame, as Markdown blocks per dataset and as CSV data.

Rows are models (with the embedding length when a dataset has several), columns attacks; cells
average the matching FINISHED trials (normally exactly one) and show ``–`` where none exists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aipray.report.runs import LEVELS

log = logging.getLogger(__name__)

MISSING = "–"
SIGNIFICANCE = 0.01
MODEL_NAMES = {"alexrank": "AlexRank", "vbpr": "VBPR", "dvbpr": "DVBPR", "amr": "AMR"}
ATTACK_NAMES = {
    "insa": "INSA",
    "expa": "EXPA",
    "csema": "c-SEMA",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "provided": "provided",
}
CLASSIFIER_ATTACKS = ("fgsm", "pgd")


def _order(known: Sequence[str], values: Iterable[str]) -> list[str]:
    present = set(values)
    return [v for v in known if v in present] + sorted(present - set(known))


def attack_order(values: Iterable[str]) -> list[str]:
    """Attacks in AIP order (INSA, EXPA, c-SEMA, FGSM, PGD, provided, then others)."""
    return _order(list(ATTACK_NAMES), values)


def model_order(values: Iterable[str]) -> list[str]:
    """Models in AIP order (AlexRank, VBPR, DVBPR, AMR, then others)."""
    return _order(list(MODEL_NAMES), values)


def attack_name(attack: str) -> str:
    """Display name of an attack."""
    return ATTACK_NAMES.get(attack, attack)


def fmt_num(value: float) -> str:
    """A number as short text: ``8`` for 8.0, ``0.5`` for 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def eps_text(eps: float) -> str:
    """``ε=8``, or empty for an attack without ε."""
    return "" if math.isnan(eps) else f"ε={fmt_num(eps)}"


def eps_mask(values: pd.Series, eps: float) -> np.ndarray:
    """Rows whose ε equals ``eps`` (NaN matches the attacks without ε)."""
    arr = values.to_numpy(dtype=float)
    return np.isnan(arr) if math.isnan(eps) else np.isclose(arr, eps)


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the row label (model, with ``dim`` where a dataset has several), its sort order and
    the derived differences used by the tables."""
    frame = frame.copy()
    models = model_order(frame["model"])
    labels, orders = [], []
    dims = frame.groupby(["dataset", "model"])["dim"].nunique()
    for dataset, model, dim in frame[["dataset", "model", "dim"]].itertuples(index=False):
        name = MODEL_NAMES.get(model, model)
        several = dims[(dataset, model)] > 1
        labels.append(f"{name} (dim={fmt_num(dim)})" if several and not math.isnan(dim) else name)
        orders.append((models.index(model), -1.0 if math.isnan(dim) else dim))
    frame["row"] = labels
    frame["row_order"] = orders
    frame["delta_hr_at_5"] = frame["adversarial/hr_at_5"] - frame["cooperative/hr_at_5"]
    frame["delta_ordinary_hr_at_5"] = frame["ordinary_attacked/hr_at_5"] - frame["ordinary/hr_at_5"]
    frame["cost_hr_at_5"] = frame["ordinary/hr_at_5"] - frame["ordinary_undefended/hr_at_5"]
    return frame


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


def select(frame: pd.DataFrame, **conds: object) -> pd.DataFrame:
    """Rows matching every condition (``eps`` compared as numbers, NaN = no ε)."""
    mask = np.ones(len(frame), dtype=bool)
    for key, value in conds.items():
        if key == "eps":
            mask &= eps_mask(frame["eps"], float(value))  # type: ignore[arg-type]
        else:
            mask &= (frame[key] == value).to_numpy()
    return frame[mask]


def mean(rows: pd.DataFrame, metric: str) -> float:
    """Mean of a metric over rows (NaN if none); several rows are logged as averaged."""
    values = rows[metric].dropna()
    if len(values) > 1:
        log.warning(
            "%s: a cell averages %d runs that differ in settings other than the table's axes",
            metric,
            len(values),
        )
    return float(values.mean()) if len(values) else math.nan


def rows_of(frame: pd.DataFrame) -> list[str]:
    """Row labels of a dataset's frame in model order."""
    order = dict(zip(frame["row"], frame["row_order"], strict=True))
    return sorted(order, key=lambda r: order[r])


def datasets_of(frame: pd.DataFrame) -> list[str]:
    """Dataset labels, sorted."""
    return sorted(frame["dataset"].unique())


@dataclass
class Column:
    """A numeric table column: a metric over the trials matching ``conds`` (and the row's)."""

    name: str
    metric: str
    conds: dict[str, object] = field(default_factory=dict)
    signed: bool = False
    mark: bool = False  # append ** where p_value_hr_at_5 < 0.01


@dataclass
class Table:
    """One report table: Markdown cells per dataset and numeric data for the CSV."""

    slug: str
    title: str
    note: str
    blocks: dict[str, pd.DataFrame]
    data: pd.DataFrame

    def markdown(self) -> str:
        """The table as a Markdown section with one block per dataset."""
        out = [f"## {self.title}", "", self.note, ""]
        if not self.blocks:
            out += ["(no matching trials)", ""]
        for dataset, block in self.blocks.items():
            out += [f"### {dataset}", "", markdown_table(block), ""]
        return "\n".join(out)


def markdown_table(block: pd.DataFrame) -> str:
    """A frame of strings as a GitHub Markdown table."""
    head = [str(c) for c in block.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in block.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def fmt_value(value: float, signed: bool = False) -> str:
    """A metric value with 4 decimals (``+`` sign for differences), ``–`` when missing."""
    if math.isnan(value):
        return MISSING
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _grid(
    slug: str,
    title: str,
    note: str,
    frame: pd.DataFrame,
    rows: dict[str, list[tuple[dict[str, str], dict[str, object]]]],
    columns: dict[str, list[Column]],
) -> Table:
    """A table whose cells are column metrics over the trials matching row and column conds."""
    blocks, data = {}, []
    for dataset, specs in rows.items():
        d = frame[frame["dataset"] == dataset]
        shown, values = [], []
        for labels, row_conds in specs:
            cells, nums = dict(labels), {"dataset": dataset, **labels}
            for col in columns[dataset]:
                sel = select(d, **row_conds, **col.conds)
                value = mean(sel, col.metric)
                text = fmt_value(value, col.signed)
                if col.mark and not math.isnan(value):
                    p = sel["p_value_hr_at_5"].max()
                    nums[f"{col.name} p"] = p
                    if p < SIGNIFICANCE:
                        text += "**"
                cells[col.name] = text
                nums[col.name] = value
            shown.append(cells)
            values.append(nums)
        if shown:
            blocks[dataset] = pd.DataFrame(shown)
            data.extend(values)
    return Table(slug, title, note, blocks, pd.DataFrame(data))


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
    return _grid(
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
        "HR@5, no defence: cooperative and adversarial cold items, ordinary test item with the "
        "cooperative item (`ordinary`) and with the attack's adversarial item (`<attack> "
        f"ordinary`). `**`: item-level paired t-test adversarial vs cooperative p < {SIGNIFICANCE}."
        + _eps_note(eps)
    )
    columns = {ds: cols for ds in datasets_of(base)}
    return _grid("table4_hr_at_5", "Table 4: HR@5", note, base, _model_rows(base), columns)


def table5(frame: pd.DataFrame, eps: dict[str, float]) -> Table:
    """AIP Table 5: ΔHR@5 = adversarial − cooperative, per attack."""
    base = frame[frame["family"] == "none"]
    cols = _attack_cols(base, eps, "delta_hr_at_5", signed=True)
    note = "ΔHR@5 = adversarial − cooperative HR@5 of the cold items, no defence." + _eps_note(eps)
    columns = {ds: cols for ds in datasets_of(base)}
    return _grid("table5_delta_hr_at_5", "Table 5: ΔHR@5", note, base, _model_rows(base), columns)


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
        columns[ds] = [Column("cooperative", "cooperative/hr_at_5")] + [
            Column(eps_text(e), "adversarial/hr_at_5", {"eps": e})
            for e in sorted(d["eps"].unique())
        ]
    note = "HR@5 of the adversarial cold items per ε, no defence (cooperative: the clean items)."
    return _grid("table6_hr_at_5_vs_eps", "Table 6: HR@5 vs ε", note, base, rows, columns)


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
    return _grid(
        "table7_classifier_attacks",
        "Table 7: classifier-targeted attacks",
        note,
        base,
        rows,
        columns,
    )


def weakest_level(rows: pd.DataFrame) -> tuple[float, float, list[float]]:
    """For one (model, attack, ε) and defence family: the weakest level (largest value) whose
    adversarial HR@5 ≤ the same trial's cooperative HR@5, that level's ordinary HR@5 cost
    (ordinary − ordinary_undefended), and the levels tried weakest first. NaN level: none."""
    by_level = (
        rows.dropna(subset=["level"])
        .groupby("level")[["adversarial/hr_at_5", "cooperative/hr_at_5", "cost_hr_at_5"]]
        .mean()
        .sort_index(ascending=False)
    )
    levels = [float(v) for v in by_level.index]
    for level, r in by_level.iterrows():
        if r["adversarial/hr_at_5"] <= r["cooperative/hr_at_5"]:
            return float(level), float(r["cost_hr_at_5"]), levels  # type: ignore[arg-type]
    return math.nan, math.nan, levels


def table8(frame: pd.DataFrame) -> Table:
    """AIP Table 8: per (model, attack, ε) and defence family, the weakest level that brings the
    adversarial HR@5 down to the cooperative one, with its cost on the ordinary test item."""
    defended = frame[frame["family"].isin(list(LEVELS))]
    undefended = frame[frame["family"] == "none"]
    blocks, data = {}, []
    for ds in datasets_of(defended):
        d = defended[defended["dataset"] == ds]
        families = [f for f in LEVELS if f in set(d["family"])]
        shown = []
        keys = d[["row", "attack", "eps"]].drop_duplicates()
        for r in rows_of(d):
            for a in attack_order(keys.loc[keys["row"] == r, "attack"]):
                eps_values = keys.loc[(keys["row"] == r) & (keys["attack"] == a), "eps"]
                for e in sorted(eps_values.unique(), key=lambda v: (math.isnan(v), v)):
                    e_text = MISSING if math.isnan(e) else fmt_num(e)
                    cells = {"model": r, "attack": attack_name(a), "ε": e_text}
                    nums: dict[str, object] = {"dataset": ds, **cells}
                    bare = select(undefended, dataset=ds, row=r, attack=a, eps=e)
                    # an attack that did not lift the item without any defence needs none
                    needless = not bare.empty and mean(bare, "adversarial/hr_at_5") <= mean(
                        bare, "cooperative/hr_at_5"
                    )
                    for fam in families:
                        name = LEVELS[fam][1]
                        sel = select(d, row=r, attack=a, eps=e, family=fam)
                        level, cost, tried = weakest_level(sel)
                        if not tried:
                            cells |= {
                                name: MISSING,
                                f"{name} cost": MISSING,
                                f"{name} levels": MISSING,
                            }
                            continue
                        found = not math.isnan(level)
                        cells[name] = fmt_num(level) if found else "none"
                        if needless:
                            cells[name] = "not needed"
                        cells[f"{name} cost"] = fmt_value(cost, signed=True)
                        cells[f"{name} levels"] = ", ".join(fmt_num(v) for v in tried)
                        nums |= {
                            name: cells[name],
                            f"{name} cost": cost,
                            f"{name} levels": cells[f"{name} levels"],
                        }
                    shown.append(cells)
                    data.append(nums)
        if shown:
            blocks[ds] = pd.DataFrame(shown).fillna(MISSING)
    note = (
        "Weakest defence level at which the adversarial cold item's HR@5 ≤ the cooperative "
        "item's HR@5 in the same trial (`none`: no tested level does; `not needed`: the attack "
        "does not lift the item even undefended), with that level's cost "
        "on the ordinary test item (ordinary − undefended ordinary HR@5). Levels are listed "
        "weakest first (JPEG: highest quality; bit depth: most bits)."
    )
    title = "Table 8: defence level needed"
    return Table("table8_defense_levels", title, note, blocks, pd.DataFrame(data))


def all_tables(frame: pd.DataFrame, eps: dict[str, float]) -> list[Table]:
    """Tables 3–8 (7 only when FGSM / PGD trials exist)."""
    tables = [table3(frame, eps), table4(frame, eps), table5(frame, eps), table6(frame)]
    t7 = table7(frame)
    if t7 is not None:
        tables.append(t7)
    tables.append(table8(frame))
    return tables
