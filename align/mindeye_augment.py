"""The images of MindEye's training: MindEye1's augmentation (targets computed from augmented images), MindEye2's
augmentation for the low-level branch's teacher, and the batch's images at the teacher's size."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .mindeye_batches import SubjectTrials


def blur_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MindEye2's ``blur_augs`` on (B, 3, H, W) images in [0, 1], per sample: colour jitter (brightness 0.4,
    contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, grayscale with p 0.1, solarize with p 0.1, and a resized crop
    of 90 % of the area at ratio 1 (always). torchvision's operations (the reference uses kornia's)."""
    import torchvision.transforms.v2.functional as TF

    out = []
    h, w = images.shape[-2:]
    u = lambda: float(torch.rand((), generator=generator))
    for x in images:
        if u() < 0.8:
            ops = [lambda x: TF.adjust_brightness(x, 0.6 + 0.8 * u()), lambda x: TF.adjust_contrast(x, 0.6 + 0.8 * u()),
                   lambda x: TF.adjust_saturation(x, 0.8 + 0.4 * u()), lambda x: TF.adjust_hue(x, 0.2 * u() - 0.1)]
            for k in torch.randperm(4, generator=generator).tolist():
                x = ops[k](x).clamp(0, 1)
        if u() < 0.1:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if u() < 0.1:
            x = TF.solarize(x, 0.4 + 0.2 * u())
        side_h, side_w = int(round(h * math.sqrt(0.9))), int(round(w * math.sqrt(0.9)))
        top, left = int(u() * (h - side_h + 1)), int(u() * (w - side_w + 1))
        x = TF.resized_crop(x, top, left, side_h, side_w, [h, w], antialias=True)
        out.append(x)
    return torch.stack(out)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image hue rotation (fractions of a turn) through HSV, batched."""
    r, g, b = x.unbind(1)
    mx, arg = x.max(1)
    mn = x.min(1).values
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(arg == 0, ((g - b) / safe) % 6, torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    k = lambda n: (n + h * 6) % 6
    f = lambda n: mx - mx * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)
    return torch.stack((f(5), f(3), f(1)), dim=1)


def mindeye1_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MindEye1's training augmentation on (B, 3, S, S) images in [0, 1], per image, batched: RandomResizedCrop to
    S (scale 0.6-1, ratio 3/4-4/3, p 0.3; bilinear, else the image as is), horizontal flip (p 0.5), colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, p 0.3), grayscale (p 0.3) -- kornia's
    AugmentationSequential of the reference, written with torch."""
    b, _, hgt, wid = x.shape
    u = lambda: torch.rand(b, generator=generator)
    crop, area, logr = u() < 0.3, 0.6 + 0.4 * u(), math.log(3 / 4) + math.log(16 / 9) * u()
    w = torch.sqrt(area * logr.exp() * hgt / wid).clamp(max=1)  # the crop's fraction of the width / height
    h = torch.sqrt(area / logr.exp() * wid / hgt).clamp(max=1)
    w, h = torch.where(crop, w, torch.ones_like(w)), torch.where(crop, h, torch.ones_like(h))
    cx, cy = (2 * u() - 1) * (1 - w), (2 * u() - 1) * (1 - h)
    flip = torch.where(u() < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta.to(x), [b, 3, hgt, wid], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jitter = (u() < 0.3).view(-1, 1, 1, 1)
    bright, contrast, sat, hue = 0.6 + 0.8 * u(), 0.6 + 0.8 * u(), 0.8 + 0.4 * u(), 0.2 * u() - 0.1
    y = (x * bright.view(-1, 1, 1, 1)).clamp(0, 1)
    m = _gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * contrast.view(-1, 1, 1, 1) + m).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * sat.view(-1, 1, 1, 1) + g).clamp(0, 1)
    y = _shift_hue(y, hue).clamp(0, 1)
    x = torch.where(jitter, y, x)
    return torch.where((u() < 0.3).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def teacher_images(subjects: list[SubjectTrials], imgs: list[np.ndarray], size: int) -> torch.Tensor:
    """The batch's images in [0, 1] at ``size`` px (MindEye2's images are 224 px), for the teacher and its
    augmented copy."""
    pics = torch.cat([torch.from_numpy(np.ascontiguousarray(subjects[k].images[i])) for k, i in enumerate(imgs)])
    pics = pics.permute(0, 3, 1, 2).float().div(255)
    if pics.shape[-1] != size or pics.shape[-2] != size:
        pics = F.interpolate(pics, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return pics.clamp(0, 1)
