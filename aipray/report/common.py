"""What the report's tables and figures share: display names, row labels, cell selection and the
:class:`Table` they are written as.

The report never names a model. A model's display name is its registered class's
``display_name`` (:data:`aipray.models.MODELS`); a model the report's process does not know (a
user's own ranker) keeps its raw name. Rows are ordered by each model's first appearance among
the trials sorted by start time (:func:`aipray.report.runs.load_runs` sorts them), i.e. roughly
in sweep order; within a model by the values of its label settings.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MISSING = "–"
SIGNIFICANCE = 0.01
ATTACK_NAMES = {
    "insa": "INSA",
    "expa": "EXPA",
    "csema": "c-SEMA",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "provided": "provided",
}
CLASSIFIER_ATTACKS = ("fgsm", "pgd")
MODEL_PARAM = "model."  # prefix of the flattened model config among a trial's MLflow params
# model settings a row label shows first, in this order; any other varying one follows by name
LABEL_KEYS = ("dim", "visual_bias", "adv_eps")
# AMR's adversary size: ``adv_eps`` in ``adv_eps_unit``, or (earlier runs) ``adv_eps_relative``;
# rows show them as one setting, ``adv_eps``, that names its unit
ADV_EPS_KEYS = ("adv_eps_relative", "adv_eps", "adv_eps_unit")
#: ε_adv = value × this statistic of the training items' raw features
ADV_EPS_UNIT_TEXT = {"max_abs": "max|f|", "relative_norm": "mean‖f‖"}
ADV_EPS_UNIT_WORDS = {
    "max_abs": "features divided by the training items' global max |f| (AMR's code)",
    "relative_norm": "a fraction of the training items' mean feature norm",
}
# as aipray.models.amr.DEFAULT_ADV_EPS (not imported: the report does not need torch)
DEFAULT_ADV_EPS = {"max_abs": 0.1, "relative_norm": 0.05}


#: how a run's attack is told apart when it optimised through the defence (``attack.adaptive``)
ADAPTIVE = "(adaptive)"


def attack_order(values: Iterable[str]) -> list[str]:
    """Attacks in AIP order (INSA, EXPA, c-SEMA, FGSM, PGD, provided, then others sorted), each
    adaptive one after its oblivious form."""
    present = set(values)
    known = [v for name in ATTACK_NAMES for v in (name, name + ADAPTIVE) if v in present]
    return known + sorted(present - set(known))


def attack_name(attack: str) -> str:
    """Display name of an attack (``INSA (adaptive)`` for an adaptive one)."""
    base = attack.removesuffix(ADAPTIVE)
    name = ATTACK_NAMES.get(base, base)
    return f"{name} (adaptive)" if attack.endswith(ADAPTIVE) else name


@functools.cache
def model_name(model: str) -> str:
    """Display name of a model: its registered class's ``display_name``, else the raw name."""
    from aipray.models import MODELS  # imports torch: only when a report is made

    if model in MODELS:
        return getattr(MODELS.get(model), "display_name", model) or model
    return model


def models_in(frame: pd.DataFrame) -> list[str]:
    """The frame's models in order of first appearance."""
    return list(dict.fromkeys(frame["model"]))


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


def _absent(value: Any) -> bool:
    # MLflow params hold a config's None as the string "None"
    return value is None or value == "None" or (isinstance(value, float) and math.isnan(value))


def _as_number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def setting_text(key: str, value: Any) -> str:
    """A model setting as it appears in a row label: ``K=20``, ``β′`` (visual bias on; off:
    empty), ``ε_adv=0.5``, else ``key=value``; empty where the run did not log it."""
    if _absent(value):
        return ""
    number = _as_number(value)
    shown = fmt_num(number) if number is not None else str(value)
    if key == "dim":
        return f"K={shown}"
    if key == "visual_bias":
        return "β′" if str(value).lower() in ("true", "1") else ""
    if key == "adv_eps_relative":
        return f"ε_adv={shown}·{ADV_EPS_UNIT_TEXT['relative_norm']}"
    if key == "adv_eps":
        return f"ε_adv={shown}"
    return f"{key}={shown}"


def adv_eps_setting(run: Any) -> tuple[float, str] | None:
    """AMR's adversary size and unit from a run's ``model.*`` params: ``adv_eps_relative``
    (earlier runs, and the ``relative_norm`` shorthand), else ``adv_eps`` in ``adv_eps_unit``
    (null: the unit's default); None for a run without an adversary."""
    relative = _as_number(run.get(MODEL_PARAM + "adv_eps_relative"))
    if relative is not None:
        return relative, "relative_norm"
    unit = run.get(MODEL_PARAM + "adv_eps_unit")
    if _absent(unit) or unit not in DEFAULT_ADV_EPS:
        return None
    value = _as_number(run.get(MODEL_PARAM + "adv_eps"))
    return (DEFAULT_ADV_EPS[unit] if value is None else value), str(unit)


def adv_eps_text(value: float, unit: str) -> str:
    """``0.1·max|f|``: ε_adv as a multiple of the feature statistic its unit names."""
    return f"{fmt_num(value)}·{ADV_EPS_UNIT_TEXT.get(unit, unit)}"


def _sort_value(value: Any) -> tuple[int, float, str]:
    if _absent(value):
        return (2, 0.0, "")
    number = _as_number(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def row_label(name: str, parts: Sequence[tuple[str, str]], drop: Iterable[str] = ()) -> str:
    """``VBPR (K=20, β′)`` from a display name and (setting, text) pairs, without ``drop``."""
    texts = [text for key, text in parts if key not in set(drop) and text]
    return f"{name} ({', '.join(texts)})" if texts else name


def varying_settings(rows: pd.DataFrame) -> list[str]:
    """The model settings (``model.*`` params, prefix removed) that take more than one value
    among ``rows`` (a run without the param counts as its own value), in label order."""
    keys = []
    for column in rows.columns:
        if column.startswith(MODEL_PARAM):
            values = rows[column].map(lambda v: None if _absent(v) else str(v))
            if values.nunique(dropna=False) > 1:
                keys.append(column.removeprefix(MODEL_PARAM))
    known = [k for k in LABEL_KEYS if k in keys]
    return known + sorted(set(keys) - set(known))


def _one_adv_eps(
    keys: list[str], values: list[Any], texts: list[str], adv: tuple[float, str] | None
) -> tuple[list[str], list[Any], list[str]]:
    """The label settings with AMR's ``adv_eps*`` keys replaced by one ``adv_eps`` that shows
    its value and unit (``ε_adv=0.1·max|f|``), where the first of them was."""
    at = next(i for i, k in enumerate(keys) if k in ADV_EPS_KEYS)
    kept = [i for i, k in enumerate(keys) if k not in ADV_EPS_KEYS]
    keys, values, texts = (
        [keys[i] for i in kept],
        [values[i] for i in kept],
        [texts[i] for i in kept],
    )
    keys.insert(at, "adv_eps")
    values.insert(at, None if adv is None else adv[0])
    texts.insert(at, "" if adv is None else f"ε_adv={adv_eps_text(*adv)}")
    return keys, values, texts


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the row label (display name plus every model setting that varies within its
    (dataset, model) pair), its sort order and the derived differences used by the tables."""
    frame = frame.copy()
    first = {m: i for i, m in enumerate(models_in(frame))}
    names, parts, labels, orders = [], [], [], []
    varying = {
        key: varying_settings(g) for key, g in frame.groupby(["dataset", "model"], sort=False)
    }
    eps_values, eps_units = [], []
    for _, run in frame.iterrows():
        keys = varying[(run["dataset"], run["model"])]
        adv = adv_eps_setting(run)
        eps_values.append(math.nan if adv is None else adv[0])
        eps_units.append(None if adv is None else adv[1])
        values = [run.get(MODEL_PARAM + k) for k in keys]
        texts = [setting_text(k, v) for k, v in zip(keys, values, strict=True)]
        if any(k in ADV_EPS_KEYS for k in keys):  # one ε_adv that names its unit
            keys, values, texts = _one_adv_eps(keys, values, texts, adv)
        name = model_name(run["model"])
        pairs = tuple(zip(keys, texts, strict=True))
        names.append(name)
        parts.append(pairs)
        labels.append(row_label(name, pairs))
        orders.append((first[run["model"]], tuple(_sort_value(v) for v in values)))
    frame["row"] = labels
    frame["row_name"] = names
    frame["row_parts"] = parts
    frame["row_order"] = orders
    frame["adv_eps"] = eps_values
    frame["adv_eps_unit"] = eps_units
    frame["delta_hr_at_5"] = frame["adversarial/hr_at_5"] - frame["cooperative/hr_at_5"]
    frame["delta_ordinary_hr_at_5"] = frame["ordinary_attacked/hr_at_5"] - frame["ordinary/hr_at_5"]
    frame["cost_hr_at_5"] = frame["ordinary/hr_at_5"] - frame["ordinary_undefended/hr_at_5"]
    return frame


def label_without(frame: pd.DataFrame, *drop: str) -> pd.Series:
    """Each row's label without the given settings (e.g. one line per ``dim`` value)."""
    return pd.Series(
        [row_label(n, p, drop) for n, p in zip(frame["row_name"], frame["row_parts"], strict=True)],
        index=frame.index,
        dtype=object,
    )


def setting_values(frame: pd.DataFrame, key: str) -> pd.Series:
    """A model setting as numbers (NaN where absent or not a number)."""
    column = MODEL_PARAM + key
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


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


def shared(rows: pd.DataFrame, metric: str) -> float:
    """A metric every row should carry alike (the first stage of a dataset, a ranker's
    validation score): its mean, with a warning where rows disagree; NaN if none has it."""
    values = rows[metric].dropna() if metric in rows else pd.Series(dtype=float)
    if values.empty:
        return math.nan
    if values.max() - values.min() > 1e-9:
        log.warning("%s differs between %d runs; showing the mean", metric, len(values))
    return float(values.mean())


def rows_of(frame: pd.DataFrame) -> list[str]:
    """Row labels of a dataset's frame in row order."""
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
    """One report table: Markdown cells per dataset and numeric data for the CSV; ``notes``
    are lines written under a dataset's block (warnings)."""

    slug: str
    title: str
    note: str
    blocks: dict[str, pd.DataFrame]
    data: pd.DataFrame
    notes: dict[str, list[str]] = field(default_factory=dict)

    def markdown(self) -> str:
        """The table as a Markdown section with one block per dataset."""
        out = [f"## {self.title}", "", self.note, ""]
        if not self.blocks:
            out += ["(no matching trials)", ""]
        for dataset, block in self.blocks.items():
            out += [f"### {dataset}", "", markdown_table(block), ""]
            for line in self.notes.get(dataset, []):
                out += [line, ""]
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


def fmt_p(value: float) -> str:
    """A p-value with two significant digits, ``–`` when missing."""
    return MISSING if math.isnan(value) else f"{value:.2g}"


def random_level(n: int, candidates: float) -> float:
    """A uniformly random ranker's HR@N under AIP's protocol with C = ``candidates``: each user's
    set is BPR's top-C, the ordinary test item and the cold item, C + 2 items (C + 1 where the
    test item is among the top-C), so N / (C + 2)."""
    return n / (candidates + 2)


def magnitude_notes(frame: pd.DataFrame, n: int = 5) -> dict[str, list[str]]:
    """Per dataset, the line that puts its HR@N in proportion: C, the random level N / (C + 2)
    and the random level the trials logged (``random/hr_at_N``, the mean over users of
    N / set size), and the range of cooperative HR@N (the clean cold items, no defence)."""
    out: dict[str, list[str]] = {}
    for dataset in datasets_of(frame):
        d = frame[frame["dataset"] == dataset]
        parts = []
        c = d["candidates"].dropna().unique() if "candidates" in d else []
        if len(c) == 1:
            level = random_level(n, float(c[0]))
            parts.append(f"C = {fmt_num(float(c[0]))} candidates per user")
            parts.append(f"random HR@{n} = {n}/(C+2) = {level:.4f}")
        logged = d[f"random/hr_at_{n}"].dropna() if f"random/hr_at_{n}" in d else []
        if len(logged):
            parts.append(f"logged random HR@{n} {_span(logged)}")
        coop = d.loc[d["family"] == "none", f"cooperative/hr_at_{n}"].dropna()
        if len(coop):
            parts.append(f"cooperative HR@{n} {_span(coop)}")
        if parts:
            out[dataset] = [f"Magnitudes: {'; '.join(parts)}."]
    return out


def _span(values: pd.Series) -> str:
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.4f}" if hi - lo < 5e-5 else f"{lo:.4f}–{hi:.4f}"


def grid(
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


def row_labels(model: str, attack: str, eps: float, defence: str) -> dict[str, str]:
    """A defence table's row labels: model, attack, ε (– when it has none) and defence."""
    eps_label = MISSING if math.isnan(eps) else fmt_num(eps)
    return {"model": model, "attack": attack_name(attack), "ε": eps_label, "defence": defence}
