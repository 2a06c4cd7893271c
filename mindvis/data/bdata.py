"""The Kamitani lab's BData HDF5 files (bdpy): ``/dataSet`` (samples x columns) and ``/metaData`` with
``key``, ``description`` and ``value`` (keys x columns; a column belongs to a key where its value is set).
GOD uses ``VoxelData`` and ``ROI_*`` voxel flags, ``DataType`` (1 training, 2 test, 3 imagery) and the stimulus
column. bdpy reads both spellings of the groups (``dataSet``/``metaData``, and ``dataset``/``metadata``, which it
writes since 2017), and the stimulus column is ``Label`` in releases before 2019, ``stimulus_id`` after; all are
accepted, and the one found is reported (``layout``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .fmri import DataError, check_finite

GROUPS = (("dataSet", "metaData"), ("dataset", "metadata"))
STIMULUS_KEYS = ("stimulus_id", "Label")


def read_bdata(path: str | os.PathLike) -> dict:
    """Voxel matrix (float32), ROI masks over its columns, data types and stimulus ids (float64) of one file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"GOD HDF5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not an HDF5 file ({e})") from e
    with f:
        groups = next((g for g in GROUPS if g[0] in f and g[1] in f), None)
        if groups is None:
            raise DataError(f"{path}: not a BData file (needs /dataSet and /metaData, or /dataset and /metadata; "
                            f"has {sorted(f)})")
        data = np.asarray(f[groups[0]], dtype=np.float64)
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in f[groups[1]]["key"][:]]
        values = np.asarray(f[groups[1]]["value"], dtype=np.float64)
    if values.shape != (len(keys), data.shape[1]):
        raise DataError(f"{path}: metaData/value has shape {values.shape}, expected ({len(keys)}, {data.shape[1]})")

    def cols(key):
        if key not in keys:
            raise DataError(f"{path}: no metadata key {key!r}")
        row = values[keys.index(key)]
        return np.nonzero(~np.isnan(row) & (row != 0))[0]

    voxel_cols = cols("VoxelData") if "VoxelData" in keys else \
        np.unique(np.concatenate([cols(k) for k in keys if k.startswith("ROI_")]))
    roi_keys = [k for k in keys if k.startswith("ROI_")]
    if not roi_keys:
        raise DataError(f"{path}: no ROI_* metadata keys")
    masks = {k[4:]: np.isin(voxel_cols, cols(k)) for k in roi_keys}
    x = data[:, voxel_cols].astype(np.float32)
    check_finite(x, str(path))
    stim_key = next((k for k in STIMULUS_KEYS if k in keys), None)
    if stim_key is None:
        raise DataError(f"{path}: no stimulus column (metadata key {' or '.join(STIMULUS_KEYS)})")
    return {"x": x, "masks": masks, "dtype": data[:, cols("DataType")[0]].astype(int),
            "stim": data[:, cols(stim_key)[0]],
            "layout": {"groups": list(groups), "stimulus_key": stim_key}}
