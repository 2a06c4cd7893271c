"""Stage-A datasets: HCP resting state (optionally with GOD fMRI) or a target dataset's fMRI (stage A2)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mindvis.data.dataset import FMRIDataset
from mindvis.data.fmri import DataError, RandomVoxelZeroing, padded_length
from mindvis.data.god import GOD_SUBJECTS, god_fmri
from mindvis.data.hcp import prepared_hcp
from mindvis.data.nsd import nsd_fmri
from mindvis.world import ensure_world

from .config import DATA_SOURCES, DataConfig

log = logging.getLogger("mindvis.pretrain")


@dataclass
class StageAData:
    train: FMRIDataset
    holdout: FMRIDataset
    num_voxels: int
    description: str


def resolve_source(cfg: DataConfig) -> tuple[str, Path]:
    """(``hcp``, ``god`` or ``nsd``, folder): synthetic sources are generated into the cache on first use."""
    if cfg.source not in DATA_SOURCES:
        raise DataError(f"data.source must be one of {DATA_SOURCES}, got {cfg.source!r}")
    if cfg.source.startswith("synthetic"):
        part = "god" if cfg.source == "synthetic-god" else "hcp"
        world = OmegaConf.to_object(cfg.synthetic) if isinstance(cfg.synthetic, DictConfig) else cfg.synthetic
        root = ensure_world(world, parts=(part,), cache_dir=cfg.cache_dir or None)
        return part, root / part.upper()
    if not cfg.path:
        raise DataError(f"data.path is empty: give the {cfg.source.upper()} folder (--data-path DIR)")
    return cfg.source, Path(cfg.path)


def _god_for_stage_a1(cfg: DataConfig) -> tuple[Path, list[str]]:
    """The GOD folder and subjects whose training fMRI joins the resting state (data.include_god)."""
    if cfg.god_path:
        return Path(cfg.god_path), list(cfg.god_subjects) or list(GOD_SUBJECTS)
    if cfg.source != "synthetic":
        raise DataError("data.include_god needs data.god_path (the GOD folder)")
    world = OmegaConf.to_object(cfg.synthetic) if isinstance(cfg.synthetic, DictConfig) else cfg.synthetic
    root = ensure_world(world, parts=("god",), cache_dir=cfg.cache_dir or None) / "GOD"
    return root, list(cfg.god_subjects) or [f"sbj_{i + 1}" for i in range(world.god_subjects)]


def build_stage_a_data(cfg: DataConfig, patch_size: int, seed: int, num_voxels: int | None = None,
                       progress=None) -> StageAData:
    """Training and held-out datasets. ``num_voxels`` (from ``--init``) fixes the model's voxel count."""
    kind, root = resolve_source(cfg)
    if kind == "hcp":
        subjects = list(cfg.subjects) or None
        arrays = prepared_hcp(root, cfg.roi, cfg.window_frames, subjects, cfg.cache_dir or None, progress)
        if cfg.max_subjects:
            arrays = arrays[: cfg.max_subjects]
        n_hold = cfg.holdout_subjects if len(arrays) > cfg.holdout_subjects else 0
        train_arrays, hold_arrays = arrays[: len(arrays) - n_hold], arrays[len(arrays) - n_hold:]
        if cfg.include_god:
            god_root, god_subjects = _god_for_stage_a1(cfg)
            train_arrays = train_arrays + god_fmri(god_root, god_subjects, cfg.roi, patch_size, cfg.pad_mode)
        desc = f"HCP {root}: {len(train_arrays)} training arrays, {n_hold} held-out subject(s)"
    elif kind == "nsd":
        arrays = [nsd_fmri(root, patch_size, cfg.pad_mode, include_test=cfg.god_include_test)]
        train_arrays, hold_arrays, n_hold = arrays, [], 0
        desc = f"NSD {root}"
    else:
        subjects = list(cfg.subjects) or (["sbj_1"] if cfg.source == "synthetic-god" else list(GOD_SUBJECTS))
        arrays = god_fmri(root, subjects, cfg.roi, patch_size, cfg.pad_mode, include_test=cfg.god_include_test)
        train_arrays, hold_arrays, n_hold = arrays, [], 0
        desc = f"GOD {root}: subjects {subjects}"

    longest = max(a.shape[1] for a in train_arrays + hold_arrays)
    data_voxels = padded_length(longest, patch_size, cfg.pad_mode) if kind == "hcp" else longest
    if num_voxels is not None and num_voxels != data_voxels:
        if not cfg.fit_to_init:
            raise DataError(
                f"the data has {data_voxels} voxels (after padding to patch size {patch_size}) but the --init "
                f"checkpoint was trained on {num_voxels}; set data.fit_to_init=true to wrap-pad/truncate the "
                "data to the checkpoint (as the original stage A2 does), or pretrain on this voxel count")
        log.warning("fitting %d voxels to the checkpoint's %d (data.fit_to_init)", data_voxels, num_voxels)
        data_voxels = num_voxels

    transform = RandomVoxelZeroing(cfg.zero_voxels) if cfg.zero_voxels > 0 else None
    full = FMRIDataset(train_arrays + hold_arrays, data_voxels)
    n_train_rows = sum(len(a) for a in train_arrays)
    if n_hold:
        train_idx, hold_idx = np.arange(n_train_rows), np.arange(n_train_rows, len(full.rows))
    else:  # hold out a random fraction of samples
        perm = np.random.default_rng(seed).permutation(n_train_rows)
        n = max(1, int(round(cfg.holdout_fraction * n_train_rows)))
        hold_idx, train_idx = np.sort(perm[:n]), np.sort(perm[n:])
    train = full.subset(train_idx, cfg.aug_times, seed, transform)
    holdout = full.subset(hold_idx)
    return StageAData(train, holdout, data_voxels, f"{desc}; {len(train_idx)} train / {len(hold_idx)} held-out "
                                                   f"samples, {data_voxels} voxels")
