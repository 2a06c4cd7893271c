"""What mindvis-sample reads besides a model: fMRI files given with --fmri, and the synthetic world's settings that
the samples' metadata records (shared by the DC-LDM and MindEye sampling commands)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data.fmri import DataError, error_summary


def read_fmri_file(path: str | Path) -> np.ndarray:
    """(N, V) fMRI from .npy, .npz (key 'fmri' or the only array) or .h5/.hdf5 (dataset 'fmri'); anything else, or
    a file that is unreadable, empty, non-numeric or non-finite, is a one-line DataError naming the file."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"fMRI file not found: {path}")
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "fmri" not in z.files and len(z.files) != 1:
                    raise DataError(f"{path}: no 'fmri' key among {z.files}")
                x = z["fmri"] if "fmri" in z.files else z[z.files[0]]
        elif path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                if "fmri" not in f:
                    raise DataError(f"{path}: no dataset 'fmri' (has {list(f)})")
                x = f["fmri"][()]
        else:
            raise DataError(f"{path}: unsupported fMRI file type {path.suffix!r} (.npy, .npz, .h5)")
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as e:
        raise DataError(f"{path}: not a readable {path.suffix} file ({error_summary(e)})") from None
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{path}: fMRI must be numbers, got an array of {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2:
        raise DataError(f"{path}: fMRI must be (samples, voxels), got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{path}: fMRI holds no samples or no voxels, shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: fMRI holds NaN/Inf")
    return x


def world_settings(data_cfg) -> dict | None:
    """The synthetic world's settings, for the samples' metadata (mindvis-eval's synthetic classifier), or None."""
    from ..finetune.data import synthetic_world

    world = synthetic_world(data_cfg)
    return asdict(world) if world else None
