"""Fixed 1-D sin-cos position embeddings and their interpolation to another token count."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sincos_pos_embed_1d(embed_dim: int, length: int, cls_token: bool = False) -> np.ndarray:
    """(length [+1], embed_dim) table: sin of position*omega in the first half, cos in the second.

    With ``cls_token`` a zero row is prepended for the cls slot (MAE convention).
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for sin-cos positions, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    pos = np.arange(length, dtype=np.float32).astype(np.float64)
    out = np.einsum("m,d->md", pos, omega)  # (L, D/2)
    emb = np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (L, D)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int, num_extra_tokens: int = 1) -> torch.Tensor:
    """Resize a (1, extra + L_old, D) table to (1, extra + num_patches, D).

    The extra (cls) rows are kept; patch rows are resized with nearest-neighbour interpolation,
    as the original MinD-Vis does when the voxel count differs from pretraining.
    """
    extra, tokens = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    if tokens.shape[1] == num_patches:
        return pos_embed
    tokens = F.interpolate(tokens.permute(0, 2, 1), size=num_patches, mode="nearest").permute(0, 2, 1)
    return torch.cat([extra, tokens], dim=1)
