"""M/EEG processing shared by the THINGS-MEG preparation and ``mindvis-stream``: the bounds of a window around an
onset, one window processed alone (offline or live), and the robust scaling of the channels."""
from __future__ import annotations

import numpy as np


def window_bounds(onset: int, sfreq: float, tmin: float, tmax: float) -> tuple[int, int]:
    """Raw sample range [start, stop) of the window ``tmin``..``tmax`` s around the sample ``onset``."""
    return onset + int(round(tmin * sfreq)), onset + int(round(tmax * sfreq)) + 1


def preprocess_window(x: np.ndarray, sfreq: float, tmin: float, h_freq: float, out_sfreq: float) -> np.ndarray:
    """One raw window (channels, samples from ``tmin``) -> (channels, T): minus its pre-onset mean (the baseline,
    which also removes slow drifts), low-passed at ``h_freq`` and resampled to ``out_sfreq`` with MNE, using
    nothing outside the window (so it runs as soon as the window is recorded)."""
    import mne

    x = np.asarray(x, np.float64)
    n_base = max(1, int(round(-tmin * sfreq)))
    x = x - x[:, :n_base].mean(1, keepdims=True)
    if h_freq and h_freq < sfreq / 2:
        x = mne.filter.filter_data(x, sfreq, None, h_freq, verbose="error")
    return mne.filter.resample(x, up=out_sfreq, down=sfreq, npad="auto", verbose="error")


def robust_scale(x: np.ndarray, median: np.ndarray, iqr: np.ndarray, clamp: float) -> np.ndarray:
    """Per channel ``(x - median) / iqr`` clamped to +-``clamp``; x is (..., channels, T)."""
    return np.clip((x - median[:, None]) / iqr[:, None], -clamp, clamp).astype(np.float32)
