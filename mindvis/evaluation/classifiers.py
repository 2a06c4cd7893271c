"""Image classifiers for the n-way semantic metric.

* ``vit_h_14``: torchvision's ViT-H/14 on ImageNet (the paper's), from a local weights file
  (``--classifier-weights``) or torch's cache;
* ``timm:NAME``: any timm model, from a local weights file or the usual caches;
* ``synthetic``: a small CNN that mindvis trains on renders of the synthetic world's classes
  (fresh instances, never the test stimuli), saved and reused from the cache.

Every classifier maps images (N, 3, H, W) in [0, 1] to class probabilities (N, C) and can return
penultimate features (for the Fréchet distance).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger("mindvis.eval")


class ClassifierUnavailable(RuntimeError):
    """The classifier's weights cannot be found here."""


class ImageClassifier(nn.Module):
    """Wraps a backbone with its input size and normalisation."""

    def __init__(self, net: nn.Module, size: int, mean, std, features=None, interpolation: str = "bilinear"):
        super().__init__()
        self.net, self.size, self.interpolation = net, size, interpolation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self._features = features

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode=self.interpolation, antialias=True,
                                   align_corners=False)
            if self.interpolation == "bicubic":  # as PIL, which the original resized with: no overshoot
                images = images.clamp(0, 1)
        return (images - self.mean) / self.std

    @torch.no_grad()
    def probs(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        self.eval()
        return torch.cat([self.net(self.prepare(images[i:i + batch_size])).softmax(-1)
                          for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        self.eval()
        fn = self._features or self.net
        return torch.cat([fn(self.prepare(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


#: what torchvision's ViT-H/14 SWAG weights (and so the MinD-Vis evaluation) feed the network
VIT_H_14_INPUT = dict(size=518, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic")


def _load_state(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def vit_h_14(weights: str | None = None) -> ImageClassifier:
    from torchvision.models import ViT_H_14_Weights, vit_h_14 as build

    from ..utils.offline import no_downloads, torchvision_cached

    if weights:
        net = build()
        net.load_state_dict(_load_state(weights))
    else:
        cached = torchvision_cached(ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1)
        if not cached.is_file():  # before building 632M parameters
            raise ClassifierUnavailable(f"ViT-H/14 ImageNet weights: {cached} is not on this machine and nothing is "
                                        "downloaded: put the file there or pass --classifier-weights FILE")
        try:
            with no_downloads("pass --classifier-weights FILE"):
                net = build(weights=ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1)
        except Exception as e:  # noqa: BLE001 - not in torch's cache (nothing is downloaded), a damaged file
            raise ClassifierUnavailable(f"ViT-H/14 ImageNet weights: {str(e).splitlines()[0]}") from None
    return ImageClassifier(net, **VIT_H_14_INPUT)


def timm_classifier(name: str, weights: str | None = None, flag: str | None = "--classifier-weights FILE"
                    ) -> ImageClassifier:
    """A timm model with its pretrained weights: ``weights`` (a local file), or timm's caches (the Hugging Face cache,
    torch's); nothing is downloaded. ``flag``: what the calling command takes for a local file (None: nothing)."""
    import timm

    from ..utils.offline import no_downloads, timm_weights_location

    try:
        with no_downloads():
            if weights:
                net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights})
            else:
                net = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - not cached (nothing is downloaded), an unknown name, a damaged file
        if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
            raise ClassifierUnavailable(f"timm has no model {name!r} ({str(e).splitlines()[0]})") from None
        if weights:
            raise ClassifierUnavailable(f"timm model {name!r}: {weights} does not load "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        raise ClassifierUnavailable(f"timm model {name!r}: its pretrained weights are not on this machine and nothing "
                                    f"is downloaded; put them in {timm_weights_location(name)}"
                                    + (f", or pass {flag}" if flag else "")) from None
    cfg = net.pretrained_cfg
    return ImageClassifier(net, cfg.get("input_size", (3, 224, 224))[-1], cfg.get("mean", IMAGENET_MEAN),
                           cfg.get("std", IMAGENET_STD), features=lambda x: net.forward_head(net.forward_features(x),
                                                                                             pre_logits=True))


# ----------------------------------------------------------------------------- the synthetic world's classifier
class SmallCNN(nn.Module):
    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and small colour shifts, so that imperfect reconstructions are judged by content."""
    n = len(x)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5), groups=3)
    w = torch.rand(n, 1, 1, 1, generator=gen)
    x = w * blurred + (1 - w) * x
    x = x + 0.05 * torch.randn(n, 3, 1, 1, generator=gen) + 0.03 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


#: the default training recipe (what a shipped classifier must have been trained with)
RECIPE = {"per_class": 30, "epochs": 8}


def train_synthetic_classifier(world_cfg, image_size: int, out: str | os.PathLike, per_class: int = RECIPE["per_class"],
                               epochs: int = RECIPE["epochs"], seed: int = 0) -> Path:
    """Train the synthetic world's classifier on fresh renders of every class; write ``out``."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_dir, atomic_write_json
    from ..world import SyntheticWorld

    world = SyntheticWorld(world_cfg)
    classes = np.repeat(np.arange(world.n_classes), per_class)
    imgs = world.render(classes, stream=4)  # stream 4: classifier training renders only
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    y = torch.from_numpy(classes)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = SmallCNN(world.n_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(net(_augment(x[idx], gen) * 2 - 1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    held = torch.from_numpy(world.render(np.arange(world.n_classes), stream=5)).permute(0, 3, 1, 2).float() / 255
    held = F.interpolate(held, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        acc = float((net(held * 2 - 1).argmax(1) == torch.arange(world.n_classes)).float().mean())

    def fill(tmp: Path):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", {"n_classes": world.n_classes, "image_size": image_size,
                                                "per_class": per_class, "epochs": epochs,
                                                "held_out_accuracy": acc})

    log.info("synthetic classifier: %d classes, held-out accuracy %.3f", world.n_classes, acc)
    return atomic_dir(out, fill)


#: classifiers trained by :func:`train_synthetic_classifier` with its default recipe, shipped with mindvis (named as
#: the cache's folders: the world's image settings and the image size)
SHIPPED = Path(__file__).parent / "shipped"


def synthetic_classifier(world_cfg, image_size: int, cache_dir=None) -> ImageClassifier:
    """The cached classifier of this world at this image size: the shipped one when it was trained for these settings
    with the default recipe, otherwise trained on first use."""
    import shutil

    from safetensors.torch import load_file

    from ..utils.cache import default_cache_dir
    from ..utils.io import atomic_dir

    key = hashlib.sha1(json.dumps({"world": world_cfg.image_settings(), "size": image_size}, sort_keys=True).encode())
    name = f"synthetic-{key.hexdigest()[:12]}"
    folder = Path(cache_dir or default_cache_dir()) / "classifiers" / name
    if not (folder / "model.safetensors").is_file():
        shipped = SHIPPED / name
        if (shipped / "model.safetensors").is_file() and \
                {k: json.loads((shipped / "config.json").read_text()).get(k) for k in RECIPE} == RECIPE:
            log.info("using the synthetic world's classifier shipped with mindvis (%s)", name)
            atomic_dir(folder, lambda tmp: [shutil.copy2(shipped / f, tmp / f) for f in ("model.safetensors",
                                                                                           "config.json")])
        else:
            train_synthetic_classifier(world_cfg, image_size, folder)
    meta = json.loads((folder / "config.json").read_text())
    net = SmallCNN(meta["n_classes"])
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return ImageClassifier(net, image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), features=net.body)


def load_classifier(name: str, weights: str | None = None, world_cfg=None, image_size: int = 32,
                    cache_dir=None) -> ImageClassifier:
    if name == "vit_h_14":
        return vit_h_14(weights)
    if name.startswith("timm:"):
        return timm_classifier(name[5:], weights)
    if name == "synthetic":
        if world_cfg is None:
            raise ClassifierUnavailable("the synthetic classifier needs the synthetic world's settings (samples of "
                                        "a synthetic run carry them)")
        return synthetic_classifier(world_cfg, image_size, cache_dir)
    raise ValueError(f"unknown classifier {name!r}: use vit_h_14, timm:NAME or synthetic")
