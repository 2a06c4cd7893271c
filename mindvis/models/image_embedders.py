"""Image embedding spaces that brain decoders are aligned to, and a cache of embeddings per image set.

Spaces (``--target``):

* ``clip:SRC``: ``transformers.CLIPVisionModelWithProjection`` image embeddings (``image_embeds``), SRC a local
  folder or a hub id already in the Hugging Face cache (e.g. ``clip:openai/clip-vit-large-patch14``);
* ``dinov2:SRC``: DINOv2 via ``transformers.AutoModel`` (the pooled CLS token), e.g. ``dinov2:facebook/dinov2-base``;
* ``timm:NAME``: any timm model's pooled pre-logits features (weights from timm's caches);
* ``synthetic``: for the synthetic world, the penultimate features of its cached evaluation classifier (a CNN
  trained only on renders of the world's classes, never on the test stimuli).

Nothing is downloaded: weights that are not on disk are a :class:`EmbedderUnavailable` error saying where to put
them. Embeddings are cached under ``<cache>/embeddings/`` keyed by the space and a digest of the images.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("mindvis.embeddings")

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


TARGET_KINDS = ("clip", "dinov2", "timm")  # with a source after the colon; or the bare "synthetic"


def valid_target(space: str) -> bool:
    kind, _, src = space.partition(":")
    return space == "synthetic" or (kind in TARGET_KINDS and bool(src))


class EmbedderUnavailable(RuntimeError):
    """The embedding model's weights are not on this machine."""


class ImageEmbedder:
    """images uint8 (N, H, W, 3) -> float32 embeddings (N, D), in batches, without gradients."""

    def __init__(self, name: str, fn, size: int, mean, std, batch_size: int = 32):
        self.name, self.fn, self.size, self.batch_size = name, fn, size, batch_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images (N, H, W, 3), got {images.shape}")
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size])).permute(0, 3, 1, 2).float() / 255
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
            out.append(self.fn(((x.clamp(0, 1) - self.mean) / self.std)).float())
        return torch.cat(out).numpy()


def _transformers_model(cls, src: str, what: str):
    try:
        return cls.from_pretrained(src, local_files_only=True).eval()
    except OSError as e:
        raise EmbedderUnavailable(
            f"{what} weights for {src!r} are not on this machine ({str(e).splitlines()[0]}); put a saved model "
            f"folder (config.json + model.safetensors) at a path and pass it, or place the hub snapshot in the "
            f"Hugging Face cache ($HF_HOME/hub/models--{src.replace('/', '--')})") from None


def clip_embedder(src: str) -> ImageEmbedder:
    from transformers import CLIPVisionModelWithProjection

    model = _transformers_model(CLIPVisionModelWithProjection, src, "CLIP")
    return ImageEmbedder(f"clip:{src}", lambda x: model(pixel_values=x).image_embeds, model.config.image_size,
                         CLIP_MEAN, CLIP_STD)


def dinov2_embedder(src: str) -> ImageEmbedder:
    from transformers import AutoModel

    from ..evaluation.classifiers import IMAGENET_MEAN, IMAGENET_STD

    model = _transformers_model(AutoModel, src, "DINOv2")
    return ImageEmbedder(f"dinov2:{src}", lambda x: model(pixel_values=x).pooler_output, 224,
                         IMAGENET_MEAN, IMAGENET_STD)


def timm_embedder(name: str) -> ImageEmbedder:
    from ..evaluation.classifiers import ClassifierUnavailable, timm_classifier

    try:
        clf = timm_classifier(name)
    except ClassifierUnavailable as e:
        raise EmbedderUnavailable(str(e)) from None
    return ImageEmbedder(f"timm:{name}", clf._features, clf.size, clf.mean.flatten().tolist(),
                         clf.std.flatten().tolist())


def synthetic_embedder(world_cfg, cache_dir=None, image_size: int = 32) -> ImageEmbedder:
    from ..evaluation.classifiers import synthetic_classifier

    clf = synthetic_classifier(world_cfg, image_size, cache_dir).eval()
    return ImageEmbedder("synthetic", clf.net.body, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def load_embedder(space: str, world_cfg=None, cache_dir=None) -> ImageEmbedder:
    """The embedder of a target space (see the module docstring)."""
    kind, _, src = space.partition(":")
    if kind == "synthetic":
        if world_cfg is None:
            raise EmbedderUnavailable("the synthetic target space needs the synthetic world (--dataset synthetic)")
        return synthetic_embedder(world_cfg, cache_dir)
    if not valid_target(space):
        raise ValueError(f"unknown target space {space!r}: use clip:SRC, dinov2:SRC, timm:NAME or synthetic")
    return {"clip": clip_embedder, "dinov2": dinov2_embedder, "timm": timm_embedder}[kind](src)


def images_digest(images: np.ndarray) -> str:
    h = hashlib.sha1(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def cached_embeddings(embedder: ImageEmbedder, images: np.ndarray, cache_dir: str | os.PathLike | None,
                      model_key: str = "") -> np.ndarray:
    """``embedder(images)``, read from / written to the cache (key: space, ``model_key``, image digest)."""
    from ..utils.cache import default_cache_dir
    from ..utils.io import atomic_write

    key = hashlib.sha1(f"{embedder.name}|{model_key}|{images_digest(images)}".encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "embeddings" / f"{embedder.name.replace('/', '_').replace(':', '-')}-{key}.npy"
    if path.is_file():
        return np.load(path)
    emb = embedder(images).astype(np.float32)
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), emb))
    log.info("embedded %d images into %s (%d dims); cached at %s", len(images), embedder.name, emb.shape[1], path)
    return emb
