"""Image embeddings -> images with a generator that cross-attends to them.

* :class:`EmbeddingToImagePipeline`: the small latent-diffusion generator ``mindvis-train-prior --condition
  embedding`` writes (``unet/``, ``vae/``, ``scheduler/``, ``embedding_conditioner/``), for the synthetic world;
* :func:`load_unclip` / :func:`unclip_images`: for real data, a diffusers Stable unCLIP image-variation pipeline
  (``StableUnCLIPImg2ImgPipeline``) from a local folder, which takes CLIP image embeddings as ``image_embeds``.

    pipe = EmbeddingToImagePipeline.from_pretrained("priors/synthetic-embedding")
    images = pipe(decoded, num_samples=5, num_inference_steps=25)  # (N, 5, 3, H, W) in [0, 1]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.embedding_conditioner import EmbeddingConditioner
from .mindvis_pipeline import (auto_batch_size, denoise, make_scheduler, resolve_precision, resolve_sampling,
                               sample_generators)


@torch.no_grad()
def sample_with_context(unet, vae, sched, context: torch.Tensor, num_samples: int, steps: int, seed: int = 0,
                        batch_size: int | None = None, progress: bool = False,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """context (N, T, C) -> images (N, num_samples, 3, H, W) in [0, 1]; the noise of the whole call is drawn from
    one generator (and one per sample for noise added between steps), so the result does not depend on
    ``batch_size``."""
    n = context.shape[0]
    context = context.repeat_interleave(num_samples, dim=0)
    c = unet.config
    batch_size = batch_size or auto_batch_size(c.sample_size * 2 ** (len(vae.config.block_out_channels) - 1),
                                               len(context))
    latents = torch.randn((len(context), c.in_channels, c.sample_size, c.sample_size),
                          generator=torch.Generator().manual_seed(seed))
    out = []
    for start in tqdm(range(0, len(context), batch_size), desc="sampling", disable=not progress, leave=False):
        ctx = context[start:start + batch_size]
        x = denoise(sched, latents[start:start + batch_size], steps,
                    lambda x, t: unet(x, t, encoder_hidden_states=ctx).sample, dtype,
                    sample_generators(seed, start, len(ctx)))
        out.append(((vae.decode(x / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1))
    images = torch.cat(out)
    return images.view(n, num_samples, *images.shape[1:])


def load_generator_parts(folder: str | os.PathLike):
    """(unet, vae, scheduler config) of a prior folder written by ``mindvis-train-prior``, in eval mode."""
    from diffusers import UNet2DConditionModel, VQModel

    folder = Path(folder)
    return (UNet2DConditionModel.from_pretrained(folder / "unet").eval(), VQModel.from_pretrained(folder / "vae").eval(),
            json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))


class EmbeddingToImagePipeline:
    def __init__(self, unet, vae, conditioner: EmbeddingConditioner, scheduler_config: dict,
                 sampler_config: dict | None = None):
        self.unet, self.vae, self.conditioner = unet.eval(), vae.eval(), conditioner.eval()
        self.scheduler_config = scheduler_config
        self.sampler_config = sampler_config  # a distilled student's LCM settings (mindvis-distill)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "EmbeddingToImagePipeline":
        folder = Path(folder)
        if not (folder / "embedding_conditioner" / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not an embedding-conditioned generator (no embedding_conditioner/; "
                                    "train one with mindvis-train-prior --condition embedding)")
        from ..models.dc_ldm import load_sampler

        unet, vae, scheduler_config = load_generator_parts(folder)
        return cls(unet, vae, EmbeddingConditioner.from_pretrained(folder / "embedding_conditioner"), scheduler_config,
                   load_sampler(folder))

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, num_samples: int = 1, num_inference_steps: int | None = None,
                 scheduler: str | None = None, seed: int = 0, batch_size: int | None = None, progress: bool = False,
                 precision: str = "fp32"):
        """``scheduler`` / ``num_inference_steps`` None: LCM at its default steps for a distilled student, else
        DPM-Solver++ 25."""
        scheduler, num_inference_steps = resolve_sampling(scheduler, num_inference_steps, self.sampler_config,
                                                          fallback=("dpm++", 25))
        context = self.conditioner(torch.as_tensor(embeddings))
        sched = make_scheduler(scheduler, self.scheduler_config, self.sampler_config)
        return sample_with_context(self.unet, self.vae, sched, context, num_samples, num_inference_steps, seed,
                                   batch_size, progress, resolve_precision(precision, "cpu"))


def load_unclip(folder: str | os.PathLike, device: str = "cpu"):
    """A ``StableUnCLIPImg2ImgPipeline`` saved in a local folder (e.g. a snapshot of
    stabilityai/stable-diffusion-2-1-unclip); nothing is downloaded."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder (model_index.json is missing)")
    return StableUnCLIPImg2ImgPipeline.from_pretrained(folder, local_files_only=True).to(device)


@torch.no_grad()
def unclip_images(pipe, image_embeds: torch.Tensor, num_inference_steps: int = 25, guidance_scale: float = 1.0,
                  noise_level: int = 0, seed: int = 0, prompt: str = ""):
    """Images (N, 3, H, W) in [0, 1] from CLIP image embeddings (N, D) with a Stable unCLIP pipeline."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompt=[prompt] * len(image_embeds), image_embeds=image_embeds.to(pipe.device),
               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, noise_level=noise_level,
               generator=gen, output_type="pt")
    return out.images.float().cpu()
