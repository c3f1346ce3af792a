#!/usr/bin/env python
"""Lay out one of MMRec's Amazon datasets (Baby, Sports, Clothing) in aipray's folder format.

    python scripts/mmrec_folder.py MMREC_DIR --images IMAGES --out data/mmrec/baby

``MMREC_DIR`` holds MMRec's files for one dataset: ``<name>.inter`` (tab-separated ``userID``,
``itemID``, ``rating``, ``timestamp``, ``x_label``) and ``i_id_mapping.csv`` (tab-separated
``asin``, ``itemID``). MMRec ships stored features, not pictures: ``IMAGES`` is a folder of
the products' pictures named ``<asin>.jpg``, fetched from the ``imUrl`` of the Amazon 2014
metadata the dataset was built from (``meta_Baby.json.gz``, ...).

Writes ``OUT/<name>.inter`` and ``OUT/images/<itemID>.jpg`` (hard links where the file system
allows, copies otherwise), which the presets ``mmrec_baby``, ``mmrec_sports`` and
``mmrec_clothing`` read (``sweeps/mmrec_amazon.yaml``). Items without a picture are listed and
left out of ``images/``; preparing the folder then excludes them (and the count check says so).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

MAPPING = "i_id_mapping.csv"


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def lay_out(mmrec_dir: Path, images: Path, out: Path) -> dict[str, int]:
    """Write the folder; ``{"items": ..., "images": ..., "missing": ...}``."""
    inter = sorted(mmrec_dir.glob("*.inter"))
    if len(inter) != 1:
        raise SystemExit(f"{mmrec_dir}: expected one <name>.inter file, found {len(inter)}")
    mapping_file = mmrec_dir / MAPPING
    if not mapping_file.is_file():
        raise SystemExit(f"{mmrec_dir}: no {MAPPING} (asin -> itemID)")
    mapping = pd.read_csv(mapping_file, sep="\t", dtype=str)
    if not {"asin", "itemID"} <= set(mapping.columns):
        raise SystemExit(f"{mapping_file}: columns {list(mapping.columns)}; expected asin, itemID")
    (out / "images").mkdir(parents=True, exist_ok=True)
    target = out / inter[0].name
    if target.exists():
        target.unlink()
    link_or_copy(inter[0], target)
    missing = []
    for asin, item in zip(mapping["asin"], mapping["itemID"], strict=True):
        picture = images / f"{asin}.jpg"
        if not picture.is_file():
            missing.append(asin)
            continue
        destination = out / "images" / f"{item}.jpg"
        if not destination.exists():
            link_or_copy(picture, destination)
    if missing:
        (out / "missing_images.txt").write_text("\n".join(missing) + "\n")
    return {"items": len(mapping), "images": len(mapping) - len(missing), "missing": len(missing)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mmrec_dir", type=Path, help="MMRec's folder of one dataset")
    parser.add_argument("--images", type=Path, required=True, help="pictures named <asin>.jpg")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    args = parser.parse_args(argv)
    counts = lay_out(args.mmrec_dir, args.images, args.out)
    print(
        f"{args.out}: {counts['images']:,} of {counts['items']:,} items have a picture"
        + (f"; {counts['missing']:,} missing (missing_images.txt)" if counts["missing"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
