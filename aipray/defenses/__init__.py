"""Defences; importing this package registers them."""

from aipray.defenses import bitdepth, jpeg
from aipray.defenses.base import DEFENSES, Defense

__all__ = ["DEFENSES", "Defense", "bitdepth", "jpeg"]
