"""M/EEG-image pairs: a THINGS-MEG folder written by ``mindvis-prep things-meg`` and the THINGS-EEG2 release.

Both give trials x channels x times with the image of each trial, the channels' 2-D layout (for the brain module's
spatial attention) and the times. Test images are the releases' own (THINGS-MEG: ``trial_type`` test; THINGS-EEG2:
``preprocessed_eeg_test.npy``), averaged over their repetitions; single test trials are kept (marked as the fMRI
readers mark them) for the averaging curve. Training trials are single presentations (THINGS-EEG2: each of the
image's repetitions, or their average with ``average_train``).
"""
from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..releases import SYNTHETIC_GENERATOR, standard_1020_positions
from .fmri import DataError, check_finite
from .pairs import TRIAL_MARK, PairedSplit

EEG2_FILES = ("preprocessed_eeg_training.npy", "preprocessed_eeg_test.npy")


@dataclass
class MEEGData:
    train: PairedSplit  # fmri: (N, C, T) float32
    test: PairedSplit  # averaged test images first, then (optionally) their single trials
    ch_names: list[str]
    layout: np.ndarray  # (C, 2) sensor positions on the plane
    times: np.ndarray  # (T,) seconds from image onset
    description: str


def sensor_layout(positions: np.ndarray) -> np.ndarray:
    """(C, 3) sensor positions (head or device coordinates: origin inside the head, z up) -> (C, 2): the azimuthal
    equidistant projection around the vertical through the origin, as topographic maps draw a head from above."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all() or (np.abs(p).sum(1) == 0).any():
        raise DataError("sensor positions missing: every channel needs a finite, non-zero 3-D position "
                        f"(got {np.asarray(positions).shape}, {int((np.abs(p).sum(-1) == 0).sum())} at the origin)")
    x, y, z = p.T
    theta = np.arccos(np.clip(z / np.linalg.norm(p, axis=1), -1, 1))  # angle from the vertical
    phi = np.arctan2(y, x)
    return np.stack([theta * np.cos(phi), theta * np.sin(phi)], 1).astype(np.float32)


def _with_trials(avg: PairedSplit, trials: list[PairedSplit]) -> PairedSplit:
    if not trials:
        return avg
    return PairedSplit(np.concatenate([avg.fmri] + [t.fmri for t in trials]),
                       np.concatenate([avg.images] + [t.images for t in trials]),
                       np.concatenate([avg.labels] + [t.labels for t in trials]),
                       avg.ids + [i for t in trials for i in t.ids], avg.dataset + [d for t in trials for d in t.dataset])


# ----------------------------------------------------------------------------- one window, offline or live
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


# ----------------------------------------------------------------------------- THINGS-MEG (prepared)
def things_meg_pairs(path: str | Path, include_test_trials: bool = False) -> MEEGData:
    """Pairs from a folder written by ``mindvis-prep things-meg``."""
    root = Path(path)
    meta_file = root / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{root} is not a folder written by mindvis-prep things-meg (meta.json is missing)")
    meta = json.loads(meta_file.read_text())
    if meta.get("preparation") != "things-meg":
        raise DataError(f"{meta_file}: preparation {meta.get('preparation')!r}, expected 'things-meg'")
    x = np.load(root / "trials.npy", mmap_mode="r")
    with open(root / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != len(x):
        raise DataError(f"{root}: trials.npy has {len(x)} trials but trials.csv {len(rows)} rows")
    images = np.load(root / f"images_{meta['settings']['image_size']}.npy", mmap_mode="r")
    names = json.loads((root / "image_ids.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    concepts = sorted({r["concept"] for r in rows})
    label = {c: i for i, c in enumerate(concepts)}
    img = np.array([index[r["image"]] for r in rows])
    lab = np.array([label[r["concept"]] for r in rows])
    test = np.array([r["split"] == "test" for r in rows])
    tr = np.flatnonzero(~test)
    train = PairedSplit(np.asarray(x[tr], np.float32), images[img[tr]], lab[tr], [rows[i]["image"] for i in tr],
                        ["things-meg"] * len(tr))
    avg_ids = sorted({rows[i]["image"] for i in np.flatnonzero(test)})
    by_image = {n: np.flatnonzero(test & (img == index[n])) for n in avg_ids}
    avg = PairedSplit(np.stack([np.asarray(x[by_image[n]], np.float32).mean(0) for n in avg_ids]),
                      images[[index[n] for n in avg_ids]], np.array([lab[by_image[n][0]] for n in avg_ids]),
                      avg_ids, ["things-meg"] * len(avg_ids))
    singles = []
    if include_test_trials:
        for n in avg_ids:
            k = by_image[n]
            singles.append(PairedSplit(np.asarray(x[k], np.float32), images[img[k]], lab[k],
                                       [f"{n}{TRIAL_MARK}{j}" for j in range(len(k))], ["things-meg"] * len(k)))
    layout = np.array(meta["layout"], np.float32)
    desc = (f"THINGS-MEG {root}: {len(train)} training trials, {len(avg)} test images x "
            f"{len(by_image[avg_ids[0]]) if avg_ids else 0} repetitions, {x.shape[1]} sensors x {x.shape[2]} samples "
            f"at {meta['settings']['sfreq']:g} Hz")
    return MEEGData(train, _with_trials(avg, singles), meta["ch_names"], layout, np.array(meta["times"]), desc)


# ----------------------------------------------------------------------------- THINGS-EEG2 (release)
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class _ArrayDictUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else (the EEG2 files are pickled dicts)."""

    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays, dicts, lists and "
                                     "strings are read")


def load_pickled_npy(path: str | Path):
    """A ``.npy`` file holding a pickled object (as ``np.save(dict)`` writes), read through a restricted unpickler."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                      np.lib.format.read_array_header_2_0)(f)
        except ValueError as e:
            raise DataError(f"{path}: not a .npy file ({e})") from None
        if header[2] != np.dtype(object):
            raise DataError(f"{path}: expected a pickled dict (object array), got dtype {header[2]}")
        try:
            obj = _ArrayDictUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{path}: {e}") from None
    return obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj


def read_eeg2_file(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(data (images, repetitions, channels, times), ch_names, times) of one preprocessed EEG2 file, checked."""
    d = load_pickled_npy(path)
    if not isinstance(d, dict) or not {"preprocessed_eeg_data", "ch_names", "times"} <= set(d):
        raise DataError(f"{path}: expected a dict with preprocessed_eeg_data, ch_names and times, got "
                        f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    x, ch, t = np.asarray(d["preprocessed_eeg_data"]), [str(c) for c in d["ch_names"]], np.asarray(d["times"], float)
    if x.ndim != 4 or x.shape[2] != len(ch) or x.shape[3] != len(t):
        raise DataError(f"{path}: preprocessed_eeg_data has shape {x.shape}; expected (images, repetitions, "
                        f"{len(ch)} channels, {len(t)} times)")
    check_finite(x, str(path))
    return x, ch, t


def eeg2_images(root: Path, split: str, size: int) -> tuple[np.ndarray, list[str], list[str]]:
    """(images resized to ``size``, image ids, concepts) of ``image_set/<split>_images`` in the release's order."""
    from PIL import Image

    folder = root / "image_set" / f"{split}_images"
    files = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DataError(f"{folder}: no images (expected <nnnnn_concept>/<image>.jpg)")
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out), [f"{p.parent.name}/{p.name}" for p in files], [p.parent.name.split("_", 1)[-1] for p in files]


def eeg2_pairs(root: str | Path, subject: int | str = 1, image_size: int = 256, include_test_trials: bool = False,
               average_train: bool = False) -> MEEGData:
    """Pairs of one THINGS-EEG2 subject from the release: ``preprocessed_data/sub-XX/*.npy`` and ``image_set/``;
    channel positions from MNE's standard 10-20 montage."""
    root = Path(root)
    sub = f"sub-{int(str(subject).removeprefix('sub-')):02d}"
    data = {}
    for split, name in zip(("training", "test"), EEG2_FILES):
        f = root / "preprocessed_data" / sub / name
        if not f.is_file():
            raise DataError(f"{f} is missing (THINGS-EEG2 layout: preprocessed_data/{sub}/{name})")
        data[split] = read_eeg2_file(f)
    (xtr, ch, t), (xte, ch_te, t_te) = data["training"], data["test"]
    if ch != ch_te or not np.allclose(t, t_te):
        raise DataError(f"{root}: the training and test files have different channels or times")
    pos = standard_1020_positions()
    missing = [c for c in ch if c not in pos]
    if missing:
        raise DataError(f"sensor positions missing: {missing} are not in MNE's standard_1020 montage")
    layout = sensor_layout(np.stack([pos[c] for c in ch]))
    splits = {}
    for split, x in (("training", xtr), ("test", xte)):
        imgs, ids, concepts = eeg2_images(root, split, image_size)
        if len(imgs) != len(x):
            raise DataError(f"{root}: {len(x)} {split} images in the EEG file but {len(imgs)} in image_set/{split}_images")
        splits[split] = (x, imgs, ids, concepts)
    names = sorted({c for s in splits.values() for c in s[3]})
    label = {c: i for i, c in enumerate(names)}
    x, imgs, ids, concepts = splits["training"]
    lab = np.array([label[c] for c in concepts])
    if average_train:
        train = PairedSplit(x.mean(1).astype(np.float32), imgs, lab, ids, ["things-eeg2"] * len(ids))
    else:
        r = x.shape[1]
        train = PairedSplit(x.reshape(-1, *x.shape[2:]).astype(np.float32), np.repeat(imgs, r, 0), np.repeat(lab, r),
                            [i for i in ids for _ in range(r)], ["things-eeg2"] * (len(ids) * r))
    x, imgs, ids, concepts = splits["test"]
    lab = np.array([label[c] for c in concepts])
    avg = PairedSplit(x.mean(1).astype(np.float32), imgs, lab, ids, ["things-eeg2"] * len(ids))
    singles = []
    if include_test_trials:
        r = x.shape[1]
        singles = [PairedSplit(x[i].astype(np.float32), np.repeat(imgs[i:i + 1], r, 0), np.repeat(lab[i:i + 1], r),
                               [f"{ids[i]}{TRIAL_MARK}{j}" for j in range(r)], ["things-eeg2"] * r) for i in range(len(ids))]
    desc = (f"THINGS-EEG2 {root} {sub}: {len(train)} training trials, {len(avg)} test images x {xte.shape[1]} "
            f"repetitions, {len(ch)} channels x {len(t)} samples")
    return MEEGData(train, _with_trials(avg, singles), ch, layout, t, desc)


def meeg_world_settings(path: str | Path) -> dict | None:
    """The settings (:class:`mindvis.world.SyntheticWorldConfig` fields) of the synthetic world a THINGS-MEG
    preparation or THINGS-EEG2 folder came from, or None for real data."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    world = m.get("config") if m.get("generator") == SYNTHETIC_GENERATOR else m.get("synthetic_world")
    return world if world else None
