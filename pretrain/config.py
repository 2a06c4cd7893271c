"""Settings of stage A (SC-MBM pretraining and stage-A2 tuning). Defaults are the paper's."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import List, Optional

from mindvis.models.sc_mbm import MBMConfig
from mindvis.world import SyntheticWorldConfig

DATA_SOURCES = ("hcp", "god", "nsd", "synthetic", "synthetic-god")

#: SC-MBM architecture (the voxel count comes from the data) and the masking ratio of training. Defaults: the paper's
#: model. The architecture's fields, their types and defaults are :class:`MBMConfig`'s (one source of truth), in its
#: order, then ``mask_ratio``; so the YAML presets' and ``model.*`` overrides' keys are those of MBMConfig.
ModelConfig = make_dataclass(
    "ModelConfig",
    [(f.name, f.type, field(default=f.default)) for f in fields(MBMConfig) if f.name != "num_voxels"]
    + [("mask_ratio", "float", field(default=0.75))],
    namespace={"__module__": __name__,
               "__doc__": "SC-MBM architecture (the voxel count comes from the data). Defaults: the paper's model."})


@dataclass
class DataConfig:
    """Where the fMRI comes from and how it is prepared."""

    source: str = "hcp"  # hcp | god | nsd (a mindvis-prep nsd folder) | synthetic (HCP-like rest) | synthetic-god
    path: str = ""  # dataset folder; empty for the synthetic sources (generated into the cache)
    roi: str = "VC"  # HCP: VC (= V1..V4) or one of V1..V4; GOD: any ROI mask in sbj_N.npz
    subjects: List[str] = field(default_factory=list)  # empty: all HCP subjects / GOD_SUBJECTS
    max_subjects: Optional[int] = None
    window_frames: int = 10  # HCP frames averaged into one sample: original code 10 (7.2 s), paper text 12
    pad_mode: str = "exact"  # exact | original (adds a whole patch when V divides; released checkpoints)
    aug_times: int = 1  # interpolation augmentation: (aug_times - 1) x extra midpoints of random pairs
    zero_voxels: float = 0.0  # fraction of voxels zeroed per sample (the original's intended 0.2 was a no-op)
    include_god: bool = False  # stage A1: add GOD training fMRI to HCP (the original's include_kam, on by default there)
    god_path: str = ""  # the GOD folder; empty with source=synthetic: the world's GOD-like subjects
    god_subjects: List[str] = field(default_factory=list)  # empty: sbj_1..sbj_5 (GOD), every synthetic subject
    god_include_test: bool = False  # stage A2: also tune on the (unlabelled) test fMRI, as the original (GOD: the
    # averaged test fMRI; NSD: the shared-1000 trials)
    holdout_subjects: int = 1  # HCP: last subjects held out for the summary (when there are more)
    holdout_fraction: float = 0.1  # otherwise: fraction of samples held out
    fit_to_init: bool = False  # with --init: wrap-pad / truncate data to the checkpoint's voxel count
    cache_dir: str = ""  # prepared arrays and the synthetic world; default $MINDVIS_CACHE or ~/.cache/mindvis
    num_workers: int = 0
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)


@dataclass
class TrainConfig:
    batch_size: int = 100
    epochs: int = 500
    warmup_epochs: int = 40
    lr: float = 2.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.8
    accum_iter: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    seed: int = 2022
    checkpoint_every: int = 20  # epochs; a checkpoint is also written at the end
    keep_checkpoints: int = 2
    plot_samples: int = 5  # held-out samples drawn in the reconstruction PNG
    tracker: str = "none"  # none | tensorboard | wandb


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/pretrain"
    init: str = ""  # stage A2: an SC-MBM checkpoint (mindvis run/checkpoint folder or original .pth)


def validate(cfg) -> None:
    """Every setting checked before a run starts (see :func:`mindvis.config.check_settings`)."""
    from mindvis.config import MIXED_PRECISIONS, TRACKERS, check_settings
    from mindvis.data.fmri import PAD_MODES

    m, d, t = cfg.model, cfg.data, cfg.train
    check_settings([
        (d.source in DATA_SOURCES, "data.source", d.source, f"one of {DATA_SOURCES}"),
        (m.patch_size > 0, "model.patch_size", m.patch_size, "> 0"),
        (m.depth > 0 and m.decoder_depth > 0, "model.depth/decoder_depth", (m.depth, m.decoder_depth), "> 0"),
        (m.num_heads > 0 and m.embed_dim % m.num_heads == 0, "model.num_heads", m.num_heads,
         f"a divisor of model.embed_dim={m.embed_dim}"),
        (m.decoder_num_heads > 0 and m.decoder_embed_dim % m.decoder_num_heads == 0, "model.decoder_num_heads",
         m.decoder_num_heads, f"a divisor of model.decoder_embed_dim={m.decoder_embed_dim}"),
        (m.mlp_ratio > 0, "model.mlp_ratio", m.mlp_ratio, "> 0"),
        (0 <= m.mask_ratio < 1, "model.mask_ratio", m.mask_ratio, "in [0, 1)"),
        (d.window_frames >= 1, "data.window_frames", d.window_frames, ">= 1"),
        (d.pad_mode in PAD_MODES, "data.pad_mode", d.pad_mode, f"one of {PAD_MODES}"),
        (d.aug_times >= 1, "data.aug_times", d.aug_times, ">= 1"),
        (0 <= d.zero_voxels < 1, "data.zero_voxels", d.zero_voxels, "in [0, 1)"),
        (d.holdout_subjects >= 0, "data.holdout_subjects", d.holdout_subjects, ">= 0"),
        (0 <= d.holdout_fraction < 1, "data.holdout_fraction", d.holdout_fraction, "in [0, 1)"),
        (d.max_subjects is None or d.max_subjects >= 1, "data.max_subjects", d.max_subjects, "empty or >= 1"),
        (d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
        (t.epochs >= 1, "train.epochs", t.epochs, ">= 1"),
        (t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, ">= 0"),
        (t.lr > 0, "train.lr", t.lr, "> 0"),
        (0 <= t.min_lr <= t.lr, "train.min_lr", t.min_lr, f"in [0, train.lr={t.lr}]"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0"),
        (len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", list(t.betas), "two numbers in [0, 1)"),
        (t.clip_grad >= 0, "train.clip_grad", t.clip_grad, ">= 0 (0: no clipping)"),
        (t.accum_iter >= 1, "train.accum_iter", t.accum_iter, ">= 1"),
        (t.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", t.mixed_precision, f"one of {MIXED_PRECISIONS}"),
        (t.checkpoint_every >= 1 and t.keep_checkpoints >= 1, "train.checkpoint_every/keep_checkpoints",
         (t.checkpoint_every, t.keep_checkpoints), ">= 1"),
        (t.plot_samples >= 0, "train.plot_samples", t.plot_samples, ">= 0"),
        (t.tracker in TRACKERS, "train.tracker", t.tracker, f"one of {TRACKERS}"),
    ])
