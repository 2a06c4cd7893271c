"""THINGS-EEG2 pairs from the release (``preprocessed_data/sub-XX/*.npy``, read through a restricted unpickler, and
``image_set/``), channel positions from MNE's standard 10-20 montage."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np

from .fmri import DataError, check_finite
from .meeg import MEEGData, _with_trials, combine, montage_positions
from .pairs import TRIAL_MARK, PairedSplit

EEG2_FILES = ("preprocessed_eeg_training.npy", "preprocessed_eeg_test.npy")

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
