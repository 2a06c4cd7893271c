"""NSD as prepared by ``mindvis-prep nsd``: fMRI-image pairs with the standard split, and unlabelled fMRI.

Split (as the NSD papers): test = the shared-1000 images the subject saw, each paired with its fMRI averaged over
its prepared repetitions (up to 3); train = the subject's other images, one pair per trial (``train_trials="single"``)
or per image with its trials averaged (``"average"``). As the other readers, fMRI is then z-scored with the training
statistics and wrap-padded to the patch size; labels are -1 (NSD images have no class).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fmri import DataError, normalize, pad_to_patch_size

TRIAL_COLUMNS = ("trial", "session", "volume", "nsd_id", "repetition", "shared")
TRAIN_TRIALS = ("single", "average")


@dataclass
class NSDSubject:
    betas: np.ndarray  # (trials, voxels), memory-mapped
    trials: dict[str, np.ndarray]  # TRIAL_COLUMNS, one row per betas row
    images: np.ndarray  # (n_images, S, S, 3) uint8, memory-mapped
    image_ids: np.ndarray  # (n_images,) sorted 73k ids (0-based) of ``images``
    meta: dict

    def image_rows(self, nsd_ids: np.ndarray) -> np.ndarray:
        """Rows of ``images`` for 73k ids."""
        rows = np.searchsorted(self.image_ids, nsd_ids)
        if (rows >= len(self.image_ids)).any() or (self.image_ids[np.minimum(rows, len(self.image_ids) - 1)] != nsd_ids).any():
            raise DataError("trials name NSD images that images_*.npy does not hold (re-run mindvis-prep nsd)")
        return rows


def load_nsd(folder: str | Path) -> NSDSubject:
    """A prepared NSD subject; every file checked, with one-line errors naming what is wrong."""
    folder = Path(folder)
    meta = load_nsd_meta(folder)
    size = meta["settings"]["image_size"]
    try:
        betas = np.load(folder / "betas.npy", mmap_mode="r")
        images = np.load(folder / f"images_{size}.npy", mmap_mode="r")
        image_ids = np.load(folder / "image_ids.npy")
        with open(folder / "trials.csv", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: incomplete NSD preparation ({type(e).__name__}: {e}); re-run mindvis-prep nsd") from None
    if tuple(rows[0]) != TRIAL_COLUMNS:
        raise DataError(f"{folder / 'trials.csv'}: columns {rows[0]}, expected {list(TRIAL_COLUMNS)}")
    table = np.array(rows[1:], dtype=np.int64).reshape(-1, len(TRIAL_COLUMNS))
    trials = {c: table[:, i] for i, c in enumerate(TRIAL_COLUMNS)}
    trials["shared"] = trials["shared"].astype(bool)
    if len(table) != len(betas) or len(images) != len(image_ids):
        raise DataError(f"{folder}: {len(betas)} betas rows for {len(table)} trials, {len(images)} images for "
                        f"{len(image_ids)} ids; re-run mindvis-prep nsd")
    return NSDSubject(betas, trials, images, image_ids, meta)


def _average_by_image(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids in first-seen order, mean of the rows of each id)."""
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    means = (sums / np.bincount(inverse)[:, None]).astype(np.float32)
    order = np.argsort(first)
    return uniq[order], means[order]


def nsd_pairs(folder: str | Path, patch_size: int = 16, pad_mode: str = "exact", train_trials: str = "single",
              include_test_trials: bool = False):
    """(train, test) :class:`~mindvis.data.pairs.PairedSplit` of a prepared subject (see the module docstring);
    with ``include_test_trials`` the test split also holds each single shared trial, marked as the GOD reader does."""
    from .pairs import PairedSplit, single_trial_id

    if train_trials not in TRAIN_TRIALS:
        raise DataError(f"NSD train trials must be one of {TRAIN_TRIALS}, got {train_trials!r}")
    d = load_nsd(folder)
    shared, ids = d.trials["shared"], d.trials["nsd_id"]
    if not shared.any() or shared.all():
        raise DataError(f"{folder}: the prepared sessions hold {int(shared.sum())} shared-1000 trials of "
                        f"{len(shared)}; the test split needs shared and the training split other images")
    train_x = np.asarray(d.betas[~shared], dtype=np.float32)
    train_ids = ids[~shared]
    if train_trials == "average":
        train_ids, train_x = _average_by_image(train_x, train_ids)
    train_x, mean, std = normalize(train_x)
    test_ids, test_x = _average_by_image(np.asarray(d.betas[shared], dtype=np.float32), ids[shared])
    order = np.argsort(test_ids)  # the shared images in 73k-id order, as the published evaluations
    test_ids, test_x = test_ids[order], test_x[order]
    names = [f"nsd{i:05d}" for i in test_ids]
    if include_test_trials:
        rep = d.trials["repetition"][shared]
        test_x = np.concatenate([test_x, np.asarray(d.betas[shared], dtype=np.float32)])
        names += [single_trial_id(f"nsd{i:05d}", r) for i, r in zip(ids[shared], rep)]
        test_ids = np.concatenate([test_ids, ids[shared]])
    test_x = normalize(test_x, mean, std)[0]

    def split(x, nsd_ids, row_ids):
        return PairedSplit(pad_to_patch_size(x, patch_size, pad_mode), np.asarray(d.images[d.image_rows(nsd_ids)]),
                           np.full(len(x), -1, np.int64), row_ids, ["nsd"] * len(x))

    return split(train_x, train_ids, [f"nsd{i:05d}" for i in train_ids]), split(test_x, test_ids, names)


def nsd_fmri(folder: str | Path, patch_size: int = 16, pad_mode: str = "exact", include_test: bool = False) -> np.ndarray:
    """Unlabelled fMRI for masked modeling (stage A2): every training trial and, with ``include_test``, the shared
    trials too, z-scored with the training statistics and wrap-padded."""
    d = load_nsd(folder)
    shared = d.trials["shared"]
    train, mean, std = normalize(np.asarray(d.betas[~shared], dtype=np.float32))
    parts = [train] + ([normalize(np.asarray(d.betas[shared], dtype=np.float32), mean, std)[0]] if include_test else [])
    return pad_to_patch_size(np.concatenate(parts), patch_size, pad_mode)


def nsd_world_settings(folder: str | Path) -> dict | None:
    """The settings (:class:`mindvis.world.SyntheticWorldConfig` fields) of the synthetic world a prepared NSD folder
    came from, or None for real data."""
    world = load_nsd_meta(folder)["settings"].get("synthetic_world")
    return world if world else None


def load_nsd_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise DataError(f"{folder} is not a prepared NSD folder (no meta.json; run mindvis-prep nsd)")
    meta = json.loads(path.read_text())
    if meta.get("preparation") != "nsd":
        raise DataError(f"{path}: prepared as {meta.get('preparation')!r}, not nsd")
    return meta
