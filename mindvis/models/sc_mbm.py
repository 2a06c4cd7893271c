"""SC-MBM: sparse-coded masked brain modeling (MinD-Vis stage A).

A 1-D ViT masked autoencoder over fMRI voxel vectors. Voxels are cut into patches of ``patch_size``
and each patch is embedded into a much larger dimension (the "sparse coding"); most patches are
masked and a lighter decoder reconstructs them. Parameter names equal the original ``MAEforFMRI``
and ``fmri_encoder`` so state dicts move both ways.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .persistence import PretrainedMixin
from .pos_embed import interpolate_pos_embed, sincos_pos_embed_1d


@dataclass
class MBMConfig:
    """Architecture of the masked brain model. ``num_voxels`` must be a multiple of ``patch_size``."""

    num_voxels: int = 4656
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 1.0

    def __post_init__(self):
        if self.num_voxels <= 0 or self.num_voxels % self.patch_size:
            raise ValueError(
                f"num_voxels={self.num_voxels} must be a positive multiple of patch_size={self.patch_size}; "
                "pad the fMRI first (mindvis.data.fmri.pad_to_patch_size)"
            )
        for dim, heads, what in ((self.embed_dim, self.num_heads, "embed_dim"),
                                 (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim")):
            if dim % heads:
                raise ValueError(f"{what}={dim} must be divisible by its number of heads ({heads})")

    @property
    def num_patches(self) -> int:
        return self.num_voxels // self.patch_size


#: Named architectures. "paper" is the MinD-Vis SC-MBM; the others are for CPU and tests.
MBM_VARIANTS: dict[str, dict] = {
    "paper": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                  decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=1.0),
    "small": dict(patch_size=16, embed_dim=256, depth=6, num_heads=8,
                  decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=8, mlp_ratio=1.0),
    "tiny": dict(patch_size=16, embed_dim=128, depth=4, num_heads=4,
                 decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mlp_ratio=1.0),
}


def mbm_config(variant: str, num_voxels: int, **overrides) -> MBMConfig:
    """The named variant's :class:`MBMConfig` for ``num_voxels`` voxels."""
    if variant not in MBM_VARIANTS:
        raise ValueError(f"unknown SC-MBM variant {variant!r}; choose one of {sorted(MBM_VARIANTS)}")
    return MBMConfig(num_voxels=num_voxels, **{**MBM_VARIANTS[variant], **overrides})


class PatchEmbed1D(nn.Module):
    """(N, 1, V) voxels -> (N, V / p, D) patch tokens by a Conv1d with kernel = stride = p."""

    def __init__(self, num_voxels: int, patch_size: int, in_chans: int = 1, embed_dim: int = 1024):
        super().__init__()
        self.num_voxels = num_voxels
        self.patch_size = patch_size
        self.num_patches = num_voxels // patch_size
        self.proj = nn.Conv1d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] % self.patch_size:
            raise ValueError(f"expected fMRI of shape (N, 1, V) with V a multiple of {self.patch_size}, "
                             f"got {tuple(x.shape)}")
        return self.proj(x).transpose(1, 2).contiguous()  # (N, L, D)


def _init_vit_weights(m: nn.Module) -> None:
    # xavier for linear layers as the official JAX ViT / MAE
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
                          for _ in range(depth)])


class _EncoderMixin:
    """Shared encoder parts: patch embedding, cls token, fixed positions, blocks, norm."""

    def _build_encoder(self, cfg: MBMConfig) -> None:
        self.patch_embed = PatchEmbed1D(cfg.num_voxels, cfg.patch_size, 1, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim), requires_grad=False)
        self.blocks = _blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def _init_encoder(self) -> None:
        pe = sincos_pos_embed_1d(self.pos_embed.shape[-1], self.patch_embed.num_patches, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like nn.Linear
        nn.init.normal_(self.cls_token, std=0.02)


class MaskedBrainModel(PretrainedMixin, nn.Module, _EncoderMixin):
    """The SC-MBM masked autoencoder (``MAEforFMRI`` of the original)."""

    def __init__(self, config: MBMConfig):
        super().__init__()
        self.config = config
        cfg = config
        # encoder
        self._build_encoder(cfg)
        # decoder
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = _blocks(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size, bias=True)
        self.initialize_weights()

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MaskedBrainModel":
        config.pop("global_pool", None)
        return cls(MBMConfig(**config))

    def initialize_weights(self) -> None:
        self.apply(_init_vit_weights)
        self._init_encoder()
        pe = sincos_pos_embed_1d(self.decoder_pos_embed.shape[-1], self.patch_embed.num_patches, cls_token=True)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(pe).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ patches
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, V) -> (N, L, p)."""
        p = self.patch_size
        if x.ndim != 3 or x.shape[2] % p:
            raise ValueError(f"expected (N, 1, V) with V a multiple of {p}, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], x.shape[2] // p, p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p) -> (N, 1, V)."""
        return x.reshape(x.shape[0], 1, x.shape[1] * x.shape[2])

    # ------------------------------------------------------------------ masking
    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Per-sample random masking by argsort of uniform noise.

        x: (N, L, D). Returns the kept tokens (N, L_keep, D), the mask (N, L; 1 = masked) and the
        indices that restore the original order (N, L).
        """
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_masked, mask, ids_restore

    # ------------------------------------------------------------------ forward
    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """x: (N, 1, V) -> latent (N, 1 + L_keep, D), mask (N, L), ids_restore (N, L)."""
        x = self.patch_embed(x)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L_keep, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + L_keep, D) -> predicted patches (N, L, p)."""
        x = self.decoder_embed(x)  # (N, 1 + L_keep, Dd)
        n_mask = ids_restore.shape[1] + 1 - x.shape[1]
        mask_tokens = self.mask_token.expand(x.shape[0], n_mask, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd), no cls
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1 + L, p)
        return x[:, 1:, :]

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked patches only (all patches if none is masked).

        x: (N, 1, V), pred: (N, L, p), mask: (N, L) with 1 = masked.
        """
        loss = ((pred - self.patchify(x)) ** 2).mean(dim=-1)  # (N, L)
        denom = mask.sum()
        if denom == 0:  # nothing masked: score every patch
            return loss.mean()
        return (loss * mask).sum() / denom

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """Returns (loss, pred (N, L, p), mask (N, L))."""
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(x, pred, mask), pred, mask

    def encoder(self, global_pool: bool = False) -> "FMRIEncoder":
        """A stand-alone :class:`FMRIEncoder` holding a copy of this model's encoder weights."""
        enc = FMRIEncoder(self.config, global_pool=global_pool)
        enc.load_mbm_state_dict(self.state_dict())
        return enc


class FMRIEncoder(PretrainedMixin, nn.Module, _EncoderMixin):
    """The SC-MBM encoder alone (``fmri_encoder`` of the original), used to condition stage B.

    No cls token and no masking: (N, 1, V) -> tokens (N, L, D), or (N, 1, D) with ``global_pool``
    (mean over tokens before the final norm, as the original).
    """

    def __init__(self, config: MBMConfig, global_pool: bool = False):
        super().__init__()
        self.config = config
        self.global_pool = global_pool
        self._build_encoder(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))  # kept for key compatibility
        self.apply(_init_vit_weights)
        self._init_encoder()
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def _config_dict(self) -> dict:
        return {**asdict(self.config), "global_pool": self.global_pool}

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "FMRIEncoder":
        global_pool = config.pop("global_pool", False)
        return cls(MBMConfig(**config), global_pool=global_pool)

    def _load_saved_weights(self, state_dict: dict, saved_class: str) -> None:
        if saved_class == type(self).__name__:
            self.load_state_dict(state_dict)
        else:  # the encoder of a saved SC-MBM
            self.load_mbm_state_dict(state_dict)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # (N, V)
            x = x.unsqueeze(1)
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]  # (N, L, D)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            x = x.mean(dim=1, keepdim=True)  # (N, 1, D)
        return self.norm(x)

    def load_mbm_state_dict(self, state_dict: dict[str, torch.Tensor], drop_norms: bool = False) -> None:
        """Load encoder weights from an SC-MBM state dict, interpolating positions if the voxel count differs.

        Decoder entries and the decoder's ``mask_token`` are ignored; every encoder weight must be present and is
        loaded, the trained LayerNorms included. ``drop_norms`` reproduces the original's ``fmri_encoder.
        load_checkpoint`` with ``global_pool``: it drops every key containing ``norm`` (the blocks' ``norm1`` /
        ``norm2`` and the final norm), leaving them freshly initialised; that discards trained weights and is kept
        only for compatibility with checkpoints fine-tuned that way.
        """
        own = self.state_dict()
        dropped = {k for k in own if "norm" in k} if drop_norms and self.global_pool else set()
        skip = {"mask_token"} | dropped
        sd = {k: v for k, v in state_dict.items() if k in own and k not in skip}
        missing = sorted(set(own) - set(sd) - skip)
        if missing:
            raise KeyError(f"SC-MBM state dict lacks encoder weights: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if sd["pos_embed"].shape[1] != self.pos_embed.shape[1]:
            sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], self.num_patches)
        self.load_state_dict(sd, strict=False)
