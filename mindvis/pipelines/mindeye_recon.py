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

**MindEye2's refinement** (``enhanced_recon_inference.ipynb``; :func:`refine_sdxl`): a caption from the prior output
(``bigG -> L`` converter, then GIT-large-COCO's text decoder reading the converted 257 x 1024 tokens in place of its
image encoder's output, greedy, 20 tokens); the unrefined reconstruction resized 256 -> 768, encoded by the SDXL
VAE (posterior *sampled*, x 0.13025), noised to the 13th-last of 25 sigmas and denoised the last 12 Euler steps by
SDXL base with CFG 5, conditioned on the caption (the negative prompt as published as unconditional), sizes
(768, 768) / crop (0, 0) / target (1024, 1024); decoded ``clamp((x + 1) / 2)`` and resized to 256.

**Stand-in** (:class:`StandInGenerator`): the synthetic world has no Versatile Diffusion, unCLIP or SDXL; the small
generator of ``mindvis-train-prior --condition embedding`` takes their place in the same procedures. It is
conditioned on one embedding, so it reads the first token (MindEye's class / pooled token) of each token set, its
unconditional branch is its learned null token, and its images map from [-1, 1] as ``(x + 1) / 2``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SD_SCALE = 0.18215  # Stable Diffusion 1.x / 2.x VAE latent scale (MindEye1's literal)
SDXL_SCALE = 0.13025  # SDXL / unCLIP first stage
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# published settings
ME1_STEPS, ME1_GUIDANCE, ME1_STRENGTH, ME1_SAMPLES, ME1_SEED = 20, 3.5, 0.85, 16, 42
ME2_STEPS, ME2_GUIDANCE, ME2_OFFSET_NOISE, ME2_SEED = 38, 5.0, 0.04, 42
ME2_REFINE_STEPS, ME2_REFINE_TIMEPOINT, ME2_REFINE_GUIDANCE = 25, 13, 5.0
ME2_NEGATIVE_PROMPT = ("painting, extra fingers, mutated hands, poorly drawn hands, poorly drawn face, deformed, ugly, "
                       "blurry, bad anatomy, bad proportions, extra limbs, cloned face, skinny, glitchy, double torso, "
                       "extra arms, extra hands, mangled fingers, missing lips, ugly face, distorted face, extra legs, "
                       "anime")
ME2_SAVE_SIZE = 256


class GeneratorUnavailable(FileNotFoundError):
    """A generator folder is missing or is not what it should be (one line)."""


def _require(folder: Path, *parts: str, what: str) -> None:
    missing = [p for p in parts if not (folder / p).exists()]
    if missing:
        raise GeneratorUnavailable(f"{folder} is not {what} (missing {', '.join(missing)})")


def plain_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize((size, size))`` on tensors as torchvision 0.15 / 0.16 ran it: bilinear, no antialiasing."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)


# ------------------------------------------------------------------------------------------------ noise schedules


def scaled_linear_alphas_cumprod(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> np.ndarray:
    """float64 cumulative alphas of the scaled-linear schedule (``linspace(sqrt(start), sqrt(end), n) ** 2``)."""
    betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def sgm_sigmas(alphas_cumprod: np.ndarray, steps: int) -> torch.Tensor:
    """sgm's ``LegacyDDPMDiscretization(steps)``: float32 sigmas ``sqrt((1 - a) / a)`` at the steps
    ``linspace(T - 1, 0, steps, endpoint=False)`` (as ints, ascending), descending, with 0 appended."""
    t = len(alphas_cumprod)
    if steps < t:
        idx = np.linspace(t - 1, 0, steps, endpoint=False).astype(int)[::-1]
        ac = alphas_cumprod[idx]
    elif steps == t:
        ac = alphas_cumprod
    else:
        raise ValueError(f"at most {t} steps")
    sigmas = torch.tensor((1 - ac) / ac, dtype=torch.float32) ** 0.5
    return torch.cat([torch.flip(sigmas, (0,)), sigmas.new_zeros(1)])


def discrete_sigma_table(alphas_cumprod: np.ndarray) -> torch.Tensor:
    """The ``DiscreteDenoiser``'s ascending table of the T sigmas (index = integer step)."""
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5


# ------------------------------------------------------------------------------------------------ generators


class TokenGenerator:
    """What the procedures need of an image generator. ``context``/``null_context`` are what its denoiser cross-
    attends to (conditional / unconditional), ``eps`` its noise prediction, ``encode``/``decode`` its latent space
    and ``output`` its decoder's pixel mapping to [0, 1]."""

    name = "generator"
    alphas_cumprod: np.ndarray
    latent_shape: tuple[int, int, int]
    image_size: int
    scheduler_config: dict

    def context(self, tokens: torch.Tensor):
        raise NotImplementedError

    def null_context(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        raise NotImplementedError

    @staticmethod
    def cat(a, b):
        """The batch of two contexts (unconditional first, as the references concatenate)."""
        if isinstance(a, dict):
            return {k: torch.cat([a[k], b[k]]) for k in a}
        return torch.cat([a, b])

    def eps(self, x: torch.Tensor, t, ctx) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 2 + 0.5).clamp(0, 1)


def _scheduler_alphas(config: dict) -> np.ndarray:
    """float64 cumulative alphas of a diffusers scheduler config (scaled_linear or linear betas)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "scaled_linear":
        return scaled_linear_alphas_cumprod(n, start, end)
    if kind == "linear":
        return np.cumprod(1.0 - np.linspace(start, end, n, dtype=np.float64))
    raise ValueError(f"beta_schedule {kind!r} is not supported here (scaled_linear or linear)")


class VersatileImageGenerator(TokenGenerator):
    """Versatile Diffusion's image UNet and VAE from a local snapshot (``image_unet/``, ``vae/``, ``scheduler/``;
    e.g. shi-labs/versatile-diffusion), as MindEye1 runs it (module docstring)."""

    name = "versatile-diffusion"

    def __init__(self, unet, vae, scheduler_config: dict):
        self.unet, self.vae, self.scheduler_config = unet.eval(), vae.eval(), dict(scheduler_config)
        self.alphas_cumprod = _scheduler_alphas(self.scheduler_config)
        s = int(unet.config.sample_size)
        self.latent_shape = (int(unet.config.in_channels), s, s)
        self.image_size = s * 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder)
        _require(folder, "image_unet/config.json", "vae/config.json", "scheduler/scheduler_config.json",
                 what="a Versatile Diffusion snapshot (image_unet/, vae/, scheduler/)")
        unet = UNet2DConditionModel.from_pretrained(folder / "image_unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype)
        return cls(unet, vae, json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))

    def unipc(self):
        """UniPC from VD's scheduler config, as ``UniPCMultistepScheduler.from_pretrained(vd, subfolder="scheduler")``
        in diffusers 0.13 (linspace steps; the last step lands on ``alphas_cumprod[0]``)."""
        from diffusers import UniPCMultistepScheduler

        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
        cfg = {k: v for k, v in self.scheduler_config.items() if k in keep and v is not None}
        return UniPCMultistepScheduler(**cfg, solver_order=2, solver_type="bh2", predict_x0=True,
                                       lower_order_final=True, timestep_spacing="linspace",
                                       final_sigmas_type="sigma_min")

    def context(self, tokens):
        return tokens.to(self.unet.dtype)

    def null_context(self, tokens, generator=None):
        return torch.zeros_like(tokens, dtype=self.unet.dtype)

    def eps(self, x, t, ctx):
        return self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=ctx).sample.float()

    def encode(self, images, generator=None):
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.sample(generator).float() * self.vae.config.scaling_factor

    def decode(self, latents):
        return self.vae.decode((latents / SD_SCALE).to(self.vae.dtype)).sample.float()


@dataclass
class UnclipSettings:
    """The unCLIP generator's settings that live outside its weights (``unclip.json`` of a converted folder)."""

    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000
    scale_factor: float = SDXL_SCALE
    original_size: tuple = (768, 768)
    crop_coords_top_left: tuple = (0, 0)
    output_scale: float = 0.8  # samples = clamp(x * 0.8 + 0.2): utils.unclip_recon
    output_shift: float = 0.2
    steps: int = ME2_STEPS
    guidance: float = ME2_GUIDANCE
    offset_noise: float = ME2_OFFSET_NOISE


class UnclipGenerator(TokenGenerator):
    """MindEye2's unCLIP (Stability's ``unclip6``, SDXL architecture, cross-attention on 256 x 1664 bigG tokens) as
    diffusers parts: a folder written by :func:`mindvis.compat.unclip.convert_unclip` (``unet/``, ``vae/``,
    ``unclip.json``)."""

    name = "unclip"

    def __init__(self, unet, vae, settings: UnclipSettings):
        self.unet, self.vae, self.settings = unet.eval(), vae.eval(), settings
        s = settings
        self.alphas_cumprod = scaled_linear_alphas_cumprod(s.num_timesteps, s.linear_start, s.linear_end)
        self.sigma_table = discrete_sigma_table(self.alphas_cumprod)
        size = int(unet.config.sample_size)
        self.latent_shape = (int(unet.config.in_channels), size, size)
        self.image_size = size * 2 ** (len(vae.config.block_out_channels) - 1)
        self.scheduler_config = {"num_train_timesteps": s.num_timesteps, "beta_start": s.linear_start,
                                 "beta_end": s.linear_end, "beta_schedule": "scaled_linear"}

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder)
        _require(folder, "unet/config.json", "vae/config.json", "unclip.json",
                 what="a converted unCLIP folder (mindvis-convert from-unclip: unet/, vae/, unclip.json)")
        raw = json.loads((folder / "unclip.json").read_text())
        settings = UnclipSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in raw["settings"].items()})
        return cls(UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype),
                   AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype), settings)

    def vector(self, n: int) -> torch.Tensor:
        s = self.settings
        return torch.tensor([[*s.original_size, *s.crop_coords_top_left]] * n, dtype=torch.float32)

    def context(self, tokens):
        return {"crossattn": tokens, "vector": self.vector(len(tokens))}

    def null_context(self, tokens, generator=None):
        # utils.unclip_recon: uc["crossattn"] = torch.randn_like(tokens)
        return {"crossattn": torch.randn(tokens.shape, generator=generator, dtype=tokens.dtype),
                "vector": self.vector(len(tokens))}

    def eps(self, x, t, ctx):
        d = self.unet.dtype
        return self.unet(x.to(d), t, encoder_hidden_states=ctx["crossattn"].to(d),
                         added_cond_kwargs={"text_embeds": x.new_zeros(len(x), 0, dtype=d),
                                            "time_ids": ctx["vector"].to(d)}).sample.float()

    def encode(self, images, generator=None):
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample(generator).float() * \
            self.settings.scale_factor

    def decode(self, latents):
        return self.vae.decode((latents / self.settings.scale_factor).to(self.vae.dtype)).sample.float()

    def output(self, x):
        s = self.settings
        return (x * s.output_scale + s.output_shift).clamp(0, 1)


class StandInGenerator(TokenGenerator):
    """The synthetic world's small generator (``mindvis-train-prior --condition embedding``: ``unet/``, ``vae/``
    (VQ), ``scheduler/``, ``embedding_conditioner/``) in place of Versatile Diffusion / unCLIP: conditioned on the
    first token of each token set, its learned null token as the unconditional input."""

    name = "stand-in"

    def __init__(self, unet, vae, conditioner, scheduler_config: dict, folder: str = ""):
        self.unet, self.vae, self.conditioner = unet.eval(), vae.eval(), conditioner.eval()
        self.scheduler_config, self.folder = dict(scheduler_config), folder
        self.alphas_cumprod = _scheduler_alphas(self.scheduler_config)
        s = int(unet.config.sample_size)
        self.latent_shape = (int(unet.config.in_channels), s, s)
        self.image_size = s * 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike):
        from .embedding_pipeline import EmbeddingToImagePipeline

        try:
            pipe = EmbeddingToImagePipeline.from_pretrained(folder)
        except FileNotFoundError as e:
            raise GeneratorUnavailable(str(e)) from None
        return cls(pipe.unet, pipe.vae, pipe.conditioner, pipe.scheduler_config, str(folder))

    def unipc(self):
        from diffusers import UniPCMultistepScheduler

        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
        cfg = {k: v for k, v in self.scheduler_config.items() if k in keep}
        return UniPCMultistepScheduler(**cfg, solver_order=2, solver_type="bh2", timestep_spacing="linspace",
                                       final_sigmas_type="sigma_min")

    @property
    def embed_dim(self) -> int:
        return self.conditioner.config.embed_dim

    def context(self, tokens):
        return self.conditioner(tokens[:, 0].float())

    def null_context(self, tokens, generator=None):
        return self.conditioner.null.expand(len(tokens), 1, -1)

    def eps(self, x, t, ctx):
        return self.unet(x, t, encoder_hidden_states=ctx).sample

    def encode(self, images, generator=None):
        return self.vae.encode(images).latents * self.vae.config.scaling_factor

    def decode(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample


def load_generator(folder: str | os.PathLike, family: str, dtype: torch.dtype = torch.float32) -> TokenGenerator:
    """The generator in ``folder``: a stand-in (``embedding_conditioner/``), an unCLIP conversion (``unclip.json``)
    or a Versatile Diffusion snapshot (``image_unet/``); ``family`` only names what the error expects."""
    folder = Path(folder)
    if (folder / "embedding_conditioner").is_dir():
        return StandInGenerator.from_pretrained(folder)
    if (folder / "unclip.json").is_file():
        return UnclipGenerator.from_pretrained(folder, dtype)
    if (folder / "image_unet").is_dir():
        return VersatileImageGenerator.from_pretrained(folder, dtype)
    want = {"mindeye1": "a Versatile Diffusion snapshot (image_unet/, vae/, scheduler/)",
            "mindeye2": "an unCLIP folder from mindvis-convert from-unclip (unet/, vae/, unclip.json)"}.get(family, "")
    raise GeneratorUnavailable(f"{folder} is not a generator folder: expected {want} or, for the synthetic world, "
                               "a mindvis-train-prior --condition embedding folder (embedding_conditioner/)")


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


# ------------------------------------------------------------------------------------------------ refinement


class BigGToL(torch.nn.Module):
    """MindEye2's ``CLIPConverter`` (``bigG_to_L_epoch8.pth``): (B, 256, 1664) bigG tokens -> (B, 257, 1024), a
    linear map over the token axis (256 -> 257), then over the features (1664 -> 1024)."""

    def __init__(self, tokens_in: int = 256, tokens_out: int = 257, dim_in: int = 1664, dim_out: int = 1024):
        super().__init__()
        self.linear1 = torch.nn.Linear(tokens_in, tokens_out)
        self.linear2 = torch.nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear2(self.linear1(x.permute(0, 2, 1)).permute(0, 2, 1))

    @classmethod
    def from_state_dict(cls, sd: dict) -> "BigGToL":
        w1, w2 = sd["linear1.weight"], sd["linear2.weight"]
        m = cls(w1.shape[1], w1.shape[0], w2.shape[1], w2.shape[0])
        m.load_state_dict(sd, strict=True)
        return m.eval()


class _GivenFeatures(torch.nn.Module):
    """Stands in for GIT's image encoder: returns the features it is handed (as MindEye2's ``GitForCausalLMClipEmb``
    takes ``pixel_values`` to be CLIP ViT-L features). The features travel as (B, T, D, 1) "pixel values"."""

    def forward(self, pixel_values, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=pixel_values[..., 0])


class Captioner:
    """Captions from predicted bigG tokens: the bigG -> L converter, then GIT (``microsoft/git-large-coco``, a local
    folder with the processor files) generating from the converted tokens, greedy, ``max_length`` 20."""

    def __init__(self, converter: BigGToL, git_model, processor, max_length: int = 20):
        self.converter, self.git, self.processor, self.max_length = converter.eval(), git_model.eval(), processor, \
            max_length
        self.git.git.image_encoder = _GivenFeatures()

    @classmethod
    def from_pretrained(cls, converter: str | os.PathLike, git: str | os.PathLike):
        from safetensors.torch import load_file
        from transformers import AutoProcessor, GitForCausalLM

        path = Path(converter)
        sd = load_file(path / "model.safetensors" if path.is_dir() else path)
        try:
            model = GitForCausalLM.from_pretrained(git, local_files_only=True)
            processor = AutoProcessor.from_pretrained(git, local_files_only=True)
        except OSError as e:
            raise GeneratorUnavailable(f"{git}: not a GIT model folder with its processor ({str(e).splitlines()[0]})")
        return cls(BigGToL.from_state_dict(sd), model, processor)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> list[str]:
        feats = self.converter(tokens.float())
        ids = self.git.generate(pixel_values=feats[..., None], max_length=self.max_length)
        return self.processor.batch_decode(ids, skip_special_tokens=True)


class SDXLRefiner:
    """SDXL base from a local diffusers folder (``StableDiffusionXLImg2ImgPipeline``: unet, vae, two text encoders and
    tokenizers) run as MindEye2's refinement (module docstring)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.alphas_cumprod = _scheduler_alphas(dict(pipe.scheduler.config))
        self.table = discrete_sigma_table(self.alphas_cumprod)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
        from diffusers import StableDiffusionXLImg2ImgPipeline

        folder = Path(folder)
        _require(folder, "model_index.json", what="an SDXL diffusers folder (model_index.json)")
        return cls(StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompt: str, negative_prompt: str = ME2_NEGATIVE_PROMPT,
                 steps: int = ME2_REFINE_STEPS, timepoint: int = ME2_REFINE_TIMEPOINT,
                 guidance: float = ME2_REFINE_GUIDANCE, size: int = 768, target_size: int = 1024,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """images (1, 3, H, W) in [0, 1] (the unrefined reconstruction) -> (1, 3, size, size) refined."""
        p = self.pipe
        image = plain_resize(images.float(), size)
        pe, npe, pooled, npooled = p.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                                                   do_classifier_free_guidance=True, num_images_per_prompt=1)
        ids = torch.tensor([[size, size, 0, 0, target_size, target_size]], dtype=torch.float32)
        sf = p.vae.config.scaling_factor
        dt = p.unet.dtype
        z = p.vae.encode((image * 2 - 1).to(p.vae.dtype)).latent_dist.sample(generator).float() * sf
        noise = torch.randn(z.shape, generator=generator)
        sigmas = sgm_sigmas(self.alphas_cumprod, steps)
        x = (z + noise * sigmas[-timepoint]) / torch.sqrt(1.0 + sigmas[0] ** 2.0)
        sigmas = sigmas[-timepoint:]
        x = x * torch.sqrt(1.0 + sgm_sigmas(self.alphas_cumprod, len(sigmas) - 1)[0] ** 2.0)

        class _Gen(TokenGenerator):
            def eps(_, xx, t, ctx):
                return p.unet(xx.to(dt), t, encoder_hidden_states=ctx["crossattn"].to(dt),
                              added_cond_kwargs={"text_embeds": ctx["pooled"].to(dt),
                                                 "time_ids": ctx["time_ids"].to(dt)}).sample.float()

        g = _Gen()
        g.alphas_cumprod = self.alphas_cumprod
        ctx = {"crossattn": pe.float(), "pooled": pooled.float(), "time_ids": ids}
        unc = {"crossattn": npe.float(), "pooled": npooled.float(), "time_ids": ids}
        x = sgm_euler(g, x, sigmas, ctx, unc, guidance)
        out = p.vae.decode((x / sf).to(p.vae.dtype)).sample.float()
        return ((out + 1.0) / 2.0).clamp(0, 1)


__all__ = ["BigGToL", "Captioner", "GeneratorUnavailable", "SDXLRefiner", "StandInGenerator", "TokenGenerator",
           "UnclipGenerator", "UnclipSettings", "VersatileImageGenerator", "load_generator", "mindeye1_best_of",
           "mindeye1_reconstruct", "mindeye2_reconstruct", "plain_resize", "sgm_denoise", "sgm_euler", "sgm_sigmas",
           "discrete_sigma_table", "scaled_linear_alphas_cumprod"]
