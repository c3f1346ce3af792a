"""LATTICE's settings (the sweep YAML's ``models.lattice``), its modalities and the tables its
scoring reads (:mod:`aipray.models.lattice`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from aipray.models.graph_ranker import cold_code_param, relax_param
from aipray.params import Settings, param

#: the modalities the model can read; each has its raw features, initial graph and projection
MODALITIES: tuple[str, ...] = ("image", "text")


@dataclass(frozen=True)
class LATTICEConfig(Settings):
    """LATTICE's recipe (the authors' defaults, MMRec's ``LATTICE.yaml``): ``dim``
    (embedding_size), ``feat_dim`` (feat_embed_dim: the projected features the learned graph is
    built on), ``knn_k``, ``lambda_coeff`` (λ, the initial graph's share), ``mm_layers``
    (item–item layers), ``ui_layers`` (user–item layers), ``reg_weight``, Adam ``lr``,
    ``batch_size``; ``epochs`` is the most it trains: it stops once validation HR@10 has not
    improved for ``patience`` epochs (MMRec: 20 on Recall@20). ``relax`` sets the temperature
    of the relaxed top-k that INSA differentiates (see the module docstring). ``text``: whether
    the titles are a second modality (``true`` needs titles and a text tower)."""

    dim: int = param(64, axis=True, min=1)
    feat_dim: int = param(64, min=1, doc="length of the projected features of the learned graph")
    knn_k: int = param(10, axis=True, min=1)
    lambda_coeff: float = param(0.9, axis=True, min=0, max=1, doc="the initial graph's share")
    mm_layers: int = param(1, min=1)
    ui_layers: int = param(2, min=0)
    reg_weight: float = param(1e-5, axis=True, min=0)
    lr: float = param(5e-4, min=0)
    epochs: int = param(200, min=1)
    batch_size: int = param(1024, min=1)
    patience: int | None = param(20, min=1, doc="epochs without a validation gain before stopping")
    relax: float = relax_param()
    cold_code: str = cold_code_param()
    text: bool | None = param(
        None,
        axis=True,
        keyed_at_default=False,
        doc="read titles too; null: when the catalog has titles and the extractor a text tower",
    )

    def needs_text(self) -> bool:
        """Whether these settings read titles whatever the data (checked before any work)."""
        return self.text is True


class Tables(NamedTuple):
    """What scoring reads, computed from the weights (:meth:`LATTICE.tables`): ``users [U, D]``
    and ``items [N, D]`` (warm items' codes), ``reach [N, D] = S^{L_mm−1} E`` (what a kNN row
    reads), per modality the warm items' unit raw features ``initial [N, F_m]`` and unit projected
    features ``learned [N, feat_dim]`` (zero rows outside the graph), and ``learned_rowsum [N]``,
    the warm items' row sums of the combined learned adjacency ``Σ_m α_m A_m``."""

    users: torch.Tensor
    items: torch.Tensor
    reach: torch.Tensor
    initial: tuple[torch.Tensor, ...]
    learned: tuple[torch.Tensor, ...]
    learned_rowsum: torch.Tensor
