"""The fMRI conditioner of DC-LDM: SC-MBM encoder tokens -> 77 context tokens, and a time-embedding offset.

Double conditioning (MinD-Vis, Sec. 3.3): the context tokens condition the UNet through
cross-attention, and the same tokens, mapped to one vector of the time-embedding width, are added
to the timestep embedding. Parameter names follow the original (``mae``, ``channel_mapper``,
``dim_mapper``; the original's ``time_embed_condtion`` lives in its UNet and is ``time_mapper`` here).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .persistence import PretrainedMixin
from .sc_mbm import FMRIEncoder, MBMConfig


@dataclass
class ConditionerConfig:
    encoder: dict  # MBMConfig fields
    context_dim: int  # the UNet's cross-attention width
    time_embed_dim: int  # the UNet's time-embedding width
    num_tokens: int = 77
    global_pool: bool = False
    use_time_cond: bool = True


class FMRIConditioner(PretrainedMixin, nn.Module):
    """fMRI (N, 1, V) -> context (N, 77, context_dim) [or (N, 1, context_dim) with global pooling]."""

    def __init__(self, config: ConditionerConfig, encoder: FMRIEncoder | None = None):
        super().__init__()
        self.config = config
        self.mae = encoder if encoder is not None else FMRIEncoder(MBMConfig(**config.encoder), config.global_pool)
        seq_len, dim = self.mae.num_patches, self.mae.embed_dim
        if not config.global_pool:
            self.channel_mapper = nn.Sequential(nn.Conv1d(seq_len, seq_len // 2, 1, bias=True),
                                                nn.Conv1d(seq_len // 2, config.num_tokens, 1, bias=True))
        self.dim_mapper = nn.Linear(dim, config.context_dim, bias=True)
        if config.use_time_cond:
            if config.global_pool:
                self.time_mapper = nn.Linear(config.context_dim, config.time_embed_dim, bias=True)
            else:
                n = config.num_tokens
                self.time_mapper = nn.Sequential(nn.Conv1d(n, n // 2, 1, bias=True), nn.Conv1d(n // 2, 1, 1, bias=True),
                                                 nn.Linear(config.context_dim, config.time_embed_dim, bias=True))

    def forward(self, fmri: torch.Tensor) -> torch.Tensor:
        """Context tokens for cross-attention."""
        x = self.mae(fmri)  # (N, L, D) or (N, 1, D)
        if not self.config.global_pool:
            x = self.channel_mapper(x)  # (N, 77, D)
        return self.dim_mapper(x)  # (N, 77, context_dim)

    def time_embedding(self, context: torch.Tensor) -> torch.Tensor | None:
        """(N, time_embed_dim) offset added to the timestep embedding, or None without time conditioning."""
        if not self.config.use_time_cond:
            return None
        c = self.time_mapper(context)  # (N, 1, T)
        return c.squeeze(1) if c.ndim == 3 else c

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "FMRIConditioner":
        return cls(ConditionerConfig(**config))
