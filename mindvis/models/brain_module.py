"""Meta's brain module: M/EEG (sensors x time) -> an image embedding, function for function brainmagick's
``SimpleConv`` as ``bm/conf/model/clip_conv.yaml`` configures it (Défossez et al. 2023, Nature Machine Intelligence),
with the temporal aggregation and the two heads of Benchetrit, Banville and King (ICLR 2024).

The stages, in brainmagick's order (see docs/brainmagick.md in the notes for the reference's file:line):

* optional **channel dropout** (brainmagick's ``ChannelDropout``, off in clip_conv): channels without a position are
  zeroed; in training the channels within ``channel_dropout`` of one random point are zeroed too, and the rest are
  rescaled by the inverse of their probability of being kept (estimated from 100 random points).
* **spatial attention** (``ChannelMerger``): ``merger_channels`` softmax mixtures of the sensors, scored from a Fourier
  embedding of each sensor's 2-D position: positions min-max normalised to [0, 1] per axis, then cos and sin of
  2 pi (k (x + m) + l (y + m)) / (1 + 2 m) for k, l < ``fourier_harmonics`` (k outer, l inner; all cosines first),
  m = ``fourier_margin``. Channels without a position get a score of -inf (masked). In training the channels within
  ``spatial_dropout`` of one random point (one per batch) are masked too.
* an **initial 1x1 convolution** (``initial_linear``), then a **subject layer**: one C x C matrix per subject, chosen
  per sample (``out[d] = sum_c x[c] W[s, c, d]``).
* ``depth`` **convolution layers** of kernel ``kernel_size`` (dilation ``dilation_growth ** (k mod
  dilation_period)``), batch norm and GELU, with a residual skip wherever the shapes match; after every ``glu``-th layer
  a convolution of kernel 1 + 2 ``glu_context`` (dilation ``glu_dilation``) to twice the channels and a GLU.
* **output convolutions**: 1x1 to 2 x ``hidden``, GELU, transposed 1x1 to ``features`` (brainmagick's
  ``complex_out``): (N, features, T), brainmagick's output.
* **temporal aggregation** (Benchetrit et al.): a learned affine map over time, the mean, or attention pooling; then
  two heads, ``contrastive`` (retrieval, CLIP loss) and ``regression`` (MSE), each LayerNorm, GELU, linear. With
  ``aggregation="none"`` the module stops at brainmagick's output (a converted brainmagick checkpoint).

Every number is a setting with brainmagick's clip_conv value as default. The modules are created in brainmagick's
order, so the same seed gives the same initial weights. One deliberate difference: where brainmagick's spatial
dropout would mask every channel of a sample (its softmax then returns NaN), that sample keeps its channels.

The settings and Benchetrit et al.'s preset are in :mod:`mindvis.models.brain_module_config`, the sensor positions
(normalisation, MNE layouts, their Fourier embedding) in :mod:`mindvis.models.brain_module_positions`, the layers
(channel dropout, spatial attention, subject layers, convolutions) in :mod:`mindvis.models.brain_module_layers`.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn

from .brain_module_config import BrainModuleConfig
from .brain_module_layers import ChannelDropout, ChannelMerger, ConvSequence, SubjectLayers
from .brain_module_positions import normalise_positions
from .persistence import PretrainedMixin


class BrainModule(PretrainedMixin, nn.Module):
    def __init__(self, config: BrainModuleConfig):
        super().__init__()
        c = self.config = config
        self.subject_index = {str(s): i for i, s in enumerate(c.subjects)}
        if c.positions:
            pos = normalise_positions([[np.nan, np.nan] if p is None else p for p in c.positions])
            self.register_buffer("positions", torch.from_numpy(pos), persistent=False)
        else:
            self.register_buffer("positions", None, persistent=False)
        montages = None
        if c.subject_positions:
            rows = [c.subject_positions.get(str(s), c.positions) for s in c.subjects]
            montages = torch.from_numpy(normalise_positions([[[np.nan, np.nan] if p is None else p for p in m]
                                                             for m in rows]))
        self.register_buffer("subject_montages", montages, persistent=False)  # (S, C, 2) or None
        # created in brainmagick's order (SimpleConv.__init__), so that one seed gives both the same weights
        self.channel_dropout = ChannelDropout(c.channel_dropout, c.channel_dropout_rescale) if c.channel_dropout else None
        self.merger = ChannelMerger(c.merger_channels, c.fourier_harmonics, c.fourier_margin, c.spatial_dropout)
        width = c.merger_channels
        self.initial_linear = None
        if c.initial_channels:
            self.initial_linear = nn.Sequential(nn.Conv1d(width, c.initial_channels, 1))
            width = c.initial_channels
        self.subject_layers = SubjectLayers(width, len(c.subjects), c.subject_layers_id)
        self.final = nn.Sequential(nn.Conv1d(c.hidden, 2 * c.hidden, 1), nn.GELU(),
                                   nn.ConvTranspose1d(2 * c.hidden, c.features, 1, 1, 0))
        self.encoder = ConvSequence([width] + [c.hidden] * c.depth, c.kernel_size, c.dilation_growth,
                                    c.dilation_period, c.batch_norm, c.skip, c.glu, c.glu_context, c.glu_dilation,
                                    c.conv_dropout, c.dropout_input)
        # Benchetrit et al.'s temporal aggregation and heads
        self.aggregate = None
        if c.aggregation == "affine":
            self.aggregate = nn.Linear(c.n_times, 1)
        elif c.aggregation == "attention":
            self.aggregate = nn.Conv1d(c.features, 1, 1)
        self.heads = None
        if c.aggregation != "none":
            self.heads = nn.ModuleDict({h: nn.Sequential(nn.LayerNorm(c.features), nn.GELU(),
                                                         nn.Linear(c.features, c.dim))
                                        for h in ("contrastive", "regression")})

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "BrainModule":
        return cls(BrainModuleConfig(**config))

    @property
    def n_channels(self) -> int | None:
        return None if self.positions is None else len(self.positions)

    def subject_ids(self, subject, n: int, device) -> torch.Tensor:
        """(N,) subject indices from a name, one name per sample, or indices; None: the first subject."""
        if subject is None:
            return torch.zeros(n, dtype=torch.long, device=device)
        if isinstance(subject, torch.Tensor):
            return subject.to(device=device, dtype=torch.long).expand(n) if subject.ndim == 0 else \
                subject.to(device=device, dtype=torch.long)
        names = [subject] * n if isinstance(subject, (str, int)) else list(subject)
        missing = sorted({str(s) for s in names} - set(self.subject_index))
        if missing:
            raise KeyError(f"no subject layer for {missing}; this brain module has {list(self.subject_index)}")
        return torch.tensor([self.subject_index[str(s)] for s in names], device=device)

    def batch_positions(self, x: torch.Tensor, positions=None, subjects: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, 2) normalised positions with the missing ones at 0, and (N, C) which are real: ``positions`` (C, 2)
        or (N, C, 2) in any units (NaN: none), else each sample's subject's montage (``subjects``: (N,) indices,
        with ``subject_positions``), else the configured montage."""
        if positions is None and self.subject_montages is not None:
            ids = torch.zeros(len(x), dtype=torch.long) if subjects is None else subjects.detach().long()
            pos = self.subject_montages[ids.to(self.subject_montages.device)]
        elif positions is None:
            if self.positions is None:
                raise ValueError("this brain module has no montage: give positions (N or 1, C, 2) with the batch")
            pos = self.positions
        else:
            pos = torch.from_numpy(normalise_positions(torch.as_tensor(positions).detach().cpu().double().numpy()))
        pos = pos.to(x.device)
        if pos.ndim == 2:
            pos = pos[None]
        pos = pos.expand(len(x), -1, -1)
        if x.ndim != 3 or x.shape[1] != pos.shape[1]:
            raise ValueError(f"expected (N, {pos.shape[1]} sensors, T), got {tuple(x.shape)}")
        valid = torch.isfinite(pos).all(-1)
        return torch.where(valid[..., None], pos, torch.zeros((), device=x.device)), valid

    def forward_features(self, x: torch.Tensor, subject=None, positions=None, centre=None,
                         stages: dict | None = None) -> torch.Tensor:
        """(N, C, T) -> (N, features, T), brainmagick's SimpleConv output. ``centre`` (2,): the spatial dropout's
        point in training (default: drawn, one per batch); ``stages``: filled with each stage's output."""
        ids = self.subject_ids(subject, len(x), x.device)
        pos, valid = self.batch_positions(x, positions, ids)
        if self.channel_dropout is not None:
            x = self.channel_dropout(x, pos, valid)
        z = self.merger(x, pos, valid, centre)
        if stages is not None:
            stages["merger"] = z
        if self.initial_linear is not None:
            z = self.initial_linear(z)
            if stages is not None:
                stages["initial_linear"] = z
        z = self.subject_layers(z, ids)
        if stages is not None:
            stages["subject_layers"] = z
        z = self.encoder(z)
        if stages is not None:
            stages["encoder"] = z
        return self.final(z)

    def forward_aggregate(self, z: torch.Tensor) -> torch.Tensor:
        """(N, F, T) -> (N, F)."""
        a = self.config.aggregation
        if a == "mean":
            return z.mean(-1)
        if a == "attention":
            return (z * self.aggregate(z).softmax(-1)).sum(-1)
        if a == "none":
            raise ValueError("aggregation none: this brain module gives (N, features, T) (forward_features)")
        if z.shape[-1] != self.config.n_times:
            raise ValueError(f"the affine aggregation reads {self.config.n_times} samples, got {z.shape[-1]}")
        return self.aggregate(z)[..., 0]

    def forward(self, x: torch.Tensor, subject=None, positions=None, centre=None) -> dict[str, torch.Tensor]:
        """(N, C, T) -> {"contrastive": (N, dim), "regression": (N, dim)}; with aggregation "none":
        {"features": (N, features, T)}."""
        z = self.forward_features(x, subject, positions, centre)
        if self.heads is None:
            return {"features": z}
        h = self.forward_aggregate(z)
        return {name: head(h) for name, head in self.heads.items()}
