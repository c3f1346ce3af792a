"""LATTICE's training loss, beside the model (:mod:`aipray.models.lattice`, which it does not
import: the model imports it when it trains)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from aipray.models.graph_ranker import GraphRanker
from aipray.models.graphs import EdgeList, Graph


class LATTICELoss:
    """LATTICE's training loss (:class:`~aipray.models.train.BatchObjective`): the first batch of
    each epoch rebuilds the item graph (learned kNN and values) with its gradient; the epoch's
    other batches reuse it, constant, as the reference codes do. Each batch propagates the whole
    user–item graph once and pays BPR plus ``reg_weight × ½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)`` on the
    propagated embeddings, averaged over the batch."""

    def __init__(self, model: GraphRanker, reg_weight: float) -> None:
        self.model, self.reg_weight = model, reg_weight
        self.graph = model.full_graph()  # LATTICE prunes no edges
        self.fixed: Graph | None = None

    def start_epoch(self, rng: np.random.Generator) -> None:
        self.fixed = None

    def __call__(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        if self.fixed is None:
            item_graph: EdgeList | Graph = self.model.item_graph()[0]
            self.fixed = item_graph.detach()
        else:
            item_graph = self.fixed
        user_e, item_e, _ = self.model.propagate(self.graph, item_graph)
        u, p, n = user_e[users], item_e[pos], item_e[neg]
        loss = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
        if self.reg_weight:
            squares = u.pow(2).sum(1) + p.pow(2).sum(1) + n.pow(2).sum(1)
            loss = loss + self.reg_weight * 0.5 * squares.mean()
        return loss
