"""The brain module's settings (:class:`BrainModuleConfig`, brainmagick's clip_conv values as defaults) and Benchetrit
et al.'s image-decoding preset."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

AGGREGATIONS = ("affine", "mean", "attention", "none")


@dataclass
class BrainModuleConfig:
    """Defaults: brainmagick's clip_conv (bm/conf/model/clip_conv.yaml over bm/conf/model_defaults/defaults.yaml),
    the brainmagick setting named after each field."""
    positions: list  # (C, 2) sensor positions, any units (normalised here); None / NaN rows: no position (masked).
    #                  Empty: positions are given with every batch (forward(..., positions=))
    n_times: int  # samples per input window (the affine aggregation has one weight per sample)
    dim: int  # the target embedding's size (the heads' output); 0 with aggregation "none"
    subjects: list = field(default_factory=lambda: ["0"])  # one subject layer each (n_subjects)
    #: per-subject montages over the same channel list as ``positions`` ({subject: (C, 2)}, None / NaN rows: the
    #: subject lacks that channel): a sample's positions are its subject's (brainmagick: its recording's); subjects
    #: not listed use ``positions``
    subject_positions: dict = field(default_factory=dict)
    merger_channels: int = 270  # merger_channels
    fourier_harmonics: int = 32  # K; merger_pos_dim = 2 K^2 = 2048
    fourier_margin: float = 0.2  # FourierEmb margin
    spatial_dropout: float = 0.2  # merger_dropout: radius in the normalised layout; 0 switches it off
    channel_dropout: float = 0.0  # dropout (ChannelDropout radius); 0: no ChannelDropout (clip_conv)
    channel_dropout_rescale: bool = True  # dropout_rescale
    initial_linear: int | None = None  # initial_linear (clip_conv: 270); None: merger_channels; 0: none
    subject_layers_id: bool = False  # subject_layers_id: identity init instead of N(0, 1)
    hidden: int = 320  # hidden.meg
    depth: int = 10  # depth: convolution layers
    blocks: int = 0  # legacy: when > 0, depth = blocks x glu
    kernel_size: int = 3  # kernel_size
    dilation_growth: int = 2  # dilation_growth
    dilation_period: int = 5  # dilation_period (0: never reset)
    skip: bool = True  # skip
    batch_norm: bool = True  # batch_norm
    glu: int = 2  # glu: a GLU after every glu-th layer (0: none)
    glu_context: int = 1  # glu_context: the GLU convolution's kernel is 1 + 2 glu_context
    glu_dilation: int = 1  # the GLU convolution's dilation (brainmagick: 1; mindvis before 0.x used 2)
    conv_dropout: float = 0.0  # conv_dropout
    dropout_input: float = 0.0  # dropout_input
    features: int = 2048  # out_channels of brainmagick's model (Benchetrit et al.'s F')
    aggregation: str = "affine"  # Benchetrit et al.: affine | mean | attention; none: brainmagick's (N, F, T)

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.blocks:
            self.depth, self.blocks = self.blocks * max(self.glu, 1), 0
        self.positions = [None if p is None or not np.all(np.isfinite(np.asarray(p, dtype=float))) else
                          [float(v) for v in p] for p in self.positions]
        if any(p is not None and len(p) != 2 for p in self.positions):
            raise ValueError("positions must be a (channels, 2) list of sensor positions (None for none)")
        if self.positions and all(p is None for p in self.positions):
            raise ValueError("no sensor has a position: the spatial attention would mask every channel")
        self.subject_positions = {str(k): [None if p is None or not np.all(np.isfinite(np.asarray(p, dtype=float)))
                                           else [float(v) for v in p] for p in m]
                                  for k, m in self.subject_positions.items()}
        unknown = sorted(set(self.subject_positions) - {str(s) for s in self.subjects})
        if unknown:
            raise ValueError(f"subject_positions names subjects without a subject layer: {unknown}")
        for k, m in self.subject_positions.items():
            if len(m) != len(self.positions) or any(p is not None and len(p) != 2 for p in m):
                raise ValueError(f"subject_positions[{k!r}] must be a ({len(self.positions)}, 2) list, as positions")
            if all(p is None for p in m):
                raise ValueError(f"subject {k!r} has no sensor with a position")
        if not self.subjects:
            raise ValueError("subjects must name at least one subject")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (padding keeps the length), got {self.kernel_size}")
        if min(self.merger_channels, self.fourier_harmonics, self.hidden, self.features) < 1 or self.depth < 1:
            raise ValueError("sizes must be positive")
        if self.aggregation != "none" and self.dim < 1:
            raise ValueError(f"dim must be positive with aggregation {self.aggregation!r}")

    @property
    def merger_pos_dim(self) -> int:
        return 2 * self.fourier_harmonics**2

    @property
    def initial_channels(self) -> int:
        return self.merger_channels if self.initial_linear is None else self.initial_linear


# ----------------------------------------------------------------------------- Benchetrit et al.'s image decoding
#: Benchetrit, Banville and King (ICLR 2024), "Brain decoding: toward real-time reconstruction of visual
#: perception": brainmagick's clip_conv module with a temporal aggregation and two heads (CLIP and MSE). The paper's
#: text could not be read here beyond its abstract (which confirms the contrastive + regression objectives); every
#: value below is UNVERIFIED (recalled from the paper's section 2.3 and appendix A, to be checked there).
BENCHETRIT_2023 = {
    "merger_channels": 270,  # unverified: the spatial attention's 270 virtual channels (as brainmagick)
    "fourier_harmonics": 32,  # unverified (brainmagick clip_conv: merger_pos_dim 2048)
    "spatial_dropout": 0.2,  # unverified (brainmagick merger_dropout)
    "hidden": 320,  # unverified (brainmagick)
    "depth": 10,  # unverified: 5 residual blocks of 2 convolutions + GLU (brainmagick clip_conv depth 10, glu 2)
    "features": 2048,  # unverified: F', the backbone's output channels before aggregation
    "aggregation": "affine",  # unverified: the learned affine projection over time (the paper also tries the
    #                           global average ("mean") and an attention layer)
}


def benchetrit_config(positions, n_times: int, dim: int, subjects=("0",), **overrides) -> BrainModuleConfig:
    """Benchetrit et al.'s image-decoding brain module (values in BENCHETRIT_2023, unverified) for a montage."""
    return BrainModuleConfig(positions=list(positions), n_times=n_times, dim=dim, subjects=list(subjects),
                             **{**BENCHETRIT_2023, **overrides})
