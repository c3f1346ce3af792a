"""The text tower of a CLIP-style extractor (``extractor.weights: clip``) and CLIP's loss.

CLIP (Radford et al., ICML 2021, "Learning Transferable Visual Models From Natural Language
Supervision") trains an image encoder and a text encoder together so that an image and its
caption map to nearby points of a shared space: over a batch of ``B`` pairs, the ``B × B`` cosine
similarities times a learnable temperature are logits, and the loss is the mean of the
cross-entropies of finding each image's caption among the batch's captions and each caption's
image among its images (the symmetric InfoNCE). The temperature starts at ``1/0.07`` and is
clipped at 100, as CLIP's is.

Here the image encoder is the extractor's own network (its features are what rankers read); the
text encoder is small, as titles are a few words from a fixed vocabulary: token embeddings, the
mean over the title's tokens, then a two-layer MLP. Both towers end in the shared space of
``dim`` dimensions (the image side through a linear projection of its features).

:class:`ClipHead` is the extractor's classifier head for such an extractor: CLIP's zero-shot
classifier, whose logit of a class is the temperature times the cosine between the image's
projection and the text tower's embedding of the class's name. So TAaMR's attacks and the
"target class" work as with any other extractor, with no classifier trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: token ids of padding and of a word outside the vocabulary
PAD, UNKNOWN = 0, 1
#: CLIP's initial temperature and its clip
INITIAL_SCALE = 1 / 0.07
MAX_SCALE = 100.0


def tokenize(titles: Sequence[str], vocab: Sequence[str], max_len: int) -> torch.Tensor:
    """``[B, max_len]`` token ids of ``titles``: lower-cased words split on white space, each
    word's index in ``vocab`` plus 2 (:data:`UNKNOWN` when it is not there), padded with
    :data:`PAD` and cut at ``max_len`` words."""
    index = {w: i + 2 for i, w in enumerate(vocab)}
    out = torch.full((len(titles), max_len), PAD, dtype=torch.long)
    for row, title in enumerate(titles):
        ids = [index.get(w, UNKNOWN) for w in str(title).lower().split()][:max_len]
        if ids:
            out[row, : len(ids)] = torch.tensor(ids)
    return out


class TextTower(nn.Module):
    """Titles → ``[B, dim]``: token embeddings ``[V + 2, width]``, their mean over the title's
    tokens (padding excluded; an empty title gives zeros), then ``Linear → ReLU → Linear``."""

    def __init__(self, n_words: int, width: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_words + 2, width, padding_idx=PAD)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD).unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.mlp(pooled)


class ClipHead(nn.Module):
    """The image projection, the text tower, the temperature, and CLIP's zero-shot classifier
    over the classes named in ``text["class_titles"]``.

    ``text``: the spec's ``text`` entry: ``vocab`` (the words), ``width`` (token embedding),
    ``dim`` (the shared space), ``max_len`` (words read per title) and ``class_titles`` (one
    title per class, e.g. "red striped crescent"; may be empty: then no class logits).

    Shapes: ``forward`` ``[B, in_features]`` → ``[B, n_classes]``; :meth:`embed_images`
    ``[B, in_features]`` → ``[B, dim]``; :meth:`embed_text` ``[B, max_len]`` tokens → ``[B, dim]``.
    """

    def __init__(self, in_features: int, text: dict[str, Any]) -> None:
        super().__init__()
        self.vocab: list[str] = list(text["vocab"])
        self.max_len = int(text["max_len"])
        self.image_projection = nn.Linear(in_features, int(text["dim"]))
        self.text = TextTower(len(self.vocab), int(text["width"]), int(text["dim"]))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        classes = tokenize(text.get("class_titles") or [], self.vocab, self.max_len)
        self.register_buffer("class_tokens", classes, persistent=False)

    def scale(self) -> torch.Tensor:
        """The temperature ``exp(logit_scale)``, clipped at :data:`MAX_SCALE`."""
        return self.logit_scale.exp().clamp(max=MAX_SCALE)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_projection(features)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens)

    def tokens(self, titles: Sequence[str]) -> torch.Tensor:
        """:func:`tokenize` with this head's vocabulary, on its device."""
        return tokenize(titles, self.vocab, self.max_len).to(self.logit_scale.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        images = F.normalize(self.embed_images(features), dim=1)
        classes = F.normalize(self.embed_text(self.class_tokens), dim=1)
        return self.scale() * images @ classes.T


def clip_loss(
    images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE of ``B`` pairs: ``images`` and ``texts`` ``[B, D]`` (row ``i`` of
    each is pair ``i``; normalised here), logits ``scale · cos`` ``[B, B]``, and the mean of the
    image→text and text→image cross-entropies with the pairs on the diagonal."""
    logits = scale * F.normalize(images, dim=1) @ F.normalize(texts, dim=1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
