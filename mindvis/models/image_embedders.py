"""Image embedding spaces that brain decoders are aligned to, and a cache of embeddings per image set.

Spaces (``--target``):

* ``clip:SRC``: ``transformers.CLIPVisionModelWithProjection`` image embeddings (``image_embeds``), SRC a local
  folder or a hub id already in the Hugging Face cache (e.g. ``clip:openai/clip-vit-large-patch14``);
* ``dinov2:SRC``: DINOv2 via ``transformers.AutoModel`` (the pooled CLS token), e.g. ``dinov2:facebook/dinov2-base``;
* ``timm:NAME``: any timm model's pooled pre-logits features (weights from timm's caches);
* ``synthetic``: for the synthetic world, the penultimate features of its cached evaluation classifier (a CNN
  trained only on renders of the world's classes, never on the test stimuli).
* ``synthetic-tokens``: the synthetic world's token space for MindEye's recipes (the world has no CLIP): the same
  classifier's last feature map before pooling (8 x 8 positions of 128 channels at its 32 px input), averaged over
  2 x 2 positions into a 4 x 4 grid (a short sequence for the diffusion prior on CPU), as 16 tokens, with the pooled
  vector (the ``synthetic`` embedding) first, as CLIP ViT's class token comes first: (N, 17, 128). Every token is
  divided by the first token's L2 norm, as MindEye1's targets are divided by the class token's.

Token spaces (MindEye's targets; (N, T, D) per image set):

* ``clip-vit-l-14-tokens:SRC``: MindEye1's 257 x 768 CLIP ViT-L/14 tokens, as its ``Clipper(hidden_state=True,
  norm_embs=True)`` computes them: images in [0, 1] resized (shorter side to the model's size, 224: bicubic,
  ``align_corners=False``, no antialiasing, as torchvision 0.15 resizes tensors), centre-cropped, CLIP-normalised;
  ``last_hidden_state`` -> ``vision_model.post_layernorm`` -> ``visual_projection`` on every token; all tokens
  divided by the class token's norm. SRC: a ``transformers.CLIPVisionModelWithProjection`` folder or a hub id in
  the Hugging Face cache (``openai/clip-vit-large-patch14``).
* ``openclip-bigg-14-tokens:SRC``: MindEye2's 256 x 1664 OpenCLIP ViT-bigG/14 tokens, as its
  ``FrozenOpenCLIPImageEmbedder(output_tokens=True, only_tokens=True)`` computes them from images in [0, 1]:
  resized to 224 x 224 (kornia's bicubic, ``align_corners=True``, Gaussian antialiasing when downscaling), mapped
  ``(x + 1) / 2`` (the embedder expects [-1, 1]; MindEye2 feeds [0, 1], so CLIP sees [0.5, 1]), CLIP-normalised;
  the visual tower's patch tokens after ``ln_post`` (class token dropped, no projection, no normalisation). SRC: an
  OpenCLIP folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``,
  the hub layout of ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``), that hub id in the Hugging Face cache, or a
  checkpoint file of the ViT-bigG-14 architecture. Needs ``open_clip_torch`` (``pip install mindvis[mindeye]``).

Nothing is downloaded: weights that are not on disk are a :class:`EmbedderUnavailable` error saying where to put
them. Embeddings are cached under ``<cache>/embeddings/`` keyed by the space and a digest of the images: pooled
spaces as float32, token spaces as float16 (a 257 x 768 image is 395 KB, a 256 x 1664 one 852 KB; MindEye2 itself
computes the targets under fp16 autocast), written batch by batch into a memory-mapped .npy.
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


TOKEN_KINDS = ("clip-vit-l-14-tokens", "openclip-bigg-14-tokens")
SYNTHETIC_SPACES = ("synthetic", "synthetic-tokens")  # the synthetic world's (no source after a colon)
TARGET_KINDS = ("clip", "dinov2", "timm") + TOKEN_KINDS  # with a source after the colon; or the bare "synthetic"
OPENCLIP_BIGG_HUB_ID = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"  # MindEye2: arch ViT-bigG-14, laion2b_s39b_b160k


def valid_target(space: str) -> bool:
    kind, _, src = space.partition(":")
    return space in SYNTHETIC_SPACES or (kind in TARGET_KINDS and bool(src))


class EmbedderUnavailable(RuntimeError):
    """The embedding model's weights are not on this machine."""


class ImageEmbedder:
    """images uint8 (N, H, W, 3) -> float32 embeddings (N, D) or tokens (N, T, D), in batches, without gradients.

    By default images are resized to ``size`` x ``size`` (bicubic, antialiased) and normalised with ``mean``/``std``;
    ``preprocess`` (float images (B, 3, H, W) in [0, 1] -> model input) replaces that. ``storage_dtype``: how the
    cache stores the outputs (float16 for token spaces)."""

    def __init__(self, name: str, fn, size: int, mean, std, batch_size: int = 32, preprocess=None,
                 storage_dtype=np.float32, module=None):
        self.name, self.fn, self.size, self.batch_size = name, fn, size, batch_size
        self.module = module  # the network behind ``fn`` (moved with ``to``), if any
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.preprocess = preprocess
        self.storage_dtype = np.dtype(storage_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            return self.preprocess(x)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        return (x.clamp(0, 1) - self.mean.to(x)) / self.std.to(x)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device if self.module is not None else torch.device("cpu")

    def to(self, device) -> "ImageEmbedder":
        if self.module is not None:
            self.module.to(device)
        return self

    @torch.no_grad()
    def embed_float(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for float images (B, 3, H, W) in [0, 1] on the embedder's device (online targets)."""
        return self.fn(self._prepare(x.to(self.device)))

    @torch.no_grad()
    def batches(self, images: np.ndarray):
        """Yield (start index, float32 outputs of ``images[start:start + batch_size]``)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images (N, H, W, 3), got {images.shape}")
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size])).permute(0, 3, 1, 2).float() / 255
            yield i, self.embed_float(x).float().cpu().numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([out for _, out in self.batches(images)])


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


# ---- MindEye's token targets ----

def mindeye1_clip_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """MindEye1 ``Clipper.preprocess`` on float images (B, 3, H, W) in [0, 1], as torchvision 0.15 runs it on
    tensors: Resize(size) of the shorter side (longer side ``int(size * long / short)``; bicubic, align_corners
    False, no antialiasing), CenterCrop(size) (offsets ``int(round((H - size) / 2))``), CLIP normalisation."""
    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):  # the reference interpolates at equal size too: an exact identity
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean.to(x)) / std.to(x)


def _gaussian_blur_reflect(x: torch.Tensor, ks: tuple[int, int], sigma: tuple[float, float]) -> torch.Tensor:
    """kornia's ``gaussian_blur2d`` (separable, reflect border): along the width with ``sigma[1]``, then the
    height with ``sigma[0]``; kernel exp(-d^2 / (2 sigma^2)) / sum over d = -(k // 2) .. k // 2 (k odd)."""
    b, c, h, w = x.shape
    for dim, k, s in ((3, ks[1], sigma[1]), (2, ks[0], sigma[0])):
        d = torch.arange(k, dtype=x.dtype) - k // 2
        g = torch.exp(-d.pow(2.0) / (2 * torch.tensor(s, dtype=x.dtype).pow(2.0)))
        g = g / g.sum()
        kernel = (g.view(1, 1, 1, k) if dim == 3 else g.view(1, 1, k, 1)).expand(c, 1, -1, -1)
        pad = [(k - 1) // 2, k - 1 - (k - 1) // 2]
        x = F.pad(x, (pad + [0, 0]) if dim == 3 else ([0, 0] + pad), mode="reflect")
        x = F.conv2d(x, kernel.to(x), groups=c)
    return x


def kornia_resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool = True,
                  antialias: bool = True) -> torch.Tensor:
    """kornia 0.7's ``geometry.resize(x, size, interpolation="bicubic", align_corners, antialias)``: unchanged at
    equal size; when downscaling with antialias, a Gaussian blur with sigma = max((factor - 1) / 2, 0.001) per axis
    and kernel ``int(max(4 * sigma, 3))`` made odd; then bicubic interpolation."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    factors = (h / size[0], w / size[1])
    if antialias and max(factors) > 1:
        sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
        ks = [int(max(2.0 * 2 * s, 3)) for s in sigmas]
        ks = tuple(k + 1 if k % 2 == 0 else k for k in ks)
        x = _gaussian_blur_reflect(x, ks, sigmas)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=align_corners)


def mindeye2_openclip_preprocess(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """MindEye2's ``FrozenOpenCLIPImageEmbedder.preprocess`` on the [0, 1] images MindEye2 feeds it: kornia resize
    to size x size (bicubic, align_corners=True, antialias=True), ``(x + 1) / 2``, CLIP normalisation."""
    x = kornia_resize(x, (size, size), align_corners=True, antialias=True)
    x = (x + 1.0) / 2.0
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean.to(x)) / std.to(x)


def clip_tokens_embedder(src: str, batch_size: int = 16) -> ImageEmbedder:
    """MindEye1's 257 x 768 targets (``Clipper(hidden_state=True, norm_embs=True).embed_image``)."""
    from transformers import CLIPVisionModelWithProjection

    model = _transformers_model(CLIPVisionModelWithProjection, src, "CLIP")
    size = model.config.image_size

    def tokens(x):
        hidden = model(pixel_values=x).last_hidden_state  # (B, 1 + (size / patch)^2, width)
        emb = model.visual_projection(model.vision_model.post_layernorm(hidden))  # (B, 257, 768)
        return emb / torch.norm(emb[:, 0], dim=-1).reshape(-1, 1, 1)

    return ImageEmbedder(f"clip-vit-l-14-tokens:{src}", tokens, size, CLIP_MEAN, CLIP_STD, batch_size,
                         preprocess=lambda x: mindeye1_clip_preprocess(x, size), storage_dtype=np.float16,
                         module=model)


def _import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise EmbedderUnavailable("openclip-bigg-14-tokens needs open_clip_torch: pip install 'mindvis[mindeye]' "
                                  "(or pip install 'open_clip_torch>=2.24')") from None
    return open_clip


def _openclip_weights(folder: Path) -> Path | None:
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _resolve_openclip(src: str):
    """(model config dict, weights file) of an OpenCLIP source; see the module docstring."""
    import json

    where = (f"put the OpenCLIP folder of {OPENCLIP_BIGG_HUB_ID} (open_clip_config.json + open_clip_model.safetensors "
             f"or open_clip_pytorch_model.bin) at a path and pass it, or its hub snapshot in the Hugging Face cache "
             f"($HF_HOME/hub/models--{OPENCLIP_BIGG_HUB_ID.replace('/', '--')})")
    path = Path(src).expanduser()
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(src, local_files_only=True))
        except Exception as e:  # not a folder, not cached
            raise EmbedderUnavailable(f"OpenCLIP weights for {src!r} are not on this machine "
                                      f"({type(e).__name__}); {where}") from None
    if path.is_file():
        return None, path
    weights = _openclip_weights(path)
    if not (path / "open_clip_config.json").is_file() or weights is None:
        raise EmbedderUnavailable(f"{path} is not an OpenCLIP folder (open_clip_config.json and weights); {where}")
    return json.loads((path / "open_clip_config.json").read_text())["model_cfg"], weights


def _load_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # memory-mapped: only the visual tower's tensors are read (bigG's file holds 10 GB of both towers)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def openclip_tokens_embedder(src: str, batch_size: int = 8) -> ImageEmbedder:
    """MindEye2's 256 x 1664 targets (``FrozenOpenCLIPImageEmbedder(arch="ViT-bigG-14",
    version="laion2b_s39b_b160k", output_tokens=True, only_tokens=True)`` on [0, 1] images)."""
    open_clip = _import_open_clip()
    cfg, weights = _resolve_openclip(src)
    if cfg is None:
        cfg = open_clip.get_model_config("ViT-bigG-14")
    from open_clip.model import _build_vision_tower

    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    state = {k[len("visual."):]: v for k, v in _load_state(weights).items() if k.startswith("visual.")}
    missing, unexpected = visual.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EmbedderUnavailable(f"{weights} does not hold the visual tower of this config (missing "
                                  f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    visual.eval().requires_grad_(False)
    visual.output_tokens = True  # open_clip >= 2.24: tokens = ln_post(x)[:, 1:]
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return ImageEmbedder(f"openclip-bigg-14-tokens:{src}", lambda x: visual(x)[1], size, CLIP_MEAN, CLIP_STD,
                         batch_size, preprocess=lambda x: mindeye2_openclip_preprocess(x, size),
                         storage_dtype=np.float16, module=visual)


def dinov2_embedder(src: str) -> ImageEmbedder:
    from transformers import AutoModel

    from ..evaluation.classifiers import IMAGENET_MEAN, IMAGENET_STD

    model = _transformers_model(AutoModel, src, "DINOv2")
    return ImageEmbedder(f"dinov2:{src}", lambda x: model(pixel_values=x).pooler_output, 224,
                         IMAGENET_MEAN, IMAGENET_STD)


def timm_embedder(name: str) -> ImageEmbedder:
    from ..evaluation.classifiers import ClassifierUnavailable, timm_classifier

    try:
        clf = timm_classifier(name, flag=None)
    except ClassifierUnavailable as e:
        raise EmbedderUnavailable(str(e)) from None
    return ImageEmbedder(f"timm:{name}", clf._features, clf.size, clf.mean.flatten().tolist(),
                         clf.std.flatten().tolist())


def synthetic_embedder(world_cfg, cache_dir=None, image_size: int = 32) -> ImageEmbedder:
    from ..evaluation.classifiers import synthetic_classifier

    clf = synthetic_classifier(world_cfg, image_size, cache_dir).eval()
    return ImageEmbedder("synthetic", clf.net.body, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def synthetic_tokens_embedder(world_cfg, cache_dir=None, image_size: int = 32) -> ImageEmbedder:
    """``synthetic-tokens`` (see the module docstring): (N, 1 + h * w, C), the pooled feature first."""
    from ..evaluation.classifiers import synthetic_classifier

    clf = synthetic_classifier(world_cfg, image_size, cache_dir).eval()
    spatial = clf.net.body[:-2]  # without AdaptiveAvgPool2d and Flatten: (B, C, h, w)

    def tokens(x):
        fmap = spatial(x)  # (B, C, h, w)
        grid = F.avg_pool2d(fmap, 2).flatten(2).transpose(1, 2)  # (B, h * w / 4, C)
        t = torch.cat((fmap.mean((2, 3))[:, None], grid), dim=1)  # the pooled vector = the classifier's embedding
        return t / torch.norm(t[:, 0], dim=-1).clamp_min(1e-12).reshape(-1, 1, 1)

    return ImageEmbedder("synthetic-tokens", tokens, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                         storage_dtype=np.float16, module=spatial)


def load_embedder(space: str, world_cfg=None, cache_dir=None) -> ImageEmbedder:
    """The embedder of a target space (see the module docstring)."""
    kind, _, src = space.partition(":")
    if space in SYNTHETIC_SPACES:
        if world_cfg is None:
            raise EmbedderUnavailable(f"the {space} target space needs the synthetic world (--dataset synthetic, "
                                      "or an NSD folder prepared from mindvis-synth)")
        return (synthetic_embedder if space == "synthetic" else synthetic_tokens_embedder)(world_cfg, cache_dir)
    if not valid_target(space):
        raise ValueError(f"unknown target space {space!r}: use clip:SRC, dinov2:SRC, timm:NAME, "
                         f"clip-vit-l-14-tokens:SRC, openclip-bigg-14-tokens:SRC, synthetic or synthetic-tokens")
    return {"clip": clip_embedder, "dinov2": dinov2_embedder, "timm": timm_embedder,
            "clip-vit-l-14-tokens": clip_tokens_embedder, "openclip-bigg-14-tokens": openclip_tokens_embedder}[kind](src)


def images_digest(images: np.ndarray) -> str:
    h = hashlib.sha1(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def cached_embeddings(embedder: ImageEmbedder, images: np.ndarray, cache_dir: str | os.PathLike | None,
                      model_key: str = "", mmap: bool = False) -> np.ndarray:
    """``embedder(images)``, read from / written to the cache (key: space, ``model_key``, image digest).

    Stored in ``embedder.storage_dtype`` (float16 for token spaces), written batch by batch into a memory-mapped
    .npy, so a large image set never holds float32 tokens in memory. Returns float32, or with ``mmap`` the stored
    array memory-mapped read-only (token spaces: float16; convert per batch)."""
    from ..utils.cache import default_cache_dir
    from ..utils.io import atomic_write

    key = hashlib.sha1(f"{embedder.name}|{model_key}|{images_digest(images)}".encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "embeddings" / f"{embedder.name.replace('/', '_').replace(':', '-')}-{key}.npy"
    if not path.is_file():
        def write(tmp):
            out = None
            for start, emb in embedder.batches(images):
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=embedder.storage_dtype,
                                                    shape=(len(images),) + emb.shape[1:])
                out[start:start + len(emb)] = emb
            if out is None:
                raise ValueError("no images to embed")
            out.flush()
            shape = out.shape
            del out
            log.info("embedded %d images into %s %s (%s); cached at %s", len(images), embedder.name, shape[1:],
                     embedder.storage_dtype, path)

        atomic_write(path, write)
    if mmap:
        return np.load(path, mmap_mode="r")
    return np.load(path).astype(np.float32, copy=False)
