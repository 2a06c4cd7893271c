"""MindEye's training data and batches: a subject's single trials pointing at their images, MindEye1's batches
of images with repetition cycling, MindEye2's per-subject shares of distinct images from each subject's own stream,
and the steps of an epoch."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class SubjectTrials:
    """One subject's training data: single trials, each pointing at its (unique) image."""

    name: str
    fmri: np.ndarray  # (trials, V) float32
    image_of_trial: np.ndarray  # (trials,) int64 rows of ``targets`` / ``images``
    targets: np.ndarray  # (images, T, D) (float16 or float32; may be memory-mapped)
    images: np.ndarray  # (images, H, W, 3) uint8
    blurry: np.ndarray | None = None  # (images, C, H', W') targets of the low-level branch
    trials_of_image: list[np.ndarray] = field(default_factory=list)  # per image, its trials in recording order

    def __post_init__(self):
        if not self.trials_of_image:
            order = np.argsort(self.image_of_trial, kind="stable")
            bounds = np.cumsum(np.bincount(self.image_of_trial, minlength=len(self.targets)))[:-1]
            self.trials_of_image = np.split(order, bounds)

    @property
    def num_voxels(self) -> int:
        return self.fmri.shape[1]


def image_groups(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids in first-seen order's rows: the first row of each id, row -> image index) of a list of ids."""
    uniq, first, inverse = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    order = np.argsort(first)  # images in first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def repetition_batches(n_images: int, batch: int, epoch_perm: np.ndarray) -> list[np.ndarray]:
    """MindEye1: the image indices of each batch of an epoch (a permutation, the last partial batch dropped)."""
    steps = max(1, n_images // batch)
    return [epoch_perm[i * batch:(i + 1) * batch] for i in range(steps)]


def cycle_trials(subject: SubjectTrials, images: np.ndarray, step: int) -> np.ndarray:
    """MindEye1's repetition cycling: batch ``step`` takes repetition ``step % 3`` of each image (an image with
    fewer repetitions cycles over the ones it has)."""
    return np.array([subject.trials_of_image[i][(step % 3) % len(subject.trials_of_image[i])] for i in images])


def mindeye1_voxels(subject: SubjectTrials, images: np.ndarray, step: int, mode: str) -> np.ndarray:
    """(B, V) float32 fMRI of a MindEye1 batch: ``cycle`` (the reference, :func:`cycle_trials`) or ``average``
    (each image's repetitions averaged)."""
    if mode == "cycle":
        return np.ascontiguousarray(subject.fmri[cycle_trials(subject, images, step)], dtype=np.float32)
    return np.stack([subject.fmri[subject.trials_of_image[i]].mean(0) for i in images]).astype(np.float32)


class ShareStream:
    """A subject's stream of trials for MindEye2 batches: shuffled, reshuffled when exhausted; every share of
    ``size`` trials holds distinct images (a share that repeats one is skipped, as the reference skips it)."""

    def __init__(self, image_of_trial: np.ndarray, size: int, seed: int):
        self.images, self.size = image_of_trial, size
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(image_of_trial)), 0

    def _chunk(self) -> np.ndarray:
        if self.pos + self.size > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.images)), 0
        chunk = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return chunk

    def next(self) -> np.ndarray:
        for _ in range(1000):
            chunk = self._chunk()
            if len(np.unique(self.images[chunk])) == len(chunk):
                return chunk
        raise RuntimeError("could not draw a batch share of distinct images: the subject has too few images for "
                           f"shares of {self.size}")


def multi_subject_batches(subjects: list[SubjectTrials], batch_size: int, steps: int, seed: int,
                          epoch: int) -> list[list[np.ndarray]]:
    """MindEye2's batches of one epoch: ``steps`` lists of per-subject trial indices, ``batch_size // subjects``
    each (the equal share), from streams seeded by (seed, epoch, subject)."""
    share = batch_size // len(subjects)
    streams = [ShareStream(s.image_of_trial, share, seed * 1_000_003 + epoch * 1_009 + k)
               for k, s in enumerate(subjects)]
    return [[st.next() for st in streams] for _ in range(steps)]


def steps_per_epoch(family: str, subjects: list[SubjectTrials], batch_size: int) -> int:
    if family == "mindeye1":
        return max(1, len(subjects[0].targets) // batch_size)
    per_subject = batch_size // len(subjects)
    return max(1, len(subjects[0].fmri) // (per_subject * len(subjects)))


def _f32(a: np.ndarray, idx) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[idx], dtype=np.float32))
