"""A quieter console: drop the worker log lines Ray prints that a user cannot act on.

Ray forwards every worker's stdout/stderr to the driver. Two kinds of lines come with every Ray
Data pipeline and say nothing about the sweep:

- ``Actor ... has constructor arguments in the object store and max_restarts > 0`` — Ray Data
  passes its own internals that way (ray-project/ray#57733), whatever the map function's
  arguments are;
- ``Unhandled error ... ray::_StatsActor.update_execution_metrics()`` followed by a traceback
  ending in ``KeyError: 'dataset_...'`` — Ray Data's statistics actor, after a dataset finished;
- ``Progress bars disabled ...`` — trials turn per-operator bars off on purpose.

Everything else (our own log lines, real errors and tracebacks) is printed as before. The filter
wraps Ray's own printer (``ray_print_logs`` on the driver's stream dispatcher, a private API): if
that is not there, nothing is changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

NOISE = (
    "has constructor arguments in the object store and max_restarts > 0",
    "Progress bars disabled. To enable, set",
)
#: a block from its first line to (and including) its last: Ray Data's statistics actor failing
NOISE_BLOCKS = (("_StatsActor.update_execution_metrics()", "KeyError: 'dataset_"),)


def quiet_lines(lines: list[str]) -> list[str]:
    """``lines`` without the unactionable ones (single lines and whole blocks)."""
    out: list[str] = []
    closing: str | None = None
    for line in lines:
        if closing is not None:
            if closing in line:
                closing = None
            continue
        block = next((end for start, end in NOISE_BLOCKS if start in line), None)
        if block is not None:
            closing = block
            continue
        if any(marker in line for marker in NOISE):
            continue
        out.append(line)
    return out


def _filtered(printer: Callable[[dict[str, Any]], None], data: dict[str, Any]) -> None:
    lines = quiet_lines(list(data.get("lines", [])))
    if lines:
        printer({**data, "lines": lines})


def install() -> bool:
    """Wrap Ray's driver-side printer of worker logs with :func:`quiet_lines` (after
    ``ray.init``); returns whether it could."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    handlers = getattr(dispatcher, "handlers", None)
    if not isinstance(handlers, list):
        return False
    for name, handler in list(handlers):
        if name != "ray_print_logs":
            continue
        if getattr(handler, "func", None) is not _filtered:
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, functools.partial(_filtered, handler))
        return True
    return False
