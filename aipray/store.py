"""Content-addressed storage for stage outputs.

Every stage output lives in a folder named after a hash of the config slice that produced it, so a
re-run finds it and a trial that changes only the attack never retrains a model. Folders are written
under a temporary name and renamed into place when complete: a stage killed halfway leaves nothing
that looks finished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(obj: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able config slice."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's content, computed once per (path, size, modification time): cache keys
    that depend on files (checkpoints, provided images) are derived for every trial of a sweep."""
    path = Path(path).resolve()
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def code_version() -> dict[str, str | None]:
    """The code that made a stored output: aipray's version and, where it runs from a git
    checkout, ``git describe --always --dirty`` of it (``None`` elsewhere). The version comes
    from the installed distribution, so that this bottom-layer module imports nothing above it."""
    try:
        version: str | None = importlib.metadata.version("aipray")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = None
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {"aipray": version, "git": commit or None}


class Store:
    """The folder tree under ``root``: ``<kind>/<name>-<key>/`` per stage output."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def path(self, kind: str, name: str, key: str) -> Path:
        """``root/kind/name-key``; a class named by import path (``pkg.mod:Class``) gets a
        folder without the colon (``pkg.mod.Class``)."""
        return self.root / kind / f"{name.replace(':', '.')}-{key}"


def done(path: Path) -> bool:
    """Whether a stage output exists (folders appear only complete, see :func:`atomic_dir`)."""
    return path.is_dir()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; rename it to ``final`` only if the block succeeds.

    If another process finished ``final`` first, the temporary result is discarded: both
    computed the same content-addressed output.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
