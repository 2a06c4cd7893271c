"""DC-LDM: a latent diffusion model conditioned twice on fMRI (MinD-Vis stage B), on diffusers parts.

Components, each saved with ``save_pretrained`` into its own subfolder, as a diffusers pipeline:
``unet`` (UNet2DConditionModel; with time conditioning its class embedding is the identity, so the
conditioner's offset is added to the timestep embedding), ``vae`` (VQModel or AutoencoderKL),
``conditioner`` (:class:`FMRIConditioner`) and ``scheduler`` (the prior's noise schedule). A student distilled by
``mindvis-distill`` also has ``sampler/`` (the ``LCMScheduler`` config it samples with: the teacher's noise schedule
and the number of solver steps it was distilled on); ``mindvis-sample`` then uses it by default.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conditioner import FMRIConditioner

INDEX_NAME = "mindvis_dcldm.json"


def vae_classes():
    from diffusers import AutoencoderKL, VQModel

    return {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}


class DCLDM(nn.Module):
    """UNet + first-stage autoencoder + fMRI conditioner + noise schedule."""

    def __init__(self, unet, vae, conditioner: FMRIConditioner, scheduler_config: dict,
                 sampler_config: dict | None = None):
        super().__init__()
        from diffusers import DDPMScheduler

        if conditioner.config.use_time_cond and unet.config.class_embed_type != "identity":
            raise ValueError("time conditioning needs a UNet with class_embed_type='identity' (see load_prior)")
        if conditioner.config.context_dim != unet.config.cross_attention_dim:
            raise ValueError(f"conditioner context width {conditioner.config.context_dim} differs from the UNet's "
                             f"cross-attention width {unet.config.cross_attention_dim}")
        self.unet, self.vae, self.conditioner = unet, vae, conditioner
        self.scheduler_config = dict(scheduler_config)
        self.sampler_config = dict(sampler_config) if sampler_config else None  # a distilled student's LCM settings
        self.noise_scheduler = DDPMScheduler(**{k: v for k, v in self.scheduler_config.items() if not k.startswith("_")})

    # ------------------------------------------------------------------ pieces
    @property
    def scale_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Image side the prior was trained at: the UNet's latent size times the autoencoder's downsampling."""
        return int(self.unet.config.sample_size) * self.vae_downsample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> scaled latents (not quantised, as LDM training)."""
        enc = self.vae.encode(images)
        z = enc.latents if hasattr(enc, "latents") else enc.latent_dist.sample()
        return z * self.scale_factor

    def decode_latents(self, latents: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scaled latents -> (N, 3, H, W) in [-1, 1] (VQ latents are quantised first, as LDM sampling). With a reduced
        ``dtype`` the decoder's convolutions run under autocast; the codebook lookup stays fp32 (a rounded distance
        could pick another code) and the images are fp32."""
        from ..pipelines.precision import autocast

        h = latents.float() / self.scale_factor
        if dtype == torch.float32:
            return self.vae.decode(h).sample
        if hasattr(self.vae, "quantize"):
            h = self.vae.quantize(h)[0]
            with autocast(h.device, dtype):
                return self.vae.decode(h, force_not_quantize=True).sample.float()
        with autocast(h.device, dtype):
            return self.vae.decode(h).sample.float()

    def condition(self, fmri: torch.Tensor):
        """fMRI -> (context tokens, time-embedding offset or None)."""
        context = self.conditioner(fmri)
        return context, self.conditioner.time_embedding(context)

    def predict_noise(self, latents, timesteps, context, time_emb) -> torch.Tensor:
        return self.unet(latents, timesteps, encoder_hidden_states=context, class_labels=time_emb).sample

    def loss(self, images: torch.Tensor, fmri: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The LDM objective: mean squared error of the predicted noise at a random timestep."""
        with torch.no_grad():
            z0 = self.encode_images(images)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                          device=z0.device)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        context, time_emb = self.condition(fmri)
        return F.mse_loss(self.predict_noise(zt, t, context, time_emb), noise)

    def forward(self, images: torch.Tensor, fmri: torch.Tensor) -> torch.Tensor:
        """The training loss (so that a DDP wrapper syncs gradients)."""
        return self.loss(images, fmri)

    # ------------------------------------------------------------------ training modes
    def set_trainable(self, unet: str = "cross_attention", encoder: bool = True) -> list[str]:
        """Choose what trains; returns the trainable parameter names.

        ``unet='cross_attention'`` (the paper): the UNet's cross-attention (``attn2``) and its norm
        (the transformer blocks' ``norm2``); ``'all'``: the whole UNet; ``'none'``: frozen. The
        conditioner trains (its encoder only if ``encoder``); the autoencoder is always frozen.
        """
        if unet not in ("cross_attention", "all", "none"):
            raise ValueError(f"unet must be cross_attention, all or none, got {unet!r}")
        self.requires_grad_(False)
        self.conditioner.requires_grad_(True)
        if not encoder:
            self.conditioner.mae.requires_grad_(False)
        for name, p in self.unet.named_parameters():
            if unet == "all" or (unet == "cross_attention" and (".attn2." in name or
                                                                ("transformer_blocks" in name and ".norm2." in name))):
                p.requires_grad_(True)
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        from diffusers import DDPMScheduler

        from ..utils.io import atomic_write_json

        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.conditioner.save_pretrained(folder / "conditioner")
        DDPMScheduler(**self.noise_scheduler.config).save_pretrained(folder / "scheduler")
        index = {"vae": type(self.vae).__name__, "format": "mindvis DC-LDM 1"}
        if self.sampler_config:
            save_sampler(self.scheduler_config, self.sampler_config, folder / "sampler")
            index["sampler"] = "lcm"
        atomic_write_json(folder / INDEX_NAME, index)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "DCLDM":
        from diffusers import DDPMScheduler, UNet2DConditionModel

        folder = Path(folder)
        missing = [p for p in (INDEX_NAME, "unet", "vae", "conditioner", "scheduler") if not (folder / p).exists()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved DC-LDM: missing {missing}")
        from ..data.fmri import DataError, error_summary
        from .persistence import read_json

        index = read_json(folder / INDEX_NAME)
        if index.get("vae") not in vae_classes():
            raise DataError(f"{folder / INDEX_NAME}: unknown autoencoder class {index.get('vae')!r}; expected one of "
                            f"{sorted(vae_classes())}")

        def component(cls, name):
            try:
                return cls.from_pretrained(folder / name)
            except Exception as e:  # noqa: BLE001 - diffusers and safetensors raise many error types
                raise DataError(f"{folder / name}: corrupt or unreadable component ({error_summary(e)})") from None

        unet = component(UNet2DConditionModel, "unet")
        vae = component(vae_classes()[index["vae"]], "vae")
        conditioner = FMRIConditioner.from_pretrained(folder / "conditioner")
        sched = dict(component(DDPMScheduler, "scheduler").config)
        return cls(unet, vae, conditioner, sched, load_sampler(folder))


def save_sampler(scheduler_config: dict, sampler_config: dict, folder: Path) -> None:
    """``folder/scheduler_config.json``: the ``LCMScheduler`` a distilled student samples with."""
    from diffusers import LCMScheduler

    base = {k: scheduler_config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                             "prediction_type") if k in scheduler_config}
    LCMScheduler(**base, original_inference_steps=int(sampler_config["original_inference_steps"]),
                 timestep_scaling=float(sampler_config.get("timestep_scaling", 10.0)),
                 clip_sample=False).save_pretrained(folder)
    from ..utils.io import atomic_write_json

    atomic_write_json(folder / "distillation.json", {k: v for k, v in sampler_config.items()})


def load_sampler(folder: Path) -> dict | None:
    """A distilled student's LCM settings (``sampler/``), or None for a model that was not distilled."""
    from .persistence import read_json

    cfg_file = folder / "sampler" / "scheduler_config.json"
    if not cfg_file.is_file():
        return None
    cfg = read_json(cfg_file)
    extra = folder / "sampler" / "distillation.json"
    out = read_json(extra) if extra.is_file() else {}
    out.update({"original_inference_steps": int(cfg["original_inference_steps"]),
                "timestep_scaling": float(cfg.get("timestep_scaling", 10.0))})
    return out
