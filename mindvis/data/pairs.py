"""fMRI-image pairs for stage B: GOD (two layouts), BOLD5000, and their combination.

Every reader returns :class:`PairedSplit` objects: fMRI z-scored with the training statistics of
the real voxels and wrap-padded to the patch size, images as uint8 (N, H, W, 3), and labels (the
ImageNet class index for GOD, -1 where unknown).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..releases import BOLD5000_ROIS
from .bdata import read_bdata
from .fmri import (DataError, RandomVoxelZeroing, check_finite, fit_length, normalize, pad_to_patch_size,
                   read_npz)
from .god import load_god_subject


@dataclass
class PairedSplit:
    fmri: np.ndarray  # (N, V) float32
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64, -1 = unknown
    ids: list[str]  # stimulus ids
    dataset: list[str] = field(default_factory=list)  # per sample: "god" / "bold5000" / ...

    def __post_init__(self):
        n = len(self.fmri)
        if not (len(self.images) == len(self.labels) == len(self.ids) == n):
            raise DataError(f"mismatched pair counts: {n} fMRI samples, {len(self.images)} images, "
                            f"{len(self.labels)} labels, {len(self.ids)} ids")
        if not self.dataset:
            self.dataset = ["?"] * n

    def __len__(self) -> int:
        return len(self.fmri)

    def subset(self, idx) -> "PairedSplit":
        idx = np.asarray(idx, dtype=np.int64)
        return PairedSplit(self.fmri[idx], self.images[idx], self.labels[idx], [self.ids[i] for i in idx],
                           [self.dataset[i] for i in idx])


def concat_splits(splits: list[PairedSplit], num_voxels: int | None = None) -> PairedSplit:
    """Concatenate splits, wrap-padding (or truncating) every fMRI array to ``num_voxels`` (default:
    the longest), as the original does across subjects."""
    n = num_voxels or max(s.fmri.shape[1] for s in splits)
    sizes = {s.images.shape[1:] for s in splits}
    if len(sizes) > 1:
        raise DataError(f"cannot combine images of different sizes {sorted(sizes)}")
    return PairedSplit(np.concatenate([fit_length(s.fmri, n) for s in splits]),
                       np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]),
                       [i for s in splits for i in s.ids], [d for s in splits for d in s.dataset])


# ----------------------------------------------------------------------------- GOD, MinD-Vis layout
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


def _label(stim_id: str, synset_to_class: dict[int, int]) -> int:
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
                                  np.array([_label(train_ids[i], syn) for i in idx]), [train_ids[i] for i in idx],
                                  ["god"] * len(idx)))
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
                                 test_images[test_idx], np.array([_label(test_ids[i], syn) for i in test_idx]),
                                 row_ids, ["god"] * len(test_idx)))
    return concat_splits(trains), concat_splits(tests)


# ----------------------------------------------------------------------------- GOD, bdpy BData HDF5
def god_bdata_subject(h5_path: str | os.PathLike, image_dir: str | os.PathLike, roi: str = "VC",
                      image_size: int = 256):
    """One GOD subject from the Kamitani lab's HDF5 (bdpy BData: ``dataSet`` + ``metaData/{key,value}``)
    and the stimulus images (ImageNet names derived from stimulus ids: 1518878.005958 -> n01518878_5958).

    Returns raw (train fMRI, train ids, test-averaged fMRI, test ids) and a loader of images by id.
    """
    bd = read_bdata(h5_path)
    if roi not in bd["masks"]:
        raise DataError(f"{h5_path}: no metadata key 'ROI_{roi}' (ROIs: {sorted(bd['masks'])})")
    x, dtype, stim = bd["x"][:, bd["masks"][roi]], bd["dtype"], bd["stim"]
    train_rows, test_rows = np.nonzero(dtype == 1)[0], np.nonzero(dtype == 2)[0]
    test_stims = np.unique(stim[test_rows])
    test_avg = np.stack([x[test_rows[stim[test_rows] == s]].mean(0) for s in test_stims])
    fmt = lambda s: f"{s:.6f}"  # noqa: E731
    return (x[train_rows], [fmt(s) for s in stim[train_rows]], test_avg, [fmt(s) for s in test_stims],
            lambda ids: load_imagenet_images(image_dir, ids, image_size))


def imagenet_name(stim_id: str) -> str:
    synset, number = stim_id.split(".")
    return f"n{int(synset):08d}_{int(number)}"


def load_imagenet_images(folder: str | os.PathLike, stim_ids: list[str], size: int = 256) -> np.ndarray:
    """Images for GOD stimulus ids from a folder of ImageNet files (searched recursively, any extension)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = {p.stem: p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")}
    out = []
    for sid in stim_ids:
        name = imagenet_name(sid)
        if name not in files:
            raise DataError(f"no image {name}.JPEG (stimulus {sid}) under {folder}")
        with Image.open(files[name]) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def god_pairs_bdata(h5_files: list[str], image_dir: str | os.PathLike, class_index: str | os.PathLike | None = None,
                    roi: str = "VC", patch_size: int = 16, pad_mode: str = "exact", image_size: int = 256):
    """(train, test) from BData HDF5 files (one per subject); labels from an ImageNet class index json."""
    syn = {}
    if class_index:
        index = json.loads(Path(class_index).read_text())
        syn = {int(w[1:]): int(k) for k, v in index.items() for w in v[:-1]}
    trains, tests = [], []
    for h5 in h5_files:
        tr, tr_ids, te, te_ids, images = god_bdata_subject(h5, image_dir, roi, image_size)
        tr, mean, std = normalize(tr)
        te = normalize(te, mean, std)[0]
        for arr, ids, out in ((tr, tr_ids, trains), (te, te_ids, tests)):
            out.append(PairedSplit(pad_to_patch_size(arr, patch_size, pad_mode), images(ids),
                                   np.array([_label(i, syn) for i in ids]), ids, ["god"] * len(ids)))
    return concat_splits(trains), concat_splits(tests)


# ----------------------------------------------------------------------------- BOLD5000
class _ArrayDictUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of numpy arrays needs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "dict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an image dictionary")


def load_image_dict(path: str | os.PathLike) -> dict:
    """BOLD5000's ``img_dict.npy`` (a pickled dict name -> image array) read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"BOLD5000 image dictionary not found: {path}")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise DataError(f"{path}: unsupported .npy version {version}")
        shape, _, dtype = reader[version](f)
        if dtype != object:
            raise DataError(f"{path}: expected a pickled dictionary, found a {dtype} array")
        try:
            obj = _ArrayDictUnpickler(io.BytesIO(f.read())).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{path}: refused ({e})") from e
    if isinstance(obj, np.ndarray):
        obj = obj.item() if obj.shape == () else obj
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of images, got {type(obj).__name__}")
    return obj


def bold5000_stimulus_list(root: Path, subject: str) -> list[str]:
    folder = root / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / subject
    if not folder.is_dir():
        raise DataError(f"BOLD5000 presentation lists not found: {folder}")
    names = []
    for sess in sorted(p for p in folder.iterdir() if p.is_dir()):
        for run in sorted(sess.glob("*.txt")):
            names += [n[4:] if n.startswith("rep_") else n for n in run.read_text().split()]
    return names


def bold5000_pairs(root: str | os.PathLike, subjects=("CSI1",), patch_size: int = 16, pad_mode: str = "exact",
                   include_test_trials: bool = False, image_size: int = 256) -> tuple[PairedSplit, PairedSplit]:
    """(train, test) of the GLMsingle ROI-betas release: ROIs of both hemispheres concatenated, the
    repeated images (averaged over repetitions) as test, every other trial as training."""
    from PIL import Image

    root = Path(root)
    betas = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    if not betas.is_dir():
        raise DataError(f"BOLD5000 ROI betas not found: {betas}")
    stim = root / "BOLD5000_Stimuli" / "Scene_Stimuli"
    images = load_image_dict(stim / "Presented_Stimuli" / "img_dict.npy")
    rep_file = stim / "repeated_stimuli_113_list.txt"
    if not rep_file.is_file():
        raise DataError(f"BOLD5000 repeated-stimuli list not found: {rep_file}")
    repeated = rep_file.read_text().split()
    files = sorted(p.name for p in betas.glob("*.npy"))

    def img(name):
        if name not in images:
            raise DataError(f"image {name!r} is not in the BOLD5000 image dictionary")
        a = np.asarray(images[name])
        if a.shape[:2] != (image_size, image_size):
            a = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((image_size, image_size), Image.BICUBIC))
        return a.astype(np.uint8)

    trains, tests = [], []
    for sub in subjects:
        parts = []
        for roi in BOLD5000_ROIS:
            matched = [f for f in files if f.startswith(sub + "_") and f.endswith(f"{roi}.npy")]
            if not matched:
                raise DataError(f"no ROI file for {sub} {roi} in {betas}")
            parts += [np.load(betas / f).astype(np.float32) for f in matched]  # LH then RH
        x = np.concatenate(parts, axis=1)
        check_finite(x, f"{betas} {sub}")
        names = bold5000_stimulus_list(root, sub)
        if len(names) != len(x):
            raise DataError(f"{sub}: {len(x)} beta rows but {len(names)} presented stimuli in the lists")
        x, mean, std = normalize(x)
        groups = [[i for i, n in enumerate(names) if n == r] for r in repeated]
        groups = [g for g in groups if g]
        test_rows = {i for g in groups for i in g}
        train_idx = [i for i in range(len(names)) if i not in test_rows]
        test_fmri = [np.stack([x[g].mean(0) for g in groups])]
        test_names = [names[g[0]] for g in groups]
        row_ids = list(test_names)
        if include_test_trials:
            flat = [i for g in groups for i in g]
            test_fmri.append(x[flat])
            test_names += [names[i] for i in flat]
            row_ids += [single_trial_id(names[i], r) for g in groups for r, i in enumerate(g)]
        trains.append(PairedSplit(pad_to_patch_size(x[train_idx], patch_size, pad_mode),
                                  np.stack([img(names[i]) for i in train_idx]), np.full(len(train_idx), -1),
                                  [names[i] for i in train_idx], ["bold5000"] * len(train_idx)))
        tests.append(PairedSplit(pad_to_patch_size(np.concatenate(test_fmri), patch_size, pad_mode),
                                 np.stack([img(n) for n in test_names]), np.full(len(test_names), -1), row_ids,
                                 ["bold5000"] * len(test_names)))
    return concat_splits(trains), concat_splits(tests)


TRIAL_MARK = "#trial"  # in the id of a single-trial test row; test rows without it are repetition averages


def single_trial_id(stimulus_id: str, repeat: int) -> str:
    """The id of one repetition of a test stimulus."""
    return f"{stimulus_id}{TRIAL_MARK}{repeat}"


def single_trials(split: PairedSplit) -> PairedSplit:
    """The single-trial rows of a test split built with ``include_test_trials``."""
    idx = [i for i, s in enumerate(split.ids) if TRIAL_MARK in s]
    if not idx:
        raise DataError("this test split has no single trials (data.include_test_trials is off or the dataset "
                        "has no repetitions)")
    return split.subset(idx)


# ----------------------------------------------------------------------------- torch dataset
def group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices holding out ``fraction`` of the groups (e.g. classes) whole."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * len(uniq)))) if fraction > 0 else 0
    val_groups = set(rng.permutation(uniq)[:n_val].tolist())
    val = np.array([i for i, g in enumerate(groups) if g in val_groups], dtype=np.int64)
    train = np.array([i for i, g in enumerate(groups) if g not in val_groups], dtype=np.int64)
    return train, val


class PairedDataset(Dataset):
    """``{'fmri': (1, V), 'image': (3, S, S) in [-1, 1], 'label', 'index'}`` with the paper's training
    augmentation when ``train``: random zeroing of ``zero_voxels`` of the voxels, and with probability
    ``crop_p`` a random crop of ``1 - crop_ratio`` of the side, then resizing."""

    def __init__(self, split: PairedSplit, image_size: int, train: bool = False, zero_voxels: float = 0.2,
                 crop_ratio: float = 0.2, crop_p: float = 0.5):
        self.split, self.image_size, self.train = split, image_size, train
        self.zero = RandomVoxelZeroing(zero_voxels) if train and zero_voxels > 0 else None
        self.crop_ratio, self.crop_p = crop_ratio, crop_p

    def __len__(self) -> int:
        return len(self.split)

    def image_tensor(self, index: int, augment: bool) -> torch.Tensor:
        import torch.nn.functional as F

        img = torch.from_numpy(np.ascontiguousarray(self.split.images[index])).permute(2, 0, 1).float() / 127.5 - 1
        if augment and self.crop_ratio > 0 and torch.rand(()) < self.crop_p:
            h, w = img.shape[1:]
            ch, cw = int(round(h * (1 - self.crop_ratio))), int(round(w * (1 - self.crop_ratio)))
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            img = img[:, top:top + ch, left:left + cw]
        if img.shape[1:] != (self.image_size, self.image_size):
            img = F.interpolate(img[None], size=(self.image_size, self.image_size), mode="bilinear",
                                antialias=True, align_corners=False)[0]
        return img.clamp(-1, 1)

    def __getitem__(self, index: int) -> dict:
        fmri = torch.from_numpy(np.array(self.split.fmri[index], dtype=np.float32)).unsqueeze(0)
        if self.zero is not None:
            fmri = self.zero(fmri)
        return {"fmri": fmri, "image": self.image_tensor(index, self.train),
                "label": int(self.split.labels[index]), "index": index}
