"""Pretrained generative priors for stage B: where a UNet + first-stage autoencoder come from.

* a CompVis LDM folder (``config.yaml`` + ``model.ckpt``, e.g. the label2img / cin256-v2 release
  MinD-Vis starts from): converted with diffusers' converters (see :mod:`mindvis.compat.ldm`) and
  cached as diffusers components;
* a diffusers-style folder with ``unet/`` and ``vae/`` (and optionally ``scheduler/``), e.g. a Stable
  Diffusion checkpoint on disk or a prior trained by ``mindvis-train-prior``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..compat.ldm import PriorFormatError, load_compvis_ldm

#: LDM defaults (the label2img release): 1000 steps, LDM "linear" betas.
LDM_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                    prediction_type="epsilon")


def _is_compvis(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "model.ckpt").is_file()


def _is_diffusers(folder: Path) -> bool:
    return (folder / "unet" / "config.json").is_file() and (folder / "vae" / "config.json").is_file()


def load_prior(path: str | os.PathLike, time_conditioned: bool = True, cache_dir: str | os.PathLike | None = None):
    """(unet, vae, scheduler_config) of a prior folder; the UNet takes the time offset when ``time_conditioned``."""
    from diffusers import UNet2DConditionModel

    from .dc_ldm import vae_classes

    folder = Path(path)
    if not folder.is_dir():
        raise PriorFormatError(f"prior folder not found: {folder}")
    if _is_compvis(folder):
        folder = _converted_compvis(folder, cache_dir)
    if not _is_diffusers(folder):
        raise PriorFormatError(
            f"{path} is not a generative prior: expected a CompVis LDM folder (config.yaml + model.ckpt) or a "
            "diffusers-style folder with unet/config.json and vae/config.json")
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    if not unet_cfg.get("cross_attention_dim"):
        raise PriorFormatError(f"{folder / 'unet'}: the UNet has no cross-attention to condition on")
    extra = {"class_embed_type": "identity"} if time_conditioned else {}
    if time_conditioned and unet_cfg.get("class_embed_type") not in (None, "identity"):
        raise PriorFormatError(f"{folder / 'unet'}: class_embed_type {unet_cfg['class_embed_type']!r} leaves no room "
                               "for the time conditioning; use train.time_cond=false")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **extra)
    vae_name = json.loads((folder / "vae" / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    if vae_name not in vae_classes():
        raise PriorFormatError(f"{folder / 'vae'}: unsupported first stage {vae_name!r} (VQModel or AutoencoderKL)")
    vae = vae_classes()[vae_name].from_pretrained(folder / "vae")
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched = dict(LDM_SCHEDULE)
    if sched_file.is_file():
        s = json.loads(sched_file.read_text())
        sched.update({k: s[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                        "prediction_type") if k in s})
    return unet, vae, sched


def _converted_compvis(folder: Path, cache_dir) -> Path:
    """Convert once into ``<cache>/priors/<key>/`` (unet/, vae/, scheduler/), keyed by the source files."""
    from diffusers import DDPMScheduler

    from ..utils.cache import default_cache_dir
    from ..utils.io import atomic_dir

    key = hashlib.sha1()
    for name in ("config.yaml", "model.ckpt"):
        st = (folder / name).stat()
        key.update(f"{(folder / name).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    out = Path(cache_dir or default_cache_dir()) / "priors" / key.hexdigest()[:16]
    if not _is_diffusers(out):
        unet, vae, sched = load_compvis_ldm(folder, time_conditioned=False)

        def fill(tmp: Path):
            unet.save_pretrained(tmp / "unet")
            vae.save_pretrained(tmp / "vae")
            DDPMScheduler(**sched).save_pretrained(tmp / "scheduler")

        atomic_dir(out, fill)
    return out


def label2img_architecture(time_conditioned: bool = True):
    """(unet, vae, scheduler_config) with the architecture of the CompVis label2img (cin256-v2) prior
    MinD-Vis uses, randomly initialised: 64 x 64 x 3 VQ-f4 latents of 256 x 256 images, a UNet with
    192 x (1, 2, 3, 5) channels, 2 blocks per level, one-head cross-attention (width 512) at 1/2, 1/4
    and 1/8 resolution. For benchmarks and shape checks without the weights."""
    from diffusers import UNet2DConditionModel, VQModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=3, out_channels=3, block_out_channels=[192, 384, 576, 960], layers_per_block=2,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=512, attention_head_dim=1, class_embed_type="identity" if time_conditioned else None)
    vae = VQModel(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                  up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[128, 256, 512], layers_per_block=2,
                  latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3, sample_size=256, scaling_factor=1.0)
    return unet, vae, dict(LDM_SCHEDULE)
