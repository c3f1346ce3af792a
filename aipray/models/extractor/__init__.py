"""The pretrained visual feature extractor Φ_f behind VBPR, AlexRank, AMR and TAaMR.

AIP (Liu & Larson, WWW 2021) takes VBPR's and AlexRank's item features from a pretrained AlexNet
(fc7 after ReLU, 4096-d); Perceptual-Rec (Anelli et al.) uses a ResNet50 (pooled, 2048-d), also in
adversarially trained versions; ``arch: vit`` is a ViT tower (torchvision's VisionTransformer,
its class token before the head, 768-d for ``vit_b_16``). TAaMR's FGSM/PGD baselines attack the
same network's classifier head. An :class:`Extractor` is that network as one differentiable map
from pixels: it takes float images ``[B, 3, H, W]`` in ``[0, 1]`` of any size, resizes them to
the network's input size and normalises them with the ImageNet statistics inside, so attacks
always work in pixel space.

Where the weights come from (``ExtractorConfig.weights``: ``pretrain``, ``imagenet`` or a
checkpoint path) is told in :mod:`~aipray.models.extractor.weights`.

An extractor is rebuilt without any weights from its :attr:`Extractor.spec` (a small JSON-able
dict) by :func:`build_extractor`; a recommender keeps that spec in its ``init_args`` and the
weights in its own state dict, so loading a saved recommender never downloads anything.

The package, one module per job (everything public is re-exported here):

- :mod:`~aipray.models.extractor.config`: :class:`ExtractorConfig`, the format constants and the
  architecture spec (:func:`make_spec`).
- :mod:`~aipray.models.extractor.network`: the :class:`Extractor` module with its resizing,
  :func:`build_extractor` and class names.
- :mod:`~aipray.models.extractor.weights`: ImageNet weights in torch's hub cache, local
  checkpoints, and :func:`make_extractor`.
- :mod:`~aipray.models.extractor.pretrain`: in-process pretraining on the item categories, the
  surrogate set's classes, or CLIP-style on its image–title pairs
  (:mod:`~aipray.models.extractor.clip`).
- :mod:`~aipray.models.extractor.text`: the text tower, CLIP's zero-shot head and loss.
- :mod:`~aipray.models.extractor.checkpoint`: :func:`save_extractor`, :func:`load_extractor`,
  :func:`read_extractor_info`.
- :mod:`~aipray.models.extractor.inference`: batched :func:`extract_features`,
  :func:`predict_classes` and :func:`popular_class` on uint8 images.
"""

from aipray.checkpoints import WeightsUnavailableError
from aipray.models.extractor.checkpoint import load_extractor, read_extractor_info, save_extractor
from aipray.models.extractor.config import (
    ARCHS,
    CHECKPOINT_FORMAT,
    IN_PROCESS,
    META_FILE,
    MODEL_FILE,
    ON_SURROGATE,
    SPEC_VERSION,
    ExtractorConfig,
    make_spec,
)
from aipray.models.extractor.inference import extract_features, popular_class, predict_classes
from aipray.models.extractor.network import (
    Extractor,
    build_extractor,
    class_names,
    imagenet_class_names,
)
from aipray.models.extractor.weights import imagenet_weights_file, make_extractor

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "IN_PROCESS",
    "META_FILE",
    "MODEL_FILE",
    "ON_SURROGATE",
    "SPEC_VERSION",
    "Extractor",
    "ExtractorConfig",
    "WeightsUnavailableError",
    "build_extractor",
    "class_names",
    "extract_features",
    "imagenet_class_names",
    "imagenet_weights_file",
    "load_extractor",
    "make_extractor",
    "make_spec",
    "popular_class",
    "predict_classes",
    "read_extractor_info",
    "save_extractor",
]
