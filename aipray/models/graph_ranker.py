"""What the graph multimodal rankers (FREEDOM, LATTICE) share on the
:class:`~aipray.models.base.Recommender` interface: items in the graph are scored by id, items
outside it (cold ones) by their image's features (and their titles' for a ranker that reads
text); EXPA's feature network is the frozen
extractor's; training runs :func:`~aipray.models.train.fit_with` with the model's own batch
objective. A subclass provides :meth:`GraphRanker.warm_codes`, :meth:`GraphRanker.image_codes`,
``on(extractor, catalog, config, features)`` and :meth:`GraphRanker.objective`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from aipray.data.catalog import Catalog
from aipray.models.base import Recommender
from aipray.models.extractor import extract_features
from aipray.params import param
from aipray.pixels import to_float

#: how a cold item's item-graph row is read (``cold_code``): ``graph`` as the model propagates
#: its item–item graph (over the ID embeddings: the papers' model, where a cold item has no
#: collaborative term), ``neighbours`` over its neighbours' whole codes (the collaborative term
#: imputed from the warm items its image is closest to)
COLD_CODES = ("graph", "neighbours")


def relax_param() -> Any:
    """The ``relax`` setting both graph rankers declare: the temperature of the relaxed top-k
    that INSA differentiates, in mean similarity gaps (shown in labels off its default)."""
    return param(
        1.0, min=1e-6, labelled=True, doc="relaxed top-k temperature, in mean similarity gaps"
    )


def cold_code_param() -> Any:
    """The ``cold_code`` setting both graph rankers declare (:data:`COLD_CODES`; an axis, out of
    the store key at its default)."""
    return param(
        "graph",
        choices=COLD_CODES,
        axis=True,
        keyed_at_default=False,
        doc="what a cold item's kNN row reads: graph (the ID embeddings) or neighbours",
    )


class GraphRanker(Recommender):
    """The shared half of a graph ranker; ``in_graph`` is its ``[n_items]`` bool buffer of the
    items its graphs hold and ``extractor`` its frozen feature extractor."""

    uses_extractor = True
    features_from_extractor = True
    in_graph: torch.Tensor
    extractor: nn.Module

    def warm_codes(self) -> torch.Tensor:
        """``[n_items, D]`` codes of the items in the graph (rows of others are not used)."""
        raise NotImplementedError

    def image_codes(self, images: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, D]`` codes of items outside the graph, from their images (and, for a ranker
        that reads titles too, from the items' ids ``[B]``)."""
        raise NotImplementedError

    @classmethod
    def objective(cls, model: Any, features: torch.Tensor, config: Any) -> Any:
        """The model's :class:`~aipray.models.train.BatchObjective` on the catalog's
        ``features``."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> GraphRanker:
        super().train(mode)
        self.extractor.eval()  # the pretrained extractor never trains here
        return self

    def title_ids(self, items: torch.Tensor | None) -> torch.Tensor:
        """``items``, the ids of items scored outside the graph, whose titles a ranker that
        reads text needs: a one-line error when they are missing."""
        if items is None:
            raise ValueError(
                f"{self.display_name} with titles scores an item outside its graph by its "
                "title too: give the items' ids (items=...)"
            )
        return items

    def encode_items(
        self, images: torch.Tensor | None, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Items in the graph by id (their images do not matter: the graph holds their stored
        features); items outside it (``items=None``, or a cold item's id) by their images."""
        if items is None:
            if images is None:
                raise ValueError(f"{self.display_name} needs item ids or images; both are None")
            return self.image_codes(images)
        codes = self.warm_codes()[items]
        outside = ~self.in_graph[items]
        if bool(outside.any()):
            if images is None:
                raise ValueError(
                    f"{self.display_name} scores items outside its graph by their images: "
                    "none given"
                )
            rows = (outside.nonzero().flatten(),)
            codes = codes.index_put(rows, self.image_codes(images[outside], items[outside]))
        return codes

    def encode_cold(self, images: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.image_codes(images, items)

    def feature_network(self, images: torch.Tensor) -> torch.Tensor:
        # the extractor's features: they decide the neighbours, and EXPA's images are shared by
        # every ranker on the extractor
        return self.extractor.features(images)

    def item_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """A cold item's code from its image."""
        return self.image_codes(images)

    def training_encoder(self, images: np.ndarray):
        in_graph = self.in_graph

        def encode(items: torch.Tensor) -> torch.Tensor:
            outside = ~in_graph[items]
            pixels = None
            if bool(outside.any()):
                pixels = to_float(images[items.cpu().numpy()], items.device)
            return self.encode_items(pixels, items)

        return encode

    @classmethod
    def fit(
        cls,
        config: Any,
        catalog: Catalog,
        *,
        extractor: nn.Module | None,
        device: torch.device,
        seed: int,
    ) -> tuple[Any, dict[str, Any]]:
        from aipray.models.train import fit_with

        if extractor is None:
            raise ValueError(f"{cls.name} is built on the pretrained extractor; none was given")
        torch.manual_seed(seed)
        extractor = extractor.to(device)
        features = extract_features(extractor, catalog.images, device=device)
        model = cls.on(extractor, catalog, config, features)  # type: ignore[attr-defined]
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": 0.0}]
        objective = cls.objective(model, features, config)
        return fit_with(
            model, catalog, config, groups, device=device, seed=seed, reg=0.0, objective=objective
        )
