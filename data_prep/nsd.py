"""The Natural Scenes Dataset (Allen et al. 2022), one subject, from the release layout to model-ready files.

Release files read (paths under ``--root``):

* ``nsddata_betas/ppdata/subjNN/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz`` (or ``.hdf5``, or
  the older name ``.mat`` that nsd_access and the NSD examples read: the same HDF5 file with dataset ``betas``,
  MATLAB order: h5py shows (trials, Z, Y, X)): int16, 750 trials per session, percent signal change x 300;
* ``nsddata/ppdata/subjNN/func1pt8mm/roi/<roi>.nii.gz``: voxels whose value is above ``roi_threshold`` (default 0:
  nsdgeneral's 1s; -1 marks voxels that are not cortical voxels, 0 cortical voxels outside the ROI), flattened in the
  betas' (C) order;
* ``nsddata/experiments/nsd/nsd_expdesign.mat``: ``masterordering`` (1-based positions in the subject's image list,
  per trial), ``subjectim`` (8 x 10,000 1-based 73k ids), ``sharedix`` (the shared-1000, 1-based 73k ids);
* ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: ``imgBrick`` (73,000, 425, 425, 3) uint8.

Trial t of a subject shows 73k id ``subjectim[s, masterordering[t] - 1] - 1`` in session ``t // 750 + 1`` at volume
``t % 750``; it is a shared-1000 trial when that id is in ``sharedix`` (equivalently ``masterordering[t] <= 1000``).

Written to ``--out``: ``betas.npy`` (trials x voxels, float32 or float16, memory-mappable), ``trials.csv`` (trial,
session, volume, nsd_id (0-based), repetition (0-based, counted over the whole design), shared), the subject's images
``images_<size>.npy`` (uint8, one per id in ``image_ids.npy``, sorted), ``voxels.npy`` (flat indices of the ROI in
the volume) and ``meta.json``. Sessions are prepared one at a time (bounded memory) into ``sessions/`` and each is
renamed into place when complete, so an interrupted preparation resumes where it stopped; they are removed once
``betas.npy`` holds them (a rerun with the same settings then returns at once). A finished session records the
settings that made it; a rerun with other settings prepares that session again instead of mixing the two.

Z-scoring (``zscore_mode``), per voxel within each session: ``session-train`` (default, as the MindEye2 paper) fits
the mean and standard deviation on the session's trials outside the shared-1000 test images and applies them to all
its trials, so no statistic is drawn from test trials; ``session-all`` fits them on all 750 trials, as MindEye2's
released data notebook (which notes that the paper excluded the shared-1000) and MindEye; ``none`` keeps percent
signal change.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError, check_finite, error_summary
from mindvis.releases import SYNTHETIC_GENERATOR
from mindvis.utils.io import atomic_write

from .common import done, item_record, load_image, require_file, write_item, write_meta

log = logging.getLogger("mindvis.data_prep.nsd")

TRIALS_PER_SESSION = 750
BETA_SCALE = 300.0  # the release stores percent signal change x 300 as int16
SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}  # sessions each subject completed
ZSCORE = ("session-train", "session-all", "none")
BETAS_SUFFIXES = (".nii.gz", ".hdf5", ".mat")  # .mat: the older name of the same HDF5 file
DTYPES = ("float32", "float16")


def subject_name(subject: str | int) -> str:
    """``subj01`` from ``subj01``, ``1`` or ``01``."""
    m = re.fullmatch(r"(?:subj)?0*(\d+)", str(subject))
    if not m or not 1 <= int(m.group(1)) <= 8:
        raise DataError(f"NSD subject must be subj01..subj08 (or 1..8), got {subject!r}")
    return f"subj{int(m.group(1)):02d}"


def parse_sessions(text: str | None, subject: str, root: Path | None = None) -> list[int]:
    """Session numbers from ``1-40`` / ``1,3,5-7``; default: every session of the subject whose betas are under
    ``root`` (a partial download prepares what is there)."""
    last = SESSIONS[int(subject[4:])]
    if not text:
        present = [k for k in range(1, last + 1) if _find_betas(root, subject, k)]
        if not present:
            raise DataError(f"no NSD betas of {subject} under {_betas_folder(root, subject)}")
        gaps = [k for k in range(1, present[-1]) if k not in present]
        if gaps:
            log.warning("NSD betas of %s session(s) %s are missing under %s: preparing the %d present (%s); pass "
                        "--sessions to choose them explicitly", subject, _ranges(gaps), _betas_folder(root, subject),
                        len(present), _ranges(present))
        return present
    out = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise DataError(f"--sessions takes numbers and ranges like 1-40 or 1,3,5-7, got {text!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        out += list(range(a, b + 1))
    bad = [s for s in out if not 1 <= s <= last]
    if bad or not out:
        raise DataError(f"{subject} has sessions 1-{last}; --sessions {text!r} asks for {bad or 'none'}")
    return sorted(set(out))


def _ranges(numbers: list[int]) -> str:
    """``1-3,5`` from [1, 2, 3, 5]."""
    out, start = [], None
    for i, k in enumerate(numbers):
        start = k if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != k + 1:
            out.append(f"{start}-{k}" if k > start else str(k))
            start = None
    return ",".join(out)


def read_design(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masterordering (T,), subjectim (8, n), sharedix (k,)) of ``nsd_expdesign.mat``, 1-based as stored."""
    from scipy.io import loadmat

    require_file(path, "NSD design file (nsd_expdesign.mat)")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises many types for non-MAT files
        raise DataError(f"{path}: not a readable MAT file ({error_summary(e)})") from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise DataError(f"{path}: not nsd_expdesign.mat: no {missing} (has {sorted(k for k in mat if k[0] != '_')})")
    order, subjectim, shared = (np.asarray(mat[k]) for k in ("masterordering", "subjectim", "sharedix"))
    if order.ndim != 2 or 1 not in order.shape or subjectim.ndim != 2 or subjectim.shape[0] != 8:
        raise DataError(f"{path}: masterordering must be a vector and subjectim 8 x images; got "
                        f"{order.shape} and {subjectim.shape}")
    order, shared = order.reshape(-1).astype(np.int64), shared.reshape(-1).astype(np.int64)
    subjectim = subjectim.astype(np.int64)
    if order.min() < 1 or order.max() > subjectim.shape[1] or subjectim.min() < 1:
        raise DataError(f"{path}: masterordering must index 1..{subjectim.shape[1]} and ids be 1-based")
    return order, subjectim, shared


def trial_table(order: np.ndarray, subjectim: np.ndarray, shared: np.ndarray, subject: str,
                sessions: list[int]) -> dict[str, np.ndarray]:
    """Per trial of the chosen sessions: trial, session, volume, nsd_id (0-based), repetition, shared."""
    s = int(subject[4:]) - 1
    ids = subjectim[s, order - 1] - 1  # every trial of the design
    repetition = np.zeros(len(ids), np.int64)
    seen: dict[int, int] = {}
    for t, i in enumerate(ids.tolist()):
        repetition[t] = seen.get(i, 0)
        seen[i] = repetition[t] + 1
    trials = np.concatenate([np.arange((k - 1) * TRIALS_PER_SESSION, k * TRIALS_PER_SESSION) for k in sessions])
    if trials.max() >= len(order):
        raise DataError(f"the design has {len(order)} trials; session {sessions[-1]} needs {trials.max() + 1}")
    return {"trial": trials, "session": trials // TRIALS_PER_SESSION + 1, "volume": trials % TRIALS_PER_SESSION,
            "nsd_id": ids[trials], "repetition": repetition[trials], "shared": np.isin(ids[trials], shared - 1)}


def roi_mask(root: Path, subject: str, roi: str, threshold: float) -> np.ndarray:
    """Boolean volume (X, Y, Z) of the ROI: values above ``threshold``."""
    path = require_file(root / "nsddata" / "ppdata" / subject / "func1pt8mm" / "roi" / f"{roi}.nii.gz", f"NSD ROI {roi}")
    values = read_volume(path)
    if values.ndim != 3:
        raise DataError(f"{path}: an ROI must be a 3-D volume, got shape {values.shape}")
    mask = values > threshold
    if not mask.any():
        raise DataError(f"{path}: no voxel above {threshold} (values {np.unique(values)[:8].tolist()})")
    return mask


def _betas_folder(root: Path, subject: str) -> Path:
    return root / "nsddata_betas" / "ppdata" / subject / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"


def _find_betas(root: Path, subject: str, session: int) -> Path | None:
    for ext in BETAS_SUFFIXES:
        p = _betas_folder(root, subject) / f"betas_session{session:02d}{ext}"
        if p.is_file():
            return p
    return None


def betas_path(root: Path, subject: str, session: int) -> Path:
    p = _find_betas(root, subject, session)
    if p is None:
        raise DataError(f"NSD betas of {subject} session {session:02d} not found: "
                        f"{_betas_folder(root, subject)}/betas_session{session:02d}.nii.gz (or .hdf5, .mat)")
    return p


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI file's data; a truncated or corrupt file (nibabel reads lazily: EOFError, zlib errors ...) is a
    one-line DataError naming it."""
    image = load_image(path)
    try:
        return np.asarray(image.dataobj)
    except Exception as e:  # noqa: BLE001 - EOFError, zlib.error, OSError, ValueError ...
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({error_summary(e)}); download it again") from None


def read_session(path: Path, mask: np.ndarray) -> np.ndarray:
    """(750, V) percent signal change of the ROI voxels, in the betas' flattening order."""
    if path.suffix in (".hdf5", ".mat"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                betas = f["betas"]
                if betas.ndim != 4:
                    raise DataError(f"{path}: dataset 'betas' has shape {betas.shape}; NSD betas are 4-D (trials, Z, "
                                    "Y, X as h5py shows MATLAB's order)")
                data = betas[()].transpose(3, 2, 1, 0)  # MATLAB order -> (X, Y, Z, trials)
        except (OSError, KeyError, AttributeError, TypeError) as e:
            raise DataError(f"{path}: not an NSD betas HDF5 with dataset 'betas' ({error_summary(e)})") from None
    else:
        data = read_volume(path)
    if data.ndim != 4 or data.shape[:3] != mask.shape:
        raise DataError(f"{path}: betas of shape {data.shape} do not match the ROI grid {mask.shape} "
                        "(both must be func1pt8mm)")
    if data.shape[3] != TRIALS_PER_SESSION:
        raise DataError(f"{path}: {data.shape[3]} trials, an NSD session has {TRIALS_PER_SESSION}")
    x = data[mask].T.astype(np.float32) / BETA_SCALE  # (trials, V): boolean indexing flattens in C order
    check_finite(x, str(path))
    return x


def zscore(x: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Per voxel, with the mean and standard deviation of the trials ``fit`` (a boolean mask; default all) applied
    to every trial; constant voxels become 0."""
    ref = x if fit is None else x[fit]
    std = ref.std(0)
    return ((x - ref.mean(0)) / np.where(std > 0, std, 1)).astype(np.float32)


def normalise_session(x: np.ndarray, shared: np.ndarray, mode: str, where: str) -> np.ndarray:
    """One session's (750, V) betas under ``mode`` (see the module docstring); ``shared`` marks its test trials."""
    if mode == "none":
        return x
    if mode == "session-all":
        return zscore(x)
    if (~shared).sum() < 2:
        raise DataError(f"{where}: --zscore session-train needs trials outside the shared-1000 to fit on; this session "
                        f"has {(~shared).sum()} (use --zscore session-all)")
    return zscore(x, ~shared)


def load_stimuli(path: Path, ids: np.ndarray, size: int, chunk: int = 64, progress=None) -> np.ndarray:
    """(len(ids), size, size, 3) uint8 from ``imgBrick`` (ids sorted, 0-based), resized (bicubic) once."""
    import h5py
    from PIL import Image

    require_file(path, "NSD stimuli (nsd_stimuli.hdf5)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({error_summary(e)})") from None
    with f:
        if "imgBrick" not in f or f["imgBrick"].ndim != 4 or f["imgBrick"].shape[-1] != 3:
            raise DataError(f"{path}: no dataset imgBrick of shape (images, H, W, 3)")
        brick = f["imgBrick"]
        if ids.max() >= brick.shape[0]:
            raise DataError(f"{path}: imgBrick holds {brick.shape[0]} images; the design names id {ids.max()}")
        out = np.empty((len(ids), size, size, 3), np.uint8)
        starts = range(0, len(ids), chunk)
        for a in (progress(starts, desc="NSD images") if progress else starts):
            for k, img in enumerate(brick[ids[a:a + chunk]]):
                out[a + k] = img if img.shape[0] == size else np.asarray(
                    Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return out


def prepare_nsd(root: str | Path, subject: str, out: str | Path, sessions: str | None = None,
                roi: str = "nsdgeneral", roi_threshold: float = 0.0, zscore_mode: str = "session-train",
                dtype: str = "float32", image_size: int = 256, progress=None) -> Path:
    """Prepare one NSD subject (see the module docstring); returns ``out``."""
    root, out = Path(root), Path(out)
    if zscore_mode not in ZSCORE or dtype not in DTYPES or image_size < 8:
        raise DataError(f"zscore must be one of {ZSCORE}, dtype one of {DTYPES}, image_size >= 8; got "
                        f"{zscore_mode!r}, {dtype!r}, {image_size}")
    subject = subject_name(subject)
    chosen = parse_sessions(sessions, subject, root)
    wanted = {"subject": subject, "sessions": chosen, "roi": roi, "roi_threshold": roi_threshold,
              "zscore": zscore_mode, "dtype": dtype, "image_size": image_size}
    if (out / "meta.json").is_file() and (out / "betas.npy").is_file():
        settings = json.loads((out / "meta.json").read_text()).get("settings", {})
        if all(settings.get(k) == v for k, v in wanted.items()):
            return out  # prepared already, with these settings
    paths = {k: betas_path(root, subject, k) for k in chosen}  # every file exists before any work
    order, subjectim, shared = read_design(root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat")
    table = trial_table(order, subjectim, shared, subject, chosen)
    mask = roi_mask(root, subject, roi, roi_threshold)
    items = {}
    made_with = {"source": None, "roi": roi, "roi_threshold": roi_threshold, "zscore": zscore_mode,
                 "voxels": int(mask.sum())}
    for k in (progress(chosen, desc=f"NSD {subject} sessions") if progress else chosen):
        folder = out / "sessions" / f"session{k:02d}"
        settings_k = {**made_with, "source": str(paths[k])}
        if done(folder) and any(item_record(folder).get(key) != v for key, v in settings_k.items()):
            shutil.rmtree(folder)  # made with other settings: prepared again, never mixed with this run's
        if not done(folder):
            def fill(tmp: Path, k=k, settings_k=settings_k):
                x = read_session(paths[k], mask)
                shared_k = table["shared"][table["session"] == k]
                np.save(tmp / "betas.npy", normalise_session(x, shared_k, zscore_mode, str(paths[k])))
                return {**settings_k, "mean": float(x.mean()), "std": float(x.std())}

            write_item(folder, fill)
        items[f"session{k:02d}"] = item_record(folder)
    n_vox = int(mask.sum())

    def assemble(tmp: str) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(table["trial"]), n_vox))
        for i, k in enumerate(chosen):
            arr[i * TRIALS_PER_SESSION:(i + 1) * TRIALS_PER_SESSION] = np.load(
                out / "sessions" / f"session{k:02d}" / "betas.npy", mmap_mode="r")
        arr.flush()
        del arr

    atomic_write(out / "betas.npy", assemble)
    ids = np.unique(table["nsd_id"])
    image_file = out / f"images_{image_size}.npy"
    if not image_file.is_file() or np.load(image_file, mmap_mode="r").shape[0] != len(ids):
        stimuli = root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
        images = load_stimuli(stimuli, ids, image_size, progress=progress)
        atomic_write(image_file, lambda tmp: np.save(open(tmp, "wb"), images))
    atomic_write(out / "image_ids.npy", lambda tmp: np.save(open(tmp, "wb"), ids))
    atomic_write(out / "voxels.npy", lambda tmp: np.save(open(tmp, "wb"), np.flatnonzero(mask)))

    def write_table(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(table))
            w.writerows(zip(*(table[c].astype(int).tolist() for c in table)))

    atomic_write(out / "trials.csv", write_table)
    synthetic = root / "meta.json"  # a synthetic world's NSD records its settings (for its prior and classifier)
    settings = wanted | {"volume": list(mask.shape), "voxels": n_vox, "trials": len(table["trial"]),
                         "images": len(ids), "shared_images": int(len(np.unique(table["nsd_id"][table["shared"]]))),
                         "beta_scale": BETA_SCALE}
    if synthetic.is_file():
        meta = json.loads(synthetic.read_text())
        if meta.get("generator") == SYNTHETIC_GENERATOR:
            settings["synthetic_world"] = meta["config"]
    write_meta(out, "nsd", {"root": str(root)}, items, settings)
    shutil.rmtree(out / "sessions")  # betas.npy holds them now; a rerun with these settings returns early
    return out
