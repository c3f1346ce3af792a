"""Defences; importing this package registers them."""

from aipray.defenses import bitdepth, jpeg, resize_pad
from aipray.defenses.base import DEFENSES, GRADIENTS, Defense

__all__ = ["DEFENSES", "GRADIENTS", "Defense", "bitdepth", "jpeg", "resize_pad"]
