"""HCP-1200 resting state -> the MinD-Vis HCP layout (``<subject>/HCP_visual_voxel.npz``, V1..V4).

Input: CIFTI-2 dense time series (``*_Atlas_MSMAll.dtseries.nii``, 91,282 grayordinates, TR 0.72 s)
read with nibabel's CIFTI-2 API, and the HCP-MMP1.0 parcellation on the same surfaces as a CIFTI-2
label file (``*.dlabel.nii``, areas ``L_V1_ROI``, ``R_V1_ROI``, ...). Grayordinates are matched by
(structure, vertex), so a cortex-only label file (59,412) works with a 91,282 time series. Alternatively,
volumetric 4-D NIfTI runs with an integer atlas image and its label values for V1..V4.

Each run is read in chunks of frames (bounded memory); runs of a subject are concatenated in time.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError, check_finite
from mindvis.data.hcp import HCP_FILE, HCP_ROIS

from .common import done, item_record, load_image, require_file, write_item, write_meta

DEFAULT_PATTERN = "MNINonLinear/Results/rfMRI_REST*/rfMRI_REST*_Atlas_MSMAll.dtseries.nii"
FIX_CLEAN_PATTERN = "MNINonLinear/Results/rfMRI_REST*/rfMRI_REST*_Atlas_MSMAll_hp2000_clean.dtseries.nii"
RUN_MODES = ("one", "all")
PREFERRED_RUN = "REST1_LR"


def select_runs(runs: list[Path], mode: str = "one", include_7t: bool = False) -> list[Path]:
    """The runs of one subject to prepare. ``one`` (the original pipeline: one 1,200-frame run per subject, which is
    how ~136k windows come from ~1,200 subjects): ``REST1_LR`` if present, else the first; ``all``: every run in
    name order. 7T runs (TR 1.0 s, not the 3T release's 0.72 s) are left out unless ``include_7t``."""
    if mode not in RUN_MODES:
        raise DataError(f"runs must be one of {RUN_MODES}, got {mode!r}")
    runs = sorted(r for r in runs if include_7t or "7T" not in r.name)
    if mode == "one" and runs:
        preferred = [r for r in runs if PREFERRED_RUN in r.name]
        return (preferred or runs)[:1]
    return runs


def _load_cifti(path: Path):
    import nibabel as nib

    img = load_image(path, "CIFTI-2")
    if not isinstance(img, nib.cifti2.Cifti2Image):
        raise DataError(f"{path}: not a CIFTI-2 file (got {type(img).__name__})")
    return img


def grayordinate_keys(axis) -> list[tuple[str, int]]:
    """(structure, vertex) of every surface grayordinate of a BrainModelAxis, (structure, -1-index) for voxels."""
    keys = []
    for i, (name, vertex, voxel) in enumerate(zip(axis.name, axis.vertex, axis.voxel)):
        keys.append((str(name), int(vertex)) if vertex >= 0 else (str(name), -1 - i))
    return keys


def mmp_roi_columns(labels_path: Path, dtseries_axis, rois=HCP_ROIS) -> dict[str, np.ndarray]:
    """Column indices of the dtseries for each ROI (both hemispheres) from an HCP-MMP1.0 dlabel file."""
    import nibabel as nib

    lab = _load_cifti(labels_path)
    label_axis, brain_axis = lab.header.get_axis(0), lab.header.get_axis(1)
    if not isinstance(label_axis, nib.cifti2.LabelAxis) or not isinstance(brain_axis, nib.cifti2.BrainModelAxis):
        raise DataError(f"{labels_path}: expected a dlabel file (label axis x brain-model axis)")
    table = label_axis.label[0]  # value -> (name, rgba)
    values = np.asarray(lab.get_fdata(dtype=np.float32)[0]).astype(int)
    wanted = {}
    for value, (name, _) in table.items():
        m = re.fullmatch(r"[LR]_(V\d)_ROI", str(name))
        if m and m.group(1) in rois:
            wanted[value] = m.group(1)
    missing = sorted(set(rois) - set(wanted.values()))
    if missing:
        raise DataError(f"{labels_path}: no label for ROI(s) {missing} (expected L_V1_ROI, R_V1_ROI, ... of HCP-MMP1.0)")
    col_of = {k: i for i, k in enumerate(grayordinate_keys(dtseries_axis))}
    out = {r: [] for r in rois}
    for key, value in zip(grayordinate_keys(brain_axis), values):
        if value in wanted and key in col_of:
            out[wanted[value]].append(col_of[key])
    for r, cols in out.items():
        if not cols:
            raise DataError(f"{labels_path}: ROI {r} has no grayordinate in common with the time series")
    return {r: np.sort(np.array(c)) for r, c in out.items()}


def read_columns(img, columns: dict[str, np.ndarray], chunk: int = 128) -> dict[str, np.ndarray]:
    """(frames, voxels) float32 per ROI, reading ``chunk`` frames at a time."""
    n = img.shape[0]
    out = {r: np.empty((n, len(c)), np.float32) for r, c in columns.items()}
    for start in range(0, n, chunk):
        block = np.asarray(img.dataobj[start:start + chunk], dtype=np.float32)
        for r, c in columns.items():
            out[r][start:start + chunk] = block[:, c]
    return out


def read_volume_rois(run: Path, atlas: Path, atlas_values: dict[str, list[int]], chunk: int = 64):
    """Volumetric alternative: a 4-D NIfTI run and an integer atlas on the same grid."""
    img, at = load_image(run), load_image(atlas)
    if img.ndim != 4:
        raise DataError(f"{run}: expected a 4-D NIfTI time series, got shape {img.shape}")
    if tuple(at.shape[:3]) != tuple(img.shape[:3]):
        raise DataError(f"{atlas}: atlas grid {at.shape[:3]} differs from the run's {img.shape[:3]}")
    labels = np.asarray(at.dataobj).astype(int)
    masks = {r: np.isin(labels, v) for r, v in atlas_values.items()}
    for r, m in masks.items():
        if not m.any():
            raise DataError(f"{atlas}: no voxel with label(s) {atlas_values[r]} for ROI {r}")
    t = img.shape[3]
    out = {r: np.empty((t, int(m.sum())), np.float32) for r, m in masks.items()}
    for start in range(0, t, chunk):
        block = np.asarray(img.dataobj[..., start:start + chunk], dtype=np.float32)  # (x, y, z, k)
        for r, m in masks.items():
            out[r][start:start + chunk] = block[m].T
    return out


def prepare_hcp(input_root: str | Path, out: str | Path, labels: str | Path | None = None,
                pattern: str = DEFAULT_PATTERN, subjects: list[str] | None = None, atlas: str | Path | None = None,
                atlas_values: dict[str, list[int]] | None = None, progress=None, runs: str = "one",
                include_7t: bool = False) -> Path:
    """Prepare every subject under ``input_root`` (folders whose runs match ``pattern``; which of them:
    :func:`select_runs`) into ``out``.

    Finished subjects are skipped; each is written to a temporary folder and renamed, so an
    interrupted preparation resumes without redoing or corrupting anything.
    """
    input_root, out = Path(input_root), Path(out)
    if not input_root.is_dir():
        raise DataError(f"HCP input folder not found: {input_root}")
    if labels is None and atlas is None:
        raise DataError("give the HCP-MMP1.0 label file (--labels *.dlabel.nii) or, for NIfTI input, --atlas")
    subs = subjects or sorted(p.name for p in input_root.iterdir() if p.is_dir())
    out.mkdir(parents=True, exist_ok=True)
    items, sources = {}, {"input": str(input_root), "labels": str(labels) if labels else None,
                          "atlas": str(atlas) if atlas else None}
    for s in (progress(subs, desc="HCP subjects") if progress else subs):
        dst = out / s
        if done(dst):
            items[s] = item_record(dst)
            continue
        found = sorted((input_root / s).glob(pattern))
        chosen = select_runs(found, runs, include_7t)
        if not chosen:
            raise DataError(f"subject {s}: no {'' if include_7t else '3T '}run matches {pattern!r} under "
                            f"{input_root / s}" + (f" (7T runs left out: {[r.name for r in found]})" if found else ""))
        parts = []
        for run in chosen:
            if atlas is not None:
                parts.append(read_volume_rois(run, require_file(Path(atlas), "atlas"), atlas_values or {}))
            else:
                img = _load_cifti(run)
                cols = mmp_roi_columns(require_file(Path(labels), "label file"), img.header.get_axis(1))
                parts.append(read_columns(img, cols))
        rois = {r: np.concatenate([p[r] for p in parts]) for r in HCP_ROIS}
        for r, x in rois.items():
            check_finite(x, f"subject {s} {r}")

        def fill(tmp: Path, rois=rois, chosen=chosen):
            np.savez(tmp / HCP_FILE, **rois)
            for r, x in rois.items():  # the memory-mappable form
                np.save(tmp / f"{r}.npy", x)
            return {"runs": [str(r) for r in chosen], "frames": int(rois["V1"].shape[0]),
                    "voxels": {r: int(x.shape[1]) for r, x in rois.items()},
                    "mean": float(np.mean([x.mean() for x in rois.values()])),
                    "std": float(np.sqrt(np.mean([x.var() for x in rois.values()])))}

        items[s] = write_item(dst, fill)
    write_meta(out, "hcp", sources, items, {"pattern": pattern, "runs": runs, "include_7t": include_7t,
                                            "rois": list(HCP_ROIS), "tr_s": 0.72})
    return out
