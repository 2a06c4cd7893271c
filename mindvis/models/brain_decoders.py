"""Deep decoders from fMRI to an image embedding, each with two heads (MindEye, Scotti et al. 2023):

* ``regression`` (N, D): the backbone's embedding, trained by MSE (the path a generator is conditioned on);
* ``contrastive`` (N, D): a projector on top of it, trained by the contrastive losses and used for retrieval.

Backbones:

* :class:`MindEyeMLP`: linear voxels -> hidden, LayerNorm, GELU, dropout; residual blocks of the same; linear to
  the embedding. MindEye's defaults: hidden 4096, 4 blocks, dropout 0.5 then 0.15, projector width 2048.
* :class:`SharedMLP` (MindEye2's multi-subject idea): a linear adapter per subject from its voxels into a shared
  space, then one :class:`MindEyeMLP` backbone and heads for every subject; a new subject is added by fitting only
  its adapter (:meth:`SharedMLP.add_subject`).
* :class:`MBMDecoder`: the SC-MBM encoder (a stage-A run, an original ``fmri_encoder.pth`` or random weights),
  then a head over its tokens. ``pool="flatten"`` (default): each token is normalised and projected to
  ``token_dim``, and the concatenation is mapped linearly to the embedding, so the head knows where in the ROI
  each token comes from (as MinD-Vis's conditioner maps tokens, not their mean). ``pool="mean"``: the tokens'
  mean, LayerNorm and a linear layer; since the patch embedding is linear, the mean keeps little more than the
  average voxel patch, and it decodes far worse on the synthetic world (measured).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .persistence import PretrainedMixin
from .sc_mbm import FMRIEncoder, MBMConfig


def projector(dim: int, hidden: int) -> nn.Sequential:
    """MindEye's contrastive projector: (LayerNorm, GELU, Linear) x 3, dim -> hidden -> hidden -> dim."""
    return nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, hidden),
                         nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden),
                         nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, dim))


class _TwoHeads:
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, V) or (N, 1, V) -> {"regression": (N, D), "contrastive": (N, D)}."""
        emb = self.forward_backbone(x)
        return {"regression": emb, "contrastive": self.projector(emb)}


@dataclass
class MLPConfig:
    num_voxels: int
    dim: int
    hidden: int = 4096
    blocks: int = 4
    input_dropout: float = 0.5
    block_dropout: float = 0.15
    projector_hidden: int = 2048


class MindEyeMLP(_TwoHeads, PretrainedMixin, nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        c = self.config = config
        self.lin0 = nn.Sequential(nn.Linear(c.num_voxels, c.hidden), nn.LayerNorm(c.hidden), nn.GELU(),
                                  nn.Dropout(c.input_dropout))
        self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.LayerNorm(c.hidden), nn.GELU(),
                                                nn.Dropout(c.block_dropout)) for _ in range(c.blocks)])
        self.lin1 = nn.Linear(c.hidden, c.dim)
        self.projector = projector(c.dim, c.projector_hidden)

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MindEyeMLP":
        return cls(MLPConfig(**config))

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[:, 0]
        h = self.lin0(x)  # (N, hidden)
        for block in self.mlp:
            h = h + block(h)  # residual
        return self.lin1(h)  # (N, D)


@dataclass
class MBMDecoderConfig:
    encoder: dict  # MBMConfig fields of the SC-MBM encoder
    dim: int
    projector_hidden: int = 2048
    pool: str = "flatten"  # flatten | mean
    token_dim: int = 32  # flatten: width of each token before concatenation
    extra: dict = field(default_factory=dict)  # provenance (which stage-A weights), informational


class MBMDecoder(_TwoHeads, PretrainedMixin, nn.Module):
    def __init__(self, config: MBMDecoderConfig, encoder: FMRIEncoder | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder or FMRIEncoder(MBMConfig(**config.encoder), global_pool=False)
        d, n_tokens = self.encoder.embed_dim, self.encoder.num_patches
        if config.pool == "flatten":
            self.token_proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.token_dim))
            self.head = nn.Linear(n_tokens * config.token_dim, config.dim)
        elif config.pool == "mean":
            self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.dim))
        else:
            raise ValueError(f"pool must be flatten or mean, got {config.pool!r}")
        self.projector = projector(config.dim, config.projector_hidden)

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MBMDecoder":
        return cls(MBMDecoderConfig(**config))

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            x = x[:, None]
        tokens = self.encoder(x)  # (N, L, De)
        if self.config.pool == "mean":
            return self.head(tokens.mean(1))  # (N, D)
        return self.head(self.token_proj(tokens).flatten(1))  # (N, L * token_dim) -> (N, D)


@dataclass
class SharedMLPConfig:
    subjects: dict  # subject -> its voxel count
    dim: int
    shared: int = 1024  # width of the shared space the adapters map into (MindEye2: 4096)
    hidden: int = 1024
    blocks: int = 4
    input_dropout: float = 0.5
    block_dropout: float = 0.15
    projector_hidden: int = 2048


class SharedMLP(PretrainedMixin, nn.Module):
    def __init__(self, config: SharedMLPConfig):
        super().__init__()
        c = self.config = config
        self.adapters = nn.ModuleDict({s: nn.Linear(v, c.shared) for s, v in c.subjects.items()})
        self.backbone = MindEyeMLP(MLPConfig(c.shared, c.dim, c.hidden, c.blocks, c.input_dropout, c.block_dropout,
                                             c.projector_hidden))

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "SharedMLP":
        return cls(SharedMLPConfig(**config))

    def forward(self, x: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        """(N, V_subject) or (N, 1, V_subject) -> {"regression": (N, D), "contrastive": (N, D)}."""
        if subject not in self.adapters:
            raise KeyError(f"no adapter for subject {subject!r}; this decoder has {sorted(self.adapters)} "
                           "(add_subject adds one)")
        if x.ndim == 3:
            x = x[:, 0]
        return self.backbone(self.adapters[subject](x))  # (N, V_s) -> (N, shared) -> heads

    def for_subject(self, subject: str) -> "SubjectView":
        """This decoder as a one-input module for ``subject`` (what single-subject code such as ``decode`` calls)."""
        if subject not in self.adapters:
            raise KeyError(f"no adapter for subject {subject!r}; this decoder has {sorted(self.adapters)}")
        return SubjectView(self, subject)

    def add_subject(self, subject: str, num_voxels: int) -> list[nn.Parameter]:
        """A new subject's adapter; everything else is frozen, so fitting the returned parameters adapts the decoder
        to the subject without changing what the other subjects use."""
        if subject in self.adapters:
            raise ValueError(f"subject {subject!r} has an adapter already")
        self.requires_grad_(False)
        self.adapters[subject] = nn.Linear(num_voxels, self.config.shared)
        self.config.subjects = {**self.config.subjects, subject: num_voxels}
        return list(self.adapters[subject].parameters())


class SubjectView(nn.Module):
    """A SharedMLP read through one subject's adapter: ``view(x) == shared(x, subject)``."""

    def __init__(self, shared: SharedMLP, subject: str):
        super().__init__()
        self.shared, self.subject = shared, subject

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.shared(x, self.subject)
