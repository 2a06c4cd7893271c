"""MindEye's reconstruction pipelines on diffusers: predicted image tokens (and a blurry image) -> images.

Each procedure is written once against a small generator interface (:class:`TokenGenerator`) and run by three
generators: the published ones from local folders, and the synthetic world's small embedding-conditioned generator
as a stand-in where no published weights exist.

**MindEye1** (``Reconstructions.py`` + ``utils.reconstruction``; :func:`mindeye1_reconstruct`), per test image:

* one ``torch.Generator`` seeded with the seed (42) for the image; the prior samples N = 16 token sets from the
  backbone tokens repeated N times (100 ancestral steps, drawing from that generator);
* every sample divided by the L2 norm of its first (class) token + 1e-6;
* Versatile Diffusion's image UNet, cross-attending to the 257 tokens. The reference runs VD's dual-guided UNet
  with text/image mix ratio 0 (``DualTransformer2DModel.mix_ratio = 0``): every dual block's output is then its image
  transformer's alone, which is the image UNet of ``image_unet/`` -- run here directly (equal up to the rounding of
  the dual block's subtract-and-add);
* classifier-free guidance 3.5 with an all-zero token set as the unconditional input (``guidance > 1``);
* UniPC (order 2, bh2) built from VD's ``scheduler/`` config, 20 steps; diffusers 0.13's UniPC ends on
  ``alphas_cumprod[0]`` (``final_sigmas_type="sigma_min"`` today);
* img2img from the blurry image at strength 0.85: start at step index ``20 - int(20 * 0.85) = 3``; the blurry image
  (not clamped) is normalised with **CLIP's** mean and std (the reference's ``clip_extractor.normalize``) before VD's
  VAE encodes it, the latent is *sampled* from the posterior with the generator, scaled, repeated N times and noised
  with ``randn(N, 4, 64, 64)`` from the generator;
* decoding ``vae.decode(z / 0.18215) / 2 + 0.5`` clamped to [0, 1] (512 px);
* best of N (:func:`mindeye1_best_of`): cosine similarity between the flattened, L2-normalised projector
  (retrieval-head) output of the voxels and each candidate's 257 CLIP ViT-L/14 tokens (Clipper: Resize 224 bicubic
  without antialiasing, CenterCrop, CLIP normalisation, hidden states -> post-LayerNorm -> projection, divided by
  the class token's norm), flattened and L2-normalised; ``nanargmax``.

**MindEye2** (``recon_inference.ipynb`` + ``utils.unclip_recon``; :func:`mindeye2_reconstruct`), per test image:

* the prior output (256 x 1664 bigG tokens, 20 DDIM steps) conditions Stability's SDXL-architecture unCLIP
  (``unclip6``) through cross-attention; the "vector" condition is the size embedding of original size 768 x 768 and
  crop (0, 0);
* draws: ``z = randn(1, 4, 96, 96)``; the unconditional tokens are ``randn_like(tokens)`` (random, not zero);
  ``noise = randn_like(z)`` plus offset noise ``0.04 * randn(1)`` per sample; the start is ``z + sigma_0 * noise``
  (``(z + sigma_0 noise) / sqrt(1 + sigma_0^2)``, which the sampler multiplies back by ``sqrt(1 + sigma_0^2)``);
* sgm's ``EulerEDMSampler`` (no churn) with ``LegacyDDPMDiscretization`` (scaled-linear betas 0.00085 -> 0.012,
  1000 steps; 38 sigmas at ``linspace(999, 0, 38, endpoint=False)`` as ints, then 0), the ``DiscreteDenoiser``
  (sigma snapped to the nearest of the 1000, UNet input ``x / sqrt(sigma^2 + 1)`` at the integer step, output
  ``x - sigma * eps``) and ``VanillaCFG`` scale 5 ((uc, c) in that order);
* decoding by the first stage at ``1 / 0.13025``, then ``clamp(x * 0.8 + 0.2, 0, 1)`` (768 px), saved at 256 px
  (torchvision ``Resize`` without antialiasing);
* the blurry image: ``(vae.decode(latent / 0.18215) / 2 + 0.5).clamp(0, 1)`` with the Stable Diffusion image-variation
  VAE, resized to 256.

The generators are in :mod:`mindvis.pipelines.mindeye_generators`, MindEye2's refinement in
:mod:`mindvis.pipelines.mindeye_refine`, the published settings in :mod:`mindvis.pipelines.mindeye_recon_settings`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .mindeye_generators import TokenGenerator
from .mindeye_recon_settings import (CLIP_MEAN, CLIP_STD, ME1_GUIDANCE, ME1_STEPS, ME1_STRENGTH, ME2_GUIDANCE,
                                     ME2_OFFSET_NOISE, ME2_STEPS)
from .mindeye_schedules import discrete_sigma_table, sgm_sigmas


def plain_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize((size, size))`` on tensors as torchvision 0.15 / 0.16 ran it: bilinear, no antialiasing."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)


# ------------------------------------------------------------------------------------------------ MindEye1


def normalize_by_first_token(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Every token set divided by the L2 norm of its first token + ``eps`` (utils.reconstruction)."""
    return tokens / (tokens[:, :1].norm(dim=-1, keepdim=True) + eps)


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean.to(images)) / std.to(images)


@torch.no_grad()
def mindeye1_reconstruct(gen: TokenGenerator, tokens: torch.Tensor, blurry: torch.Tensor | None = None,
                         steps: int = ME1_STEPS, guidance: float = ME1_GUIDANCE, strength: float = ME1_STRENGTH,
                         generator: torch.Generator | None = None, init_normalize: str = "clip") -> torch.Tensor:
    """MindEye1's image stage for one test image (module docstring): ``tokens`` (N, T, D) = the prior's N samples
    (unnormalised), ``blurry`` (1, 3, H, W) the low-level image (None: no img2img). ``generator``: the test image's
    generator, after the prior drew from it. Returns (N, 3, S, S) in [0, 1].

    ``init_normalize``: how the blurry image is prepared for the VAE: ``clip`` (the published code: CLIP mean/std)
    or ``vae`` ([-1, 1], what a VAE expects). ``strength`` 0 returns the blurry image itself (the reference's
    "only low level"); 1 (or no blurry image) starts from noise."""
    if blurry is not None and strength == 0:
        return blurry.float().expand(len(tokens), -1, -1, -1).clamp(0, 1)
    n = len(tokens)
    tokens = normalize_by_first_token(tokens.float())
    ctx, unc = gen.context(tokens), gen.null_context(tokens, generator)
    cfg = guidance > 1.0
    sched = gen.unipc()
    sched.set_timesteps(steps)
    shape = (n, *gen.latent_shape)
    if blurry is not None and strength < 1:
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = sched.timesteps[t_start:]
        blurry = plain_resize(blurry, gen.image_size)  # the reference's sizes agree (512 px); elsewhere resized
        x = clip_normalize(blurry.float()) if init_normalize == "clip" else blurry.float() * 2 - 1
        init = gen.encode(x, generator).repeat(n, 1, 1, 1)
        noise = torch.randn(shape, generator=generator)
        latents = sched.add_noise(init, noise, timesteps[:1].repeat(n))
    else:
        timesteps = sched.timesteps
        latents = torch.randn(shape, generator=generator) * sched.init_noise_sigma
    both = gen.cat(unc, ctx) if cfg else ctx
    for t in timesteps:
        inp = torch.cat([latents] * 2) if cfg else latents
        inp = sched.scale_model_input(inp, t)
        eps = gen.eps(inp, t, both)
        if cfg:
            u, c = eps.chunk(2)
            eps = u + guidance * (c - u)
        latents = sched.step(eps, t, latents).prev_sample
    return gen.output(gen.decode(latents))


@torch.no_grad()
def mindeye1_best_of(candidates: torch.Tensor, projected: torch.Tensor, embed) -> torch.Tensor:
    """(N,) cosine similarity of each candidate's tokens (``embed``: float images (1, 3, H, W) in [0, 1] -> (1, T, D))
    to the voxels' projector output ``projected`` (T, D), both flattened and L2-normalised; the reference keeps
    ``nanargmax``. Candidates are embedded one at a time, as the reference does."""
    ref = F.normalize(projected.reshape(1, -1).float(), dim=-1)
    sims = []
    for im in candidates:
        cur = F.normalize(embed(im[None].float()).reshape(1, -1).float(), dim=-1)
        sims.append(float((ref @ cur.T).item()))
    return torch.tensor(sims, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ MindEye2


def sgm_denoise(gen: TokenGenerator, x: torch.Tensor, sigma: torch.Tensor, both, guidance: float,
                sigma_table: torch.Tensor) -> torch.Tensor:
    """sgm's ``DiscreteDenoiser`` (eps scaling) under ``VanillaCFG`` (inputs (uc, c)): the guided x0 estimate."""
    x_in, s_in = torch.cat([x, x]), torch.cat([sigma, sigma])
    idx = (s_in[None, :] - sigma_table[:, None]).abs().argmin(dim=0)  # nearest discrete step
    s_q = sigma_table[idx].view(-1, 1, 1, 1)
    eps = gen.eps(x_in * (1 / (s_q ** 2 + 1.0) ** 0.5), idx, both)
    denoised = eps * (-s_q) + x_in
    u, c = denoised.chunk(2)
    return u + guidance * (c - u)


def sgm_euler(gen: TokenGenerator, x: torch.Tensor, sigmas: torch.Tensor, ctx, unc, guidance: float) -> torch.Tensor:
    """``EulerEDMSampler`` without churn over ``sigmas`` (descending, ending in 0), from ``x`` (already at sigma 0's
    noise level)."""
    table = discrete_sigma_table(gen.alphas_cumprod)
    both = gen.cat(unc, ctx)
    ones = x.new_ones(len(x))
    for i in range(len(sigmas) - 1):
        sigma, nxt = ones * sigmas[i], ones * sigmas[i + 1]
        denoised = sgm_denoise(gen, x, sigma, both, guidance, table)
        d = (x - denoised) / sigma.view(-1, 1, 1, 1)
        x = x + (nxt - sigma).view(-1, 1, 1, 1) * d
    return x


@torch.no_grad()
def mindeye2_reconstruct(gen: TokenGenerator, tokens: torch.Tensor, num_samples: int = 1, steps: int = ME2_STEPS,
                         guidance: float = ME2_GUIDANCE, offset_noise: float = ME2_OFFSET_NOISE,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """MindEye2's unCLIP stage for one test image (``utils.unclip_recon``): ``tokens`` (1, T, D) the prior output.
    Returns (num_samples, 3, S, S) in [0, 1] at the generator's resolution. Draws, in order, from ``generator``:
    the start latent, the unconditional tokens, the noise, the offset noise."""
    n = num_samples
    z = torch.randn((n, *gen.latent_shape), generator=generator)
    tokens = tokens.float()
    ctx = gen.context(tokens.repeat(n, 1, 1))
    unc = gen.null_context(tokens, generator)
    unc = {k: v.repeat(n, *([1] * (v.ndim - 1))) for k, v in unc.items()} if isinstance(unc, dict) else \
        unc.repeat(n, *([1] * (unc.ndim - 1)))
    noise = torch.randn(z.shape, generator=generator)
    sigmas = sgm_sigmas(gen.alphas_cumprod, steps)
    if offset_noise > 0:
        noise = noise + offset_noise * torch.randn(n, generator=generator).view(n, 1, 1, 1)
    x = (z + noise * sigmas[0]) / torch.sqrt(1.0 + sigmas[0] ** 2.0)
    x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)  # the sampler's prepare_sampling_loop
    return gen.output(gen.decode(sgm_euler(gen, x, sigmas, ctx, unc, guidance)))


__all__ = ["mindeye1_best_of", "mindeye1_reconstruct", "mindeye2_reconstruct", "plain_resize", "sgm_denoise",
           "sgm_euler"]
