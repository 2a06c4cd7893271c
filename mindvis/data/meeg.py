"""M/EEG-image pairs: THINGS-MEG folders written by ``mindvis-prep things-meg`` and the THINGS-EEG2 release.

Both give trials x channels x times with the image of each trial, its subject, the channels' 2-D positions for the brain
module's spatial attention (``mne.find_layout``'s, as brainmagick takes them: see
:func:`mindvis.models.brain_module_positions.layout_positions`; NaN for a channel without one, which the module masks)
and the times. Test images are the releases' own (THINGS-MEG: ``trial_type`` test; THINGS-EEG2:
``preprocessed_eeg_test.npy``), averaged over their repetitions per subject; single test trials are kept (marked as the
fMRI readers mark them) for the averaging curve. Training trials are single presentations (THINGS-EEG2: each of the
image's repetitions, or their average with ``average_train``).

Several subjects (a folder of THINGS-MEG preparations, or several THINGS-EEG2 subjects) are read into one set of
splits over one channel list, the union of the subjects' channels in the order first seen: a subject's data are zero
on the channels it lacks and its montage (``MEEGData.montages``) has no position there, so the brain module masks them.

**Large retrieval set** (THINGS-MEG, Benchetrit et al. 2024): the training trials of the test images' concepts
(THINGS-MEG shows 12 images of every concept once; the test images are other images of 200 of the concepts) are taken
out of training and form the large set: each trial is retrieved among all of that subject's large-set images. The
paper's own definition could not be read here (only its abstract); this follows Meta's reader of the release
(facebookresearch/neuroai hebart2023things.py, ``is_test_category``): UNVERIFIED against the paper's text.
THINGS-EEG2's test concepts are not among its training concepts, so it has no large set.
"""
from __future__ import annotations

import csv
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..releases import SYNTHETIC_GENERATOR
from .fmri import DataError, check_finite
from .pairs import TRIAL_MARK, PairedSplit

EEG2_FILES = ("preprocessed_eeg_training.npy", "preprocessed_eeg_test.npy")


@dataclass
class MEEGData:
    train: PairedSplit  # fmri: (N, C, T) float32
    test: PairedSplit  # averaged test images first, then (optionally) their single trials
    ch_names: list[str]
    layout: np.ndarray  # (C, 2) positions on the plane (NaN: none); with several subjects, any subject's
    times: np.ndarray  # (T,) seconds from image onset
    description: str
    large: PairedSplit | None = None  # the held-out trials of the test concepts (THINGS-MEG), never trained on
    montages: dict | None = None  # {subject: (C, 2) positions}, NaN where the subject lacks the channel


def concept_of(image_path: str) -> str:
    """The THINGS concept of an image file: its name without the last ``_part`` (``aardvark_01b.jpg`` ->
    ``aardvark``; as Meta's reader of THINGS-MEG reads it: the test images share one folder)."""
    stem = Path(str(image_path)).stem
    return "_".join(stem.split("_")[:-1]) or stem


def montage_positions(info) -> np.ndarray:
    """(C, 2) brain-module positions of ``info``'s channels (NaN where there is none): ``mne.find_layout``'s 2-D
    positions matched by name (:func:`mindvis.models.brain_module_positions.layout_positions`); where MNE cannot draw
    a layout because some channels have no 3-D position, the layout of the others."""
    import mne

    from ..models.brain_module_positions import layout_positions

    try:
        return layout_positions(info)
    except (RuntimeError, ValueError):
        pass
    keep = [i for i, ch in enumerate(info["chs"]) if np.isfinite(ch["loc"][:3]).all() and np.abs(ch["loc"][:3]).sum()]
    out = np.full((len(info["ch_names"]), 2), np.nan, np.float32)
    if keep:
        out[keep] = layout_positions(mne.pick_info(info, keep))
    return out


def _with_trials(avg: PairedSplit, trials: list[PairedSplit]) -> PairedSplit:
    if not trials:
        return avg
    parts = [avg] + trials
    return PairedSplit(np.concatenate([p.fmri for p in parts]), np.concatenate([p.images for p in parts]),
                       np.concatenate([p.labels for p in parts]), [i for p in parts for i in p.ids],
                       [d for p in parts for d in p.dataset], [s for p in parts for s in p.subjects])


def combine(parts: list[MEEGData], description: str | None = None) -> MEEGData:
    """Several subjects' data over one channel list (the union, in the order first seen): zeros and no position on
    the channels a subject lacks. Times must agree."""
    if len(parts) == 1:
        return parts[0]
    for p in parts[1:]:
        if len(p.times) != len(parts[0].times) or not np.allclose(p.times, parts[0].times):
            raise DataError("the subjects' trials have different times: prepare them with the same settings")
    names: list[str] = []
    for p in parts:
        names += [c for c in p.ch_names if c not in names]
    montages, out = {}, {"train": [], "test": [], "large": []}
    for p in parts:
        idx = [names.index(c) for c in p.ch_names]
        for subject in sorted(set(p.train.subjects)):
            m = np.full((len(names), 2), np.nan, np.float32)
            m[idx] = (p.montages or {}).get(subject, p.layout)
            montages[subject] = m

        def pad(split: PairedSplit | None):
            if split is None:
                return None
            if p.ch_names == names:
                return split
            x = np.zeros((len(split), len(names), split.fmri.shape[-1]), np.float32)
            x[:, idx] = split.fmri
            return split.with_fmri(x)

        for k in out:
            split = pad(getattr(p, k))
            if split is not None:
                out[k].append(split)
    cat = lambda splits: _with_trials(splits[0], splits[1:]) if splits else None
    first = next(iter(montages.values()))
    layout = first.copy()
    for m in montages.values():  # any subject's position of each channel
        layout = np.where(np.isfinite(layout), layout, m)
    same = all(np.array_equal(m, first, equal_nan=True) for m in montages.values())
    return MEEGData(cat(out["train"]), cat(out["test"]), names, layout, parts[0].times,
                    description or "; ".join(p.description for p in parts), cat(out["large"]),
                    None if same else montages)


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
def _prepared(folder: Path) -> dict | None:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_file}: not JSON ({e})") from None
    if meta.get("preparation") != "things-meg":
        raise DataError(f"{meta_file}: preparation {meta.get('preparation')!r}, expected 'things-meg'")
    return meta


def _subject_key(name) -> str:
    m = re.fullmatch(r"(?:sub-)?(?:BIGMEG)?0*(\d+)", str(name))
    return f"sub-BIGMEG{int(m.group(1))}" if m else str(name)


def things_meg_folders(path: str | Path, subjects=None) -> list[tuple[Path, dict]]:
    """(folder, meta) of a THINGS-MEG preparation, or of every preparation in a folder of them (one per subject),
    ``subjects`` (1, BIGMEG1, sub-BIGMEG1 or a folder name) choosing among them."""
    root = Path(path)
    meta = _prepared(root)
    if meta is not None:
        found = [(root, meta)]
    else:
        found = [(d, m) for d in sorted(p for p in root.iterdir() if p.is_dir()) if (m := _prepared(d)) is not None] \
            if root.is_dir() else []
        if not found:
            raise DataError(f"{root} is not a folder written by mindvis-prep things-meg, nor a folder of them "
                            "(meta.json is missing)")
    if subjects:
        want = {_subject_key(s) for s in subjects} | {str(s) for s in subjects}
        chosen = [(d, m) for d, m in found if m["settings"].get("subject") in want or d.name in want]
        have = [m["settings"].get("subject") for _, m in found]
        if len(chosen) != len(set(subjects)):
            raise DataError(f"data.subjects {list(subjects)}: {root} holds the preparations of {have}")
        found = chosen
    names = [m["settings"].get("subject", d.name) for d, m in found]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: several preparations of the same subject ({names})")
    return found


def things_meg_pairs(path: str | Path, include_test_trials: bool = False, subjects=None,
                     large_set: bool = True) -> MEEGData:
    """Pairs from a folder written by ``mindvis-prep things-meg``, or from a folder of them (several subjects, one
    set of splits; ``subjects`` chooses). With ``large_set`` the training trials of the test concepts are held out
    as the large retrieval set (see the module docstring)."""
    found = things_meg_folders(path, subjects)
    tables = []
    for folder, meta in found:
        with open(folder / "trials.csv", newline="") as f:
            tables.append(list(csv.DictReader(f)))
    concepts = sorted({r["concept"] for rows in tables for r in rows})
    label = {c: i for i, c in enumerate(concepts)}
    parts = [_things_meg_subject(folder, meta, rows, label, include_test_trials, large_set)
             for (folder, meta), rows in zip(found, tables)]
    return combine(parts)


def _things_meg_subject(root: Path, meta: dict, rows: list[dict], label: dict, include_test_trials: bool,
                        large_set: bool) -> MEEGData:
    x = np.load(root / "trials.npy", mmap_mode="r")
    if len(rows) != len(x):
        raise DataError(f"{root}: trials.npy has {len(x)} trials but trials.csv {len(rows)} rows")
    subject = meta["settings"].get("subject", root.name)
    images = np.load(root / f"images_{meta['settings']['image_size']}.npy", mmap_mode="r")
    names = json.loads((root / "image_ids.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    img = np.array([index[r["image"]] for r in rows])
    lab = np.array([label[r["concept"]] for r in rows])
    test = np.array([r["split"] == "test" for r in rows])
    test_concepts = {rows[i]["concept"] for i in np.flatnonzero(test)}
    held = ~test & np.array([large_set and r["concept"] in test_concepts for r in rows])
    tag = "things-meg"

    def split(idx, ids=None) -> PairedSplit:
        return PairedSplit(np.asarray(x[idx], np.float32), images[img[idx]], lab[idx],
                           ids or [rows[i]["image"] for i in idx], [tag] * len(idx), [subject] * len(idx))

    train = split(np.flatnonzero(~test & ~held))
    large = split(np.flatnonzero(held)) if held.any() else None
    avg_ids = sorted({rows[i]["image"] for i in np.flatnonzero(test)})
    by_image = {n: np.flatnonzero(test & (img == index[n])) for n in avg_ids}
    avg = PairedSplit(np.stack([np.asarray(x[by_image[n]], np.float32).mean(0) for n in avg_ids])
                      if avg_ids else np.zeros((0,) + x.shape[1:], np.float32),
                      images[[index[n] for n in avg_ids]], np.array([lab[by_image[n][0]] for n in avg_ids], int),
                      avg_ids, [tag] * len(avg_ids), [subject] * len(avg_ids))
    singles = []
    if include_test_trials:
        for n in avg_ids:
            k = by_image[n]
            singles.append(split(k, [f"{n}{TRIAL_MARK}{j}" for j in range(len(k))]))
    layout = np.array([[np.nan, np.nan] if p is None else p for p in meta["layout"]], np.float32)
    reps = len(by_image[avg_ids[0]]) if avg_ids else 0
    desc = (f"THINGS-MEG {subject} ({root}): {len(train)} training trials, {len(avg)} test images x {reps} "
            f"repetitions, {len(large) if large is not None else 0} held-out trials of the test concepts (large set), "
            f"{x.shape[1]} sensors x {x.shape[2]} samples at {meta['settings']['sfreq']:g} Hz")
    return MEEGData(train, _with_trials(avg, singles), meta["ch_names"], layout, np.array(meta["times"]), desc, large,
                    {subject: layout})


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


def eeg_positions(ch_names: list[str], sfreq: float) -> np.ndarray:
    """(C, 2) brain-module positions of EEG channels placed by MNE's standard 10-20 montage (NaN for a channel the
    montage lacks)."""
    import mne

    name = "colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages() else "standard_1020"  # MNE 1.13
    info = mne.create_info(list(ch_names), sfreq, "eeg")
    info.set_montage(name, on_missing="ignore")
    return montage_positions(info)


def eeg2_subject(subject: int | str) -> str:
    m = re.fullmatch(r"(?:sub-)?0*(\d+)", str(subject))
    if not m:
        raise DataError(f"THINGS-EEG2 subject must be a number or sub-XX, got {subject!r}")
    return f"sub-{int(m.group(1)):02d}"


def eeg2_pairs(root: str | Path, subject: int | str = 1, image_size: int = 256, include_test_trials: bool = False,
               average_train: bool = False) -> MEEGData:
    """Pairs of one THINGS-EEG2 subject from the release: ``preprocessed_data/sub-XX/*.npy`` and ``image_set/``;
    channel positions from MNE's standard 10-20 montage (:func:`eeg_positions`)."""
    root = Path(root)
    sub = eeg2_subject(subject)
    data = {}
    for split, name in zip(("training", "test"), EEG2_FILES):
        f = root / "preprocessed_data" / sub / name
        if not f.is_file():
            raise DataError(f"{f} is missing (THINGS-EEG2 layout: preprocessed_data/{sub}/{name})")
        data[split] = read_eeg2_file(f)
    (xtr, ch, t), (xte, ch_te, t_te) = data["training"], data["test"]
    if ch != ch_te or not np.allclose(t, t_te):
        raise DataError(f"{root}: the training and test files have different channels or times")
    layout = eeg_positions(ch, float(1 / np.median(np.diff(t))) if len(t) > 1 else 100.0)
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
        train = PairedSplit(x.mean(1).astype(np.float32), imgs, lab, ids, ["things-eeg2"] * len(ids), [sub] * len(ids))
    else:
        r = x.shape[1]
        train = PairedSplit(x.reshape(-1, *x.shape[2:]).astype(np.float32), np.repeat(imgs, r, 0), np.repeat(lab, r),
                            [i for i in ids for _ in range(r)], ["things-eeg2"] * (len(ids) * r), [sub] * (len(ids) * r))
    x, imgs, ids, concepts = splits["test"]
    lab = np.array([label[c] for c in concepts])
    avg = PairedSplit(x.mean(1).astype(np.float32), imgs, lab, ids, ["things-eeg2"] * len(ids), [sub] * len(ids))
    singles = []
    if include_test_trials:
        r = x.shape[1]
        singles = [PairedSplit(x[i].astype(np.float32), np.repeat(imgs[i:i + 1], r, 0), np.repeat(lab[i:i + 1], r),
                               [f"{ids[i]}{TRIAL_MARK}{j}" for j in range(r)], ["things-eeg2"] * r, [sub] * r)
                   for i in range(len(ids))]
    desc = (f"THINGS-EEG2 {root} {sub}: {len(train)} training trials, {len(avg)} test images x {xte.shape[1]} "
            f"repetitions, {len(ch)} channels x {len(t)} samples")
    return MEEGData(train, _with_trials(avg, singles), ch, layout, t, desc, None, {sub: layout})


def eeg2_subjects_pairs(root: str | Path, subjects, image_size: int = 256, include_test_trials: bool = False,
                        average_train: bool = False) -> MEEGData:
    """Several THINGS-EEG2 subjects in one set of splits (see :func:`combine`)."""
    names = [eeg2_subject(s) for s in subjects]
    if len(set(names)) != len(names):
        raise DataError(f"data.subjects names a subject twice: {list(subjects)}")
    return combine([eeg2_pairs(root, s, image_size, include_test_trials, average_train) for s in names])


def meeg_world_settings(path: str | Path) -> dict | None:
    """The settings (:class:`mindvis.world.SyntheticWorldConfig` fields) of the synthetic world a THINGS-MEG
    preparation (or a folder of them) or THINGS-EEG2 folder came from, or None for real data."""
    meta = Path(path) / "meta.json"
    if not meta.is_file() and Path(path).is_dir():
        found = sorted(Path(path).glob("*/meta.json"))
        meta = found[0] if found else meta
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    world = m.get("config") if m.get("generator") == SYNTHETIC_GENERATOR else m.get("synthetic_world")
    return world if world else None
