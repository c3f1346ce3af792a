"""Recommenders; importing this package registers them."""

from aipray.models import alexrank, amr, bpr, dvbpr, freedom, lattice, vbpr
from aipray.models.base import MODELS, Recommender, load_recommender

__all__ = [
    "MODELS",
    "Recommender",
    "alexrank",
    "amr",
    "bpr",
    "dvbpr",
    "freedom",
    "lattice",
    "load_recommender",
    "vbpr",
]
