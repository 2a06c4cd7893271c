"""GOD (Kamitani Generic Object Decoding) fMRI in the MinD-Vis release layout: one subject's voxels, the fMRI for
masked modeling and the fMRI-image pairs of stage B (the bdpy BData layout: :mod:`mindvis.data.god_bdata`).

``<root>/sbj_N.npz`` holds ``arr_0`` (train trials, voxels), ``arr_1`` (test trials, voxels),
``arr_2`` (test averaged over repetitions, voxels), ``arr_3`` (train trial -> image index), optionally ``arr_4``
(test trial -> test image index, as the release written by the SelfSuperReconst preparation and mindvis-prep) and
boolean ROI masks over the voxel columns (``V1`` ... ``VC``). Without ``arr_4`` the test trials are taken in the
documented order: repetition after repetition of all test images (image ``i % n_test`` for row ``i``).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fmri import DataError, check_finite, normalize, pad_to_patch_size, read_npz
from .pairs import PairedSplit, concat_splits, single_trial_id

GOD_SUBJECTS = ("sbj_1", "sbj_2", "sbj_3", "sbj_4", "sbj_5")


@dataclass
class GODSubjectFMRI:
    """One subject's ROI voxels, unnormalised and unpadded."""

    subject: str
    train: np.ndarray  # (N_train, V)
    test_avg: np.ndarray  # (N_test, V)
    test_trials: np.ndarray  # (N_test * repeats, V)
    train_image_index: np.ndarray  # (N_train,)
    test_trial_image_index: np.ndarray  # (N_test * repeats,) test image of each row of test_trials


def load_god_subject(root: str | os.PathLike, subject: str, roi: str = "VC") -> GODSubjectFMRI:
    path = Path(root) / f"{subject}.npz"
    if not Path(root).is_dir():
        raise DataError(f"GOD data folder not found: {root}")
    if not path.is_file():
        have = sorted(p.stem for p in Path(root).glob("sbj_*.npz"))
        raise DataError(f"GOD subject file not found: {path} (subjects present: {have})")
    arrays = read_npz(path, ["arr_0", "arr_1", "arr_2", "arr_3", roi], optional=["arr_4"])
    mask = arrays.pop(roi)
    if mask.dtype != bool or mask.ndim != 1:
        raise DataError(f"{path}: ROI {roi!r} must be a 1-D boolean mask, got {mask.dtype} {mask.shape}")
    for k in ("arr_0", "arr_1", "arr_2"):
        a = arrays[k]
        if a.ndim != 2 or a.shape[1] != mask.shape[0]:
            raise DataError(f"{path}: {k} has shape {a.shape}, expected (trials, {mask.shape[0]}) to match the ROI masks")
    if arrays["arr_3"].min(initial=0) < 0:
        raise DataError(f"{path}: arr_3 holds negative image indices (smallest {arrays['arr_3'].min()}); each must "
                        "index the training images from 0")
    if len(arrays["arr_3"]) != len(arrays["arr_0"]):
        raise DataError(f"{path}: arr_3 has {len(arrays['arr_3'])} image indices for {len(arrays['arr_0'])} train trials")
    if not mask.any():
        raise DataError(f"{path}: ROI {roi!r} selects no voxels")
    n_trials, n_test = len(arrays["arr_1"]), len(arrays["arr_2"])
    if "arr_4" in arrays:
        test_index = arrays["arr_4"].astype(np.int64)
        if test_index.shape != (n_trials,):
            raise DataError(f"{path}: arr_4 has shape {test_index.shape}, expected one test image index per arr_1 "
                            f"row ({n_trials},)")
        if test_index.min(initial=0) < 0 or test_index.max(initial=-1) >= n_test:
            raise DataError(f"{path}: arr_4 indexes test images outside [0, {n_test})")
    else:  # the documented order: repetition after repetition of all test images
        if n_test == 0 or n_trials % n_test:
            raise DataError(f"{path}: {n_trials} test trials (arr_1) are not whole repetitions of the {n_test} test "
                            "images (arr_2), and there is no arr_4 saying which image each trial shows")
        test_index = np.arange(n_trials) % n_test
    counts = np.bincount(test_index, minlength=n_test)
    if n_trials and len(set(counts.tolist())) != 1:
        raise DataError(f"{path}: test images have unequal numbers of trials ({counts.min()} to {counts.max()})")
    out = {k: arrays[k][:, mask].astype(np.float32) for k in ("arr_0", "arr_1", "arr_2")}
    for k, a in out.items():
        check_finite(a, f"{path} {k} ({roi})")
    return GODSubjectFMRI(subject, out["arr_0"], out["arr_2"], out["arr_1"], arrays["arr_3"].astype(np.int64),
                          test_index)


def god_fmri(root, subjects=("sbj_3",), roi: str = "VC", patch_size: int = 16, pad_mode: str = "exact",
             include_test: bool = False, include_test_trials: bool = False) -> list[np.ndarray]:
    """Normalised, padded fMRI per subject, for masked modeling: train trials and, optionally, the
    averaged test fMRI and the single test trials, all z-scored with the training statistics of the
    real voxels before wrap-padding."""
    out = []
    for s in subjects:
        d = load_god_subject(root, s, roi)
        train, mean, std = normalize(d.train)
        parts = [train]
        if include_test:
            parts.append(normalize(d.test_avg, mean, std)[0])
        if include_test_trials:
            parts.append(normalize(d.test_trials, mean, std)[0])
        out.append(pad_to_patch_size(np.concatenate(parts), patch_size, pad_mode))
    return out


# ----------------------------------------------------------------------------- stage-B pairs
def read_god_labels(root: Path) -> tuple[list[str], list[str], dict[int, int]]:
    """Train and test stimulus ids (csv column 0) and a map synset number -> class index."""
    out = []
    for name in ("imagenet_training_label.csv", "imagenet_testing_label.csv"):
        p = root / name
        if not p.is_file():
            raise DataError(f"GOD label file not found: {p}")
        with open(p, newline="") as f:
            out.append([row[0] for row in csv.reader(f) if row])
    p = root / "imagenet_class_index.json"
    if not p.is_file():
        raise DataError(f"GOD class index not found: {p}")
    index = json.loads(p.read_text())
    synset_to_class = {int(w[1:]): int(k) for k, v in index.items() for w in v[:-1]}
    return out[0], out[1], synset_to_class


def stimulus_label(stim_id: str, synset_to_class: dict[int, int]) -> int:
    """The class index of a GOD stimulus id (from its synset number), -1 where the class index lacks it."""
    return synset_to_class.get(int(float(stim_id.split(".")[0]) if "." in stim_id else float(stim_id)), -1)


def god_pairs(root: str | os.PathLike, subjects=("sbj_3",), roi: str = "VC", patch_size: int = 16,
              pad_mode: str = "exact", include_test_trials: bool = False) -> tuple[PairedSplit, PairedSplit]:
    """(train, test) of the MinD-Vis GOD layout; test is averaged over repetitions (+ single trials if asked)."""
    root = Path(root)
    img_path = root / "images_256.npz"
    if not img_path.is_file():
        raise DataError(f"GOD images not found: {img_path}")
    images = read_npz(img_path, ("train_images", "test_images"))
    train_images, test_images = images["train_images"], images["test_images"]
    train_ids, test_ids, syn = read_god_labels(root)
    if len(train_ids) != len(train_images) or len(test_ids) != len(test_images):
        raise DataError(f"{root}: {len(train_images)} train / {len(test_images)} test images but "
                        f"{len(train_ids)} / {len(test_ids)} label rows")
    trains, tests = [], []
    for s in subjects:
        d = load_god_subject(root, s, roi)
        if d.train_image_index.max(initial=-1) >= len(train_images):
            raise DataError(f"{root / s}.npz: arr_3 indexes image {d.train_image_index.max()} of {len(train_images)}")
        if len(d.test_avg) != len(test_images):
            raise DataError(f"{root / s}.npz: {len(d.test_avg)} averaged test samples for {len(test_images)} test images")
        train, mean, std = normalize(d.train)
        idx = d.train_image_index
        trains.append(PairedSplit(pad_to_patch_size(train, patch_size, pad_mode), train_images[idx],
                                  np.array([stimulus_label(train_ids[i], syn) for i in idx]),
                                  [train_ids[i] for i in idx], ["god"] * len(idx)))
        test_fmri, test_idx = [normalize(d.test_avg, mean, std)[0]], list(range(len(test_images)))
        row_ids = list(test_ids)
        if include_test_trials:  # each trial paired with its own image (arr_4, or the documented order)
            test_fmri.append(normalize(d.test_trials, mean, std)[0])
            test_idx += d.test_trial_image_index.tolist()
            seen: dict[int, int] = {}
            for i in d.test_trial_image_index.tolist():
                row_ids.append(single_trial_id(test_ids[i], seen.setdefault(i, 0)))
                seen[i] += 1
        test_idx = np.array(test_idx)
        tests.append(PairedSplit(pad_to_patch_size(np.concatenate(test_fmri), patch_size, pad_mode),
                                 test_images[test_idx], np.array([stimulus_label(test_ids[i], syn) for i in test_idx]),
                                 row_ids, ["god"] * len(test_idx)))
    return concat_splits(trains), concat_splits(tests)
