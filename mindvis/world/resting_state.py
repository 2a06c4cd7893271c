"""The resting state (HCP): spontaneous activity driving a subject's encoding model (see :mod:`mindvis.world`)."""
from __future__ import annotations

import numpy as np

from .brain import Brain
from .config import SyntheticWorldConfig
from .stimuli import N_FEATURES

TR_SECONDS = 0.72


def _smooth_field(shape, grid: int, width: float, rng: np.random.Generator) -> np.ndarray:
    """Spatially smooth unit-variance Gaussian fields of shape (*shape, grid, grid) via FFT."""
    fy, fx = np.fft.fftfreq(grid), np.fft.rfftfreq(grid)
    filt = np.exp(-2 * (np.pi * width) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2)).astype(np.float32)
    w = rng.standard_normal((*shape, grid, grid), dtype=np.float32)
    out = np.fft.irfft2(np.fft.rfft2(w) * filt, s=(grid, grid))
    return out / (out.std() + 1e-8)


def resting_state(brain: Brain, frames: int, cfg: SyntheticWorldConfig, rng: np.random.Generator,
                  feat_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(frames, V) float32 resting-state time series of one subject (see module docstring)."""
    phi = np.exp(-TR_SECONDS / cfg.rest_tau_s)
    g = cfg.grid
    innov = _smooth_field((frames, N_FEATURES), g, width=4.0, rng=rng)  # (T, F, G, G)
    cat_innov = rng.normal(0, 1, (frames, cfg.category_dim))
    noise = brain.noise(frames, cfg.snr, rng)
    feats = np.empty_like(innov)
    cats = np.empty_like(cat_innov)
    feats[0], cats[0], scale = innov[0], cat_innov[0], np.sqrt(1 - phi**2)
    for t in range(1, frames):  # AR(1), stationary unit variance
        feats[t] = phi * feats[t - 1] + scale * innov[t]
        cats[t] = phi * cats[t - 1] + scale * cat_innov[t]
    mean, std = feat_stats
    feats = feats.transpose(0, 2, 3, 1).reshape(frames, g * g, N_FEATURES) * std + mean
    # measurement noise is white in time; a slow global signal is shared by all voxels
    glob = np.convolve(rng.normal(0, 0.5, frames + 20), np.ones(20) / np.sqrt(20), mode="valid")[:frames]
    return (brain.signal(feats, cats) + noise + glob[:, None]).astype(np.float32)
