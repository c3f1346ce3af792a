"""FREEDOM's training loss, beside the model (:mod:`aipray.models.freedom`, which it does not
import: the model imports it when it trains)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aipray.models.graphs import bipartite, degree_sensitive_keep, edge_weights


class FREEDOMLoss:
    """FREEDOM's training loss (:class:`~aipray.models.train.BatchObjective`): before each epoch
    the user–item graph is pruned (degree-sensitive, ``dropout`` of the edges dropped) and
    normalised again; each batch propagates it once and pays BPR on the scores plus
    ``reg_weight ×`` BPR with the items' projected image features ``W f`` in place of the items'
    embeddings (``features [n_items, F]``, the frozen extractor's), and with text the same with
    the items' projected title features (the authors' ``mf_t_loss``)."""

    def __init__(
        self, model: Any, features: torch.Tensor, reg_weight: float, dropout: float
    ) -> None:
        self.model, self.features = model, features
        self.reg_weight, self.dropout = reg_weight, dropout
        users, items = model.edges
        self.weights = edge_weights(users, items, model.n_users, model.in_graph.numel())
        self.graph = model.full_graph()
        self.item_graph = model.item_graph()  # frozen

    def start_epoch(self, rng: np.random.Generator) -> None:
        if self.dropout <= 0:
            self.graph = self.model.full_graph()
            return
        total = self.weights.numel()
        keep = max(1, int(total * (1.0 - self.dropout)))
        kept = degree_sensitive_keep(self.weights.cpu().numpy(), keep, rng)
        kept_t = torch.as_tensor(kept, device=self.model.edges.device)
        users, items = self.model.edges[:, kept_t]
        self.graph = bipartite(users, items, self.model.n_users, self.model.in_graph.numel())

    def __call__(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_e, item_e, _ = self.model.propagate(self.graph, self.item_graph)
        u = user_e[users]
        loss = bpr(u, item_e[pos], item_e[neg])
        if self.reg_weight:
            visual = self.model.image_trs(self.features[torch.cat([pos, neg])])
            loss = loss + self.reg_weight * bpr(u, visual[: pos.numel()], visual[pos.numel() :])
            if self.model.reads_text:
                text = self.model.text_trs(self.model.text_features[torch.cat([pos, neg])])
                loss = loss + self.reg_weight * bpr(u, text[: pos.numel()], text[pos.numel() :])
        return loss


def bpr(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``−mean ln σ(u·i − u·j)``."""
    return -F.logsigmoid((users * pos).sum(1) - (users * neg).sum(1)).mean()
