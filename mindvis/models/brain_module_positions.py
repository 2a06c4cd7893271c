"""Sensor positions for the brain module's spatial attention: min-max normalisation, the 2-D positions of an MNE
layout matched by channel name (as brainmagick computes them), and their Fourier embedding."""
from __future__ import annotations

import math

import numpy as np
import torch


def normalise_positions(positions) -> np.ndarray:
    """(..., C, 2) positions (NaN: none) -> float32, min-max normalised to [0, 1] per axis over the channels that
    have one (float64 arithmetic, as brainmagick's PositionGetter); idempotent on normalised positions."""
    p = np.array(positions, dtype=np.float64)
    valid = np.isfinite(p).all(-1, keepdims=True)
    q = np.where(valid, p, np.nan)
    lo, hi = np.nanmin(q, axis=-2, keepdims=True), np.nanmax(q, axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (q - lo) / (hi - lo)
    return np.where(valid, out, np.nan).astype(np.float32)


def layout_positions(info, layout=None) -> np.ndarray:
    """(C, 2) positions of ``info``'s channels for the spatial attention, as brainmagick computes them: the 2-D
    positions of ``mne.find_layout(info)`` (or ``layout``), matched by channel name with any ``-suffix`` removed
    (CTF's ``MLC11-1609`` is the layout's ``MLC11``), min-max normalised per axis; NaN for a channel the layout lacks
    (the brain module masks it)."""
    import mne

    layout = mne.channels.find_layout(info) if layout is None else layout
    out = np.full((len(info.ch_names), 2), np.nan)
    for i, name in enumerate(info.ch_names):
        name = name.rsplit("-", 1)[0]
        if name in layout.names:
            out[i] = layout.pos[layout.names.index(name), :2]
    return normalise_positions(out)


def fourier_embedding(positions: torch.Tensor, harmonics: int, margin: float) -> torch.Tensor:
    """(..., 2) normalised positions -> (..., 2 K^2): cos then sin of 2 pi (k (x + m) + l (y + m)) / (1 + 2 m),
    k (x frequency) outer, l inner."""
    freqs_y = torch.arange(harmonics).to(positions)
    freqs_x = freqs_y[:, None]
    width = 1 + 2 * margin
    positions = positions + margin
    p_x = 2 * math.pi * freqs_x / width
    p_y = 2 * math.pi * freqs_y / width
    positions = positions[..., None, None, :]
    loc = (positions[..., 0] * p_x + positions[..., 1] * p_y).flatten(-2)
    return torch.cat([torch.cos(loc), torch.sin(loc)], dim=-1)
