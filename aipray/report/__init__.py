"""The AIP report of a sweep: ``python -m aipray.report sweeps/quick.yaml``.

Reads the sweep's FINISHED trial runs from MLflow and writes, into ``reports/<sweep>/``, a
first-stage health table, the AIP tables (3–8), HR@5 vs AMR's adversarial-training ε, when some
attack also ran adaptively the robustness table (oblivious vs adaptive per defence) and, when
some attack ran a transfer trial, the transfer matrix (source × target model), as Markdown and
CSV (``--show transfer`` also prints one), figures (example images, HR@5 vs ε, vs embedding
length and vs AMR's ε, embedding maps, defence curves) and ``report.md``; then logs that folder
to the sweep's parent run as artifacts under ``report/``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd

from aipray.report.figures import FigureRef, all_figures
from aipray.report.runs import ReportError, SweepRuns, load_runs, resolve_source
from aipray.report.tables import (
    Table,
    all_tables,
    attack_name,
    choose_eps,
    direct_runs,
    fmt_num,
    model_name,
    models_in,
    prepare,
)

__all__ = ["ReportError", "build_report", "main"]

log = logging.getLogger(__name__)


def _clear(out: Path) -> None:
    """Remove what an earlier report wrote here (only its own kinds of files)."""
    (out / "report.md").unlink(missing_ok=True)
    for folder, pattern in (("tables", "*.csv"), ("figures", "*.png")):
        for path in (out / folder).glob(pattern):
            path.unlink()


def _defences(frame: pd.DataFrame) -> str:
    """``none, jpeg (5 levels), ...``."""
    parts = []
    for family, labels in frame.groupby("family", sort=False)["defense"]:
        n = labels.nunique()
        parts.append(f"{family} ({n} levels)" if n > 1 else str(labels.iloc[0]))
    return ", ".join(sorted(parts, key=lambda p: (not p.startswith("none"), p)))


def render(
    runs: SweepRuns, eps: dict[str, float], tables: list[Table], figures: list[FigureRef]
) -> str:
    """The text of ``report.md``."""
    frame = runs.frame
    fixed = ", ".join(f"{attack_name(a)} {fmt_num(e)}" for a, e in eps.items() if not math.isnan(e))
    lines = [
        f"# Adversarial item promotion report: {runs.sweep}",
        "",
        f"- sweep `{runs.sweep}`, MLflow experiment `{runs.source.experiment}`, "
        f"parent run `{runs.parent_id}`",
        f"- {len(frame)} finished trial runs reported; {runs.n_ignored} unfinished or failed "
        f"ignored (of {runs.n_children} child runs)"
        + (f"; {runs.n_stale} runs of earlier settings left out" if runs.n_stale else ""),
        f"- datasets: {', '.join(sorted(frame['dataset'].unique()))}; "
        f"models: {', '.join(model_name(m) for m in models_in(frame))}; "
        f"attacks: {', '.join(attack_name(a) for a in eps)}; "
        f"defences: {_defences(frame)}",
        f"- ε of the tables that fix one: {fixed or '–'}",
        f"- generated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        "Cells average the matching trials; `–`: no such trial.",
        "",
    ]
    for table in tables:
        lines += [table.markdown(), f"CSV: [tables/{table.slug}.csv](tables/{table.slug}.csv)", ""]
    lines += ["## Figures", ""]
    section = None
    for fig in figures:
        if fig.section != section:
            section = fig.section
            lines += [f"### {section}", ""]
        lines += [f"![{fig.title}]({fig.path})", ""]
    if not figures:
        lines += ["(no figures: no trials with the needed artifacts)", ""]
    return "\n".join(lines)


def build_report(
    target: str,
    out: Path | str | None = None,
    eps: float | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    show: tuple[str, ...] = (),
) -> Path:
    """Write the report of a sweep (YAML path) or experiment (name) and return its folder;
    the tables named in ``show`` (their slugs, e.g. ``transfer``) are also printed.

    Raises :class:`ReportError` (one-line message) when the sweep, experiment or store is
    unknown or holds no finished trial.
    """
    source = resolve_source(target, tracking_uri)
    runs = load_runs(source)
    try:
        folder = Path(out) if out is not None else Path("reports") / runs.sweep
        folder.mkdir(parents=True, exist_ok=True)
        _clear(folder)
        if (runs.frame["protocol"] == "perceptual").all():
            return _perceptual_report(runs, folder, log_to_mlflow)
        frame = prepare(runs.frame)
        chosen = choose_eps(direct_runs(frame), eps)
        log.info("building tables")
        tables = all_tables(frame, chosen)
        for table in tables:
            if table.slug in show:
                sys.stdout.write(table.markdown() + "\n")
        (folder / "tables").mkdir(exist_ok=True)
        for table in tables:
            table.data.to_csv(folder / "tables" / f"{table.slug}.csv", index=False)
        log.info("drawing figures")
        figures = all_figures(direct_runs(frame), chosen, runs.artifact, folder)
        for name, count in sorted(runs.missing.items()):
            log.warning("%d runs have no usable %s; their figures are left out", count, name)
        (folder / "report.md").write_text(render(runs, chosen, tables, figures))
        if log_to_mlflow:
            runs.client.log_artifacts(runs.parent_id, str(folder), artifact_path="report")
            log.info("logged %s to run %s under report/", folder, runs.parent_id)
    finally:
        runs.close()
    return folder


def _perceptual_report(runs: SweepRuns, folder: Path, log_to_mlflow: bool) -> Path:
    """Perceptual-Rec's tables and figures for a ``protocol: perceptual`` sweep."""
    from aipray.report.perceptual import perceptual_figures, perceptual_tables

    frame = runs.frame
    tables = perceptual_tables(frame)
    (folder / "tables").mkdir(exist_ok=True)
    for table in tables:
        table.data.to_csv(folder / "tables" / f"{table.slug}.csv", index=False)
    figures = perceptual_figures(frame, runs.artifact, folder)
    attacks = {a: math.nan for a in dict.fromkeys(frame["attack"])}
    text = render(runs, attacks, tables, figures).replace(
        "# Adversarial item promotion report", "# Category push report (Perceptual-Rec)"
    )
    (folder / "report.md").write_text(text)
    if log_to_mlflow:
        runs.client.log_artifacts(runs.parent_id, str(folder), artifact_path="report")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m aipray.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("target", help="sweep YAML (e.g. sweeps/quick.yaml) or experiment name")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: the sweep's, or sqlite:///mlflow/mlflow.db here)",
    )
    parser.add_argument("--out", default=None, help="output folder (default reports/<sweep>/)")
    parser.add_argument(
        "--eps",
        type=float,
        default=None,
        help="ε of the tables that fix one (default: the largest ε of each attack)",
    )
    parser.add_argument(
        "--no-log", action="store_true", help="do not log the report to the sweep's parent run"
    )
    parser.add_argument(
        "--show",
        action="append",
        default=[],
        metavar="TABLE",
        help="also print this table (its CSV's name, e.g. transfer, robustness); repeatable",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        folder = build_report(
            args.target,
            out=args.out,
            eps=args.eps,
            tracking_uri=args.tracking_uri,
            log_to_mlflow=not args.no_log,
            show=tuple(args.show),
        )
    except ReportError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    sys.stdout.write(f"report: {folder / 'report.md'}\n")
    return 0
