"""Attacks on item images; importing this package registers them."""

from aipray.attacks import cw, expa, insa, noise, sema, taamr
from aipray.attacks.base import (
    ATTACKS,
    Attack,
    AttackInputs,
    AttackResult,
    linf_ascent,
    quantize_within,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInputs",
    "AttackResult",
    "cw",
    "expa",
    "insa",
    "linf_ascent",
    "noise",
    "quantize_within",
    "sema",
    "taamr",
]
