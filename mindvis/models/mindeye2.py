"""MindEye2 (Scotti et al., ICML 2024): per-subject adapters into one shared network, bigG tokens and a blurry branch.

:class:`MindEye2Network`, as the reference assembles it in ``Train.ipynb`` (state-dict prefixes there:
``ridge.``, ``backbone.``, ``diffusion_prior.`` -- the prior is :class:`~mindvis.models.mindeye_prior.MindEyePrior`):

* adapters (the reference's "ridge regression"): one ``Linear(V_s, h)`` with bias per subject; the ridge penalty is
  only AdamW's weight decay (1e-2). A sample passes the adapter of its subject: (B, 1, V_s) -> (B, 1, h);
* backbone: ``n_blocks`` pairs of MLP-Mixer-like blocks over the (B, L = 1, h) sequence. The first block of a pair
  works on the features, ``LayerNorm(h) -> Linear(h, h) -> GELU -> Dropout(0.15) -> Linear(h, h)``; the second on
  the sequence axis, the same with width L (with L = 1 its LayerNorm leaves only its bias, so it adds a learned
  constant). Each keeps its own residual stream, exactly as the reference threads them: the feature block adds
  the output of the previous feature block's residual sum, the sequence block that of the previous sequence
  block (both start from the input);
* ``backbone_linear``: ``Linear(h * L, T * D)`` -> (B, T, D) tokens (256 x 1664: OpenCLIP ViT-bigG/14's tokens);
  the diffusion prior is conditioned on them;
* ``clip_proj`` (contrastive head, per token): (LayerNorm, GELU, Linear) x 3 with width D throughout;
* blurry branch (``blurry_recon``): ``Linear(h * L, C * 7 * 7)``, dropout 0.3, read as C x 7 x 7 (C = 64),
  GroupNorm(1, C); a diffusers VAE ``Decoder`` (C -> 4 channels, three ``UpDecoderBlock2D`` of widths 32, 64, 128,
  one layer per block) gives (B, 4, 28, 28) Stable Diffusion VAE latents of a 224 px image; and a maps projector
  (three 1x1 convolutions C -> 512 -> 512 -> 512, GroupNorm(1)+ReLU between) gives (B, 49, 512) for the
  ConvNeXt-contrastive auxiliary loss.

Sizes are config fields with the released ``final_subj0N_pretrained_40sess_24bs`` values as defaults (h 4096,
4 blocks); the voxel counts are per subject.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .brain_decoders import projector
from .mindeye1 import maps_projector, vae_decoder
from .persistence import PretrainedMixin


@dataclass
class MindEye2Config:
    num_voxels: list[int] = field(default_factory=lambda: [15724])  # one entry per subject, in adapter order
    hidden: int = 4096
    n_blocks: int = 4
    seq_len: int = 1  # L
    tokens: int = 256  # T
    clip_dim: int = 1664  # D
    clip_proj_hidden: int | None = None  # None: D
    dropout: float = 0.15
    blurry_recon: bool = True
    blurry_channels: int = 64
    blurry_side: int = 7
    blurry_dropout: float = 0.3
    blurry_decoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    blurry_decoder_layers_per_block: int = 1
    blurry_decoder_norm_groups: int = 32
    blurry_maps_hidden: int = 512
    blurry_maps_dim: int = 512
    blurry_out_channels: int = 4  # the SD VAE's latent channels (the synthetic world's pixel targets: 3)
    subjects: list[str] | None = None  # names of the adapters' subjects (informational)


def _mixer_mlp(width: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(drop),
                         nn.Linear(width, width))


class MindEye2Network(PretrainedMixin, nn.Module):
    def __init__(self, config: MindEye2Config | None = None):
        super().__init__()
        c = self.config = config or MindEye2Config()
        self.adapters = nn.ModuleList([nn.Linear(v, c.hidden) for v in c.num_voxels])
        self.feature_mixers = nn.ModuleList([_mixer_mlp(c.hidden, c.dropout) for _ in range(c.n_blocks)])
        self.sequence_mixers = nn.ModuleList([_mixer_mlp(c.seq_len, c.dropout) for _ in range(c.n_blocks)])
        self.backbone_linear = nn.Linear(c.hidden * c.seq_len, c.tokens * c.clip_dim)
        self.clip_proj = projector(c.clip_dim, c.clip_proj_hidden or c.clip_dim)
        if c.blurry_recon:
            self.blurry_linear = nn.Linear(c.hidden * c.seq_len, c.blurry_channels * c.blurry_side ** 2)
            self.blurry_dropout = nn.Dropout(c.blurry_dropout)
            self.blurry_norm = nn.GroupNorm(1, c.blurry_channels)
            self.blurry_decoder = vae_decoder(c.blurry_channels, c.blurry_out_channels, c.blurry_decoder_channels,
                                              c.blurry_decoder_layers_per_block, c.blurry_decoder_norm_groups)
            self.blurry_maps = maps_projector(c.blurry_channels, c.blurry_maps_hidden, c.blurry_maps_dim)

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MindEye2Network":
        return cls(MindEye2Config(**config))

    @property
    def num_subjects(self) -> int:
        return len(self.adapters)

    def forward_adapter(self, voxels: torch.Tensor, subject: int) -> torch.Tensor:
        """(B, V_s) or (B, 1, V_s) -> (B, 1, h) through subject ``subject``'s adapter."""
        if voxels.ndim == 3:
            voxels = voxels[:, 0]
        return self.adapters[subject](voxels)[:, None]

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, h) -> (B, L * h): the mixer blocks with their two residual streams."""
        residual1, residual2 = x, x.transpose(1, 2)
        for feature_mixer, sequence_mixer in zip(self.feature_mixers, self.sequence_mixers):
            x = feature_mixer(x) + residual1
            residual1 = x
            x = x.transpose(1, 2)
            x = sequence_mixer(x) + residual2
            residual2 = x
            x = x.transpose(1, 2)
        return x.reshape(len(x), -1)

    def forward_backbone(self, trunk: torch.Tensor) -> torch.Tensor:
        """(B, L * h) -> (B, T, D) tokens, the prior's condition."""
        return self.backbone_linear(trunk).view(len(trunk), self.config.tokens, self.config.clip_dim)

    def forward_clip_proj(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip_proj(tokens)

    def forward_blurry(self, trunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L * h) -> ((B, 4, 4s, 4s) VAE latents, (B, s*s, maps_dim) maps for the auxiliary loss)."""
        c = self.config
        b = self.blurry_dropout(self.blurry_linear(trunk))
        b = self.blurry_norm(b.view(len(b), c.blurry_channels, c.blurry_side, c.blurry_side))
        maps = self.blurry_maps(b).flatten(2).transpose(1, 2)
        return self.blurry_decoder(b), maps

    def forward(self, voxels: torch.Tensor, subject: int = 0) -> dict[str, torch.Tensor]:
        trunk = self.forward_trunk(self.forward_adapter(voxels, subject))
        tokens = self.forward_backbone(trunk)
        out = {"regression": tokens, "contrastive": self.forward_clip_proj(tokens)}
        if self.config.blurry_recon:
            out["blurry"], out["blurry_maps"] = self.forward_blurry(trunk)
        return out
