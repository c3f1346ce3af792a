"""Defences; importing this package registers them."""

from aipray.defenses import bitdepth, denoiser, detector, jpeg, resize_pad
from aipray.defenses.base import DEFENSES, GRADIENTS, Defense, make_defense

__all__ = [
    "DEFENSES",
    "GRADIENTS",
    "Defense",
    "bitdepth",
    "denoiser",
    "detector",
    "jpeg",
    "make_defense",
    "resize_pad",
]
