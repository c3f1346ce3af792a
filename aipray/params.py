"""Declaring config fields: defaults, allowed ranges and sweep axes, kept next to each algorithm."""

from __future__ import annotations

import dataclasses
from typing import Any


def param(
    default: Any,
    *,
    axis: bool = False,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with validation metadata.

    ``axis=True`` lets the sweep YAML give a list of values for the field: the grid then has one
    point per value (ε of an attack, JPEG quality, embedding length).
    """
    meta = {"axis": axis, "min": min, "max": max, "choices": choices, "doc": doc}
    return dataclasses.field(default=default, metadata=meta)
