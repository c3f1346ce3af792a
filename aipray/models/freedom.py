"""FREEDOM (Zhou & Shen, MM 2023, "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation") on the features of a frozen, pretrained extractor.

Two graphs, as in the authors' code (enoche/FREEDOM, also MMRec's ``freedom.py``):

- a **frozen item–item graph** ``S``: each item's top-k items by cosine similarity of its image
  features (itself included), built once before training and never updated. Its values are
  FREEDOM's ``D^{-1/2} A D^{-1/2}`` with ``D`` the row sums of the kNN adjacency, which for a
  kNN graph is ``1/k`` on every edge;
- a **user–item graph** propagated LightGCN-style (the mean of layers 0..L of
  ``Â = D^{-1/2} A D^{-1/2}`` over the training interactions). During training it is
  *denoised* before each epoch by degree-sensitive edge pruning: a share ``1 − dropout`` of the
  edges is kept, sampled without replacement with probability ∝ ``1/√(d_u d_i)``, and the kept
  graph is normalised again. Evaluation uses the whole graph.

**Two modalities.** With titles in the catalog and a text tower in the extractor
(``extractor.weights: clip``), ``S`` is, as in the authors' code, the weighted sum of the two
modalities' kNN graphs, each built and normalised as above: ``S = w S_image + (1 − w) S_text``
(``image_weight`` ``w``; MMRec's ``mm_image_weight``, 0.1 in its config, the default here when
text is there; 1.0, the image graph alone, when it is not). The alignment term then has a text
half too (``reg_weight ×`` BPR with the items' projected text features), as in their loss.

Scores: ``p(u, i) = u·(h_i + S^{L_mm} E)_i`` where ``u, h_i`` are the LightGCN embeddings and
``E`` the item ID embeddings. Training: BPR on those scores plus ``reg_weight ×`` the same BPR
loss with the items replaced by their projected image features ``W f_i`` (FREEDOM's alignment of
users with the visual modality); no other regulariser (MMRec's ``weight_decay: 0``).
The recipe's defaults are the authors': k = 10, one item–item layer, two user–item layers,
64 dimensions, Adam lr 1e-3, batch 2048; ``dropout`` and ``reg_weight`` are their grid's axes
(``{0.8, 0.9}`` and ``{0, 1e-5, 1e-4, 1e-3}``).

What the papers leave open, and what is chosen here:

- **Cold items.** FREEDOM scores only items that were in its graph when it was built. A cold
  item here joins the item–item graph the way the model builds it: its row holds its top-k
  *warm* items by cosine similarity of its image's features, each with weight ``1/k`` (its row
  sum is k, as every row's). Its own ID embedding was never trained, so unlike a warm item it is
  not its own neighbour, and it has no user–item edges: its score is ``u·Σ_j S_cj (S^{L_mm−1}
  E)_j``, from the image alone. Warm items' rows are frozen and never list a cold item, so
  injecting an item changes no other item's score (AIP's fixed candidate scores hold). With
  text its row is ``w ×`` its image's row ``+ (1 − w) ×`` its title's: the title's top-k warm
  items by the text features' cosine, fixed when the model is built (the attacker changes only
  pixels; a cold item's clean title is read once, like a warm item's).
- **Warm items' images.** The graph is frozen, so a warm item's score does not depend on the
  image it is shown with (an input defence changes only cold items' neighbours).
- **Features.** The authors' code fine-tunes its table of stored features inside the alignment
  term; here the features are the frozen extractor's, so a cold item's features mean what a warm
  item's do. The alignment term only shapes the user embeddings (it is not part of the score).
- **The attack path.** The neighbour set is discrete: the score is piecewise constant in the
  pixels. INSA maximises a *relaxed top-k* instead (:meth:`FREEDOM.preference`): each warm item
  ``j`` gets the weight ``σ((s_j − t)/τ)`` (normalised to sum to one), where ``s_j`` is its
  cosine similarity to the image, ``t`` the midpoint between the k-th and (k+1)-th similarity
  and ``τ = relax ×`` the mean gap between the 2k largest similarities (both held fixed within
  a step, recomputed at every step). As ``relax → 0`` this is the hard top-k score; the gradient
  reaches the pixels through the encoder and those weights, pulling items that users like into
  the set and pushing the others out. The title's half of a cold row is a constant: through it
  no gradient flows, and however the image moves, ``1 − w`` of the row stays where the title
  put it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS
from aipray.models.extractor import Extractor, build_extractor, extract_features
from aipray.models.graph_ranker import GraphRanker, cold_code_param, relax_param
from aipray.models.graphs import (
    Graph,
    bipartite,
    csr_pair,
    knn_adjacency,
    knn_neighbours,
    soft_top_k,
    spmm,
)
from aipray.params import Settings, param

#: the image graph's weight with text (MMRec's FREEDOM config: ``mm_image_weight: 0.1``)
DEFAULT_IMAGE_WEIGHT = 0.1


@dataclass(frozen=True)
class FREEDOMConfig(Settings):
    """FREEDOM's recipe (the authors' MMRec config): ``dim`` (embedding_size = feat_embed_dim),
    ``knn_k``, ``mm_layers`` (item–item layers), ``ui_layers`` (user–item layers), ``dropout``
    (share of user–item edges pruned each epoch), ``reg_weight`` (weight of the image alignment
    term), Adam ``lr``, ``batch_size``; ``epochs`` is the most it trains: it stops once validation
    HR@10 has not improved for ``patience`` epochs (MMRec: 20 on Recall@20). ``relax`` sets the
    temperature of the relaxed top-k that INSA differentiates (see the module docstring).
    ``image_weight``: the image graph's share of the item–item graph (MMRec's
    ``mm_image_weight``); below 1 it needs titles and an extractor with a text tower."""

    dim: int = param(64, axis=True, min=1)
    knn_k: int = param(10, axis=True, min=1)
    mm_layers: int = param(1, min=1)
    ui_layers: int = param(2, min=0)
    dropout: float = param(0.8, axis=True, min=0, max=0.99)
    reg_weight: float = param(1e-4, axis=True, min=0)
    lr: float = param(1e-3, min=0)
    epochs: int = param(200, min=1)
    batch_size: int = param(2048, min=1)
    patience: int | None = param(20, min=1, doc="epochs without a validation gain before stopping")
    relax: float = relax_param()
    cold_code: str = cold_code_param()
    image_weight: float | None = param(
        None,
        axis=True,
        min=0,
        max=1,
        keyed_at_default=False,
        doc="weight of the image graph in S (the rest: the text graph); null: 0.1 with text, "
        "1.0 without",
    )

    def resolved_weight(self, has_text: bool) -> float:
        """``image_weight``, or its default: the authors' 0.1 with text, 1.0 without."""
        if self.image_weight is not None:
            return self.image_weight
        return DEFAULT_IMAGE_WEIGHT if has_text else 1.0

    def needs_text(self) -> bool:
        """Whether these settings read titles whatever the data (checked before any work)."""
        return self.image_weight is not None and self.image_weight < 1.0


@MODELS.register("freedom")
class FREEDOM(GraphRanker):
    """User and item ID embeddings ``[n_users | n_items, dim]`` on a LightGCN user–item graph plus
    a frozen item–item kNN graph over the warm items' image features; see the module docstring.

    Buffers (saved with the model): ``edges [2, n_edges]`` the training interactions,
    ``neighbours [n_items, knn_k]`` each warm item's kNN row (item ids; ``-1`` for items outside
    the graph), ``in_graph [n_items]`` and ``unit_features [n_items, F]`` the warm items'
    normalised features, which cold images are compared with. With text (``text_dim > 0``,
    ``image_weight < 1``): ``text_features [n_items, text_dim]`` every item's title features
    and ``text_neighbours [n_items, knn_k]`` every item's top-k warm items by them (a cold
    item's included: its title is fixed).
    """

    Config = FREEDOMConfig
    display_name = "FREEDOM"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        extractor_spec: dict[str, Any],
        n_edges: int,
        knn_k: int = 10,
        mm_layers: int = 1,
        ui_layers: int = 2,
        relax: float = 1.0,
        cold_code: str = "graph",
        text_dim: int = 0,
        image_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.knn_k, self.mm_layers, self.ui_layers = knn_k, mm_layers, ui_layers
        self.relax, self.cold_code = float(relax), cold_code
        self.image_weight = float(image_weight) if text_dim > 0 else 1.0
        self.extractor = build_extractor(extractor_spec)
        self.extractor.eval().requires_grad_(False)
        feature_dim = self.extractor.feature_dim
        self.user_id = nn.Embedding(n_users, dim)
        self.item_id = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user_id.weight)
        nn.init.xavier_uniform_(self.item_id.weight)
        self.image_trs = nn.Linear(feature_dim, dim)  # the alignment term's projection
        self.register_buffer("edges", torch.zeros(2, n_edges, dtype=torch.long))
        self.register_buffer("neighbours", torch.full((n_items, knn_k), -1, dtype=torch.long))
        self.register_buffer("in_graph", torch.zeros(n_items, dtype=torch.bool))
        self.register_buffer("unit_features", torch.zeros(n_items, feature_dim))
        if text_dim > 0:
            self.text_trs = nn.Linear(text_dim, dim)  # the text half of the alignment term
            self.register_buffer("text_features", torch.zeros(n_items, text_dim))
            self.register_buffer(
                "text_neighbours", torch.full((n_items, knn_k), -1, dtype=torch.long)
            )
        self._cache: tuple[tuple, tuple[torch.Tensor, ...]] | None = None

    @property
    def reads_text(self) -> bool:
        """Whether the item–item graph mixes in the titles' (``image_weight < 1``)."""
        return self.image_weight < 1.0

    @classmethod
    def on(
        cls,
        extractor: Extractor,
        catalog: Catalog,
        config: FREEDOMConfig,
        features: torch.Tensor | None = None,
    ) -> FREEDOM:
        """An untrained model on ``catalog`` with its graphs built: the frozen item–item graph
        from ``extractor``'s features of the warm items (its weights copied in; ``features``
        ``[n_items, F]`` if they are at hand) and the user–item graph from the training
        interactions; with text, the titles' kNN graph mixed in (module docstring)."""
        n = catalog.n_items
        keys = np.unique(catalog.train_users.astype(np.int64) * n + catalog.train_items)
        has_text = bool(getattr(extractor, "has_text", False)) and catalog.titles is not None
        weight = config.resolved_weight(has_text)
        if weight < 1.0 and not has_text:
            raise ValueError(
                f"freedom.image_weight {weight} mixes in a text graph: it needs item titles "
                "(datasets.synthetic.titles: true, or a folder's titles file) and an extractor "
                "with a text tower (extractor.weights: clip); 1.0 reads images alone"
            )
        text = None
        if weight < 1.0:
            with torch.no_grad():
                text = extractor.text_features(catalog.titles)
        model = cls(
            catalog.n_users,
            catalog.n_items,
            config.dim,
            extractor.spec,
            int(keys.size),
            knn_k=config.knn_k,
            mm_layers=config.mm_layers,
            ui_layers=config.ui_layers,
            relax=config.relax,
            cold_code=config.cold_code,
            text_dim=0 if text is None else int(text.shape[1]),
            image_weight=weight,
        )
        model.extractor.load_state_dict(extractor.state_dict())
        device = next(extractor.parameters()).device
        model.to(device)
        warm = torch.as_tensor(np.flatnonzero(catalog.warm_mask()), device=device)
        if features is None:
            features = extract_features(model.extractor, catalog.images, items=warm.cpu().numpy())
        else:
            features = features[warm]
        model.set_graph(warm, features)
        if text is not None:
            model.set_text_graph(warm, text.to(device))
        edges = torch.as_tensor(np.stack([keys // n, keys % n]))
        model.edges.copy_(edges)
        return model

    @torch.no_grad()
    def set_graph(self, warm: torch.Tensor, features: torch.Tensor) -> None:
        """Build the frozen item–item graph over the items ``warm`` ``[M]`` from their
        features ``[M, F]``: each one's top-k among them, itself included (FREEDOM's rows)."""
        self.unit_features.zero_()
        self.unit_features[warm] = F.normalize(features.to(self.unit_features), dim=1)
        self.in_graph.zero_()
        self.in_graph[warm] = True
        self.neighbours.fill_(-1)
        local = knn_neighbours(features, features, self.knn_k)
        self.neighbours[warm] = warm[local]

    @torch.no_grad()
    def set_text_graph(self, warm: torch.Tensor, features: torch.Tensor) -> None:
        """The titles' kNN rows from every item's text features ``[n_items, T]``: each item's
        top-k among the items ``warm`` ``[M]`` (a warm item is its own neighbour, as in the
        image graph; a cold item's row is fixed by its title)."""
        self.text_features.copy_(features)
        local = knn_neighbours(features, features[warm], self.knn_k)
        self.text_neighbours.copy_(warm[local])

    # --- propagation ------------------------------------------------------------------------
    def item_graph(self) -> Graph:
        """The frozen item–item graph ``S`` (:func:`knn_adjacency`) over the items in it; with
        text, ``w S_image + (1 − w) S_text``."""
        rows = self.in_graph.nonzero().flatten()
        n = self.in_graph.numel()
        image = knn_adjacency(rows, self.neighbours[rows], n)
        if not self.reads_text:
            return csr_pair(image)
        text = knn_adjacency(rows, self.text_neighbours[rows], n)
        w = self.image_weight
        return csr_pair((image * w + text * (1.0 - w)).coalesce())

    def propagate(self, ui: Graph, graph: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(users [U, D], items [N, D], reach [N, D])`` over the user–item graph ``ui``
        (:func:`bipartite`) and the item–item graph ``graph`` (:meth:`item_graph`): the LightGCN
        user embeddings, the items' ``LightGCN + S^{L_mm} E`` and ``reach = S^{L_mm−1} E``,
        what an item's kNN row reads (a cold item's code is ``S_c · reach``)."""
        reach = self.item_id.weight
        for _ in range(self.mm_layers - 1):
            reach = spmm(graph, reach)
        mm = spmm(graph, reach)
        iu = Graph(ui.transpose, ui.matrix)
        u, i = self.user_id.weight, self.item_id.weight
        users, items = [u], [i]
        for _ in range(self.ui_layers):
            u, i = spmm(ui, i), spmm(iu, u)
            users.append(u)
            items.append(i)
        users_out = torch.stack(users).mean(0)
        items_out = torch.stack(items).mean(0) + mm
        return users_out, items_out, reach

    def full_graph(self) -> Graph:
        """The whole user–item graph (evaluation's)."""
        return bipartite(self.edges[0], self.edges[1], self.n_users, self.in_graph.numel())

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`propagate` over the whole user–item graph. In eval mode without parameter
        gradients it is computed once per state of the parameters and buffers (the graph is
        frozen; no image enters it) and reused."""
        grads = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or grads:
            return self.propagate(self.full_graph(), self.item_graph())
        state = tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))
        if self._cache is None or self._cache[0] != state:
            with torch.no_grad():
                self._cache = (state, self.propagate(self.full_graph(), self.item_graph()))
        return self._cache[1]

    # --- scoring ----------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.user_id.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.tables()[0][users]

    def similarities(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` cosine similarity of each image's features to every item in the graph
        (``-inf`` for items outside it), differentiable in the pixels."""
        unit = F.normalize(self.extractor.features(images), dim=1)
        sims = unit @ self.unit_features.T
        return sims.masked_fill(~self.in_graph, -torch.inf)

    def row_reads(self) -> torch.Tensor:
        """``[N, D]`` what a cold item's kNN rows average (``cold_code``): ``reach`` (the
        ID embeddings the item–item graph propagates) or ``neighbours`` (the warm items' whole
        codes, the collaborative term included)."""
        _, items, reach = self.tables()
        return items if self.cold_code == "neighbours" else reach

    def visual_codes(self, images: torch.Tensor) -> torch.Tensor:
        """The image's half of cold items' codes ``[B, D]``: the image's top-k warm neighbours'
        :meth:`row_reads`, each weighted ``1/k`` (FREEDOM's normalisation of a row of k)."""
        top = self.similarities(images).topk(self.knn_k, dim=1).indices
        return self.row_reads()[top].mean(1)

    def text_codes(self, items: torch.Tensor | None) -> torch.Tensor:
        """The title's half of the codes ``[B, D]`` of the items ``items`` ``[B]``: the mean of
        :meth:`row_reads` over their titles' top-k warm items (fixed)."""
        return self.row_reads()[self.text_neighbours[self.title_ids(items)]].mean(1)

    def mixed(self, visual: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        """``w × visual + (1 − w) ×`` the items' :meth:`text_codes`; ``visual`` alone without
        text."""
        if not self.reads_text:
            return visual
        w = self.image_weight
        return w * visual + (1.0 - w) * self.text_codes(items)

    def image_codes(self, images: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, D]`` of cold items: their row of ``S`` times ``reach`` (module
        docstring): the image's top-k (:meth:`visual_codes`), mixed with the title's when the
        graph has text (``items`` ``[B]``: their ids)."""
        return self.mixed(self.visual_codes(images), items)

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """A cold item's code from its image alone (the image's half with text)."""
        return self.visual_codes(images)

    def relaxed_codes(
        self, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``[B, D]`` under the relaxed top-k (module docstring): every warm item weighted
        ``σ((s_j − t)/τ)``, normalised; differentiable in the pixels through the similarities;
        the title's half (with text) fixed."""
        sims = self.similarities(images)
        weights = soft_top_k(sims, self.knn_k, self.relax, int(self.in_graph.sum()))
        weights = weights / weights.sum(1, keepdim=True)
        return self.mixed(weights @ self.row_reads(), items)

    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """INSA's objective on the relaxed top-k, linear in the code: ``(Σ_u u)·code``, one
        forward pass for the users of the batch. The hard score's sum as ``relax → 0``."""
        return self.relaxed_codes(images, items) @ self.user_vectors(users).sum(0)

    def warm_codes(self) -> torch.Tensor:
        return self.tables()[1]

    @classmethod
    def objective(cls, model: FREEDOM, features: torch.Tensor, config: FREEDOMConfig) -> Any:
        from aipray.models.freedom_loss import FREEDOMLoss

        return FREEDOMLoss(model, features, config.reg_weight, config.dropout)
