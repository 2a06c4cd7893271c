"""The brain module's layers, as brainmagick builds them: channel dropout, spatial attention over the sensors
(``ChannelMerger``), one matrix per subject, and the dilated convolutions with their GLUs."""
from __future__ import annotations

import torch
import torch.nn as nn

from .brain_module_positions import fourier_embedding

KEPT_DRAWS = 100  # brainmagick's ChannelDropout estimates each channel's probability of being kept from 100 points


def _within(positions: torch.Tensor, centre: torch.Tensor, radius: float) -> torch.Tensor:
    return (positions - centre).norm(dim=-1) <= radius


class ChannelDropout(nn.Module):
    """brainmagick's ChannelDropout: zero the channels without a position; in training also those within ``radius``
    of one random point, the others divided by their probability of being kept (``rescale``)."""

    def __init__(self, radius: float, rescale: bool = True):
        super().__init__()
        self.radius, self.rescale = radius, rescale

    def forward(self, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x * valid.float()[:, :, None]
        if self.training:
            kept = (positions - torch.rand(2, device=x.device)).norm(dim=-1) > self.radius
            x = x * kept.float()[:, :, None]
            if self.rescale:
                proba = torch.zeros(x.shape[:2], device=x.device)
                for _ in range(KEPT_DRAWS):
                    proba += ((positions - torch.rand(2, device=x.device)).norm(dim=-1) > self.radius).float() / KEPT_DRAWS
                x = x / (1e-8 + proba[:, :, None])
        return x


class ChannelMerger(nn.Module):
    """Spatial attention: (N, C, T) -> (N, D, T), D softmax mixtures of the sensors scored from their positions."""

    def __init__(self, out_channels: int, harmonics: int, margin: float, dropout: float):
        super().__init__()
        pos_dim = 2 * harmonics**2
        self.heads = nn.Parameter(torch.randn(out_channels, pos_dim))
        self.heads.data /= pos_dim**0.5
        self.harmonics, self.margin, self.dropout = harmonics, margin, dropout

    def weights(self, positions: torch.Tensor, valid: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D, C) mixing weights for (N, C, 2) positions (finite; ``valid`` (N, C) marks the real ones)."""
        emb = fourier_embedding(positions, self.harmonics, self.margin)
        offset = torch.zeros(valid.shape, device=positions.device)
        masked = ~valid
        if self.training and self.dropout:
            centre = torch.rand(2, device=positions.device) if centre is None else centre.to(positions)
            banned = _within(positions, centre, self.dropout) | masked
            masked = torch.where(banned.all(1, keepdim=True), masked, banned)  # never every channel of a sample
        offset[masked] = float("-inf")
        scores = torch.einsum("bcd,bod->boc", emb, self.heads[None].expand(len(positions), -1, -1))
        scores += offset[:, None]
        return torch.softmax(scores, dim=2)

    def forward(self, x, positions, valid, centre=None):
        return torch.einsum("bct,boc->bot", x, self.weights(positions, valid, centre))


class SubjectLayers(nn.Module):
    """One C x D matrix per subject, chosen per sample: (N, C, T) -> (N, D, T), out[d] = sum_c x[c] W[s, c, d]."""

    def __init__(self, channels: int, n_subjects: int, init_id: bool = False):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(n_subjects, channels, channels))
        if init_id:
            self.weights.data[:] = torch.eye(channels)[None]
        self.weights.data *= 1 / channels**0.5

    def forward(self, x: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bct,bcd->bdt", x, self.weights[subjects])


class ConvSequence(nn.Module):
    """brainmagick's ConvSequence as clip_conv builds it: per layer [input dropout], conv, [batch norm], GELU,
    [dropout]; a residual skip where the shapes match; a convolution + GLU after every ``glu``-th layer."""

    def __init__(self, channels, kernel: int, dilation_growth: int, dilation_period: int, batch_norm: bool, skip: bool,
                 glu: int, glu_context: int, glu_dilation: int, dropout: float, dropout_input: float):
        super().__init__()
        self.skip = skip
        self.sequence, self.glus = nn.ModuleList(), nn.ModuleList()
        dilation = 1
        for k, (chin, chout) in enumerate(zip(channels[:-1], channels[1:])):
            layers: list[nn.Module] = []
            if k == 0 and dropout_input:
                layers.append(nn.Dropout(dropout_input))
            if dilation_period and k % dilation_period == 0:
                dilation = 1
            layers.append(nn.Conv1d(chin, chout, kernel, 1, kernel // 2 * dilation, dilation=dilation))
            dilation *= dilation_growth
            if batch_norm:
                layers.append(nn.BatchNorm1d(chout))
            layers.append(nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            self.sequence.append(nn.Sequential(*layers))
            if glu and (k + 1) % glu == 0:
                self.glus.append(nn.Sequential(nn.Conv1d(chout, 2 * chout, 1 + 2 * glu_context,
                                                         padding=glu_context * glu_dilation, dilation=glu_dilation),
                                               nn.GLU(dim=1)))
            else:
                self.glus.append(None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, glu in zip(self.sequence, self.glus):
            y = layer(x)
            x = y + x if self.skip and y.shape == x.shape else y
            if glu is not None:
                x = glu(x)
        return x
