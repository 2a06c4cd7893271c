"""brainmagick's CLIP loss (``bm/losses.py`` ClipLoss, Défossez et al. 2023), as a function.

One-directional: each brain output is scored against every candidate, the scores are the dot products with the
candidates L2-normalised over all their dimensions but the batch (channels and time), with no temperature and without
normalising the brain outputs, and the loss is the cross-entropy of the i-th brain output choosing the i-th candidate:

    score[i, j] = <estimate_i, candidate_j> / (1e-8 + ||candidate_j||),  loss = mean_i -log softmax_j(score[i])[i]

Candidates beyond the batch (B' > B) are extra negatives. mindvis.contrastive holds the symmetric CLIP loss with a
temperature (CLIP's, MindEye's).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def brainmagick_clip_scores(estimate: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(B, B') scores of (B, ...) brain outputs against (B', ...) candidates of the same trailing shape ((C,) or
    (C, T))."""
    if estimate.shape[1:] != candidates.shape[1:]:
        raise ValueError(f"estimate {tuple(estimate.shape)} and candidates {tuple(candidates.shape)} differ past the "
                         "batch dimension")
    est = estimate.reshape(len(estimate), -1, 1) if estimate.ndim == 2 else estimate
    cand = candidates.reshape(len(candidates), -1, 1) if candidates.ndim == 2 else candidates
    est, cand = est.flatten(2), cand.flatten(2)
    inv_norms = 1 / (1e-8 + cand.norm(dim=(1, 2), p=2))
    return torch.einsum("bct,oct,o->bo", est, cand, inv_norms)


def brainmagick_clip_loss(estimate: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """brainmagick's ClipLoss: the i-th of the B estimates must pick the i-th of the B' >= B candidates."""
    if len(estimate) > len(candidates):
        raise ValueError(f"need at least as many candidates as estimates, got {len(candidates)} < {len(estimate)}")
    scores = brainmagick_clip_scores(estimate, candidates)
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))
