"""Sparse graphs for graph recommenders: a kNN item–item graph from features, the normalised
user–item bipartite graphs (LightGCN's symmetric one, NGCF's mean with self-loops), a sparse
product differentiable in its dense operand, an edge-list product differentiable in its
values too, a relaxed top-k, and degree-sensitive edge sampling (FREEDOM's graph denoising).
Plain torch and numpy."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: indices are built here, in range by construction: torch's invariant checks would only cost time
UNCHECKED = {"check_invariants": False}


class Graph(NamedTuple):
    """A sparse matrix in CSR with its transpose, for :func:`spmm` (``[R, C]`` and ``[C, R]``)."""

    matrix: torch.Tensor
    transpose: torch.Tensor


def csr_pair(coo: torch.Tensor) -> Graph:
    """``coo`` (a sparse COO matrix) as a :class:`Graph`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return Graph(coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr())


class MeanGraph(NamedTuple):
    """NGCF's ``D^{-1}(A + I)`` over users and items, by blocks: ``users`` ``R/(d_u + 1)``
    ``[U, N]``, ``items`` ``Rᵀ/(d_i + 1)`` ``[N, U]``, and the self-loops' weights
    ``self_users`` ``1/(d_u + 1)`` ``[U]`` and ``self_items`` ``1/(d_i + 1)`` ``[N]``."""

    users: Graph
    items: Graph
    self_users: torch.Tensor
    self_items: torch.Tensor


class EdgeList(NamedTuple):
    """A sparse ``[n, n]`` matrix as edges ``src → dst`` valued ``values`` ``[E]`` (repeated
    edges add up): the form whose values can carry a gradient (:func:`edge_product`)."""

    src: torch.Tensor
    dst: torch.Tensor
    values: torch.Tensor
    n: int

    def detach(self) -> Graph:
        """The same matrix, constant, as a :class:`Graph` for :func:`spmm`."""
        index = torch.stack([self.src, self.dst])
        coo = torch.sparse_coo_tensor(index, self.values.detach(), (self.n, self.n), **UNCHECKED)
        return csr_pair(coo.coalesce())


class _SparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor):
        ctx.transpose = transpose
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return None, None, ctx.transpose @ grad


def spmm(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """``graph.matrix @ x``, differentiable in the dense ``x`` through the stored transpose (3-5x
    faster than autograd through a COO product on CPU, which transposes at every step)."""
    return _SparseMatmul.apply(graph.matrix, graph.transpose, x)


def edge_product(graph: EdgeList, x: torch.Tensor) -> torch.Tensor:
    """``graph @ x`` ``[n, D]`` summed edge by edge, differentiable in ``graph.values`` and ``x``.
    Memory ``E × D`` (linear in edges); use :func:`spmm` on ``graph.detach()`` when the values
    need no gradient."""
    out = torch.zeros(graph.n, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add(0, graph.src, graph.values[:, None] * x[graph.dst])


def soft_top_k(sims: torch.Tensor, k: int, relax: float, available: int) -> torch.Tensor:
    """``[B, N]`` relaxed top-k membership of each row's ``available`` finite similarities
    (``-inf`` elsewhere): ``σ((s_j − t)/τ)`` with ``t`` the midpoint of the k-th and (k+1)-th
    largest and ``τ = relax ×`` the mean gap between the 2k largest, both held constant (no
    gradient). As ``relax → 0`` it is the hard top-k indicator."""
    width = min(2 * k, available)
    with torch.no_grad():
        top = sims.topk(width, dim=1).values
        kth = top[:, min(k, width) - 1]
        nxt = top[:, min(k, width - 1)]
        threshold = (kth + nxt) / 2
        gap = (top[:, 0] - top[:, -1]) / max(1, width - 1)
        tau = (relax * gap).clamp(min=1e-8)
    return torch.sigmoid((sims - threshold[:, None]) / tau[:, None])


# --- the graphs ---------------------------------------------------------------------------------
def knn_neighbours(
    features: torch.Tensor, candidates: torch.Tensor, k: int, chunk: int = 1024
) -> torch.Tensor:
    """``[M, k]`` the ``k`` rows of ``candidates`` ``[N, F]`` most cosine-similar to each row of
    ``features`` ``[M, F]`` (indices into ``candidates``), chunk by chunk of rows: memory is
    ``chunk × N`` similarities, never ``M × N``."""
    if k > candidates.shape[0]:
        raise ValueError(f"knn_k = {k} but only {candidates.shape[0]} items can be neighbours")
    unit = F.normalize(candidates, dim=1)
    out = []
    for start in range(0, features.shape[0], chunk):
        rows = F.normalize(features[start : start + chunk], dim=1)
        out.append((rows @ unit.T).topk(k, dim=1).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def knn_adjacency(rows: torch.Tensor, neighbours: torch.Tensor, n_items: int) -> torch.Tensor:
    """FREEDOM's item–item graph as a sparse ``[n_items, n_items]`` tensor: edges ``rows[m] →
    neighbours[m, :]`` (item ids) valued ``r_a^{-1/2} r_b^{-1/2}`` with ``r`` the row sums of the
    kNN adjacency (as its code computes them; ``1/k`` on every edge of a kNN graph)."""
    k = neighbours.shape[1]
    src = rows.repeat_interleave(k)
    dst = neighbours.reshape(-1)
    degree = torch.zeros(n_items, device=rows.device).index_add_(
        0, src, torch.ones_like(src, dtype=torch.float32)
    )
    inv_sqrt = (degree + 1e-7).pow(-0.5)
    values = inv_sqrt[src] * inv_sqrt[dst]
    index = torch.stack([src, dst])
    shape = (n_items, n_items)
    return torch.sparse_coo_tensor(index, values, shape, **UNCHECKED).coalesce()


def edge_weights(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int
) -> torch.Tensor:
    """``[E]`` ``1/√(d_u d_i)`` of each user–item edge, the degrees counted over these edges."""
    ones = torch.ones(users.shape, device=users.device)
    d_user = torch.zeros(n_users, device=users.device).index_add_(0, users, ones)
    d_item = torch.zeros(n_items, device=users.device).index_add_(0, items, ones)
    return (d_user[users] + 1e-7).pow(-0.5) * (d_item[items] + 1e-7).pow(-0.5)


def bipartite(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> Graph:
    """The normalised user–item adjacency ``Â_{UI}`` ``[U, N]`` (and its transpose)."""
    values = edge_weights(users, items, n_users, n_items)
    index = torch.stack([users, items])
    return csr_pair(torch.sparse_coo_tensor(index, values, (n_users, n_items), **UNCHECKED))


def mean_bipartite(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int
) -> MeanGraph:
    """NGCF's (and LATTICE's) user–item graph ``D^{-1}(A + I)`` (:class:`MeanGraph`), the
    degrees counted over these edges: one layer is ``u' = (Σ_{i∈N(u)} e_i + u)/(d_u + 1)`` and
    ``i' = (Σ_{u∈N(i)} e_u + i)/(d_i + 1)``."""
    ones = torch.ones(users.shape, device=users.device)
    d_user = torch.zeros(n_users, device=users.device).index_add_(0, users, ones) + 1
    d_item = torch.zeros(n_items, device=users.device).index_add_(0, items, ones) + 1
    by_user = torch.sparse_coo_tensor(
        torch.stack([users, items]), 1 / d_user[users], (n_users, n_items), **UNCHECKED
    )
    by_item = torch.sparse_coo_tensor(
        torch.stack([items, users]), 1 / d_item[items], (n_items, n_users), **UNCHECKED
    )
    return MeanGraph(
        csr_pair(by_user.coalesce()), csr_pair(by_item.coalesce()), 1 / d_user, 1 / d_item
    )


def degree_sensitive_keep(weights: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """``keep`` edge indices drawn without replacement with probability ∝ ``weights`` (the
    Efraimidis–Spirakis keys ``E/w``, ``E ~ Exp(1)``: the same law as FREEDOM's
    ``torch.multinomial`` without replacement, in O(E))."""
    if keep >= weights.size:
        return np.arange(weights.size)
    keys = rng.exponential(size=weights.size) / np.maximum(weights, 1e-12)
    return np.sort(np.argpartition(keys, keep - 1)[:keep])


def inv_sqrt(rowsum: torch.Tensor) -> torch.Tensor:
    """``D^{-1/2}`` of row sums (clamped away from 0: a row of negative similarities has none)."""
    return rowsum.clamp(min=1e-7).pow(-0.5)


def knn_values(
    unit: torch.Tensor, candidates: torch.Tensor, neighbours: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """``[M, k]`` cosine similarity of each row of ``unit`` ``[M, F]`` to its neighbours' rows of
    ``candidates`` ``[C, F]`` (both unit length), differentiable in both. Chunk by chunk of
    rows: the gathered neighbour rows take ``chunk × k × F`` memory, not ``M × k × F`` (at
    Amazon Men's 110k items and 1024-d features that was 4.5 GB per copy), when no gradient is
    recorded; with one, autograd keeps every chunk's rows (the learned graph's ``F`` is small)."""
    parts = [
        torch.bmm(
            unit[start : start + chunk, None, :],
            candidates[neighbours[start : start + chunk]].transpose(1, 2),
        ).squeeze(1)
        for start in range(0, unit.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else unit.new_zeros(0, neighbours.shape[1])


def knn_row_values(
    sims: torch.Tensor, in_graph: torch.Tensor, k: int, relax: float | None = None
) -> torch.Tensor:
    """``[B, N]`` kNN rows of items outside a graph from their similarities ``sims`` to every
    item: each of the ``k`` most similar items in the graph (``in_graph [N]``) keeps its
    similarity, the others 0; with ``relax`` the membership is :func:`soft_top_k`'s instead
    (differentiable), over the items in the graph."""
    masked = sims.masked_fill(~in_graph, -torch.inf)
    if relax is None:
        top = masked.topk(k, dim=1).indices
        member = torch.zeros_like(masked).scatter(1, top, 1.0)
    else:
        member = soft_top_k(masked, k, relax, int(in_graph.sum()))
    return member * sims.masked_fill(~in_graph, 0.0)


def normalised_rows(adjacency: torch.Tensor, rowsum: torch.Tensor) -> torch.Tensor:
    """Rows ``[B, N]`` normalised as ``D^{-1/2} A D^{-1/2}`` rows are: by their own sums and
    each column's row sum ``rowsum [N]`` (the neighbours' degrees)."""
    return adjacency * inv_sqrt(adjacency.sum(1))[:, None] * inv_sqrt(rowsum)[None, :]
