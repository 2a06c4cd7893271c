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

from mindvis.data.bold5000 import bold5000_pairs
from mindvis.data.fmri import DataError, padded_length
from mindvis.data.god import god_pairs
from mindvis.data.god_bdata import god_pairs_bdata
from mindvis.data.nsd import nsd_pairs, nsd_world_settings
from mindvis.data.pairs import TRIAL_MARK, PairedSplit, concat_splits, group_split
from mindvis.world import SyntheticWorldConfig, ensure_world

from .config import DATASETS, MEEG_DATASETS, DataConfig


@dataclass
class StageBData:
    train: PairedSplit
    val: PairedSplit
    test: PairedSplit
    num_voxels: int  # voxels, or M/EEG channels
    description: str
    layout: np.ndarray | None = None  # M/EEG: (channels, 2) sensor positions (NaN: none)
    times: np.ndarray | None = None  # M/EEG: (T,) seconds from image onset
    large: PairedSplit | None = None  # THINGS-MEG: the held-out trials of the test concepts (large retrieval set)
    montages: dict | None = None  # M/EEG, several subjects with different channels: {subject: (channels, 2)}


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
        return _world_config(nsd_world_settings(cfg.path))
    if cfg.dataset in MEEG_DATASETS and cfg.path:
        from mindvis.data.meeg import meeg_world_settings

        return _world_config(meeg_world_settings(cfg.path))
    return None


def _world_config(settings: dict | None) -> SyntheticWorldConfig | None:
    """The world of the settings a prepared folder records; None for real data (no settings)."""
    return SyntheticWorldConfig(**settings) if settings else None


def build_stage_b_data(cfg: DataConfig, patch_size: int, seed: int) -> StageBData:
    if cfg.dataset in MEEG_DATASETS:
        return build_meeg_data(cfg, seed)
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
    tr, val, counts = carve_validation(train, cfg, seed)
    return StageBData(tr, val, test, num_voxels, f"{'; '.join(names)}: {counts} / {len(test)} test pairs, "
                                                 f"{num_voxels} voxels")


def build_meeg_data(cfg: DataConfig, seed: int) -> StageBData:
    """THINGS-MEG (a folder mindvis-prep things-meg wrote) or THINGS-EEG2 (the release): trials x channels x times."""
    from mindvis.data.things_eeg2 import eeg2_subjects_pairs
    from mindvis.data.things_meg import things_meg_pairs

    if not cfg.path:
        raise DataError(f"data.path is empty: give the {cfg.dataset} folder (--data-path DIR)")
    if cfg.dataset == "things-meg":
        d = things_meg_pairs(cfg.path, cfg.include_test_trials, list(cfg.subjects), cfg.meeg_large_set)
    else:
        d = eeg2_subjects_pairs(cfg.path, list(cfg.subjects) or [cfg.meeg_subject], 256, cfg.include_test_trials,
                                cfg.meeg_average_train)
    tr, val, counts = carve_validation(d.train, cfg, seed)
    n_test = sum(1 for i in d.test.ids if TRIAL_MARK not in i)
    subjects = sorted(set(d.train.subjects))
    who = f"{len(subjects)} subjects, " if len(subjects) > 1 else ""
    return StageBData(tr, val, d.test, d.train.fmri.shape[1], f"{d.description}; {who}{counts} / {n_test} test images",
                      d.layout, d.times, d.large, d.montages)


def carve_validation(train: PairedSplit, cfg: DataConfig, seed: int) -> tuple[PairedSplit, PairedSplit, str]:
    """(training, validation, "n train / n validation / n test pairs"): validation is whole classes for GOD (its
    test classes are unseen) and THINGS, whole images otherwise; ``max_train`` keeps the first pairs of one seeded
    order, so a smaller subset is always inside a larger one."""
    groups = np.array([f"{d}:{l}" if l >= 0 else f"{d}:{i}" for d, l, i in zip(train.dataset, train.labels, train.ids)])
    tr_idx, val_idx = group_split(groups, cfg.val_fraction, seed)
    if cfg.max_train:
        if cfg.max_train > len(tr_idx):
            raise DataError(f"data.max_train={cfg.max_train} but the training split has {len(tr_idx)} pairs")
        tr_idx = np.sort(tr_idx[np.random.default_rng([seed, 17]).permutation(len(tr_idx))[:cfg.max_train]])
    return train.subset(tr_idx), train.subset(val_idx), f"{len(tr_idx)} train / {len(val_idx)} validation"
