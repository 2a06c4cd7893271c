"""fMRI-image pairs for stage B: the paired split every reader returns, their combination, single test trials,
validation carved by groups and the torch dataset.

Every reader (:mod:`~mindvis.data.god`, :mod:`~mindvis.data.god_bdata`, :mod:`~mindvis.data.bold5000`,
:mod:`~mindvis.data.nsd`, :mod:`~mindvis.data.meeg`) returns :class:`PairedSplit` objects: fMRI z-scored with the
training statistics of the real voxels and wrap-padded to the patch size, images as uint8 (N, H, W, 3), and labels
(the ImageNet class index for GOD, -1 where unknown).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .fmri import DataError, RandomVoxelZeroing, fit_length


@dataclass
class PairedSplit:
    fmri: np.ndarray  # (N, V) float32
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64, -1 = unknown
    ids: list[str]  # stimulus ids
    dataset: list[str] = field(default_factory=list)  # per sample: "god" / "bold5000" / ...
    subjects: list[str] = field(default_factory=list)  # per sample: the subject (M/EEG multi-subject training)

    def __post_init__(self):
        n = len(self.fmri)
        if not (len(self.images) == len(self.labels) == len(self.ids) == n):
            raise DataError(f"mismatched pair counts: {n} fMRI samples, {len(self.images)} images, "
                            f"{len(self.labels)} labels, {len(self.ids)} ids")
        if not self.dataset:
            self.dataset = ["?"] * n
        if not self.subjects:
            self.subjects = [""] * n
        if len(self.dataset) != n or len(self.subjects) != n:
            raise DataError(f"mismatched pair counts: {n} samples, {len(self.dataset)} dataset names, "
                            f"{len(self.subjects)} subjects")

    def __len__(self) -> int:
        return len(self.fmri)

    def subset(self, idx) -> "PairedSplit":
        idx = np.asarray(idx, dtype=np.int64)
        return PairedSplit(self.fmri[idx], self.images[idx], self.labels[idx], [self.ids[i] for i in idx],
                           [self.dataset[i] for i in idx], [self.subjects[i] for i in idx])

    def with_fmri(self, fmri: np.ndarray) -> "PairedSplit":
        """The same pairs with other brain data (e.g. flattened or cropped in time)."""
        return PairedSplit(fmri, self.images, self.labels, self.ids, self.dataset, self.subjects)


def concat_splits(splits: list[PairedSplit], num_voxels: int | None = None) -> PairedSplit:
    """Concatenate splits, wrap-padding (or truncating) every fMRI array to ``num_voxels`` (default:
    the longest), as the original does across subjects."""
    n = num_voxels or max(s.fmri.shape[1] for s in splits)
    sizes = {s.images.shape[1:] for s in splits}
    if len(sizes) > 1:
        raise DataError(f"cannot combine images of different sizes {sorted(sizes)}")
    return PairedSplit(np.concatenate([fit_length(s.fmri, n) for s in splits]),
                       np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]),
                       [i for s in splits for i in s.ids], [d for s in splits for d in s.dataset],
                       [j for s in splits for j in s.subjects])


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
