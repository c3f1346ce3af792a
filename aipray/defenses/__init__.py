"""Defences; importing this package registers them."""

from aipray.defenses import bitdepth, denoiser, jpeg, resize_pad
from aipray.defenses.base import DEFENSES, GRADIENTS, Defense, make_defense

__all__ = [
    "DEFENSES",
    "GRADIENTS",
    "Defense",
    "bitdepth",
    "denoiser",
    "jpeg",
    "make_defense",
    "resize_pad",
]
