"""LATTICE (Zhang et al., MM 2021, "Mining Latent Structures for Multimedia Recommendation") on
the features of a frozen, pretrained extractor.

As in the authors' code (CRIPAC-DIG/LATTICE) and its port in MMRec (``lattice.py``):

- per modality ``m``, an **initial item–item graph** ``Ŝ_m`` from the raw features: each item's
  top-k items by cosine similarity (itself included), the edges valued by that similarity, then
  ``D^{-1/2} A D^{-1/2}`` with ``D`` the row sums. Built once, frozen;
- per modality, a **learned graph** from the features projected by a trainable linear map
  ``W_m f`` (``feat_dim`` long): the same top-k by cosine, valued by cosine. The modalities'
  learned adjacencies are combined with softmax weights ``α = softmax(modal_weight)`` *before*
  normalisation, ``Ã = D^{-1/2}(Σ_m α_m A_m)D^{-1/2}``, and the initial ones after,
  ``Ŝ = Σ_m α_m Ŝ_m``;
- the **item graph** ``S = (1 − λ) Ã + λ Ŝ`` (``λ = lambda_coeff``, 0.9: mostly the initial
  graph); the item ID embeddings ``E`` are propagated over it, ``h = S^{L_mm} E``;
- a **collaborative backbone**, LightGCN in the authors' default, on their user–item graph
  ``D^{-1}(A + I)`` (NGCF's mean adjacency with self-loops, not LightGCN's symmetric one): the
  mean of layers ``0..L_ui``. Scores ``p(u, i) = u·(i + h_i/‖h_i‖)``; training is BPR plus
  ``reg_weight × ½(‖u‖² + ‖i⁺‖² + ‖i⁻‖²)`` on the propagated embeddings of each triple.

**When the learned graph is rebuilt.** Both reference codes rebuild it (kNN and values, with
gradient into ``W_m`` and ``α``) at the first batch of every epoch and reuse it detached for the
epoch's other batches (``build_item_graph``: true before an epoch, false after its first batch),
and rebuild it for every evaluation. This does the same: the kNN search runs chunk by chunk
(:func:`~aipray.models.graphs.knn_neighbours`, ``chunk × n_items`` similarities at a time, never
``n_items²`` as the references' dense ``build_sim``), the values are gathered for the ``n_items·k``
edges only, and the first batch's product runs edge by edge so that its gradient reaches the
values (``E × dim`` memory, once an epoch); the other batches and evaluation use CSR products
with a stored transpose. In eval mode the propagated tables are computed once per state of the
weights.

The recipe's defaults are the authors': k = 10, λ = 0.9, one item–item layer, two user–item
layers, 64 dimensions, Adam lr 5e-4, batch 1024 (MMRec: 2048), reg_weight 1e-5 (the grid's
``{0, 1e-5, 1e-4, 1e-3}``). Their learning-rate decay (×0.96 every 50 epochs) is left out.

**Modalities.** Images always; titles too (:data:`MODALITIES`, the authors' visual and textual
features) when the catalog has them and the extractor a text tower (``extractor.weights:
clip``), unless ``text: false``. Every per-modality piece (the raw-feature buffers, the initial
graph, the projection, the softmax weight ``α``, initialised equal as in the reference codes) is
keyed by modality, and :meth:`LATTICE.modality_features` is the one place that maps an item's
inputs to each modality's features: the image's from its pixels, the title's from the text
tower's features of every item's title, stored with the model (a cold item's included: the
attacker changes only pixels, so a cold row's text parts are fixed by its clean title).

What the papers leave open, and what is chosen here:

- **Cold items.** LATTICE's cold-start experiment removes every training interaction of 20 % of
  the items, which stay in the item graph through their features. Here a cold item joins the
  graph the way the model builds it, at scoring time: its row holds its image's top-k **warm**
  items on the raw features (the initial graph) and on the projected features (the learned
  graph), each valued and normalised as a warm row (its neighbours' ``D`` are their own row
  sums), mixed as above. It is not its own neighbour and its collaborative ID embedding is
  absent (zero), so its code is ``(S_c · S^{L_mm−1} E)/‖·‖``: the image alone. Warm rows are
  built from warm items only and never list a cold item, so injecting an item changes no other
  item's score (AIP's fixed candidate scores hold); in the paper's setting cold items are also
  other items' neighbours.
- **Warm items' images.** The graphs are built from the warm items' stored features, so a warm
  item's score does not depend on the image it is shown with.
- **Features.** The reference codes fine-tune their stored feature tables; here the features
  are the frozen extractor's, so a cold item's features mean what a warm item's do. What
  learns is the projection ``W_m``, which decides the learned graph.
- **The attack path.** The neighbour set is discrete; the values of a cold row are cosine
  similarities, so the hard score has a gradient in the pixels but it never changes the set.
  INSA maximises the **relaxed top-k** FREEDOM uses here (:meth:`LATTICE.preference`,
  :func:`~aipray.models.graphs.soft_top_k`): in each of the row's kNN parts (initial and
  learned, per modality) every warm item ``j`` is a neighbour with weight ``σ((s_j − t)/τ)``,
  which multiplies its edge value ``s_j`` before the row is normalised. As ``relax → 0`` this is
  the hard score; its gradient reaches the pixels through the encoder, the projection, the
  values and those weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import MODELS
from aipray.models.extractor import Extractor, build_extractor, extract_features
from aipray.models.graph_ranker import GraphRanker
from aipray.models.graphs import (
    EdgeList,
    Graph,
    MeanGraph,
    edge_product,
    inv_sqrt,
    knn_neighbours,
    knn_row_values,
    knn_values,
    mean_bipartite,
    normalised_rows,
    spmm,
)
from aipray.models.lattice_config import MODALITIES, LATTICEConfig, Tables


@MODELS.register("lattice")
class LATTICE(GraphRanker):
    """User and item ID embeddings ``[n_users | n_items, dim]`` on a user–item graph, plus an
    item–item graph over the warm items mixing a frozen kNN graph of the raw features with one
    learned on projected features; see the module docstring.

    Buffers (saved with the model): ``edges [2, n_edges]`` the training interactions,
    ``in_graph [n_items]``, and per modality ``m``: ``{m}_features [n_items, F_m]`` the warm
    items' raw features (zero rows elsewhere), ``{m}_initial [n_items, knn_k]`` each warm item's
    initial kNN row (item ids; ``-1`` outside the graph), ``{m}_initial_values`` its normalised
    values and ``{m}_initial_rowsum [n_items]`` the row sums before normalisation; the text
    modality's ``text_features`` hold every item's title features (cold ones too).
    """

    Config = LATTICEConfig
    display_name = "LATTICE"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        extractor_spec: dict[str, Any],
        n_edges: int,
        feat_dim: int = 64,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        mm_layers: int = 1,
        ui_layers: int = 2,
        relax: float = 1.0,
        cold_code: str = "graph",
        text_dim: int = 0,
    ) -> None:
        super().__init__()
        self.knn_k, self.mm_layers, self.ui_layers = knn_k, mm_layers, ui_layers
        self.lambda_coeff, self.relax = float(lambda_coeff), float(relax)
        self.cold_code = cold_code
        self.text_dim = int(text_dim)
        self.modalities = MODALITIES if text_dim > 0 else MODALITIES[:1]
        self.extractor = build_extractor(extractor_spec)
        self.extractor.eval().requires_grad_(False)
        self.user_id = nn.Embedding(n_users, dim)
        self.item_id = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user_id.weight)
        nn.init.xavier_uniform_(self.item_id.weight)
        dims = {"image": self.extractor.feature_dim, "text": self.text_dim}  # raw lengths
        self.projections = nn.ModuleDict({m: nn.Linear(dims[m], feat_dim) for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        self.register_buffer("edges", torch.zeros(2, n_edges, dtype=torch.long))
        self.register_buffer("in_graph", torch.zeros(n_items, dtype=torch.bool))
        for m in self.modalities:
            self.register_buffer(f"{m}_features", torch.zeros(n_items, dims[m]))
            self.register_buffer(f"{m}_initial", torch.full((n_items, knn_k), -1))
            self.register_buffer(f"{m}_initial_values", torch.zeros(n_items, knn_k))
            self.register_buffer(f"{m}_initial_rowsum", torch.zeros(n_items))
        self._cache: tuple[tuple, Tables] | None = None

    # --- the modalities ---------------------------------------------------------------------
    def modality_features(
        self,
        images: torch.Tensor,
        items: torch.Tensor | None = None,
        modalities: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each modality's (of ``modalities``, all by default) raw features ``[B, F_m]`` of the
        items ``items`` ``[B]`` shown by ``images``: the image's differentiable in the pixels,
        the title's stored (its ids are needed when the model reads text)."""
        out = {"image": self.extractor.features(images)}
        if "text" in (self.modalities if modalities is None else modalities):
            out["text"] = self.buffer("text")[self.title_ids(items)]
        return out

    def buffer(self, modality: str, what: str = "features") -> torch.Tensor:
        name = f"{modality}_features" if what == "features" else f"{modality}_{what}"
        return getattr(self, name)

    @classmethod
    def on(
        cls,
        extractor: Extractor,
        catalog: Catalog,
        config: LATTICEConfig,
        features: torch.Tensor | None = None,
    ) -> LATTICE:
        """An untrained model on ``catalog`` with its initial graphs built from ``extractor``'s
        features of the warm items (its weights copied in; ``features`` ``[n_items, F]`` if they
        are at hand) and its user–item edges from the training interactions; with text, the
        titles' initial graph from the text tower's features."""
        n = catalog.n_items
        keys = np.unique(catalog.train_users.astype(np.int64) * n + catalog.train_items)
        has_text = bool(getattr(extractor, "has_text", False)) and catalog.titles is not None
        if config.text and not has_text:
            raise ValueError(
                "lattice.text: true needs item titles (datasets.synthetic.titles: true, or a "
                "folder's titles file) and an extractor with a text tower (extractor.weights: clip)"
            )
        text = None
        if has_text and config.text is not False:
            with torch.no_grad():
                text = extractor.text_features(catalog.titles)
        model = cls(
            catalog.n_users,
            catalog.n_items,
            config.dim,
            extractor.spec,
            int(keys.size),
            feat_dim=config.feat_dim,
            knn_k=config.knn_k,
            lambda_coeff=config.lambda_coeff,
            mm_layers=config.mm_layers,
            ui_layers=config.ui_layers,
            relax=config.relax,
            cold_code=config.cold_code,
            text_dim=0 if text is None else int(text.shape[1]),
        )
        model.extractor.load_state_dict(extractor.state_dict())
        device = next(extractor.parameters()).device
        model.to(device)
        warm = torch.as_tensor(np.flatnonzero(catalog.warm_mask()), device=device)
        if features is None:
            features = extract_features(model.extractor, catalog.images, items=warm.cpu().numpy())
        else:
            features = features[warm]
        raw = {"image": features}
        if text is not None:
            raw["text"] = text.to(device)[warm]
        model.set_graph(warm, raw)
        if text is not None:  # every item's title, a cold item's too
            model.buffer("text").copy_(text)
        model.edges.copy_(torch.as_tensor(np.stack([keys // n, keys % n])))
        return model

    @torch.no_grad()
    def set_graph(self, warm: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Build the initial item–item graphs over the items ``warm`` ``[M]`` from each
        modality's raw features ``[M, F_m]``: each item's top-k among them by cosine (itself
        included), valued by cosine, normalised ``D^{-1/2} A D^{-1/2}``."""
        self.in_graph.zero_()
        self.in_graph[warm] = True
        for m in self.modalities:
            raw = features[m].to(self.buffer(m))
            self.buffer(m).zero_()
            self.buffer(m)[warm] = raw
            unit = F.normalize(raw, dim=1)
            local = knn_neighbours(raw, raw, self.knn_k)
            values = knn_values(unit, unit, local)
            rowsum = values.sum(1)
            scale = inv_sqrt(rowsum)
            self.buffer(m, "initial").fill_(-1)
            self.buffer(m, "initial")[warm] = warm[local]
            self.buffer(m, "initial_values").zero_()
            self.buffer(m, "initial_values")[warm] = values * scale[:, None] * scale[local]
            self.buffer(m, "initial_rowsum").zero_()
            self.buffer(m, "initial_rowsum")[warm] = rowsum

    # --- the item graph -----------------------------------------------------------------------
    def modal_weights(self) -> torch.Tensor:
        """``α = softmax(modal_weight)`` ``[n_modalities]``."""
        return torch.softmax(self.modal_weight, dim=0)

    def learned_graph(
        self,
    ) -> tuple[EdgeList, tuple[torch.Tensor, ...], torch.Tensor]:
        """The normalised learned graph ``Ã`` over the warm items (values differentiable in the
        projections and ``α``; the kNN sets, chunk by chunk, are not), each modality's unit
        projected features ``[N, feat_dim]`` and the row sums ``[N]`` of ``Σ_m α_m A_m``."""
        n = self.in_graph.numel()
        rows = self.in_graph.nonzero().flatten()
        alpha = self.modal_weights()
        parts, units = [], []
        for index, m in enumerate(self.modalities):
            projected = self.projections[m](self.buffer(m)[rows])
            unit = F.normalize(projected, dim=1)
            local = knn_neighbours(projected.detach(), projected.detach(), self.knn_k)
            parts.append((local, alpha[index] * knn_values(unit, unit, local)))
            units.append(
                torch.zeros(n, unit.shape[1], device=unit.device).index_copy(0, rows, unit)
            )
        rowsum = sum(values.sum(1) for _, values in parts)
        scale = inv_sqrt(rowsum)
        src = torch.cat([rows.repeat_interleave(self.knn_k) for _ in parts])
        dst = torch.cat([rows[local].flatten() for local, _ in parts])
        values = torch.cat([(v * scale[:, None] * scale[local]).flatten() for local, v in parts])
        full_rowsum = torch.zeros(n, device=rows.device).index_copy(0, rows, rowsum)
        return EdgeList(src, dst, values, n), tuple(units), full_rowsum

    def initial_graph(self) -> EdgeList:
        """``Ŝ = Σ_m α_m Ŝ_m`` over the warm items (differentiable in ``α``)."""
        rows = self.in_graph.nonzero().flatten()
        alpha = self.modal_weights()
        src = torch.cat([rows.repeat_interleave(self.knn_k) for _ in self.modalities])
        dst = torch.cat([self.buffer(m, "initial")[rows].flatten() for m in self.modalities])
        values = torch.cat(
            [
                alpha[i] * self.buffer(m, "initial_values")[rows].flatten()
                for i, m in enumerate(self.modalities)
            ]
        )
        return EdgeList(src, dst, values, self.in_graph.numel())

    def item_graph(self) -> tuple[EdgeList, tuple[torch.Tensor, ...], torch.Tensor]:
        """The item graph ``S = (1 − λ) Ã + λ Ŝ`` as edges (repeated ones add up), with
        :meth:`learned_graph`'s unit projected features and row sums."""
        learned, units, rowsum = self.learned_graph()
        initial = self.initial_graph()
        graph = EdgeList(
            torch.cat([learned.src, initial.src]),
            torch.cat([learned.dst, initial.dst]),
            torch.cat(
                [(1 - self.lambda_coeff) * learned.values, self.lambda_coeff * initial.values]
            ),
            learned.n,
        )
        return graph, units, rowsum

    # --- propagation ------------------------------------------------------------------------
    def full_graph(self) -> MeanGraph:
        """The user–item graph ``D^{-1}(A + I)`` of the training interactions."""
        return mean_bipartite(self.edges[0], self.edges[1], self.n_users, self.in_graph.numel())

    def propagate(
        self, ui: MeanGraph, graph: EdgeList | Graph
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(users [U, D], items [N, D], reach [N, D])``: the backbone's user embeddings, the
        items' ``backbone + h/‖h‖`` with ``h = S^{L_mm} E`` and ``reach = S^{L_mm−1} E``. The item
        graph as an :class:`EdgeList` carries the gradient of its values (edge by edge), as a
        :class:`Graph` it is constant (CSR products)."""
        if isinstance(graph, EdgeList):

            def product(x: torch.Tensor) -> torch.Tensor:
                return edge_product(graph, x)
        else:

            def product(x: torch.Tensor) -> torch.Tensor:
                return spmm(graph, x)

        reach = self.item_id.weight
        for _ in range(self.mm_layers - 1):
            reach = product(reach)
        h = product(reach)
        u, i = self.user_id.weight, self.item_id.weight
        users, items = [u], [i]
        for _ in range(self.ui_layers):
            u, i = (
                spmm(ui.users, i) + ui.self_users[:, None] * u,
                spmm(ui.items, u) + ui.self_items[:, None] * i,
            )
            users.append(u)
            items.append(i)
        items_out = torch.stack(items).mean(0) + F.normalize(h, dim=1)
        return torch.stack(users).mean(0), items_out, reach

    def compute_tables(self) -> Tables:
        graph, learned, rowsum = self.item_graph()
        users, items, reach = self.propagate(self.full_graph(), graph)
        initial = tuple(
            F.normalize(self.buffer(m), dim=1) * self.in_graph[:, None] for m in self.modalities
        )
        return Tables(users, items, reach, initial, learned, rowsum)

    def tables(self) -> Tables:
        """:class:`Tables` from the current weights, the learned graph rebuilt as the reference
        codes do for every evaluation. In eval mode without parameter gradients it is computed
        once per state of the parameters and buffers (no image enters it) and reused."""
        grads = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or grads:
            return self.compute_tables()
        state = tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))
        if self._cache is None or self._cache[0] != state:
            with torch.no_grad():
                self._cache = (state, self.compute_tables())
        return self._cache[1]

    # --- scoring ----------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.user_id.num_embeddings

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.tables().users[users]

    def cold_rows(
        self,
        images: torch.Tensor,
        relax: float | None = None,
        items: torch.Tensor | None = None,
        modalities: tuple[str, ...] | None = None,
    ) -> torch.Tensor:
        """``[B, N]`` the item-graph rows of items shown by ``images`` as cold items: their
        top-k warm items (hard, or with ``relax`` the relaxed top-k) on each modality's raw and
        projected features, valued by cosine, normalised as a warm row (its own row sum and
        each neighbour's) and mixed ``(1 − λ) Ã_c + λ Σ_m α_m Ŝ_{m,c}``. Differentiable in the
        pixels through the values (and, relaxed, the memberships). ``items`` ``[B]``: their ids
        (read for the titles); ``modalities``: only these modalities' parts (all by default)."""
        tables = self.tables()
        alpha = self.modal_weights()
        only = self.modalities if modalities is None else modalities
        features = self.modality_features(images, items, only)

        initial, learned = 0.0, 0.0
        for index, m in enumerate(self.modalities):
            if m not in only:
                continue
            raw = features[m]
            sims = F.normalize(raw, dim=1) @ tables.initial[index].T
            rowsum = self.buffer(m, "initial_rowsum")
            initial = initial + alpha[index] * normalised_rows(
                knn_row_values(sims, self.in_graph, self.knn_k, relax), rowsum
            )
            projected = F.normalize(self.projections[m](raw), dim=1)
            learned = learned + alpha[index] * knn_row_values(
                projected @ tables.learned[index].T, self.in_graph, self.knn_k, relax
            )
        learned = normalised_rows(learned, tables.learned_rowsum)
        return (1 - self.lambda_coeff) * learned + self.lambda_coeff * initial

    def image_codes(
        self, images: torch.Tensor, items: torch.Tensor | None = None, relax: float | None = None
    ) -> torch.Tensor:
        """Codes ``[B, D]`` of cold items from their images (and titles: ``items`` ``[B]``):
        their rows ``S_c`` (:meth:`cold_rows`) read as ``cold_code`` says (:meth:`row_codes`)."""
        return self.row_codes(self.cold_rows(images, relax, items))

    def row_codes(self, rows: torch.Tensor) -> torch.Tensor:
        """Codes of cold rows ``[B, N]``: with ``cold_code: graph`` ``h_c/‖h_c‖``,
        ``h_c = S_c · reach``, no collaborative term; with ``neighbours`` ``S_c · items``."""
        tables = self.tables()
        if self.cold_code == "neighbours":
            return rows @ tables.items
        return F.normalize(rows @ tables.reach, dim=1)

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """A cold item's code from its image alone (the image's parts of its row, with text)."""
        return self.row_codes(self.cold_rows(images, modalities=("image",)))

    def preference(
        self, users: torch.Tensor, images: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """INSA's objective on the relaxed top-k, linear in the code: ``(Σ_u u)·code``, one
        forward pass for the users of the batch. The hard score's sum as ``relax → 0``."""
        return self.image_codes(images, items, self.relax) @ self.user_vectors(users).sum(0)

    def warm_codes(self) -> torch.Tensor:
        return self.tables().items

    @classmethod
    def objective(cls, model: LATTICE, features: torch.Tensor, config: LATTICEConfig) -> Any:
        from aipray.models.lattice_loss import LATTICELoss

        return LATTICELoss(model, config.reg_weight)
