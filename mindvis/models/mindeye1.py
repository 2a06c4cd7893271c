"""MindEye1 (Scotti et al., NeurIPS 2023): its voxel -> CLIP-token network and its low-level voxel -> VAE-latent net.

:class:`MindEye1Network` (the paper's "voxel2clip"):

* backbone: ``Linear(V, h)``, LayerNorm, GELU, dropout 0.5; ``n_blocks`` residual blocks
  ``h = h + Dropout_0.15(GELU(LayerNorm(Linear(h))))``; ``Linear(h, T * D)`` read as T tokens of width D
  (257 x 768: CLIP ViT-L/14's last hidden states through its post-LayerNorm and visual projection). These tokens
  are what the diffusion prior is conditioned on;
* projector (for the contrastive losses and retrieval), applied to every token on its own:
  (LayerNorm, GELU, Linear) x 3, D -> 2048 -> 2048 -> D.

:class:`MindEye1LowLevel` (the reference's ``Voxel2StableDiffusionModel``, 4x mode): voxels -> Stable Diffusion VAE
latents (4 x 64 x 64, of a 512 px image):

* ``Linear(V, h, bias=False)``, LayerNorm, SiLU, dropout 0.5; ``n_blocks`` residual blocks of
  ``Linear(h, h, bias=False)``, LayerNorm, SiLU, dropout 0.25;
* ``Linear(h, C * s * s, bias=False)`` read as a C x s x s grid (64 x 16 x 16), GroupNorm(1, C);
* a diffusers VAE ``Decoder`` (C -> 4 channels; three ``UpDecoderBlock2D`` of widths 64, 128, 256, one resnet layer
  per block (two resnets), GroupNorm 32, SiLU; two 2x upsamplings: 16 -> 64);
* optionally (training only, ``use_cont``) a maps projector on the grid, three 1x1 convolutions C -> 512 -> 512 ->
  512 with GroupNorm(1)+ReLU between, giving one 512-d vector per grid cell (B, s*s, 512). MindEye1 trains it with
  a soft contrastive loss (temperature 0.075) against ConvNeXt-XL features of the image and of an augmented copy
  (both passed through ConvNeXt's own 2048 -> 512 -> 512 -> 512 MLP); the reconstructions do not use it.

Sizes are config fields with the released models' values as defaults (subject 1: 15,724 voxels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .brain_decoders import projector
from .persistence import PretrainedMixin


@dataclass
class MindEye1Config:
    num_voxels: int = 15724
    hidden: int = 4096
    n_blocks: int = 4
    tokens: int = 257  # T
    clip_dim: int = 768  # D
    projector_hidden: int = 2048
    input_dropout: float = 0.5
    block_dropout: float = 0.15


class MindEye1Network(PretrainedMixin, nn.Module):
    def __init__(self, config: MindEye1Config | None = None):
        super().__init__()
        c = self.config = config or MindEye1Config()
        self.input = nn.Sequential(nn.Linear(c.num_voxels, c.hidden), nn.LayerNorm(c.hidden), nn.GELU(),
                                   nn.Dropout(c.input_dropout))
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.LayerNorm(c.hidden), nn.GELU(),
                                                   nn.Dropout(c.block_dropout)) for _ in range(c.n_blocks)])
        self.output = nn.Linear(c.hidden, c.tokens * c.clip_dim)
        self.projector = projector(c.clip_dim, c.projector_hidden)

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MindEye1Network":
        return cls(MindEye1Config(**config))

    def forward_backbone(self, voxels: torch.Tensor) -> torch.Tensor:
        """(B, V) or (B, 1, V) -> (B, T, D) tokens (the prior's condition, the MSE/prior head)."""
        if voxels.ndim == 3:
            voxels = voxels[:, 0]
        h = self.input(voxels)  # (B, h)
        for block in self.blocks:
            h = block(h) + h
        return self.output(h).view(len(h), self.config.tokens, self.config.clip_dim)

    def forward_projector(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), every token projected on its own (the contrastive head)."""
        return self.projector(tokens)

    def forward(self, voxels: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.forward_backbone(voxels)
        return {"regression": tokens, "contrastive": self.forward_projector(tokens)}


@dataclass
class MindEye1LowLevelConfig:
    num_voxels: int = 15724
    hidden: int = 4096
    n_blocks: int = 4
    latent_channels: int = 64  # C of the grid the decoder starts from (8x mode: 256, 16x mode: 512)
    grid_side: int = 16  # s (8x: 8, 16x: 4)
    decoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    decoder_layers_per_block: int = 1
    decoder_norm_groups: int = 32
    out_channels: int = 4
    use_cont: bool = False  # the training-only maps projector
    maps_hidden: int = 512
    maps_dim: int = 512
    input_dropout: float = 0.5
    block_dropout: float = 0.25


def vae_decoder(in_channels: int, out_channels: int, channels: list[int], layers_per_block: int,
                norm_groups: int) -> nn.Module:
    from diffusers.models.autoencoders.vae import Decoder
    return Decoder(in_channels=in_channels, out_channels=out_channels,
                   up_block_types=["UpDecoderBlock2D"] * len(channels), block_out_channels=list(channels),
                   layers_per_block=layers_per_block, norm_num_groups=norm_groups, act_fn="silu")


def maps_projector(in_channels: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False), nn.GroupNorm(1, hidden), nn.ReLU(True),
                         nn.Conv2d(hidden, hidden, 1, bias=False), nn.GroupNorm(1, hidden), nn.ReLU(True),
                         nn.Conv2d(hidden, out, 1, bias=True))


class MindEye1LowLevel(PretrainedMixin, nn.Module):
    def __init__(self, config: MindEye1LowLevelConfig | None = None):
        super().__init__()
        c = self.config = config or MindEye1LowLevelConfig()
        self.input = nn.Sequential(nn.Linear(c.num_voxels, c.hidden, bias=False), nn.LayerNorm(c.hidden),
                                   nn.SiLU(inplace=True), nn.Dropout(c.input_dropout))
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(c.hidden, c.hidden, bias=False), nn.LayerNorm(c.hidden),
                                                   nn.SiLU(inplace=True), nn.Dropout(c.block_dropout))
                                     for _ in range(c.n_blocks)])
        self.to_grid = nn.Linear(c.hidden, c.latent_channels * c.grid_side ** 2, bias=False)
        self.grid_norm = nn.GroupNorm(1, c.latent_channels)
        self.decoder = vae_decoder(c.latent_channels, c.out_channels, c.decoder_channels, c.decoder_layers_per_block,
                                   c.decoder_norm_groups)
        self.maps_projector = maps_projector(c.latent_channels, c.maps_hidden, c.maps_dim) if c.use_cont else None

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MindEye1LowLevel":
        return cls(MindEye1LowLevelConfig(**config))

    def forward_grid(self, voxels: torch.Tensor) -> torch.Tensor:
        """(B, V) -> (B, C, s, s), normalised."""
        if voxels.ndim == 3:
            voxels = voxels[:, 0]
        h = self.input(voxels)
        for block in self.blocks:
            h = block(h) + h
        c = self.config
        return self.grid_norm(self.to_grid(h).view(len(h), c.latent_channels, c.grid_side, c.grid_side))

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        """(B, V) -> (B, 4, 4s, 4s) VAE latents (scaled by 0.18215, as the VAE's encoder output is for training)."""
        return self.decoder(self.forward_grid(voxels))

    def forward_with_maps(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, maps (B, s*s, maps_dim)) for the auxiliary contrastive loss (needs ``use_cont``)."""
        if self.maps_projector is None:
            raise ValueError("this MindEye1LowLevel has no maps projector (use_cont=False)")
        grid = self.forward_grid(voxels)
        return self.decoder(grid), self.maps_projector(grid).flatten(2).transpose(1, 2)
