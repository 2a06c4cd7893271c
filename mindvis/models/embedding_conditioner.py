"""Image embedding -> cross-attention context, for generators that draw an image from a (decoded) embedding.

The embedding is L2-normalised first: retrieval and the contrastive losses live on the sphere, and decoded
embeddings (ridge, the regression head) differ from true ones in scale more than in direction. A learned null
token stands in for "no condition" (dropped in 10 % of training steps, as the class-conditional prior).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .persistence import PretrainedMixin


@dataclass
class EmbeddingConditionerConfig:
    embed_dim: int
    context_dim: int
    target: str = ""  # the embedding space it was trained on (mindvis.models.image_embedders)


class EmbeddingConditioner(PretrainedMixin, nn.Module):
    def __init__(self, config: EmbeddingConditionerConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.embed_dim, config.context_dim)
        self.null = nn.Parameter(torch.zeros(1, 1, config.context_dim))

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "EmbeddingConditioner":
        return cls(EmbeddingConditionerConfig(**config))

    def forward(self, embeddings: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D) -> context (N, 1, C); rows where ``drop`` is True get the null token."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(f"expected embeddings (N, {self.config.embed_dim}) for this generator "
                             f"(trained on {self.config.target or 'an unnamed space'}), got {tuple(embeddings.shape)}")
        ctx = self.proj(F.normalize(embeddings.float(), dim=-1))[:, None]  # (N, 1, C)
        if drop is not None:
            ctx = torch.where(drop[:, None, None], self.null.expand_as(ctx), ctx)
        return ctx
