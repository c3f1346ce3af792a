"""Recommenders; importing this package registers them."""

from aipray.models import bpr, dvbpr, vbpr
from aipray.models.base import MODELS, Recommender, load_recommender

__all__ = ["MODELS", "Recommender", "bpr", "dvbpr", "load_recommender", "vbpr"]
