"""The Perceptual-Rec report of a ``protocol: perceptual`` sweep: Table 1 (CHR@20 of the origin
class per ranker × attack × extractor, clean and attacked, with the user-level paired test),
Table 2 (success rate, feature loss and LPIPS×100 per dataset × attack × extractor), a figure of
clean vs attacked images under each extractor (their predicted class and LPIPS), and CHR@20 vs ε.

CHR here is the count (the number of origin-class items in the top 20, as the authors' code and
their Table 1); ``chr@K`` divided by K is in MLflow too.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aipray.report.common import Table, attack_name, fmt_num, fmt_p, model_name
from aipray.report.figures import Artifacts, FigureRef, slug

log = logging.getLogger(__name__)

TRAININGS = ("standard", "adversarial", "free")
TRAINING_NAMES = {"standard": "T", "adversarial": "AT", "free": "FAT"}


def _attack_label(attack: str, eps: float) -> str:
    names = {"cw": "C&W", "noise": "random noise"}
    name = attack_name(attack) if attack in ("fgsm", "pgd") else names.get(attack, attack)
    return name if math.isnan(eps) else f"{name} (ε = {fmt_num(eps)})"


def _order(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """(attack, ε) pairs, once each (NaN ε for attacks without one), FGSM, PGD, C&W order."""
    rank = {"noise": 0, "fgsm": 1, "pgd": 2, "cw": 3}
    pairs = {
        (a, math.nan if math.isnan(e) else float(e))
        for a, e in zip(frame["attack"], frame["eps"].astype(float), strict=True)
    }
    unique = {(a, "nan" if math.isnan(e) else e): (a, e) for a, e in pairs}
    return sorted(
        unique.values(), key=lambda p: (rank.get(p[0], 9), p[0], -1 if math.isnan(p[1]) else p[1])
    )


def _trainings(frame: pd.DataFrame) -> list[str]:
    present = set(frame["extractor"].dropna())
    return [t for t in TRAININGS if t in present] + sorted(present - set(TRAININGS))


def _cell(rows: pd.DataFrame, metric: str) -> float:
    values = rows[metric].dropna() if metric in rows else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else math.nan


def table_chr(frame: pd.DataFrame, k: int = 20) -> Table:
    """Perceptual-Rec's Table 1: CHR@k (count) of the origin class, clean ("No attack") and
    after each attack, per ranker and extractor training; the attacked cells carry the paired
    p-value."""
    blocks, records = {}, []
    for (dataset, mode), d in frame.groupby(["dataset", "mode"], sort=False):
        trainings = _trainings(d)
        rows = []
        for model in d["model"].unique():
            m = d[d["model"] == model]
            clean = {t: _cell(m[m["extractor"] == t], f"clean/chr_count_at_{k}") for t in trainings}
            rows.append([model_name(model), "No attack"] + [f"{clean[t]:.4f}" for t in trainings])
            for t in trainings:
                records.append(
                    dict(
                        dataset=dataset,
                        mode=mode,
                        model=model,
                        attack="none",
                        eps=math.nan,
                        extractor=t,
                        chr=clean[t],
                        p_value=math.nan,
                    )
                )
            for attack, eps in _order(m):
                a = m[(m["attack"] == attack) & _eps_is(m["eps"], eps)]
                cells = []
                for t in trainings:
                    r = a[a["extractor"] == t]
                    value = _cell(r, f"attacked/chr_count_at_{k}")
                    p = _cell(r, f"p_value_chr_at_{k}")
                    mark = "" if math.isnan(value) else f" (p {fmt_p(p)})"
                    cells.append(("–" if math.isnan(value) else f"{value:.4f}") + mark)
                    records.append(
                        dict(
                            dataset=dataset,
                            mode=mode,
                            model=model,
                            attack=attack,
                            eps=eps,
                            extractor=t,
                            chr=value,
                            p_value=p,
                        )
                    )
                rows.append(["", _attack_label(attack, eps), *cells])
        columns = ["ranker", "attack"] + [TRAINING_NAMES.get(t, t) for t in trainings]
        blocks[f"{dataset}, {mode}"] = pd.DataFrame(rows, columns=columns)
    note = (
        f"CHR@{k}: mean number of origin-class items in users' top {k} (the count, as the "
        "authors' code and their Table 1; divided by K in MLflow as `chr@K`). Extractors: T "
        "standard, AT Madry PGD adversarial training, FAT free adversarial training. p: "
        "user-level paired t-test of attacked vs clean."
    )
    return Table(
        "perceptual_table1",
        f"Table 1: CHR@{k} of the origin class",
        note,
        blocks,
        pd.DataFrame(records),
    )


def _eps_is(values: pd.Series, eps: float) -> np.ndarray:
    if math.isnan(eps):
        return values.isna().to_numpy()
    return np.isclose(values.to_numpy(dtype=float), eps)


def table_images(frame: pd.DataFrame) -> Table:
    """Perceptual-Rec's Table 2: success rate, feature loss and LPIPS×100 of the attacked
    images per dataset × attack × extractor (they do not depend on the ranker or the mode)."""
    blocks, records = {}, []
    for dataset, d in frame.groupby("dataset", sort=False):
        trainings = _trainings(d)
        rows = []
        for attack, eps in _order(d):
            a = d[(d["attack"] == attack) & _eps_is(d["eps"], eps)]
            cells = []
            for t in trainings:
                r = a[a["extractor"] == t]
                sr, fl = _cell(r, "success_mean"), _cell(r, "feature_loss_mean")
                lp = 100 * _cell(r, "lpips_mean")
                cells += [
                    f"{100 * sr:.1f} %" if not math.isnan(sr) else "–",
                    f"{fl:.3g}",
                    f"{lp:.3f}",
                ]
                records.append(
                    dict(
                        dataset=dataset,
                        attack=attack,
                        eps=eps,
                        extractor=t,
                        success=sr,
                        feature_loss=fl,
                        lpips_x100=lp,
                    )
                )
            rows.append([_attack_label(attack, eps), *cells])
        columns = ["attack"] + [
            f"{TRAINING_NAMES.get(t, t)} {m}" for t in trainings for m in ("SR", "FL", "LPIPS×100")
        ]
        blocks[dataset] = pd.DataFrame(rows, columns=columns)
    note = (
        "SR: share of origin-class images the extractor classifies as the target after the 8-bit "
        "round trip; FL: mean squared difference of the extractor's features before and after; "
        "LPIPS×100 with the sweep's `lpips` network (a random backbone is not comparable with "
        "published LPIPS: see the sweep's `lpips.backbone` param)."
    )
    return Table(
        "perceptual_table2",
        "Table 2: success rate, feature loss, LPIPS",
        note,
        blocks,
        pd.DataFrame(records),
    )


def chr_vs_eps(frame: pd.DataFrame, out: Path, k: int = 20) -> list[FigureRef]:
    """CHR@k after FGSM and PGD against ε, one panel per (dataset, ranker), a line per
    extractor and attack; the clean level dashed."""
    refs = []
    for (dataset, model, mode), d in frame.groupby(["dataset", "model", "mode"], sort=False):
        d = d[d["attack"].isin(["noise", "fgsm", "pgd"]) & d["eps"].notna()]
        if d["eps"].nunique() < 2:
            continue
        fig = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for i, t in enumerate(_trainings(d)):
            color = f"C{i}"
            for attack, style in (("noise", "-."), ("fgsm", ":"), ("pgd", "-")):
                r = d[(d["extractor"] == t) & (d["attack"] == attack)].sort_values("eps")
                if len(r):
                    label = f"{TRAINING_NAMES.get(t, t)} {_attack_label(attack, math.nan)}"
                    ax.plot(
                        r["eps"],
                        r[f"attacked/chr_count_at_{k}"],
                        style,
                        marker="o",
                        color=color,
                        label=label,
                    )
            clean = _cell(d[d["extractor"] == t], f"clean/chr_count_at_{k}")
            ax.axhline(clean, color=color, linestyle="--", linewidth=0.8)
        ax.set_xlabel("ε (pixel units, 0..255)")
        ax.set_ylabel(f"CHR@{k} of the origin class")
        ax.set_title(f"{dataset}: {model_name(model)} ({mode}); dashed: clean", fontsize=9)
        ax.legend(fontsize=7)
        path = out / "figures" / f"{slug('chr_vs_eps', dataset, model, mode)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        refs.append(FigureRef("CHR vs ε", f"{dataset} {model}", f"figures/{path.name}"))
    return refs


def image_grid(frame: pd.DataFrame, fetch: Artifacts, out: Path, n: int = 4) -> list[FigureRef]:
    """Like the paper's Figure 1: one origin item per row, clean and attacked by each attack's
    largest ε under each extractor (columns), with the class each extractor then predicts (by
    name) and the LPIPS of each attacked image. Rows are the items most extractors attacked (an
    extractor attacks the items it puts in the origin class); a cell stays empty where an
    extractor did not attack that item."""
    refs = []
    for dataset, d in frame.groupby("dataset", sort=False):
        trainings = _trainings(d)
        for attack in d["attack"].unique():
            a = d[d["attack"] == attack]
            eps = a["eps"].max()
            a = a if math.isnan(eps) else a[np.isclose(a["eps"].astype(float), eps)]
            arrays = {t: _first(a[a["extractor"] == t], fetch) for t in trainings}
            held = {t: _by_item(arr) for t, arr in arrays.items() if arr is not None}
            if not held:
                continue
            items = _shared_items(held, n)
            fig = Figure(figsize=(1.7 * (1 + len(trainings)), 1.8 * n))
            FigureCanvasAgg(fig)
            axes = fig.subplots(n, 1 + len(trainings), squeeze=False)
            for row in range(n):
                for col in range(1 + len(trainings)):
                    axes[row, col].axis("off")
                if row >= len(items):
                    continue
                item = items[row]
                arr, i = next(held[t][item] for t in trainings if item in held.get(t, {}))
                axes[row, 0].imshow(arr["clean"][i].transpose(1, 2, 0))
                title = f"clean, item {item}"
                if "clean_class_name" in arr:  # the origin class, under every extractor
                    title += f"\n{arr['clean_class_name'][i]}"
                axes[row, 0].set_title(title, fontsize=6)
                for col, t in enumerate(trainings, start=1):
                    if item not in held.get(t, {}):
                        continue
                    arr, i = held[t][item]
                    axes[row, col].imshow(arr["adversarial"][i].transpose(1, 2, 0))
                    text = TRAINING_NAMES.get(t, t)
                    if "lpips" in arr:
                        text += f", LPIPS {arr['lpips'][i]:.3f}"
                    if "adv_class_name" in arr:
                        text += f"\n→ {arr['adv_class_name'][i]}"
                    elif "adv_class" in arr:
                        text += f"\n→ class {arr['adv_class'][i]}"
                    axes[row, col].set_title(text, fontsize=6)
            fig.suptitle(f"{dataset}: {_attack_label(attack, eps)}", fontsize=9)
            path = out / "figures" / f"{slug('push_examples', dataset, attack)}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=120)
            refs.append(FigureRef("Attacked images", f"{dataset} {attack}", f"figures/{path.name}"))
    return refs


def _by_item(arrays) -> dict[int, tuple]:
    """item id → (the examples' arrays, the item's index in them)."""
    return {int(item): (arrays, i) for i, item in enumerate(arrays["item_ids"])}


def _shared_items(held: dict[str, dict[int, tuple]], n: int) -> list[int]:
    """Up to ``n`` item ids, those attacked under the most extractors first, then by id."""
    count: dict[int, int] = {}
    for items in held.values():
        for item in items:
            count[item] = count.get(item, 0) + 1
    return sorted(count, key=lambda item: (-count[item], item))[:n]


def _first(rows: pd.DataFrame, fetch: Artifacts):
    for run_id in rows["run_id"]:
        arrays = fetch(run_id, "examples.npz")
        if arrays is not None:
            return arrays
    return None


def perceptual_tables(frame: pd.DataFrame) -> list[Table]:
    return [table_chr(frame), table_images(frame)]


def perceptual_figures(frame: pd.DataFrame, fetch: Artifacts, out: Path) -> list[FigureRef]:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    refs = chr_vs_eps(frame, out)
    try:
        refs += image_grid(frame, fetch, out)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        log.warning("attacked-image figure skipped: %s: %s", type(err).__name__, err)
    return refs
