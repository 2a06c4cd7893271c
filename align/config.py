"""Settings of ``mindvis-align``. Defaults are MindEye's (Scotti et al. 2023) where it sets them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from mindvis.finetune.config import DataConfig
from mindvis.models.ridge import DEFAULT_ALPHAS

DECODERS = ("ridge", "mlp", "mbm", "brain-module", "mindeye1", "mindeye2")
MINDEYE_DECODERS = ("mindeye1", "mindeye2")  # trained by align/mindeye_training.py (the recipes)
RECIPES = ("mindeye1", "mindeye2", "mindeye1-synthetic", "mindeye2-synthetic")  # --recipe: presets of that name
CONTRASTIVE = ("clip", "bimixco", "softclip", "mindeye", "brainmagick", "none")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class BrainModuleSettings:
    """Meta's brain module (M/EEG; mindvis.models.brain_module_config.BrainModuleConfig, field for field but the ones
    the data set: positions, n_times, dim, subjects, subject_positions): brainmagick's clip_conv defaults, Benchetrit
    et al.'s features and aggregation."""
    merger_channels: int = 270
    fourier_harmonics: int = 32
    fourier_margin: float = 0.2
    spatial_dropout: float = 0.2
    channel_dropout: float = 0.0
    channel_dropout_rescale: bool = True
    initial_linear: Optional[int] = None  # None: merger_channels; 0: none
    subject_layers_id: bool = False
    hidden: int = 320
    depth: int = 10
    blocks: int = 0  # legacy: when > 0, depth = blocks x glu
    kernel_size: int = 3
    dilation_growth: int = 2
    dilation_period: int = 5
    skip: bool = True
    batch_norm: bool = True
    glu: int = 2
    glu_context: int = 1
    glu_dilation: int = 1
    conv_dropout: float = 0.0
    dropout_input: float = 0.0
    features: int = 2048
    aggregation: str = "affine"  # affine | mean | attention (none, brainmagick's time-resolved output, is refused)


@dataclass
class DecoderConfig:
    name: str = "ridge"  # ridge | mlp | mbm | brain-module (M/EEG)
    # ridge: penalties tried by k-fold cross-validation on the training split
    alphas: List[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    folds: int = 5
    per_target: bool = False  # one penalty per embedding dimension
    # mlp (MindEye's backbone)
    hidden: int = 4096
    blocks: int = 4
    input_dropout: float = 0.5
    block_dropout: float = 0.15
    projector_hidden: int = 2048
    # mbm: the SC-MBM encoder
    encoder: str = "random"  # stage-A run or model folder, original fmri_encoder.pth, or random
    encoder_variant: str = "tiny"  # architecture when encoder=random (mindvis.models.MBM_VARIANTS)
    freeze_encoder: bool = False
    pool: str = "flatten"  # mbm head: flatten (per-token projection, concatenated) | mean (the tokens' mean)
    token_dim: int = 32  # mbm, flatten: width of each token in the head
    brain_module: BrainModuleSettings = field(default_factory=BrainModuleSettings)


@dataclass
class LossConfig:
    contrastive: str = "mindeye"  # clip | bimixco | softclip | mindeye (BiMixCo, then SoftCLIP) | brainmagick
    # (brainmagick's ClipLoss: one direction, brain -> images, candidates L2-normalised, no temperature) | none
    contrastive_weight: float = 0.75  # lambda: loss = lambda * contrastive + (1 - lambda) * MSE
    clip_temperature: float = 0.07  # CLIP's initial temperature
    learn_temperature: bool = True  # clip: learn the temperature (CLIP) or keep it fixed
    bimixco_temperature: float = 0.006  # MindEye
    softclip_temperature: float = 0.125
    mixup_fraction: float = 0.33  # mindeye: BiMixCo for this fraction of the epochs
    mix_beta: float = 0.15  # BiMixCo: mixing weights ~ Beta(beta, beta)
    mix_p: float = 0.5  # BiMixCo: fraction of the batch mixed


@dataclass
class TrainConfig:
    epochs: int = 120
    batch_size: int = 32
    lr: float = 3e-4
    encoder_lr: float = 0.0  # mbm: learning rate of the encoder; 0 = train.lr
    weight_decay: float = 0.01
    warmup_epochs: float = 5.0
    lr_schedule: str = "cosine"  # cosine (after the warm-up) | constant (brainmagick)
    clip_grad: float = 1.0
    seed: int = 0
    val_every: int = 5
    select_metric: str = "val_top1"  # val_top1 | val_top5 | val_correlation (higher better) | val_loss (lower)
    patience: int = 0  # early stopping: stop when select_metric has not improved for this many epochs (0: off)
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    mixed_precision: str = "no"
    accum_iter: int = 1
    tracker: str = "none"


@dataclass
class EvalConfig:
    mindeye_subset: int = 300  # MindEye's retrieval protocol: top-1 among this many random test items ...
    mindeye_draws: int = 30  # ... over this many draws (numpy RandomState(42), as MindEye2: image_/brain_retrieval)
    show: int = 8  # test items in the retrieval PNGs
    gallery: str = ""  # image folder for retrieval reconstructions; empty = the training images


@dataclass
class WindowsConfig:
    """M/EEG time-resolved decoding: one decoder per window of ``length`` s every ``step`` s; 0 = off."""
    length: float = 0.0
    step: float = 0.1


@dataclass
class MindEyeSettings:
    """MindEye1 / MindEye2 (``decoder.name=mindeye1|mindeye2``): the networks, their diffusion prior and what the
    recipes set beyond ``train.*`` and ``loss.*``. Defaults are the references' (configs/align/mindeye{1,2}.yaml);
    token count and width come from the target space."""
    # the network (MindEye1Network / MindEye2Network)
    hidden: int = 4096
    blocks: int = 4
    projector_hidden: int = 2048  # MindEye1's per-token projector (MindEye2's clip_proj is the token width)
    input_dropout: float = 0.5  # MindEye1
    block_dropout: float = 0.15  # MindEye1 blocks; MindEye2 mixer blocks
    # the diffusion prior (MindEyePrior): heads = token width // prior_dim_head (768 // 64 = 12, 1664 // 52 = 32)
    prior: bool = True
    prior_depth: int = 6
    prior_dim_head: int = 64
    prior_timesteps: int = 100
    prior_cond_drop: float = 0.2
    prior_embed_scale: float = 0.0  # targets x this in the diffusion; 0: the family's (MindEye1 sqrt(D), MindEye2 1)
    prior_sample_steps: int = 0  # test-time sampling; 0: the family's (MindEye1 100 ancestral, MindEye2 20 DDIM)
    prior_sample_test: bool = True  # sample the prior on the test set (retrieval of its outputs in the report)
    # the loss: clip_scale * contrastive + prior_scale * prior (+ blur_scale * (L1 + 0.1 * contrastive), MindEye2)
    clip_scale: float = 1.0
    prior_scale: float = 30.0
    softclip_start: float = 0.004  # SoftCLIP temperature, cosine from start to end over the SoftCLIP epochs
    softclip_end: float = 0.0075
    # the schedule: OneCycleLR(max_lr=train.lr, total_steps=epochs * steps, pct_start=warmup_epochs / epochs, ...)
    onecycle_warmup_epochs: float = 2.0
    final_div_factor: float = 1000.0
    # data
    image_augment: bool = False  # MindEye1: targets computed every step from augmented images (crop, flip, jitter)
    repetitions: str = "cycle"  # MindEye1 training: cycle (batch i uses repetition i % 3) | average (their mean)
    test_average: str = "outputs"  # outputs (MindEye2: model outputs of each repetition averaged) | fmri (MindEye1)
    select: str = "last"  # last (the references) | validation (train.select_metric on data.val_fraction carved)
    # MindEye2: more subjects trained jointly (prepared NSD folders), batches of equal shares per subject
    subjects: List[str] = field(default_factory=list)
    reference_bug: bool = False  # multi-subject BiMixCo partners without subject offsets, as MindEye2's notebook
    init: str = ""  # MindEye2: a model to fine-tune as a new subject (an align run or a mindvis-convert folder)
    finetune: str = "full"  # full (the reference: every parameter trains) | adapter (only the new subject's adapter)
    # MindEye2's low-level ("blurry") branch
    blurry: bool = True
    blurry_target: str = ""  # a diffusers AutoencoderKL folder (Stable Diffusion's VAE) | pixels (synthetic world)
    blurry_teacher: str = ""  # feature maps for its contrastive term: synthetic | "" (term off, logged)
    blurry_image_size: int = 224  # images given to the VAE (MindEye2: 224 px)
    blur_scale: float = 0.5
    blurry_contrastive_weight: float = 0.1
    blurry_temperature: float = 0.2
    blurry_channels: int = 64
    blurry_side: int = 7  # the grid the decoder upsamples 4x (7 -> 28: SD latents of 224 px)
    blurry_decoder_channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    blurry_norm_groups: int = 32
    blurry_maps_hidden: int = 512
    blurry_maps_dim: int = 512


@dataclass
class AlignConfig:
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(include_test_trials=True))
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    mindeye: MindEyeSettings = field(default_factory=MindEyeSettings)
    target: str = "synthetic"  # clip:SRC | dinov2:SRC | timm:NAME | synthetic (mindvis.models.image_embedders)
    output_dir: str = "runs/align"
