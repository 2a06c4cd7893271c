"""Stage-B data: training, validation (carved from training) and test pairs for the chosen dataset(s).

Joint GOD + BOLD5000 training: the two have different voxel counts; both are wrap-padded to the
longer one (as the original pads subjects of one dataset) so one encoder reads both, and every
sample keeps its dataset name so test metrics are reported per dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mindvis.data.fmri import DataError, padded_length
from mindvis.data.nsd import nsd_pairs, synthetic_world_of
from mindvis.data.pairs import (PairedSplit, bold5000_pairs, concat_splits, god_pairs, god_pairs_bdata,
                                group_split)
from mindvis.data.synthetic import ensure_world

from .config import DATASETS, DataConfig


@dataclass
class StageBData:
    train: PairedSplit
    val: PairedSplit
    test: PairedSplit
    num_voxels: int
    description: str


def _god(cfg: DataConfig, root: Path, patch_size: int, image_size: int):
    if cfg.god_layout == "bdata":
        if not cfg.subjects:
            raise DataError("data.god_layout=bdata needs data.subjects: the HDF5 file names (Subject3.h5 ...)")
        files = [str(root / (s if s.endswith(".h5") else s + ".h5")) for s in cfg.subjects]
        if not cfg.imagenet_dir:
            raise DataError("data.god_layout=bdata needs data.imagenet_dir (the stimulus images)")
        return god_pairs_bdata(files, cfg.imagenet_dir, cfg.class_index or None, cfg.roi, patch_size, cfg.pad_mode,
                               image_size)
    if cfg.god_layout != "mindvis":
        raise DataError(f"data.god_layout must be mindvis or bdata, got {cfg.god_layout!r}")
    return god_pairs(root, list(cfg.subjects) or ["sbj_3"], cfg.roi, patch_size, cfg.pad_mode, cfg.include_test_trials)


def synthetic_world(cfg: DataConfig):
    """The synthetic world the data comes from (its settings, for the cached prior, classifier and targets): the
    ``synthetic`` dataset's, or the one a prepared synthetic NSD folder records; None for real data."""
    if cfg.dataset == "synthetic":
        return OmegaConf.to_object(cfg.synthetic) if isinstance(cfg.synthetic, DictConfig) else cfg.synthetic
    if cfg.dataset == "nsd" and cfg.path:
        return synthetic_world_of(cfg.path)
    return None


def build_stage_b_data(cfg: DataConfig, patch_size: int, seed: int) -> StageBData:
    if cfg.dataset not in DATASETS:
        raise DataError(f"data.dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    trains, tests, names = [], [], []
    if cfg.dataset == "synthetic":
        world = OmegaConf.to_object(cfg.synthetic) if isinstance(cfg.synthetic, DictConfig) else cfg.synthetic
        root = ensure_world(world, parts=("god",), cache_dir=cfg.cache_dir or None) / "GOD"
        subjects = list(cfg.subjects) or [f"sbj_{i + 1}" for i in range(world.god_subjects)]
        tr, te = god_pairs(root, subjects, cfg.roi, patch_size, cfg.pad_mode, cfg.include_test_trials)
        trains, tests, names = [tr], [te], [f"synthetic GOD-like {root} {subjects}"]
    if cfg.dataset in ("god", "god+bold5000"):
        if not cfg.path:
            raise DataError("data.path is empty: give the GOD folder (--data-path DIR)")
        tr, te = _god(cfg, Path(cfg.path), patch_size, 256)
        trains.append(tr), tests.append(te), names.append(f"GOD {cfg.path} {list(cfg.subjects) or ['sbj_3']}")
    if cfg.dataset == "nsd":
        if not cfg.path:
            raise DataError("data.path is empty: give the folder mindvis-prep nsd wrote (--data-path DIR)")
        tr, te = nsd_pairs(cfg.path, patch_size, cfg.pad_mode, cfg.nsd_train_trials, cfg.include_test_trials)
        trains, tests, names = [tr], [te], [f"NSD {cfg.path}"]
    if cfg.dataset in ("bold5000", "god+bold5000"):
        path = cfg.bold5000_path or (cfg.path if cfg.dataset == "bold5000" else "")
        if not path:
            raise DataError("BOLD5000 needs data.bold5000_path (or --data-path with --dataset bold5000)")
        tr, te = bold5000_pairs(path, cfg.bold5000_subjects, patch_size, cfg.pad_mode, cfg.include_test_trials)
        trains.append(tr), tests.append(te), names.append(f"BOLD5000 {path} {list(cfg.bold5000_subjects)}")
    num_voxels = padded_length(max(s.fmri.shape[1] for s in trains + tests), patch_size, "exact")
    train, test = concat_splits(trains, num_voxels), concat_splits(tests, num_voxels)
    # validation: whole classes for GOD (its test classes are unseen), whole images otherwise
    groups = np.array([f"{d}:{l}" if l >= 0 else f"{d}:{i}" for d, l, i in zip(train.dataset, train.labels, train.ids)])
    tr_idx, val_idx = group_split(groups, cfg.val_fraction, seed)
    if cfg.max_train:
        if cfg.max_train > len(tr_idx):
            raise DataError(f"data.max_train={cfg.max_train} but the training split has {len(tr_idx)} pairs")
        # the first max_train of one seeded order: a smaller subset is always inside a larger one
        tr_idx = np.sort(tr_idx[np.random.default_rng([seed, 17]).permutation(len(tr_idx))[:cfg.max_train]])
    desc = (f"{'; '.join(names)}: {len(tr_idx)} train / {len(val_idx)} validation / {len(test)} test pairs, "
            f"{num_voxels} voxels")
    return StageBData(train.subset(tr_idx), train.subset(val_idx), test, num_voxels, desc)
