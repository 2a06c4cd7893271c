"""Masked-patch reconstruction on held-out fMRI, next to two trivial baselines on the same patches.

* ``voxel_mean``: every masked voxel predicted by its mean over the training samples.
* ``nearest_patch``: every masked patch copied from the nearest visible patch (the left one on ties).

Masks are drawn from a seeded generator, so the numbers repeat from run to run.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from mindvis.data.dataset import FMRIDataset
from mindvis.models.sc_mbm import MaskedBrainModel


def voxel_means(dataset: FMRIDataset, chunk: int = 4096) -> np.ndarray:
    """Per-voxel mean over the dataset's real samples, streamed in chunks (memory-mapped data stays on disk)."""
    total = np.zeros(dataset.num_voxels, np.float64)
    n = len(dataset.rows)
    for start in range(0, n, chunk):
        total += np.stack([dataset.raw(i) for i in range(start, min(n, start + chunk))]).sum(0)
    return (total / n).astype(np.float32)


def nearest_visible_patch(patches: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """patches (N, L, p), mask (N, L; 1 = masked) -> each masked patch replaced by its nearest visible one."""
    L = patches.shape[1]
    pos = torch.arange(L, device=patches.device)
    dist = (pos[None, :, None] - pos[None, None, :]).abs().float().expand(patches.shape[0], L, L).clone()  # (N, L, L)
    dist[mask.bool()[:, None, :].expand(-1, L, -1)] = float("inf")  # only visible sources
    dist = dist + pos[None, None, :] * 1e-3  # ties go to the left patch
    src = dist.argmin(-1)  # (N, L)
    return torch.gather(patches, 1, src.unsqueeze(-1).expand(-1, -1, patches.shape[2]))


def masked_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample MSE and Pearson correlation over the masked voxels.

    pred, target (N, L, p); mask (N, L) with 1 = masked. Returns two (N,) tensors.
    """
    m = mask.to(pred.dtype)[:, :, None].expand_as(pred)
    n = m.sum((1, 2)).clamp_min(1)
    mse = (((pred - target) ** 2) * m).sum((1, 2)) / n
    pc = (pred - (pred * m).sum((1, 2), keepdim=True) / n[:, None, None]) * m
    tc = (target - (target * m).sum((1, 2), keepdim=True) / n[:, None, None]) * m
    denom = ((pc**2).sum((1, 2)) * (tc**2).sum((1, 2))).sqrt()
    corr = torch.where(denom > 0, (pc * tc).sum((1, 2)) / denom.clamp_min(1e-12), torch.zeros_like(denom))
    return mse, corr


@torch.no_grad()
def evaluate_masked_modeling(model: MaskedBrainModel, holdout: FMRIDataset, train_means: np.ndarray,
                             mask_ratio: float, seed: int = 0, batch_size: int = 64, device="cpu") -> dict:
    """Held-out masked-patch MSE and correlation of the model and of both baselines."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    means = torch.from_numpy(train_means).view(1, 1, -1)
    scores = {k: {"mse": [], "corr": []} for k in ("model", "voxel_mean", "nearest_patch")}
    for batch in DataLoader(holdout, batch_size=batch_size, shuffle=False):
        x = batch["fmri"]  # (N, 1, V)
        noise = torch.rand(x.shape[0], model.config.num_patches, generator=gen)
        _, pred, mask = model(x.to(device), mask_ratio, noise.to(device))
        pred, mask = pred.float().cpu(), mask.cpu()
        target = model.patchify(x)
        candidates = {"model": pred,
                      "voxel_mean": model.patchify(means.expand(x.shape[0], -1, -1)),
                      "nearest_patch": nearest_visible_patch(target, mask)}
        for k, p in candidates.items():
            mse, corr = masked_scores(p.double(), target.double(), mask)
            scores[k]["mse"] += mse.tolist()
            scores[k]["corr"] += corr.tolist()
    return {k: {m: float(np.mean(v)) for m, v in d.items()} | {"mse_std": float(np.std(d["mse"]))}
            for k, d in scores.items()} | {"n_samples": len(holdout), "mask_ratio": mask_ratio}


def summary_table(result: dict) -> str:
    """Markdown table of :func:`evaluate_masked_modeling`'s result."""
    lines = ["| predictor | masked-patch MSE | correlation |", "|---|---|---|"]
    for k in ("model", "voxel_mean", "nearest_patch"):
        lines.append(f"| {k} | {result[k]['mse']:.4f} | {result[k]['corr']:.4f} |")
    return "\n".join(lines)
