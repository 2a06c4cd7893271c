"""The image generators MindEye's procedures run (:class:`TokenGenerator`, the interface they are written against):
Versatile Diffusion's image UNet (MindEye1), MindEye2's unCLIP, and the synthetic world's stand-in; and
:func:`load_generator`, which tells them apart by their folder.

**Stand-in** (:class:`StandInGenerator`): the synthetic world has no Versatile Diffusion, unCLIP or SDXL; the small
generator of ``mindvis-train-prior --condition embedding`` takes their place in the same procedures. It is
conditioned on one embedding, so it reads the first token (MindEye's class / pooled token) of each token set, its
unconditional branch is its learned null token, and its images map from [-1, 1] as ``(x + 1) / 2``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .mindeye_recon_settings import ME2_GUIDANCE, ME2_OFFSET_NOISE, ME2_STEPS, SD_SCALE, SDXL_SCALE
from .mindeye_schedules import _scheduler_alphas, discrete_sigma_table, scaled_linear_alphas_cumprod


class GeneratorUnavailable(FileNotFoundError):
    """A generator folder is missing or is not what it should be (one line)."""


def _require(folder: Path, *parts: str, what: str) -> None:
    missing = [p for p in parts if not (folder / p).exists()]
    if missing:
        raise GeneratorUnavailable(f"{folder} is not {what} (missing {', '.join(missing)})")


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
