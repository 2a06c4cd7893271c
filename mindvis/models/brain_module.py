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
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .persistence import PretrainedMixin

AGGREGATIONS = ("affine", "mean", "attention", "none")
KEPT_DRAWS = 100  # brainmagick's ChannelDropout estimates each channel's probability of being kept from 100 points


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


# ----------------------------------------------------------------------------- sensor positions
def normalise_positions(positions) -> np.ndarray:
    """(..., C, 2) positions (NaN: none) -> float32, min-max normalised to [0, 1] per axis over the channels that
    have one (float64 arithmetic, as brainmagick's PositionGetter); idempotent on normalised positions."""
    p = np.array(positions, dtype=np.float64)
    valid = np.isfinite(p).all(-1, keepdims=True)
    q = np.where(valid, p, np.nan)
    lo, hi = np.nanmin(q, axis=-2, keepdims=True), np.nanmax(q, axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (q - lo) / (hi - lo)
    return np.where(valid, out, np.nan).astype(np.float32)


def layout_positions(info, layout=None) -> np.ndarray:
    """(C, 2) positions of ``info``'s channels for the spatial attention, as brainmagick computes them: the 2-D
    positions of ``mne.find_layout(info)`` (or ``layout``), matched by channel name with any ``-suffix`` removed
    (CTF's ``MLC11-1609`` is the layout's ``MLC11``), min-max normalised per axis; NaN for a channel the layout lacks
    (the brain module masks it)."""
    import mne

    layout = mne.channels.find_layout(info) if layout is None else layout
    out = np.full((len(info.ch_names), 2), np.nan)
    for i, name in enumerate(info.ch_names):
        name = name.rsplit("-", 1)[0]
        if name in layout.names:
            out[i] = layout.pos[layout.names.index(name), :2]
    return normalise_positions(out)


def fourier_embedding(positions: torch.Tensor, harmonics: int, margin: float) -> torch.Tensor:
    """(..., 2) normalised positions -> (..., 2 K^2): cos then sin of 2 pi (k (x + m) + l (y + m)) / (1 + 2 m),
    k (x frequency) outer, l inner."""
    freqs_y = torch.arange(harmonics).to(positions)
    freqs_x = freqs_y[:, None]
    width = 1 + 2 * margin
    positions = positions + margin
    p_x = 2 * math.pi * freqs_x / width
    p_y = 2 * math.pi * freqs_y / width
    positions = positions[..., None, None, :]
    loc = (positions[..., 0] * p_x + positions[..., 1] * p_y).flatten(-2)
    return torch.cat([torch.cos(loc), torch.sin(loc)], dim=-1)


def _within(positions: torch.Tensor, centre: torch.Tensor, radius: float) -> torch.Tensor:
    return (positions - centre).norm(dim=-1) <= radius


# ----------------------------------------------------------------------------- layers
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


# ----------------------------------------------------------------------------- the module
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
