"""Meta's brain module: M/EEG (sensors x time) -> an image embedding with a contrastive and an MSE head.

After Défossez et al. 2023 (Nature Machine Intelligence, the convolutional "brain module") and Benchetrit, Banville
and King 2024 (ICLR, its image-decoding version):

* **spatial attention**: each of ``merger_channels`` virtual channels is a softmax-weighted sum of the sensors; the
  weights come from a Fourier embedding of each sensor's 2-D position (``fourier_harmonics`` K: cos and sin of
  2 pi (k x + l y) for k, l < K), so the layer reads any montage. During training, the sensors within
  ``spatial_dropout`` of a random point are removed from every sample's softmax (spatial dropout).
* a 1x1 convolution, then a **subject layer**: one C x C matrix per subject, chosen per sample.
* ``blocks`` **residual dilated convolution blocks** of three kernel-3 convolutions: the first two residual, with
  dilations 2^(2k mod period) and 2^(2k+1 mod period), batch norm and GELU; the third with dilation 2 and a GLU that
  halves 2 x ``hidden`` channels back to ``hidden``.
* two 1x1 convolutions (``hidden`` -> 2 x ``hidden``, GELU, -> ``features``).
* **temporal aggregation** (Benchetrit et al.): a learned affine map over time (default), the mean, or attention
  pooling; then two heads, ``contrastive`` (retrieval, CLIP loss) and ``regression`` (MSE), each LayerNorm, GELU,
  linear to the embedding.

Defaults are the papers': 270 merger channels, K = 32, dropout radius 0.2, 320 hidden channels, 5 blocks, period 5,
2048 features.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .persistence import PretrainedMixin

AGGREGATIONS = ("affine", "mean", "attention")


@dataclass
class BrainModuleConfig:
    positions: list  # (C, 2) sensor positions, any units (normalised to the unit square with a margin)
    n_times: int  # samples per input window (the affine aggregation has one weight per sample)
    dim: int  # the target embedding's size
    subjects: list = field(default_factory=lambda: ["0"])
    merger_channels: int = 270
    fourier_harmonics: int = 32
    spatial_dropout: float = 0.2  # radius in the normalised sensor layout; 0 switches it off
    hidden: int = 320
    blocks: int = 5
    dilation_period: int = 5
    features: int = 2048
    aggregation: str = "affine"
    conv_dropout: float = 0.0

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if len(self.positions) < 1 or any(len(p) != 2 for p in self.positions):
            raise ValueError("positions must be a (channels, 2) list of sensor positions")
        if not self.subjects:
            raise ValueError("subjects must name at least one subject")


def normalised_layout(positions: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """(C, 2) positions -> the unit square, the same scale on both axes, with ``margin`` on each side."""
    lo, hi = positions.min(0).values, positions.max(0).values
    span = (hi - lo).max().clamp_min(1e-9)
    return margin + (1 - 2 * margin) * (positions - lo) / span


class SpatialAttention(nn.Module):
    """(N, C, T) -> (N, D, T): D softmax mixtures of the sensors, scored from their positions' Fourier embedding."""

    def __init__(self, positions: torch.Tensor, out_channels: int, harmonics: int, dropout_radius: float):
        super().__init__()
        self.register_buffer("layout", normalised_layout(positions.float()), persistent=False)
        k = torch.arange(harmonics, dtype=torch.float32)
        phase = 2 * math.pi * (self.layout[:, 0, None, None] * k[:, None] + self.layout[:, 1, None, None] * k)
        emb = torch.cat([torch.cos(phase).flatten(1), torch.sin(phase).flatten(1)], 1)  # (C, 2 K^2)
        self.register_buffer("fourier", emb, persistent=False)
        self.weights = nn.Parameter(torch.randn(2 * harmonics**2, out_channels) / harmonics)
        self.dropout_radius = dropout_radius

    def scores(self) -> torch.Tensor:
        return self.fourier @ self.weights  # (C, D)

    def forward(self, x: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``drop``: (N, C) True for sensors left out of that sample's mixtures (spatial dropout)."""
        s = self.scores()[None].expand(len(x), -1, -1)  # (N, C, D)
        if drop is None and self.training and self.dropout_radius > 0:
            centre = torch.rand(len(x), 1, 2, device=x.device)
            drop = (self.layout[None] - centre).norm(dim=-1) < self.dropout_radius  # (N, C)
            drop &= ~drop.all(1, keepdim=True)  # never every sensor
        if drop is not None:
            s = s.masked_fill(drop[..., None], float("-inf"))
        return torch.einsum("nct,ncd->ndt", x, s.softmax(1))


class SubjectLayers(nn.Module):
    """One C x C matrix per subject, applied to each sample with its subject's matrix: (N, C, T) -> (N, C, T)."""

    def __init__(self, channels: int, n_subjects: int):
        super().__init__()
        self.weights = nn.Parameter(torch.eye(channels).repeat(n_subjects, 1, 1)
                                    + torch.randn(n_subjects, channels, channels) / channels)

    def forward(self, x: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nct,ncd->ndt", x, self.weights[subjects])


class ConvBlock(nn.Module):
    """Two residual dilated convolutions (BN, GELU), then a dilation-2 convolution with a GLU."""

    def __init__(self, cin: int, hidden: int, k: int, period: int, dropout: float):
        super().__init__()
        d1, d2 = 2 ** ((2 * k) % period), 2 ** ((2 * k + 1) % period)
        self.conv1 = nn.Conv1d(cin, hidden, 3, dilation=d1, padding=d1)
        self.conv2 = nn.Conv1d(hidden, hidden, 3, dilation=d2, padding=d2)
        self.bn1, self.bn2 = nn.BatchNorm1d(hidden), nn.BatchNorm1d(hidden)
        self.conv3 = nn.Conv1d(hidden, 2 * hidden, 3, dilation=2, padding=2)
        self.drop = nn.Dropout(dropout)
        self.residual1 = cin == hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.gelu(self.bn1(self.conv1(x))))
        x = x + y if self.residual1 else y
        x = x + self.drop(F.gelu(self.bn2(self.conv2(x))))
        return F.glu(self.conv3(x), dim=1)  # (N, 2H, T) -> (N, H, T)


class BrainModule(PretrainedMixin, nn.Module):
    def __init__(self, config: BrainModuleConfig):
        super().__init__()
        c = self.config = config
        positions = torch.as_tensor(c.positions, dtype=torch.float32)
        self.subject_index = {str(s): i for i, s in enumerate(c.subjects)}
        self.spatial = SpatialAttention(positions, c.merger_channels, c.fourier_harmonics, c.spatial_dropout)
        self.merge = nn.Conv1d(c.merger_channels, c.merger_channels, 1)
        self.subject_layers = SubjectLayers(c.merger_channels, len(c.subjects))
        self.blocks = nn.ModuleList(ConvBlock(c.merger_channels if k == 0 else c.hidden, c.hidden, k,
                                              c.dilation_period, c.conv_dropout) for k in range(c.blocks))
        self.final = nn.Sequential(nn.Conv1d(c.hidden, 2 * c.hidden, 1), nn.GELU(),
                                   nn.Conv1d(2 * c.hidden, c.features, 1))
        if c.aggregation == "affine":
            self.aggregate = nn.Linear(c.n_times, 1)
        elif c.aggregation == "attention":
            self.aggregate = nn.Conv1d(c.features, 1, 1)
        self.heads = nn.ModuleDict({h: nn.Sequential(nn.LayerNorm(c.features), nn.GELU(), nn.Linear(c.features, c.dim))
                                    for h in ("contrastive", "regression")})

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "BrainModule":
        return cls(BrainModuleConfig(**config))

    def subject_ids(self, subject, n: int, device) -> torch.Tensor:
        """(N,) subject indices from a name, one name per sample, or indices; None: the first subject."""
        if subject is None:
            return torch.zeros(n, dtype=torch.long, device=device)
        if isinstance(subject, torch.Tensor):
            return subject.to(device=device, dtype=torch.long)
        names = [subject] * n if isinstance(subject, (str, int)) else list(subject)
        missing = sorted({str(s) for s in names} - set(self.subject_index))
        if missing:
            raise KeyError(f"no subject layer for {missing}; this brain module has {list(self.subject_index)}")
        return torch.tensor([self.subject_index[str(s)] for s in names], device=device)

    def forward_features(self, x: torch.Tensor, subject=None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, T) -> (N, features, T)."""
        if x.ndim != 3 or x.shape[1] != len(self.config.positions):
            raise ValueError(f"expected (N, {len(self.config.positions)} sensors, T), got {tuple(x.shape)}")
        z = self.merge(self.spatial(x, drop))  # (N, D1, T)
        z = self.subject_layers(z, self.subject_ids(subject, len(x), x.device))
        for block in self.blocks:
            z = block(z)  # (N, H, T)
        return self.final(z)  # (N, F, T)

    def forward_aggregate(self, z: torch.Tensor) -> torch.Tensor:
        """(N, F, T) -> (N, F)."""
        a = self.config.aggregation
        if a == "mean":
            return z.mean(-1)
        if a == "attention":
            return (z * self.aggregate(z).softmax(-1)).sum(-1)
        if z.shape[-1] != self.config.n_times:
            raise ValueError(f"the affine aggregation reads {self.config.n_times} samples, got {z.shape[-1]}")
        return self.aggregate(z)[..., 0]

    def forward(self, x: torch.Tensor, subject=None, drop: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(N, C, T) -> {"contrastive": (N, dim), "regression": (N, dim)}."""
        h = self.forward_aggregate(self.forward_features(x, subject, drop))
        return {name: head(h) for name, head in self.heads.items()}
