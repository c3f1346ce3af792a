"""How a trial turns images into numbers, without Ray.

:mod:`aipray.protocol.aip` is AIP's cold-item two-stage protocol: first-stage candidates, each
ranker's fixed candidate scores under a defence, and per-batch evaluation of cold items
(attack → defence → scores → ranks → per-item rows → trial metrics). The Ray Data actor of a
sweep trial is a thin adapter around :class:`~aipray.protocol.aip.ColdItemEvaluator`; the same
code evaluates a user's own ranker in a notebook::

    from aipray.protocol import aip
    candidates = aip.first_stage(catalog, bpr_config, seed=0).candidates
    metrics, items = aip.evaluate(my_ranker, catalog, candidates, aip.attack("insa", my_ranker,
                                  catalog, eps=16))

:mod:`aipray.protocol.perceptual` is Perceptual-Rec's category push: classify items, attack every
item of an origin class towards a target class, retrain (poisoning) or rescore (evasion), and
compare CHR@K / nCDCG@K over full rankings (``perceptual.push`` runs it in one call).

Each is also a registered :class:`~aipray.protocol.base.Protocol` object (``PROTOCOLS.get("aip")``
in :mod:`~aipray.protocol.cold_items`, ``PROTOCOLS.get("perceptual")`` in
:mod:`~aipray.protocol.category_push`) that runs one sweep trial from its
:class:`~aipray.plan.TrialPlan`: :func:`~aipray.protocol.base.run` does it in this process, and a
sweep's Ray Data actors call the same object's evaluator on the same batches.

Importing this package does not import Ray.
"""

from aipray.protocol import category_push, cold_items, perceptual  # noqa: F401 - registers both
from aipray.protocol.aip import (
    ColdItemEvaluator,
    FirstStage,
    attack,
    candidate_scores,
    evaluate,
    first_stage,
    reduce_items,
    top_candidates,
)
from aipray.protocol.base import PROTOCOLS, Protocol, protocol_of, run

__all__ = [
    "PROTOCOLS",
    "ColdItemEvaluator",
    "FirstStage",
    "Protocol",
    "attack",
    "candidate_scores",
    "evaluate",
    "first_stage",
    "perceptual",
    "protocol_of",
    "reduce_items",
    "run",
    "top_candidates",
]
