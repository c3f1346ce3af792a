"""The report's figures (matplotlib, Agg canvas, no pyplot state): example grids (AIP Figure 3),
HR@5 vs ε, HR@5 vs embedding length (Figure 5), HR@5 under INSA vs AMR's adversarial-training
ε, 2-D embedding maps (Figure 4, PCA instead of t-SNE) and defence curves."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from tqdm import tqdm

from aipray.report.common import (
    ADV_EPS_UNIT_TEXT,
    attack_name,
    attack_order,
    datasets_of,
    eps_mask,
    eps_text,
    fmt_num,
    label_without,
    mean,
    model_name,
    models_in,
    rows_of,
    select,
)
from aipray.report.runs import LEVELS
from aipray.report.tables import adv_eps_trials, series_of

log = logging.getLogger(__name__)

SECTIONS = (
    "Example images",
    "HR@5 vs ε",
    "HR@5 vs embedding length",
    "HR@5 under INSA vs adversarial-training ε",
    "Embedding maps",
    "Defence curves",
)
MAX_ARROWS = 32  # cold items drawn per attack in an embedding map
# label marks that would vanish from a file name
SLUG_TEXT = {"β′": "beta", "ε_adv": "eps_adv", "ε": "eps"}
Artifacts = Callable[[str, str], dict[str, np.ndarray] | None]


@dataclass(frozen=True)
class FigureRef:
    """A written figure: its section in the report, caption and path relative to the report."""

    section: str
    title: str
    path: str


def slug(*parts: str) -> str:
    """A file-name-safe name from labels such as ``jpeg(quality=75)`` or ``VBPR (K=20, β′)``."""
    text = "_".join(parts)
    for mark, plain in SLUG_TEXT.items():
        text = text.replace(mark, plain)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / name)
    return f"figures/{name}"


def _first_run(rows: pd.DataFrame) -> str | None:
    return None if rows.empty else str(rows["run_id"].iloc[0])


def _hwc(image: np.ndarray) -> np.ndarray:
    hwc = np.transpose(np.asarray(image), (1, 2, 0))
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc


def _ids(npz: dict[str, np.ndarray]) -> list[int]:
    return [int(i) for i in np.asarray(npz["item_ids"]).ravel()]


def example_grid(d: pd.DataFrame, row: str, fetch: Artifacts, out: Path) -> FigureRef | None:
    """One cold item per attack (rows): its original, then its adversarial image per ε (columns;
    an attack without ε, such as c-SEMA, in the first). The item is the one most attacks' examples
    share (smallest id on ties); an attack whose examples lack it shows its own first item."""
    sub = d[d["row"] == row]
    eps_values = sorted(sub["eps"].dropna().unique())
    cells: dict[str, dict[int, tuple[dict[str, np.ndarray], float]]] = {}
    for attack in attack_order(sub["attack"]):
        for e in [*eps_values, math.nan]:
            run_id = _first_run(select(sub, attack=attack, eps=e))
            npz = fetch(run_id, "examples.npz") if run_id else None
            if npz is not None and len(npz.get("item_ids", [])):
                col = 1 if math.isnan(e) else 1 + eps_values.index(e)
                cells.setdefault(attack, {})[col] = (npz, e)
    if not cells:
        return None
    counts = Counter(
        i
        for row_cells in cells.values()
        for i in {i for n, _ in row_cells.values() for i in _ids(n)}
    )
    item = min(counts, key=lambda i: (-counts[i], i))
    ncols = 1 + max(1, len(eps_values))
    fig, axes = _figure(len(cells), ncols, 1.7, 1.8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for r, (attack, row_cells) in enumerate(cells.items()):
        ids = [_ids(npz) for npz, _ in row_cells.values()]
        own = item if any(item in i for i in ids) else min(i[0] for i in ids)
        clean = None
        for j, (npz, e) in row_cells.items():
            if own not in _ids(npz):
                continue
            k = _ids(npz).index(own)
            clean = npz["clean"][k] if clean is None else clean
            axes[r, j].imshow(_hwc(npz["adversarial"][k]), interpolation="nearest", cmap="gray")
            axes[r, j].set_title(eps_text(e) or "no ε")
        ax = axes[r, 0]
        if clean is not None:
            ax.imshow(_hwc(clean), interpolation="nearest", cmap="gray")
        title = "original" if r == 0 else ""
        ax.set_title(title if own == item else f"original, item {own}")
        ax.text(-0.1, 0.5, attack_name(attack), transform=ax.transAxes, ha="right", va="center")
    dataset = d["dataset"].iloc[0]
    fig.suptitle(f"{dataset} · {row} · cold item {item}")
    name = _save(fig, out, f"examples_{slug(dataset, row)}.png")
    return FigureRef(SECTIONS[0], f"{dataset} · {row}: cold item {item}", name)


def hr_vs_eps(d: pd.DataFrame, row: str, out: Path) -> FigureRef | None:
    """Adversarial HR@5 vs ε per attack; cooperative HR@5 dashed, attacks without ε dotted."""
    sub = d[d["row"] == row]
    if sub["eps"].dropna().empty:
        return None
    fig, axes = _figure(1, 1, 5.0, 3.6)
    ax = axes[0, 0]
    for attack in attack_order(sub["attack"]):
        rows = sub[sub["attack"] == attack]
        with_eps = rows.dropna(subset=["eps"])
        if len(with_eps):
            g = with_eps.groupby("eps")["adversarial/hr_at_5"].mean()
            ax.plot(g.index, g.to_numpy(), marker="o", label=attack_name(attack))
        else:
            ax.axhline(mean(rows, "adversarial/hr_at_5"), ls=":", label=attack_name(attack))
    ax.axhline(mean(sub, "cooperative/hr_at_5"), color="k", ls="--", label="cooperative")
    ticks = sorted(sub["eps"].dropna().unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels=[fmt_num(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("ε (0..255)")
    ax.set_ylabel("HR@5")
    ax.set_title(f"{d['dataset'].iloc[0]} · {row}")
    ax.legend(fontsize="small")
    name = _save(fig, out, f"hr_vs_eps_{slug(d['dataset'].iloc[0], row)}.png")
    return FigureRef(SECTIONS[1], f"{d['dataset'].iloc[0]} · {row}", name)


def hr_vs_dim(d: pd.DataFrame, out: Path) -> FigureRef | None:
    """INSA's HR@5 vs embedding length (one line per ε), one panel per model (and its other
    varying settings) that was trained at several lengths."""
    insa = d[(d["attack"] == "insa") & d["dim"].notna() & d["eps"].notna()]
    if insa.empty:
        return None
    insa = insa.assign(series=label_without(insa, "dim"))
    panels = [s for s, g in insa.groupby("series", sort=False) if g["dim"].nunique() > 1]
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), 4.2, 3.4)
    for ax, series in zip(axes[0], panels, strict=True):
        _insa_panel(ax, insa[insa["series"] == series], "dim", "embedding length K", series)
    dataset = d["dataset"].iloc[0]
    name = _save(fig, out, f"hr_vs_dim_{slug(dataset)}.png")
    return FigureRef(SECTIONS[2], dataset, name)


def _insa_panel(ax: Any, rows: pd.DataFrame, x: str, xlabel: str, title: str) -> None:
    """INSA's HR@5 against setting ``x``, one line per ε, and the cooperative HR@5 dashed."""
    for e in sorted(rows["eps"].unique()):
        g = select(rows, eps=e).groupby(x)["adversarial/hr_at_5"].mean()
        ax.plot(g.index, g.to_numpy(), marker="o", label=f"INSA {eps_text(e)}")
    coop = rows.groupby(x)["cooperative/hr_at_5"].mean()
    ax.plot(coop.index, coop.to_numpy(), color="k", ls="--", label="cooperative")
    ax.set_xticks(list(coop.index), labels=[fmt_num(v) for v in coop.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("HR@5")
    ax.set_title(title)
    ax.legend(fontsize="small")


def hr_vs_adv_eps(d: pd.DataFrame, out: Path) -> FigureRef | None:
    """HR@5 under INSA vs the ranker's adversarial-training ε (AMR's, in its stated unit),
    one line per INSA ε and the cooperative HR@5 dashed; one panel per ranker trained at two or
    more such ε, None when there is none."""
    trials = adv_eps_trials(d)
    if trials.empty:
        return None
    panels = series_of(trials)
    fig, axes = _figure(1, len(panels), 4.6, 3.4)
    for ax, series in zip(axes[0], panels, strict=True):
        rows = trials[trials["series"] == series]
        unit = rows["adv_eps_unit"].iloc[0]
        xlabel = f"ε_adv (× {ADV_EPS_UNIT_TEXT.get(unit, unit)})"
        _insa_panel(ax, rows, "adv_eps", xlabel, series)
    dataset = d["dataset"].iloc[0]
    names = ", ".join(dict.fromkeys(model_name(m) for m in models_in(trials)))
    fig.suptitle(f"{dataset}: HR@5 under INSA vs {names}'s ε")
    name = _save(fig, out, f"hr_vs_adv_eps_{slug(dataset)}.png")
    return FigureRef(SECTIONS[3], f"{dataset}: HR@5 under INSA vs {names}'s ε", name)


def _pca(reference: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    centre = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - centre, full_matrices=False)
    basis = np.zeros((ref.shape[1], 2))
    basis[:, : min(2, len(vt))] = vt[:2].T

    def project(x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64).reshape(-1, ref.shape[1]) - centre) @ basis

    return project


def embedding_map(
    d: pd.DataFrame, row: str, eps: dict[str, float], fetch: Artifacts, out: Path
) -> FigureRef | None:
    """Warm items in the ranker's space (PCA fit on them) coloured by category, and arrows from
    each cold item's clean to its adversarial position per attack at the chosen ε."""
    sub = d[d["row"] == row]
    embs: dict[str, dict[str, np.ndarray]] = {}
    for attack in attack_order(sub["attack"]):
        run_id = _first_run(select(sub, attack=attack, eps=eps.get(attack, math.nan)))
        emb = fetch(run_id, "embeddings.npz") if run_id else None
        if emb is None or not {"reference", "clean", "adversarial"} <= set(emb):
            continue
        dims = {emb[k].shape[-1] for k in ("reference", "clean", "adversarial")}
        if embs:
            dims.add(next(iter(embs.values()))["reference"].shape[-1])
        if len(dims) > 1:
            log.warning("%s %s: embedding lengths differ; left out of the map", row, attack)
            continue
        embs[attack] = emb
    if not embs:
        return None
    first = next(iter(embs.values()))
    reference = first["reference"]
    if reference.ndim != 2 or len(reference) < 2:
        return None
    project = _pca(reference)
    categories = np.asarray(first.get("reference_category", np.full(len(reference), -1)))
    if categories.shape != (len(reference),):
        categories = np.full(len(reference), -1)
    palette = colormaps["tab20"]
    colours = [palette(int(c) % 20) if c >= 0 else (0.8, 0.8, 0.8, 1.0) for c in categories]
    fig, axes = _figure(1, 1, 6.0, 5.0)
    ax = axes[0, 0]
    warm = project(reference)
    ax.scatter(warm[:, 0], warm[:, 1], c=colours, s=12, alpha=0.6, linewidths=0)
    handles: list[Any] = [
        Line2D([], [], ls="", marker="o", color="grey", alpha=0.5, label="warm items (category)"),
        Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="cold items, clean"),
    ]
    clean = project(first["clean"][:MAX_ARROWS])
    ax.scatter(clean[:, 0], clean[:, 1], facecolors="none", edgecolors="k", s=24)
    attack_colours = colormaps["Set1"]
    for i, (attack, emb) in enumerate(embs.items()):
        colour = attack_colours(i % 9)
        src = project(emb["clean"][:MAX_ARROWS])
        dst = project(emb["adversarial"][: len(src)])
        delta = dst - src
        ax.quiver(
            src[:, 0],
            src[:, 1],
            delta[:, 0],
            delta[:, 1],
            color=colour,
            angles="xy",
            scale_units="xy",
            scale=1,
            width=0.004,
        )
        ax.scatter(dst[:, 0], dst[:, 1], color=colour, marker="x", s=20)
        label = " ".join(x for x in (attack_name(attack), eps_text(eps.get(attack, math.nan))) if x)
        handles.append(Line2D([], [], color=colour, marker="x", label=label))
    # every trial stores the same hook (the most popular item): mark it once
    hooks = [emb["hook"] for emb in embs.values() if "hook" in emb]
    if hooks:
        hook = project(hooks[0])[0]
        ax.scatter([hook[0]], [hook[1]], marker="*", s=260, c="gold", edgecolors="k", zorder=5)
        star = Line2D([], [], ls="", marker="*", ms=14, mfc="gold", mec="k", label="hook item")
        handles.append(star)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{d['dataset'].iloc[0]} · {row}: item representations (PCA)")
    ax.legend(handles=handles, fontsize="small", loc="best")
    name = _save(fig, out, f"embedding_map_{slug(d['dataset'].iloc[0], row)}.png")
    return FigureRef(SECTIONS[4], f"{d['dataset'].iloc[0]} · {row}", name)


def defense_curves(d: pd.DataFrame, row: str, family: str, out: Path) -> FigureRef | None:
    """Adversarial, cooperative and ordinary HR@5 vs defence level (weakest left), per attack."""
    sub = d[(d["row"] == row) & (d["family"] == family)].dropna(subset=["level"])
    if sub.empty:
        return None
    combos = sub[["attack", "eps"]].drop_duplicates()
    panels = [
        (a, e)
        for a in attack_order(combos["attack"])
        for e in sorted(combos.loc[combos["attack"] == a, "eps"].unique())
    ]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, 3.8, 3.0)
    metrics = [
        ("adversarial/hr_at_5", "adversarial", "o-"),
        ("cooperative/hr_at_5", "cooperative", "s--"),
        ("ordinary/hr_at_5", "ordinary", "^:"),
    ]
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (attack, e) in zip(axes.flat, panels, strict=False):
        rows = sub[(sub["attack"] == attack) & eps_mask(sub["eps"], e)]
        g = rows.groupby("level")[[m for m, _, _ in metrics]].mean().sort_index()
        for metric, label, style in metrics:
            ax.plot(g.index, g[metric].to_numpy(), style, label=label)
        ax.set_xticks(list(g.index), labels=[fmt_num(v) for v in g.index])
        ax.invert_xaxis()
        ax.set_xlabel(LEVELS[family][1])
        ax.set_ylabel("HR@5")
        ax.set_title(" ".join(x for x in (attack_name(attack), eps_text(e)) if x))
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{d['dataset'].iloc[0]} · {row} · {LEVELS[family][1]}")
    name = _save(fig, out, f"defense_{slug(family, d['dataset'].iloc[0], row)}.png")
    return FigureRef(SECTIONS[5], f"{d['dataset'].iloc[0]} · {row}: {LEVELS[family][1]}", name)


def all_figures(
    frame: pd.DataFrame, eps: dict[str, float], fetch: Artifacts, out: Path
) -> list[FigureRef]:
    """Every figure the trials allow, written under ``out/figures``."""
    base = frame[frame["family"] == "none"]
    pairs = [(ds, r) for ds in datasets_of(frame) for r in rows_of(frame[frame["dataset"] == ds])]
    jobs: list[tuple[str, Callable[[], FigureRef | None]]] = []
    for ds, row in pairs:
        d_all = frame[frame["dataset"] == ds]
        d = base[base["dataset"] == ds]
        if not d.empty:
            jobs += [
                (f"{ds} {row} examples", partial(example_grid, d, row, fetch, out)),
                (f"{ds} {row} HR@5 vs ε", partial(hr_vs_eps, d, row, out)),
                (f"{ds} {row} map", partial(embedding_map, d, row, eps, fetch, out)),
            ]
        for family in LEVELS:
            jobs.append((f"{ds} {row} {family}", partial(defense_curves, d_all, row, family, out)))
    for ds in datasets_of(base):
        d = base[base["dataset"] == ds]
        jobs.append((f"{ds} HR@5 vs dim", partial(hr_vs_dim, d, out)))
        jobs.append((f"{ds} HR@5 vs ε_adv", partial(hr_vs_adv_eps, d, out)))
    done: list[FigureRef] = []
    for what, job in tqdm(jobs, desc="figures", unit="fig", disable=None):
        try:
            ref = job()
        except (ValueError, KeyError, IndexError, TypeError) as err:
            # A malformed artifact costs its figure, not the report.
            log.warning("figure %s skipped: %s: %s", what, type(err).__name__, err)
            continue
        if ref is not None:
            done.append(ref)
    log.info("wrote %d figures", len(done))
    return sorted(done, key=lambda f: SECTIONS.index(f.section))
