"""Saving an extractor to a folder (``model.pt`` + ``model.json``) and loading it back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aipray.models.extractor.config import CHECKPOINT_FORMAT, META_FILE, MODEL_FILE
from aipray.models.extractor.network import Extractor, build_extractor


def save_extractor(
    extractor: Extractor, directory: Path | str, info: dict[str, Any] | None = None
) -> None:
    """Write ``directory/model.pt`` (``{"format", "spec", "state_dict"}``, readable with
    ``torch.load(weights_only=True)`` and usable as ``extractor.weights``) and
    ``directory/model.json`` (``format``, ``spec``, ``info``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in extractor.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "spec": extractor.spec, "state_dict": state}
    torch.save(payload, directory / MODEL_FILE)
    meta = {"format": CHECKPOINT_FORMAT, "spec": extractor.spec, "info": info or {}}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def load_extractor(directory: Path | str, device: str | torch.device = "cpu") -> Extractor:
    """The extractor :func:`save_extractor` wrote into ``directory``, in eval mode with
    ``requires_grad`` off, on ``device``."""
    file = Path(directory) / MODEL_FILE
    obj = torch.load(file, map_location="cpu", weights_only=True)
    if not is_saved_extractor(obj):
        raise ValueError(f"{file} was not written by save_extractor")
    return extractor_from(obj).to(device).eval().requires_grad_(False)


def is_saved_extractor(obj: Any) -> bool:
    """Whether ``obj``, a loaded ``model.pt``, was written by :func:`save_extractor`."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def extractor_from(obj: dict[str, Any]) -> Extractor:
    """The extractor a :func:`save_extractor` payload (``{"format", "spec", "state_dict"}``)
    holds, on the CPU; the one place that reads the format."""
    extractor = build_extractor(obj["spec"])
    extractor.load_state_dict(obj["state_dict"])
    return extractor


def read_extractor_info(directory: Path | str) -> dict[str, Any]:
    """The ``info`` dict :func:`save_extractor` stored next to the weights."""
    return json.loads((Path(directory) / META_FILE).read_text())["info"]
