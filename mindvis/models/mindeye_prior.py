"""MindEye's diffusion prior: brain tokens -> image tokens, as MindEye1 and MindEye2 train and sample it.

Both papers condition a DALL-E-2-style prior on the backbone's output. The denoiser (:class:`MindEyePriorNetwork`)
is a transformer over ``[brain tokens (T), time token (1), noisy image tokens (T)]`` that predicts the clean image
tokens (``x_0``) from its last T positions:

* tokens are D wide (MindEye1: 257 x 768, CLIP ViT-L/14; MindEye2: 256 x 1664, OpenCLIP bigG);
* a learned position embedding is added to the noisy image tokens only (``learned_query_mode="pos_emb"``);
* the time token is a sinusoidal embedding of the step index through a 3-layer SiLU MLP (D -> 2D -> 2D -> D);
* each block is pre-norm attention then a pre-norm SwiGLU feed-forward, both residual. The attention is
  multi-query (H query heads, one key/value head), prepends a learned null key/value, rotates the first
  ``min(32, dim_head)`` features of queries and keys (rotary, interleaved pairs), compares l2-normalised queries and
  keys scaled by 16 ("cosine-sim attention"), adds a T5 relative-position bias (32 buckets, max distance 128,
  unidirectional buckets) and is not causal. Norms are bias-free LayerNorms (eps 1e-5 in float32, 1e-3 otherwise);
  the final norm first divides by the row maximum ("stable"); a bias-free linear layer projects out;
* classifier-free guidance: with probability ``cond_drop_prob`` (0.2) the brain tokens are replaced by learned null
  tokens, and independently the noisy image tokens by learned null tokens (both during training).

The diffusion (:class:`MindEyePrior`) has 100 steps on the cosine schedule (s = 0.008, betas clipped at 0.999), an
``x_0`` objective with mean-squared error, and two samplers, both diffusers schedulers fed the denoiser's ``x_0``:

* the full chain (``steps == timesteps``): ancestral DDPM (:class:`DalleDDPMScheduler`, a diffusers
  DDPMScheduler), noise drawn at every step including the last; MindEye1's reconstructions use this (100 steps);
* fewer steps: dalle2-pytorch's strided DDIM (:class:`DalleDDIMScheduler`), ``eta = 1``; MindEye2's
  reconstructions use 20 steps. It differs from diffusers' DDIM in which cumulative alpha it reads (see there).

The schedules' cumulative products are kept in float64 and the coefficients derived from them, as dalle2-pytorch
derives its buffers; diffusers' float32 tables alone lose ~1e-5 per step at the last steps.

MindEye1 diffuses the targets multiplied by ``sqrt(D)`` (dalle2-pytorch's default ``image_embed_scale``) and
divides samples by it; MindEye2's prior never scales (``embed_scale = 1``). Every size is a config field with
MindEye1's value as default; :func:`mindeye2_prior_config` gives MindEye2's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from .mindeye_prior_schedulers import DalleDDIMScheduler, DalleDDPMScheduler
from .persistence import PretrainedMixin


@dataclass
class MindEyePriorConfig:
    dim: int = 768  # D, token width (MindEye2: 1664)
    num_tokens: int = 257  # T (MindEye2: 256)
    depth: int = 6
    heads: int = 12  # query heads (MindEye2: 32)
    dim_head: int = 64  # (MindEye2: 52)
    ff_mult: float = 4.0  # feed-forward inner width = int(ff_mult * dim)
    rotary_dim: int | None = None  # None: min(32, dim_head)
    attn_scale: float = 16.0  # cosine-similarity attention temperature
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 128
    causal: bool = False
    time_mlp_expansion: float = 2.0
    timesteps: int = 100
    cond_drop_prob: float = 0.2
    embed_scale: float | None = None  # None: sqrt(dim) (MindEye1); MindEye2: 1.0
    sample_steps: int = 100  # default sampler steps (MindEye1: 100, the full chain; MindEye2: 20, strided DDIM)

    @property
    def scale(self) -> float:
        return math.sqrt(self.dim) if self.embed_scale is None else float(self.embed_scale)


def mindeye2_prior_config(**overrides) -> MindEyePriorConfig:
    """MindEye2's prior: 256 x 1664 bigG tokens, 32 heads of 52, no target scaling, 20 DDIM steps to sample."""
    base = dict(dim=1664, num_tokens=256, depth=6, heads=32, dim_head=52, embed_scale=1.0, sample_steps=20)
    return MindEyePriorConfig(**{**base, **overrides})


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal), float64, clipped to [0, 0.999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


# ---------------------------------------------------------------------------------------------------- denoiser


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a gain and no bias; eps 1e-5 for float32 inputs, 1e-3 for half precision; ``stable`` divides
    each row by its maximum first."""

    def __init__(self, dim: int, stable: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.stable = stable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=-1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.weight


def rotary_angles(n: int, rotary_dim: int, device=None) -> torch.Tensor:
    """(n, rotary_dim) rotation angles of positions 0..n-1, each frequency repeated for its pair of features.

    Written out rather than taken from diffusers' rotary helpers, whose signatures changed across the diffusers
    versions mindvis supports."""
    freqs = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=device)[: rotary_dim // 2].float() / rotary_dim))
    angles = torch.arange(n, device=device).float()[:, None] * freqs[None]  # (n, rotary_dim / 2)
    return angles.repeat_interleave(2, dim=-1)


def rotate(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``angles.shape[-1]`` features of ``t`` (..., n, d) in interleaved pairs."""
    r = angles.shape[-1]
    t_rot, t_pass = t[..., :r], t[..., r:]
    x1, x2 = t_rot.unflatten(-1, (-1, 2)).unbind(-1)
    half_turned = torch.stack((-x2, x1), dim=-1).flatten(-2)
    angles = angles.to(t.dtype)
    return torch.cat((t_rot * angles.cos() + half_turned * angles.sin(), t_pass), dim=-1)


def relative_position_buckets(n_query: int, n_key: int, num_buckets: int, max_distance: int,
                              device=None) -> torch.Tensor:
    """(n_query, n_key) T5 buckets of ``max(query - key, 0)``: exact below ``num_buckets / 2``, log-spaced above."""
    q = torch.arange(n_query, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None]
    n = torch.clamp(q - k, min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return torch.where(n < max_exact, n, large)


class PriorAttention(nn.Module):
    """Multi-query cosine-similarity attention with a learned null key/value (see the module docstring)."""

    def __init__(self, c: MindEyePriorConfig):
        super().__init__()
        self.heads, self.dim_head, self.scale, self.causal = c.heads, c.dim_head, c.attn_scale, c.causal
        inner = c.heads * c.dim_head
        self.norm = BiasFreeLayerNorm(c.dim)
        self.to_q = nn.Linear(c.dim, inner, bias=False)
        self.to_kv = nn.Linear(c.dim, 2 * c.dim_head, bias=False)  # one key/value head shared by all query heads
        self.null_kv = nn.Parameter(torch.randn(2, c.dim_head))
        self.to_out = nn.Linear(inner, c.dim, bias=False)
        self.out_norm = BiasFreeLayerNorm(c.dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, N, D); bias (H, N, N + 1); angles (N, rotary_dim)
        x = self.norm(x)
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, H, N, dh)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (B, N, dh) each
        q, k = rotate(q, angles), rotate(k, angles)
        null_k, null_v = (t.expand(b, 1, self.dim_head) for t in self.null_kv.unbind(0))
        k, v = torch.cat((null_k, k), dim=1), torch.cat((null_v, v), dim=1)  # (B, N + 1, dh)
        root = math.sqrt(self.scale)
        q, k = F.normalize(q, dim=-1) * root, F.normalize(k, dim=-1) * root
        sim = torch.einsum("bhid,bjd->bhij", q, k) + bias  # (B, H, N, N + 1)
        if self.causal:
            i, j = sim.shape[-2:]
            mask = torch.ones(i, j, dtype=torch.bool, device=x.device).triu(j - i + 1)
            sim = sim.masked_fill(mask, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1, dtype=torch.float32).type(sim.dtype)
        out = torch.einsum("bhij,bjd->bhid", attn, v)  # (B, H, N, dh)
        return self.out_norm(self.to_out(out.transpose(1, 2).reshape(b, n, -1)))


class SwiGLUFeedForward(nn.Module):
    def __init__(self, c: MindEyePriorConfig):
        super().__init__()
        inner = int(c.ff_mult * c.dim)
        self.norm = BiasFreeLayerNorm(c.dim)
        self.proj_in = nn.Linear(c.dim, 2 * inner, bias=False)
        self.proj_out = nn.Linear(inner, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(h * F.silu(gate))


class PriorBlock(nn.Module):
    def __init__(self, c: MindEyePriorConfig):
        super().__init__()
        self.attn = PriorAttention(c)
        self.ff = SwiGLUFeedForward(c)

    def forward(self, x, bias, angles):
        x = self.attn(x, bias, angles) + x
        return self.ff(x) + x


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) float steps -> (B, dim): ``[sin(t w_j), cos(t w_j)]``, ``w_j = 10000 ** (-j / (dim / 2 - 1))``.

    Same formula as diffusers' ``get_timestep_embedding(..., downscale_freq_shift=1)``, written with dalle2-pytorch's
    operation order (one multiply for the exponent), which is what the released priors saw to the last bit."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * -step)
    angles = t[:, None] * freqs[None]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class MindEyePriorNetwork(nn.Module):
    """The denoiser: (noisy image tokens, step, brain tokens) -> predicted clean image tokens, all (B, T, D)."""

    def __init__(self, c: MindEyePriorConfig):
        super().__init__()
        self.config = c
        d, hidden = c.dim, int(c.time_mlp_expansion * c.dim)
        self.time_mlp = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, d))
        self.pos_emb = nn.Parameter(torch.randn(c.num_tokens, d) * d ** -0.5)  # added to the noisy image tokens
        self.null_brain_embeds = nn.Parameter(torch.randn(c.num_tokens, d))
        self.null_image_embeds = nn.Parameter(torch.randn(c.num_tokens, d))
        self.rel_pos_bias = nn.Embedding(c.rel_pos_buckets, c.heads)
        self.blocks = nn.ModuleList([PriorBlock(c) for _ in range(c.depth)])
        self.final_norm = BiasFreeLayerNorm(d, stable=True)
        self.proj_out = nn.Linear(d, d, bias=False)
        self.rotary_dim = c.rotary_dim or min(32, c.dim_head)

    def forward(self, image_embed: torch.Tensor, t: torch.Tensor, brain_embed: torch.Tensor,
                brain_keep: torch.Tensor | None = None, image_keep: torch.Tensor | None = None) -> torch.Tensor:
        """image_embed (B, T, D) noisy tokens; t (B,) steps; brain_embed (B, T, D); keep masks (B,) bool, None =
        keep all (False replaces the tokens by the learned null tokens)."""
        b, n_tok, d = image_embed.shape
        if brain_keep is not None:
            null = self.null_brain_embeds[None].to(brain_embed.dtype)
            brain_embed = torch.where(brain_keep[:, None, None], brain_embed, null)
        if image_keep is not None:
            null = self.null_image_embeds[None].to(image_embed.dtype)
            image_embed = torch.where(image_keep[:, None, None], image_embed, null)
        time = self.time_mlp(sinusoidal_embedding(t.to(image_embed.dtype), d).float())[:, None]  # (B, 1, D)
        tokens = torch.cat((brain_embed, time, image_embed + self.pos_emb[None]), dim=1)  # (B, 2T + 1, D)
        n = tokens.shape[1]
        c = self.config
        buckets = relative_position_buckets(n, n + 1, c.rel_pos_buckets, c.rel_pos_max_distance, tokens.device)
        bias = self.rel_pos_bias(buckets).permute(2, 0, 1)  # (H, N, N + 1)
        angles = rotary_angles(n, self.rotary_dim, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, bias, angles)
        return self.proj_out(self.final_norm(tokens))[:, -n_tok:]  # (B, T, D)


# ---------------------------------------------------------------------------------------------------- the prior


class MindEyePrior(PretrainedMixin, nn.Module):
    """The diffusion prior: :meth:`loss` to train it, :meth:`sample` to turn brain tokens into image tokens."""

    def __init__(self, config: MindEyePriorConfig | None = None):
        super().__init__()
        self.config = config = config or MindEyePriorConfig()
        self.net = MindEyePriorNetwork(config)
        self.register_buffer("betas", cosine_betas(config.timesteps), persistent=False)  # float64

    def _config_dict(self) -> dict:
        return asdict(self.config)

    @classmethod
    def _from_config_dict(cls, config: dict, saved_class: str) -> "MindEyePrior":
        return cls(MindEyePriorConfig(**config))

    # -- the denoiser, with and without guidance
    def forward_denoiser(self, image_embed, t, brain_embed, brain_keep=None, image_keep=None) -> torch.Tensor:
        """Predicted clean tokens (B, T, D), in the diffused (scaled) space."""
        return self.net(image_embed, t, brain_embed, brain_keep, image_keep)

    def forward_guided(self, image_embed, t, brain_embed, cond_scale: float = 1.0) -> torch.Tensor:
        """Classifier-free guidance: the unconditional prediction drops both the brain and the noisy image tokens."""
        cond = self.net(image_embed, t, brain_embed)
        if cond_scale == 1:
            return cond
        drop = torch.zeros(len(image_embed), dtype=torch.bool, device=image_embed.device)
        null = self.net(image_embed, t, brain_embed, drop, drop)
        return null + (cond - null) * cond_scale

    forward = forward_denoiser

    # -- training
    def loss(self, image_embed, brain_embed, times=None, noise=None, brain_keep=None, image_keep=None,
             generator: torch.Generator | None = None):
        """(MSE between predicted and true clean tokens, the prediction in the targets' space).

        image_embed (B, T, D) targets, brain_embed (B, T, D) condition. Unset steps, noise and keep masks are drawn
        (steps uniform in [0, timesteps), keep with probability 1 - cond_drop_prob: the brain mask first)."""
        b, dev = len(image_embed), image_embed.device
        scale = self.config.scale
        x0 = image_embed * scale
        if times is None:
            times = torch.randint(0, self.config.timesteps, (b,), generator=generator).to(dev)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(dev)
        p = 1 - self.config.cond_drop_prob
        if brain_keep is None:
            brain_keep = (torch.rand(b, generator=generator) < p).to(dev)
        if image_keep is None:
            image_keep = (torch.rand(b, generator=generator) < p).to(dev)
        ac = torch.cumprod(1.0 - self.betas, dim=0)  # float64
        shape = (b,) + (1,) * (x0.ndim - 1)
        x_t = (ac.sqrt()[times].float().view(shape) * x0 + (1 - ac).sqrt()[times].float().view(shape) * noise)
        pred = self.net(x_t, times, brain_embed, brain_keep, image_keep)
        return F.mse_loss(pred, x0), pred / scale

    # -- sampling
    def make_scheduler(self, steps: int | None = None):
        steps = steps or self.config.sample_steps
        if steps >= self.config.timesteps:
            s = DalleDDPMScheduler(num_train_timesteps=self.config.timesteps, trained_betas=self.betas.cpu().numpy(),
                                   prediction_type="sample", clip_sample=False, variance_type="fixed_small_log")
            s.set_timesteps(self.config.timesteps)
            return s
        s = DalleDDIMScheduler(num_train_timesteps=self.config.timesteps, trained_betas=self.betas.cpu().numpy(),
                               prediction_type="sample", clip_sample=False)
        s.set_timesteps(steps)
        return s

    @torch.no_grad()
    def sample(self, brain_embed: torch.Tensor, steps: int | None = None, cond_scale: float = 1.0,
               generator: torch.Generator | None = None, noise=None) -> torch.Tensor:
        """Image tokens (B, T, D) for brain tokens (B, T, D).

        ``noise``: a callable ``shape -> tensor`` supplying every standard-normal draw in the references' order
        (the start, then one per step; the strided DDIM draws none when the next step is 0 or the last);
        default ``torch.randn`` with ``generator``."""
        draw = noise or (lambda shape: torch.randn(shape, generator=generator, dtype=brain_embed.dtype))
        sched = self.make_scheduler(steps)
        x = draw(brain_embed.shape).to(brain_embed.device, brain_embed.dtype)
        for t in sched.timesteps:
            tt = torch.full((len(x),), int(t), dtype=torch.long, device=x.device)
            x0 = self.forward_guided(x, tt, brain_embed, cond_scale)
            needs = sched.needs_noise(int(t)) if isinstance(sched, DalleDDIMScheduler) else True
            z = draw(x.shape).to(x.device, x.dtype) if needs else None
            x = sched.step(x0, int(t), x, variance_noise=z).prev_sample
        return x / self.config.scale
