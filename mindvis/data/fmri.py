"""fMRI array preprocessing shared by every dataset: windows, padding, normalisation, augmentation, checks."""
from __future__ import annotations

import numpy as np
import torch

PAD_MODES = ("exact", "original")


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file, key and what was expected."""


def error_summary(e: BaseException) -> str:
    """``Type: first line of the message`` of an error raised by a reader, for one-line messages."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def read_npz(path, keys, optional=()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (and those of ``optional`` that exist) of an .npz file, never unpickled, or a
    :class:`DataError` naming the file: a text, truncated or object-array file is refused in one line, and missing
    keys are listed with the ones present."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"{path}: expected an .npz archive, found a single .npy array")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; the file has {sorted(npz.files)}")
            return {k: np.asarray(npz[k]) for k in [*keys, *(k for k in optional if k in npz.files)]}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def padded_length(num_voxels: int, patch_size: int, pad_mode: str = "exact") -> int:
    """Voxel count after padding to a multiple of ``patch_size``.

    ``exact`` pads only what is missing. ``original`` reproduces MinD-Vis, which always pads
    ``patch_size - V % patch_size`` voxels, i.e. a whole extra patch when ``V`` already divides;
    released checkpoints' voxel counts depend on it.
    """
    if pad_mode == "exact":
        return num_voxels + (-num_voxels) % patch_size
    if pad_mode == "original":
        return num_voxels + patch_size - num_voxels % patch_size
    raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


def pad_to_length(x: np.ndarray, length: int) -> np.ndarray:
    """Pad the last axis to ``length`` by wrapping around (the original's np.pad 'wrap')."""
    if x.shape[-1] > length:
        raise DataError(f"cannot pad {x.shape[-1]} voxels down to {length}")
    if x.shape[-1] == length:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return np.pad(x, pad, mode="wrap")


def pad_to_patch_size(x: np.ndarray, patch_size: int, pad_mode: str = "exact") -> np.ndarray:
    return pad_to_length(x, padded_length(x.shape[-1], patch_size, pad_mode))


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Wrap-pad or truncate the last axis to ``length`` (how the original fits data to a checkpoint)."""
    return pad_to_length(x, length) if x.shape[-1] <= length else x[..., :length]


def average_windows(frames: np.ndarray, window_frames: int) -> np.ndarray:
    """(T, V) frames -> (T // window_frames, V) window means.

    Windows are ``np.array_split`` sections as in MinD-Vis: when T does not divide, the first
    ``T % n`` windows hold one frame more.
    """
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    n = len(frames) // window_frames
    if n == 0:
        raise DataError(f"{len(frames)} frames are fewer than one window of {window_frames}")
    bounds = np.cumsum([0] + [len(s) for s in np.array_split(np.empty(len(frames)), n)])
    sums = np.add.reduceat(frames.astype(np.float64), bounds[:-1], axis=0)
    return (sums / np.diff(bounds)[:, None]).astype(np.float32)


def normalize(x: np.ndarray, mean: float | None = None, std: float | None = None):
    """Scalar z-scoring (MinD-Vis normalises a subject by one mean and one std). Returns (x, mean, std)."""
    mean = float(np.mean(x, dtype=np.float64)) if mean is None else mean
    std = float(np.std(x, dtype=np.float64)) if std is None else std
    if not np.isfinite(std) or std == 0:
        raise DataError(f"cannot normalise: standard deviation is {std}")
    return ((x - mean) / std).astype(np.float32), mean, std


def check_finite(x: np.ndarray, where: str) -> None:
    """Raise :class:`DataError` naming ``where`` and the first bad entry if ``x`` has NaN or Inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"{where}: {int(bad.sum())} non-finite values (NaN/Inf), first at index {idx}")


def interpolation_pairs(n: int, aug_times: int, rng: np.random.Generator) -> np.ndarray:
    """Index pairs for the interpolation augmentation: (aug_times - 1) * n extra samples, each the
    midpoint of two random samples (MinD-Vis ``augmentation`` with ratio 0.5)."""
    if aug_times < 1:
        raise ValueError(f"aug_times must be >= 1, got {aug_times}")
    return rng.integers(0, n, size=((aug_times - 1) * n, 2))


class RandomVoxelZeroing:
    """Set a random fraction ``p`` of voxels to zero.

    The original MinD-Vis meant to do this (20 %) but drew the indices along the channel axis of a
    (1, V) array, so it zeroed nothing; this one draws along the voxel axis.
    """

    def __init__(self, p: float = 0.2, generator: torch.Generator | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"zeroing fraction must be in [0, 1), got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[-1] * self.p)
        if n == 0:
            return x
        idx = torch.randperm(x.shape[-1], generator=self.generator)[:n]
        x = x.clone()
        x[..., idx] = 0
        return x
