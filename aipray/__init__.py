"""aipray: adversarial item promotion against visually-aware recommenders.

The maths (data, models, attacks, defences, metrics) is plain PyTorch and importable without Ray;
the orchestration (``aipray.pipeline``, ``aipray.sweep``) runs it as a Ray Tune grid tracked in
MLflow.
"""

__version__ = "0.1.0"

from aipray.models.base import MODELS, Recommender

__all__ = ["MODELS", "Recommender", "__version__"]
