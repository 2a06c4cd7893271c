"""Settings of ``mindvis-align``. Defaults are MindEye's (Scotti et al. 2023) where it sets them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from mindvis.finetune.config import DataConfig
from mindvis.models.ridge import DEFAULT_ALPHAS

DECODERS = ("ridge", "mlp", "mbm", "brain-module")
CONTRASTIVE = ("clip", "bimixco", "softclip", "mindeye", "brainmagick", "none")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class BrainModuleSettings:
    """Meta's brain module (M/EEG; mindvis.models.brain_module.BrainModuleConfig, field for field but the ones the
    data set: positions, n_times, dim, subjects, subject_positions): brainmagick's clip_conv defaults, Benchetrit et
    al.'s features and aggregation."""
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
    mindeye_draws: int = 30  # ... over this many draws
    show: int = 8  # test items in the retrieval PNGs
    gallery: str = ""  # image folder for retrieval reconstructions; empty = the training images


@dataclass
class WindowsConfig:
    """M/EEG time-resolved decoding: one decoder per window of ``length`` s every ``step`` s; 0 = off."""
    length: float = 0.0
    step: float = 0.1


@dataclass
class AlignConfig:
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(include_test_trials=True))
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    target: str = "synthetic"  # clip:SRC | dinov2:SRC | timm:NAME | synthetic (mindvis.models.image_embedders)
    output_dir: str = "runs/align"
