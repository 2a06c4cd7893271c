"""fMRI -> images: conditioner, denoising loop with a diffusers scheduler, decoder.

    pipe = MindVisPipeline.from_pretrained("runs/finetune/RUN/model")
    images = pipe(fmri, num_samples=5, num_inference_steps=25, scheduler="dpm++", seed=0)  # (N, 5, 3, H, W) in [0, 1]
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.dc_ldm import DCLDM

SCHEDULERS = ("plms", "ddim", "dpm++", "dpm++karras", "unipc")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def make_scheduler(name: str, train_config: dict):
    """A sampling scheduler on the model's noise schedule.

    ``plms`` reproduces the original MinD-Vis / CompVis PLMS sampler (timesteps 1, 1+T/S, ...; the
    first step averages two noise predictions; the last step lands on alpha_bar[0]); ``ddim`` is
    CompVis DDIM with eta 0; ``dpm++`` is DPM-Solver++ (2nd order, multistep, "2M"); ``dpm++karras`` the
    same on Karras et al.'s sigma spacing; ``unipc`` is UniPC (2nd order, bh2).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, UniPCMultistepScheduler

    base = {k: train_config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                         "prediction_type") if k in train_config}
    if name == "plms":
        return PNDMScheduler(**base, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                             timestep_spacing="leading")
    if name == "ddim":
        return DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             timestep_spacing="leading")
    if name in ("dpm++", "dpm++karras"):
        return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2,
                                           use_karras_sigmas=name == "dpm++karras")
    if name == "unipc":
        return UniPCMultistepScheduler(**base, solver_order=2)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The autocast dtype of ``precision``: ``auto`` = bf16 where the device computes it natively, fp16 on a CUDA
    device without bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device | str, dtype: torch.dtype):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for fp32."""
    import contextlib

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def denoise(sched, latents: torch.Tensor, num_inference_steps: int, predict_noise,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Run ``sched`` from noise ``latents`` to clean latents; ``predict_noise(x, t)`` is the model's epsilon.

    With a reduced ``dtype`` the network runs under autocast; the latents and the solver's arithmetic stay fp32.
    """
    sched.set_timesteps(num_inference_steps)
    x = latents * sched.init_noise_sigma
    for t in sched.timesteps:
        with autocast(latents.device, dtype):
            eps = predict_noise(sched.scale_model_input(x, t), t)
        x = sched.step(eps.float(), t, x).prev_sample
    return x


class MindVisPipeline:
    """A DC-LDM with a sampling loop. ``save_pretrained`` / ``from_pretrained`` use the DC-LDM folder layout."""

    def __init__(self, model: DCLDM):
        self.model = model

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "MindVisPipeline":
        return cls(DCLDM.from_pretrained(folder).to(device).eval())

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.model.save_pretrained(folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, fmri: torch.Tensor, num_samples: int = 1, num_inference_steps: int = 250,
                 scheduler: str = "plms", seed: int | None = 0, latents: torch.Tensor | None = None,
                 batch_size: int = 16, progress: bool = False, return_latents: bool = False,
                 precision: str = "fp32"):
        """fmri (N, 1, V) or (N, V) -> images (N, num_samples, 3, H, W) in [0, 1].

        ``latents`` (N * num_samples, C, h, w) fixes the starting noise; otherwise it is drawn from
        ``seed`` (one generator for the whole call, so results do not depend on ``batch_size``).
        ``precision`` (fp32 | bf16 | fp16 | auto) runs the conditioner and the UNet under autocast; the solver,
        the autoencoder's decoding and the images stay fp32.
        """
        dtype = resolve_precision(precision, self.device)
        m = self.model
        m.eval()
        fmri = fmri.unsqueeze(1) if fmri.ndim == 2 else fmri
        n = fmri.shape[0]
        fmri = fmri.repeat_interleave(num_samples, dim=0).to(self.device)  # (N * S, 1, V)
        c = m.unet.config
        shape = (fmri.shape[0], c.in_channels, c.sample_size, c.sample_size)
        if latents is None:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            latents = torch.randn(shape, generator=g)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        sched = make_scheduler(scheduler, m.scheduler_config)
        outs, lats = [], []
        for start in tqdm(range(0, shape[0], batch_size), desc="sampling", disable=not progress, leave=False):
            with autocast(self.device, dtype):
                context, time_emb = m.condition(fmri[start:start + batch_size])
            x = denoise(sched, latents[start:start + batch_size].to(self.device), num_inference_steps,
                        lambda x, t: m.predict_noise(x, t, context, time_emb), dtype)
            lats.append(x.cpu())
            outs.append(((m.decode_latents(x) + 1) / 2).clamp(0, 1).cpu())
        images = torch.cat(outs).view(n, num_samples, *outs[0].shape[1:])
        return (images, torch.cat(lats)) if return_latents else images
