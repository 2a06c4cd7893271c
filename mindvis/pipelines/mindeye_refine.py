"""**MindEye2's refinement** (``enhanced_recon_inference.ipynb``; :func:`refine_sdxl`): a caption from the prior output
(``bigG -> L`` converter, then GIT-large-COCO's text decoder reading the converted 257 x 1024 tokens in place of its
image encoder's output, greedy, 20 tokens); the unrefined reconstruction resized 256 -> 768, encoded by the SDXL
VAE (posterior *sampled*, x 0.13025), noised to the 13th-last of 25 sigmas and denoised the last 12 Euler steps by
SDXL base with CFG 5, conditioned on the caption (the negative prompt as published as unconditional), sizes
(768, 768) / crop (0, 0) / target (1024, 1024); decoded ``clamp((x + 1) / 2)`` and resized to 256.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .mindeye_generators import GeneratorUnavailable, TokenGenerator, _require
from .mindeye_recon import plain_resize, sgm_euler
from .mindeye_recon_settings import ME2_NEGATIVE_PROMPT, ME2_REFINE_GUIDANCE, ME2_REFINE_STEPS, ME2_REFINE_TIMEPOINT
from .mindeye_schedules import _scheduler_alphas, discrete_sigma_table, sgm_sigmas


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
