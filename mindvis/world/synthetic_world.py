"""The synthetic world: its classes and their renders, the subjects' brains, and the writing of the releases."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .brain import HCP_AREAS, TASK_AREAS, Brain, make_brain
from .config import SyntheticWorldConfig
from .stimuli import SHAPES, category_embedding, class_attributes, image_features, render_image
from .writers import bold5000, god, hcp, nsd, things_eeg2, things_meg


class SyntheticWorld:
    """Generates the synthetic images and subjects and writes them in the real releases' layouts."""

    def __init__(self, config: SyntheticWorldConfig | None = None):
        self.cfg = config or SyntheticWorldConfig()
        c = self.cfg
        if c.image_size % c.grid:
            raise ValueError(f"image_size ({c.image_size}) must be a multiple of grid ({c.grid})")
        if len(c.hcp_voxels) != len(HCP_AREAS) or len(c.god_voxels) != len(TASK_AREAS):
            raise ValueError(f"hcp_voxels needs {len(HCP_AREAS)} sizes and god_voxels {len(TASK_AREAS)}")
        rng = np.random.default_rng(c.seed)
        self.n_classes = c.n_train_classes + c.n_test_classes
        self.classes = class_attributes(self.n_classes, rng)
        self.embedding = category_embedding(self.classes, c.category_dim, c.seed)

    # -- images
    def render(self, class_ids, stream: int) -> np.ndarray:
        """Images of the given classes; ``stream`` selects an independent, reproducible instance stream."""
        rng = np.random.default_rng([self.cfg.seed, 1, stream])
        return np.stack([render_image(self.classes[int(c)], rng, self.cfg.image_size) for c in class_ids])

    def god_stimuli(self):
        """GOD-like stimuli: train images (n_train_classes x images_per_class) and one test image per
        test class; test classes are disjoint from train classes, as in GOD."""
        c = self.cfg
        train_cls = np.repeat(np.arange(c.n_train_classes), c.images_per_class)
        test_cls = c.n_train_classes + np.arange(c.n_test_classes)
        return self.render(train_cls, 0), train_cls, self.render(test_cls, 1), test_cls

    def wnid(self, class_id: int) -> str:
        return f"n{90000000 + int(class_id):08d}"

    def feature_stats(self, feats: np.ndarray):
        return feats.mean(axis=(0, 1)), feats.std(axis=(0, 1)) + 1e-6

    def stimulus_features(self, images, class_ids):
        return image_features(images, self.cfg.grid), self.embedding[np.asarray(class_ids)]

    # -- subjects
    def task_brain(self, areas, sizes, stream: int, feats, cats) -> Brain:
        rng = np.random.default_rng([self.cfg.seed, 4, stream])
        brain = make_brain(areas, sizes, self.cfg.grid, self.cfg.category_dim, rng, cfg=self.cfg)
        brain.calibrate(feats, cats)
        return brain

    def responses(self, brain: Brain, feats, cats, rng) -> np.ndarray:
        return brain.signal(feats, cats) + brain.noise(len(feats), self.cfg.snr, rng)

    def concept(self, k: int) -> str:
        return f"synthetic_{SHAPES[self.classes[int(k)]['shape']]}_{int(k):03d}"

    # -- writers (one module per release in mindvis.world.writers)
    def write_hcp(self, root: str | os.PathLike) -> Path:
        """``root/<subject>/HCP_visual_voxel.npz`` with V1..V4 as (frames, voxels) float32."""
        return hcp.write(self, root)

    def write_god(self, root: str | os.PathLike) -> Path:
        """The MinD-Vis GOD layout: ``sbj_N.npz``, ``images_256.npz``, class index and label csv files."""
        return god.write(self, root)

    def write_bold5000(self, root: str | os.PathLike) -> Path:
        """The BOLD5000 GLMsingle ROI-betas layout with stimulus lists and an image dictionary."""
        return bold5000.write(self, root)

    def nsd_design(self):
        """(masterordering, subjectim, sharedix, brick classes) of the NSD-like experiment, 1-based as the release."""
        return nsd.experiment_design(self)

    def write_nsd(self, root: str | os.PathLike) -> Path:
        """The NSD release layout: per-session betas (NIfTI int16, percent signal change x 300), the nsdgeneral
        ROI, ``nsd_expdesign.mat`` and the stimulus brick ``nsd_stimuli.hdf5``."""
        return nsd.write(self, root)

    def write_things_meg(self, root: str | os.PathLike) -> Path:
        """The THINGS-MEG BIDS layout (see :mod:`mindvis.world.meeg`): continuous FIF runs with events."""
        return things_meg.write(self, root)

    def write_things_eeg2(self, root: str | os.PathLike) -> Path:
        """The THINGS-EEG2 layout (see :mod:`mindvis.world.meeg`): preprocessed .npy dicts and image folders."""
        return things_eeg2.write(self, root)

    def write(self, root: str | os.PathLike, parts=("hcp", "god", "bold5000")) -> Path:
        """Write the chosen parts under ``root`` as ``HCP/``, ``GOD/``, ``BOLD5000/``, ``NSD/``, ``THINGS-MEG/`` and
        ``THINGS-EEG2/``."""
        root = Path(root)
        writers = {"hcp": (self.write_hcp, "HCP"), "god": (self.write_god, "GOD"),
                   "bold5000": (self.write_bold5000, "BOLD5000"), "nsd": (self.write_nsd, "NSD"),
                   "things-meg": (self.write_things_meg, "THINGS-MEG"),
                   "things-eeg2": (self.write_things_eeg2, "THINGS-EEG2")}
        for p in parts:
            if p not in writers:
                raise ValueError(f"unknown part {p!r}; choose from {sorted(writers)}")
            fn, sub = writers[p]
            if not (root / sub / "meta.json").exists():
                fn(root / sub)
        return root
