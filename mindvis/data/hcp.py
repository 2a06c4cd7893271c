"""HCP resting-state fMRI in the MinD-Vis layout: ``<root>/<subject>/HCP_visual_voxel.npz`` with keys
V1, V2, V3, V4, each (frames, voxels), TR 0.72 s.

Subjects are prepared one at a time (ROI selection, window averaging, per-subject z-scoring) into
float32 ``.npy`` files in a cache folder and read back memory-mapped, so memory stays flat however
many subjects there are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write
from .fmri import DataError, average_windows, check_finite, normalize, read_npz

HCP_FILE = "HCP_visual_voxel.npz"
HCP_ROIS = ("V1", "V2", "V3", "V4")
#: HCP repetition time in seconds.
HCP_TR = 0.72


def hcp_subjects(root: str | os.PathLike, subjects: list[str] | None = None) -> list[str]:
    """Subject folders under ``root`` holding an HCP npz, sorted; ``subjects`` picks some of them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"HCP data folder not found: {root} (expected <root>/<subject>/{HCP_FILE})")
    if subjects:
        for s in subjects:
            if not (root / s / HCP_FILE).is_file():
                raise DataError(f"subject {s!r}: {root / s / HCP_FILE} does not exist")
        return list(subjects)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [s for s in found if not (root / s / HCP_FILE).is_file()]
    if missing:
        raise DataError(f"subject folder {root / missing[0]} has no {HCP_FILE}"
                        + (f" ({len(missing)} folders in all)" if len(missing) > 1 else ""))
    if not found:
        raise DataError(f"no subject folders with {HCP_FILE} under {root}")
    return found


def load_hcp_rois(path: str | os.PathLike, roi: str = "VC") -> np.ndarray:
    """(frames, voxels) float32 of one subject's npz: one ROI, or ``VC`` = V1..V4 concatenated.

    Per-ROI ``V1.npy`` ... beside the npz (written by ``mindvis-prep hcp``) are read memory-mapped instead.
    """
    path = Path(path)
    names = HCP_ROIS if roi == "VC" else (roi,)
    npys = [path.parent / f"{k}.npy" for k in names]
    if all(p.is_file() for p in npys):
        parts = [np.load(p, mmap_mode="r") for p in npys]
    else:
        arrays = read_npz(path, names)
        parts = [arrays[k].astype(np.float32) for k in names]
    for k, p in zip(names, parts):
        if p.ndim != 2:
            raise DataError(f"{path}: ROI {k} has shape {p.shape}, expected (frames, voxels)")
    if len({p.shape[0] for p in parts}) > 1:
        raise DataError(f"{path}: ROIs have different frame counts {[p.shape[0] for p in parts]}")
    x = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)
    check_finite(x, f"{path} ({roi})")
    return x


def prepare_hcp_subject(path: Path, roi: str, window_frames: int) -> np.ndarray:
    """Window-averaged, z-scored (windows, voxels) float32 of one subject."""
    x = average_windows(load_hcp_rois(path, roi), window_frames)
    return normalize(x)[0]


def prepared_hcp(root: str | os.PathLike, roi: str = "VC", window_frames: int = 10,
                 subjects: list[str] | None = None, cache_dir: str | os.PathLike | None = None,
                 progress=None) -> list[np.ndarray]:
    """Memory-mapped prepared arrays, one (windows, voxels) per subject, prepared once and cached.

    A cache entry is keyed by the source file (path, size, mtime) and the settings; it is written
    atomically, so an interrupted preparation is simply resumed.
    """
    from ..utils.cache import default_cache_dir

    root = Path(root)
    cache = Path(cache_dir or default_cache_dir()) / "prepared" / "hcp"
    out = []
    subs = hcp_subjects(root, subjects)
    it = progress(subs, desc="prepare HCP") if progress else subs
    for s in it:
        src = root / s / HCP_FILE
        st = src.stat()
        key = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{roi}|{window_frames}".encode()).hexdigest()[:16]
        dst = cache / f"{s}-{key}.npy"
        if not dst.is_file():
            arr = prepare_hcp_subject(src, roi, window_frames)
            atomic_write(dst, lambda tmp: np.save(open(tmp, "wb"), arr))
        out.append(np.load(dst, mmap_mode="r"))
    return out
