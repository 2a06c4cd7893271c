"""Losses that align decoded brain embeddings with image embeddings (CLIP, MindEye, Meta).

Every contrastive loss takes predictions and targets of shape (B, D), L2-normalises both, and compares
every prediction with every target of the batch (logits (B, B) = cosine / temperature):

* :func:`clip_loss`: symmetric InfoNCE (CLIP); the temperature is a number or a learnable
  :class:`Temperature`.
* :func:`mixco` + :func:`bimixco_loss`: MindEye's BiMixCo: voxels of a random half of the batch are
  mixed with a shuffled partner (weight beta ~ Beta(0.15, 0.15)); the soft target of a mixed row puts
  beta on its own image and 1 - beta on the partner's, in both directions.
* :func:`soft_clip_loss`: MindEye's SoftCLIP: the target distribution of row i is the softmax of the
  image-image similarities, not a one-hot.
* :func:`mse_loss`: regression on the raw (unnormalised) embedding, as Meta's MSE head.
* :func:`mindeye_schedule`: BiMixCo for the first ``mixup_fraction`` of training, SoftCLIP after.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Temperature(nn.Module):
    """A learnable softmax temperature kept as log(1 / T), as CLIP; clamped to 1 / T <= 100."""

    def __init__(self, init: float = 0.07):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init)))

    def forward(self) -> torch.Tensor:
        return 1.0 / self.log_scale.clamp(max=math.log(100.0)).exp()


def _logits(preds: torch.Tensor, targets: torch.Tensor, temperature) -> torch.Tensor:
    if preds.shape != targets.shape or preds.ndim != 2:
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} must both be (B, D)")
    return F.normalize(preds, dim=-1) @ F.normalize(targets, dim=-1).T / temperature  # (B, B)


def _soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    return -(logits.log_softmax(-1) * probs).sum(-1).mean()


def clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature=0.07) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of brain -> image and image -> brain cross-entropies with the diagonal."""
    logits = _logits(preds, targets, temperature)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mixco(voxels: torch.Tensor, beta: float = 0.15, select_p: float = 0.5):
    """Mix a random subset of the batch with shuffled partners (torch's global generator).

    Returns (mixed voxels, perm, betas, selected): row i of the output is ``betas[i] * x[i] + (1 - betas[i]) *
    x[perm[i]]`` where ``selected[i]``, else ``x[i]`` (with ``betas[i] = 1``).
    """
    n = voxels.shape[0]
    perm = torch.randperm(n).to(voxels.device)
    betas = torch.distributions.Beta(beta, beta).sample((n,))
    selected = torch.rand(n) < select_p
    betas = torch.where(selected, betas, torch.ones_like(betas)).to(voxels.device, voxels.dtype)
    shape = [-1] + [1] * (voxels.ndim - 1)
    mixed = voxels * betas.view(shape) + voxels[perm] * (1 - betas).view(shape)
    return mixed, perm, betas, selected.to(voxels.device)


def bimixco_loss(preds: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, betas: torch.Tensor,
                 temperature=0.006) -> torch.Tensor:
    """Bidirectional MixCo: soft targets ``betas`` on the diagonal and ``1 - betas`` on each row's partner."""
    logits = _logits(preds, targets, temperature)
    n = len(logits)
    probs = torch.diag(betas.to(logits.dtype))
    probs[torch.arange(n, device=logits.device), perm] += 1 - betas.to(logits.dtype)
    return (_soft_cross_entropy(logits, probs) + _soft_cross_entropy(logits.T, probs.T)) / 2


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature=0.125) -> torch.Tensor:
    """SoftCLIP: cross-entropy against the softmax of image-image similarities, in both directions."""
    logits = _logits(preds, targets, temperature)
    soft = _logits(targets, targets, temperature).softmax(-1)
    return (_soft_cross_entropy(logits, soft) + _soft_cross_entropy(logits.T, soft)) / 2


def mse_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(preds, targets)


def mindeye_schedule(progress: float, mixup_fraction: float = 1 / 3) -> str:
    """The contrastive loss at a point of training (``progress`` in [0, 1)): 'bimixco' first, then 'softclip'."""
    return "bimixco" if progress < mixup_fraction else "softclip"
