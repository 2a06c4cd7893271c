"""Settings of stage B (DC-LDM fine-tuning) and of the small prior trainer. Defaults are the paper's (GOD)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from mindvis.world import SyntheticWorldConfig

DATASETS = ("god", "bold5000", "god+bold5000", "nsd", "synthetic")
MEEG_DATASETS = ("things-meg", "things-eeg2")  # mindvis-align only: trials x sensors x times


@dataclass
class ModelConfig:
    encoder: str = ""  # stage-A SC-MBM: mindvis run/model folder or original .pth; "random" = untrained encoder
    encoder_variant: str = "tiny"  # architecture when encoder=random (mindvis.models.MBM_VARIANTS)
    prior: str = ""  # CompVis LDM folder or diffusers-style folder; empty with synthetic: the cached synthetic prior
    global_pool: bool = False  # one context token (mean of encoder tokens) instead of 77
    original_norm_filter: bool = False  # with global_pool: drop every pretrained LayerNorm as the original's loader
    # does (a defect: trained weights are discarded); for compatibility with runs fine-tuned that way
    time_cond: bool = True  # double conditioning: add the fMRI to the timestep embedding
    interpolate_positions: bool = True  # adapt the encoder's positions to the data's voxel count (original)


@dataclass
class DataConfig:
    dataset: str = "god"  # god | bold5000 | god+bold5000 | synthetic
    path: str = ""  # GOD folder (MinD-Vis layout; with god_layout=bdata the folder of Subject*.h5 files), or the
    # folder mindvis-prep nsd wrote
    god_layout: str = "mindvis"  # mindvis (sbj_N.npz + images_256.npz) | bdata (Kamitani HDF5 + ImageNet images)
    imagenet_dir: str = ""  # bdata layout: folder with the stimulus images (n01518878_5958.JPEG ...)
    class_index: str = ""  # bdata layout: imagenet_class_index.json for labels
    bold5000_path: str = ""
    meeg_subject: int = 1  # things-eeg2: the subject (sub-XX) of the release
    meeg_average_train: bool = False  # things-eeg2: average each training image's repetitions
    meeg_large_set: bool = True  # things-meg: hold the training trials of the test concepts out of training as the
    # large retrieval set (Benchetrit et al. 2024); false: train on them
    subjects: List[str] = field(default_factory=list)  # GOD subjects (bdata: file names); empty: sbj_3 (the
    # original's default) for GOD, every subject of the synthetic world; things-meg (a folder of preparations):
    # which (1, BIGMEG1, sub-BIGMEG1; empty: all); things-eeg2: which (1, sub-01; empty: meeg_subject) -- several
    # M/EEG subjects train one brain module, a subject layer each
    bold5000_subjects: List[str] = field(default_factory=lambda: ["CSI1"])
    roi: str = "VC"
    pad_mode: str = "exact"
    include_test_trials: bool = False  # also evaluate single test trials (not only repetition averages)
    nsd_train_trials: str = "single"  # NSD training pairs: single (one per trial) | average (one per image)
    zero_voxels: float = 0.2  # training augmentation: fraction of voxels zeroed
    crop_ratio: float = 0.2  # training augmentation: random crop of (1 - ratio) of the side ...
    crop_p: float = 0.5  # ... with this probability, then resize
    val_fraction: float = 0.1  # validation split carved from training data (whole classes for GOD)
    max_train: int = 0  # use only this many training pairs (0: all): a seeded subset, nested across sizes
    image_size: int = 0  # 0: the prior's resolution
    cache_dir: str = ""
    num_workers: int = 0
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)


@dataclass
class TrainConfig:
    batch_size: int = 5  # paper: 5 for GOD, 25 for BOLD5000
    epochs: int = 500
    lr: float = 5.3e-5
    encoder_lr: float = 0.0  # learning rate of the SC-MBM encoder; 0: train.lr (the paper: one rate for all)
    weight_decay: float = 0.01
    clip_grad: float = 0.5
    accum_iter: int = 1
    mixed_precision: str = "no"
    seed: int = 2022
    unet: str = "cross_attention"  # what of the UNet trains: cross_attention (paper) | all | none
    train_encoder: bool = True
    val_every: int = 10  # epochs between validations (loss, grid, identification); the best model is kept
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    select_metric: str = "val_loss"  # val_loss[_<dataset>] (lower better) | val_pcc_identification (grid samples)
    grid_samples: int = 4  # validation fMRI drawn in the grid
    num_samples: int = 2  # images per fMRI in grids
    sample_steps: int = 25
    sampler: str = "dpm++"  # plms | ddim | dpm++
    tracker: str = "none"


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/finetune"


@dataclass
class PriorConfig:
    """A small latent diffusion prior (VQ-f4 autoencoder + UNet) for CPU-sized worlds, conditioned on the class
    (the label2img prior stage B starts from) or on an image embedding (a generator for decoded embeddings)."""

    images: str = "synthetic"  # "synthetic" (the world's classes, fresh renders) or an image folder
    image_size: int = 32  # CPU-sized: 8 x 8 x 3 latents, as the fixture prior
    images_per_class: int = 16  # synthetic: renders per class (none of them a GOD test image)
    vq_channels: List[int] = field(default_factory=lambda: [32, 32, 64])  # f4
    vq_codebook: int = 256
    latent_channels: int = 3
    unet_channels: List[int] = field(default_factory=lambda: [32, 64])
    context_dim: int = 64
    vq_epochs: int = 15
    ldm_epochs: int = 90  # with lr 1e-3; 30 epochs at 5e-4 left the prior's own 50-way at 14 % (now 54 %)
    batch_size: int = 32
    vq_lr: float = 1e-3
    lr: float = 1e-3  # latent diffusion
    seed: int = 0
    condition: str = "class"  # class | embedding (the image's own embedding in `target`)
    target: str = "synthetic"  # condition=embedding: the embedding space (mindvis.models.image_embedders)
    cache_dir: str = ""
    synthetic: SyntheticWorldConfig = field(default_factory=SyntheticWorldConfig)


@dataclass
class ConsistencyConfig:
    """Latent consistency distillation (Luo et al. 2023): what the student learns from the teacher."""

    solver_steps: int = 50  # N: the teacher's DDIM solver steps over the skipping-step schedule (k = T / N apart)
    guidance: float = 1.0  # the teacher's classifier-free guidance scale w (1: no guidance)
    uncond: str = "mean_fmri"  # DC-LDM's unconditional branch for guidance: mean_fmri (the conditioner of the mean
    # training fMRI) | zero_context (zero context tokens and no time offset); a generator uses its trained null token
    loss: str = "huber"  # huber | l2
    huber_c: float = 0.001
    ema_decay: float = 0.95  # the target network: an exponential moving average of the student
    timestep_scaling: float = 10.0  # boundary-condition scalings c_skip / c_out at 10 x t (LCMScheduler's)


@dataclass
class DistillTrainConfig:
    batch_size: int = 16
    epochs: int = 40
    lr: float = 1e-4
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    accum_iter: int = 1
    mixed_precision: str = "no"
    seed: int = 2022
    val_every: int = 5  # epochs between validations (consistency loss, student samples, distance to the teacher's)
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    select_metric: str = "val_pcc_identification"  # val_pcc_identification | val_teacher_mse | val_loss | last
    grid_samples: int = 16  # validation inputs sampled at each validation
    num_samples: int = 3  # samples per input
    sample_steps: int = 2  # the student's steps at validation
    tracker: str = "none"


@dataclass
class DistillConfig:
    """``mindvis-distill``: a few-step student of a fine-tuned DC-LDM (or of an embedding-conditioned generator)."""

    teacher: str = ""  # a mindvis-finetune run (its best/), a DC-LDM folder in one, or a generator folder
    distill: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    data: DataConfig = field(default_factory=DataConfig)  # DC-LDM: defaults to the teacher run's data settings
    data_seed: int = 2022  # the seed that carved the validation split: defaults to the teacher run's train.seed
    train: DistillTrainConfig = field(default_factory=DistillTrainConfig)
    output_dir: str = "runs/distill"


def validate_distill(cfg) -> None:
    from mindvis.config import MIXED_PRECISIONS, TRACKERS, check_settings

    d, t = cfg.distill, cfg.train
    check_settings([
        (bool(cfg.teacher), "teacher", cfg.teacher, "a mindvis-finetune run, a DC-LDM folder or a generator folder "
                                                    "(--teacher DIR)"),
        (1 <= d.solver_steps <= 1000, "distill.solver_steps", d.solver_steps, "in [1, 1000] (at most the training "
                                                                               "timesteps)"),
        (d.guidance >= 1, "distill.guidance", d.guidance, ">= 1 (1: no guidance)"),
        (d.uncond in ("mean_fmri", "zero_context"), "distill.uncond", d.uncond, "mean_fmri or zero_context"),
        (d.loss in ("huber", "l2"), "distill.loss", d.loss, "huber or l2"),
        (d.huber_c > 0, "distill.huber_c", d.huber_c, "> 0"),
        (0 <= d.ema_decay < 1, "distill.ema_decay", d.ema_decay, "in [0, 1)"),
        (d.timestep_scaling > 0, "distill.timestep_scaling", d.timestep_scaling, "> 0"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
        (t.epochs >= 1, "train.epochs", t.epochs, ">= 1"),
        (t.lr > 0, "train.lr", t.lr, "> 0"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0"),
        (t.clip_grad >= 0, "train.clip_grad", t.clip_grad, ">= 0 (0: no clipping)"),
        (t.accum_iter >= 1, "train.accum_iter", t.accum_iter, ">= 1"),
        (t.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", t.mixed_precision, f"one of {MIXED_PRECISIONS}"),
        (t.val_every >= 1 and t.checkpoint_every >= 1 and t.keep_checkpoints >= 1,
         "train.val_every/checkpoint_every/keep_checkpoints", (t.val_every, t.checkpoint_every, t.keep_checkpoints),
         ">= 1"),
        (t.select_metric in ("val_pcc_identification", "val_teacher_mse", "val_loss", "last"), "train.select_metric",
         t.select_metric, "val_pcc_identification, val_teacher_mse, val_loss or last"),
        (t.grid_samples >= 0 and t.num_samples >= 1, "train.grid_samples/num_samples", (t.grid_samples, t.num_samples),
         "grid_samples >= 0, num_samples >= 1"),
        (1 <= t.sample_steps <= d.solver_steps, "train.sample_steps", t.sample_steps,
         f"in [1, distill.solver_steps={d.solver_steps}]"),
        (t.tracker in TRACKERS, "train.tracker", t.tracker, f"one of {TRACKERS}"),
    ])


def validate(cfg) -> None:
    """Every setting checked before a run starts (see :func:`mindvis.config.check_settings`)."""
    from mindvis.config import MIXED_PRECISIONS, TRACKERS, check_settings
    from mindvis.data.fmri import PAD_MODES
    from mindvis.models.sc_mbm import MBM_VARIANTS
    from mindvis.pipelines.mindvis_pipeline import SCHEDULERS

    from mindvis.config import check_unused

    check_unused(cfg, FinetuneConfig, {"data.meeg_subject": "THINGS-EEG2's subject: mindvis-align",
                                       "data.meeg_average_train": "THINGS-EEG2's averaging: mindvis-align"},
                 "mindvis-finetune")
    m, d, t = cfg.model, cfg.data, cfg.train
    check_settings([
        (m.encoder_variant in MBM_VARIANTS, "model.encoder_variant", m.encoder_variant, f"one of {sorted(MBM_VARIANTS)}"),
        (d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {DATASETS}"),
        (d.god_layout in ("mindvis", "bdata"), "data.god_layout", d.god_layout, "mindvis or bdata"),
        (d.nsd_train_trials in ("single", "average"), "data.nsd_train_trials", d.nsd_train_trials, "single or average"),
        (d.pad_mode in PAD_MODES, "data.pad_mode", d.pad_mode, f"one of {PAD_MODES}"),
        (0 <= d.zero_voxels < 1, "data.zero_voxels", d.zero_voxels, "in [0, 1)"),
        (0 <= d.crop_ratio < 1, "data.crop_ratio", d.crop_ratio, "in [0, 1)"),
        (0 <= d.crop_p <= 1, "data.crop_p", d.crop_p, "in [0, 1]"),
        (0 <= d.val_fraction < 1, "data.val_fraction", d.val_fraction, "in [0, 1)"),
        (d.max_train >= 0, "data.max_train", d.max_train, ">= 0 (0: all training pairs)"),
        (d.image_size >= 0, "data.image_size", d.image_size, ">= 0 (0: the prior's)"),
        (d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, ">= 1"),
        (t.epochs >= 1, "train.epochs", t.epochs, ">= 1"),
        (t.lr > 0, "train.lr", t.lr, "> 0"),
        (t.encoder_lr >= 0, "train.encoder_lr", t.encoder_lr, ">= 0 (0: train.lr)"),
        (t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0"),
        (t.clip_grad >= 0, "train.clip_grad", t.clip_grad, ">= 0 (0: no clipping)"),
        (t.accum_iter >= 1, "train.accum_iter", t.accum_iter, ">= 1"),
        (t.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", t.mixed_precision, f"one of {MIXED_PRECISIONS}"),
        (t.unet in ("cross_attention", "all", "none"), "train.unet", t.unet, "cross_attention, all or none"),
        (t.val_every >= 1 and t.checkpoint_every >= 1 and t.keep_checkpoints >= 1,
         "train.val_every/checkpoint_every/keep_checkpoints", (t.val_every, t.checkpoint_every, t.keep_checkpoints),
         ">= 1"),
        (t.select_metric.startswith("val_loss") or t.select_metric == "val_pcc_identification", "train.select_metric",
         t.select_metric, "val_loss, val_loss_<dataset> or val_pcc_identification"),
        (t.grid_samples >= 0 and t.num_samples >= 1 and t.sample_steps >= 1,
         "train.grid_samples/num_samples/sample_steps", (t.grid_samples, t.num_samples, t.sample_steps),
         "grid_samples >= 0, num_samples >= 1, sample_steps >= 1"),
        (t.sampler in SCHEDULERS and t.sampler != "lcm", "train.sampler", t.sampler,
         f"one of {tuple(x for x in SCHEDULERS if x != 'lcm')} (lcm samples students of mindvis-distill)"),
        (t.tracker in TRACKERS, "train.tracker", t.tracker, f"one of {TRACKERS}"),
    ])
