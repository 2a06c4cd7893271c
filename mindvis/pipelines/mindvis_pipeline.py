"""fMRI -> images: conditioner, denoising loop with a diffusers scheduler, decoder.

    pipe = MindVisPipeline.from_pretrained("runs/finetune/RUN/model")
    images = pipe(fmri, num_samples=5, num_inference_steps=25, scheduler="dpm++", seed=0)  # (N, 5, 3, H, W) in [0, 1]
"""
from __future__ import annotations

import inspect
import os

import torch
from tqdm.auto import tqdm

from ..config import ConfigError
from ..models.dc_ldm import DCLDM
from .precision import PRECISIONS, STAGES, StagePrecision, autocast, cpu_has_bf16, probe
from .precision import fixed as precision_fixed

__all__ = ["SCHEDULERS", "PRECISIONS", "STAGES", "MindVisPipeline", "make_scheduler", "denoise", "cpu_has_bf16"]

SCHEDULERS = ("plms", "ddim", "dpm++", "dpm++karras", "unipc", "lcm")
#: the default of a model that was not distilled, chosen on validation (bench/results/samplers_val*.md)
DEFAULT_SCHEDULER, DEFAULT_STEPS = "unipc", 8
#: the default of a distilled student (mindvis-distill), chosen on validation (bench/results/distill_val.md): the
#: fewest LCM steps at which a student keeps the quality of the teacher's PLMS 250
DEFAULT_LCM_STEPS = 4


def make_scheduler(name: str, train_config: dict, sampler_config: dict | None = None):
    """A sampling scheduler on the model's noise schedule.

    ``plms`` reproduces the original MinD-Vis / CompVis PLMS sampler (timesteps 1, 1+T/S, ...; the
    first step averages two noise predictions; the last step lands on alpha_bar[0]); ``ddim`` is
    CompVis DDIM with eta 0; ``dpm++`` is DPM-Solver++ (2nd order, multistep, "2M"); ``dpm++karras`` the
    same on Karras et al.'s sigma spacing; ``unipc`` is UniPC (2nd order, bh2); ``lcm`` is the latent consistency
    sampler of a distilled student (``sampler_config``: its ``original_inference_steps`` and ``timestep_scaling``).
    """
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler, PNDMScheduler,
                           UniPCMultistepScheduler)

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
    if name == "lcm":
        if not sampler_config:
            raise ConfigError("scheduler lcm needs a student distilled by mindvis-distill; this model was not distilled")
        return LCMScheduler(**base, original_inference_steps=int(sampler_config["original_inference_steps"]),
                            timestep_scaling=float(sampler_config.get("timestep_scaling", 10.0)), clip_sample=False)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {SCHEDULERS}")


def resolve_sampling(scheduler: str | None, steps: int | None, sampler_config: dict | None,
                     fallback: tuple[str, int] = (DEFAULT_SCHEDULER, DEFAULT_STEPS)) -> tuple[str, int]:
    """(scheduler, steps); ``None`` or ``auto`` = the default: LCM at its chosen steps for a distilled student, else
    ``fallback`` (UniPC 8 for mindvis-sample; the original's PLMS 250 for the Python API)."""
    distilled = bool(sampler_config)
    if scheduler in (None, "auto"):
        scheduler = "lcm" if distilled else fallback[0]
    if steps is None:
        steps = DEFAULT_LCM_STEPS if scheduler == "lcm" else fallback[1]
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if scheduler == "lcm" and not distilled:
        raise ConfigError("scheduler lcm needs a student distilled by mindvis-distill; this model was not distilled")
    if scheduler == "lcm" and steps > int(sampler_config["original_inference_steps"]):
        raise ConfigError(f"the student was distilled on {sampler_config['original_inference_steps']} solver steps; "
                         f"it samples in at most that many, got {steps}")
    return scheduler, steps


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The autocast type of a named precision; ``auto`` here (without a model to measure) is bf16 where the device
    computes it natively, fp16 on CUDA without bf16, else fp32. The pipelines measure instead (see
    :mod:`mindvis.pipelines.precision`)."""
    fixed_ = precision_fixed(precision, device)
    if fixed_ is not None:
        return fixed_.unet
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


#: ``batch_size=None``: as many images at once as make this many output pixels (1,024 images at 32 px, 16 at 256 px):
#: small models are dominated by per-call overhead at small batches, large ones by memory at large batches
PIXELS_PER_BATCH = 2 ** 20


def auto_batch_size(image_size: int, total: int) -> int:
    return max(1, min(total, PIXELS_PER_BATCH // (image_size * image_size)))


def _step_takes_generator(sched) -> bool:
    return "generator" in inspect.signature(sched.step).parameters


def denoise(sched, latents: torch.Tensor, num_inference_steps: int, predict_noise,
            dtype: torch.dtype = torch.float32, generator=None) -> torch.Tensor:
    """Run ``sched`` from noise ``latents`` to clean latents; ``predict_noise(x, t)`` is the model's epsilon.

    With a reduced ``dtype`` the network runs under autocast; the latents and the solver's arithmetic stay fp32.
    ``generator`` (one, or a list with one per sample) draws the noise of stochastic steps (LCM's multistep
    sampling adds fresh noise between steps).
    """
    sched.set_timesteps(num_inference_steps)
    x = latents * sched.init_noise_sigma
    extra = {"generator": generator} if generator is not None and _step_takes_generator(sched) else {}
    for t in sched.timesteps:
        with autocast(latents.device, dtype):
            eps = predict_noise(sched.scale_model_input(x, t), t)
        x = sched.step(eps.float(), t, x, **extra).prev_sample
    return x


def sample_generators(seed: int | None, first: int, count: int) -> list[torch.Generator] | None:
    """One generator per sample (``first`` .. ``first + count - 1`` of a call), so the noise a stochastic sampler adds
    between steps does not depend on the batch size."""
    if seed is None:
        return None
    return [torch.Generator().manual_seed(seed * 1_000_003 + 7919 + i) for i in range(first, first + count)]


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

    def stage_precision(self, precision: str, fmri: torch.Tensor, latents: torch.Tensor,
                        cache_dir=None) -> StagePrecision:
        """The type of each stage: a named precision for all, or ``auto``: measured on this model at this batch
        (``fmri`` (B, 1, V) and ``latents`` (B, C, h, w)), cached per machine and model size."""
        chosen = precision_fixed(precision, self.device)
        if chosen is not None:
            return chosen
        m, dev = self.model, self.device
        fmri, latents = fmri.to(dev), latents.to(dev)
        ctx, temb = m.condition(fmri)
        rows = torch.arange(len(latents), device=dev) % len(ctx)
        ctx, temb = ctx[rows], None if temb is None else temb[rows]
        t = torch.full((len(latents),), 500, device=dev, dtype=torch.long)

        def condition(dtype):
            with autocast(dev, dtype):
                return m.condition(fmri)

        def unet(dtype):
            with autocast(dev, dtype):
                return m.predict_noise(latents, t, ctx, temb)

        size = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731 - not the path
        key = {"unet": size(m.unet.config), "vae": size(m.vae.config), "conditioner": m.conditioner.config.__dict__,
               "batch": len(latents)}
        return probe({"condition": condition, "unet": unet, "decode": lambda dtype: m.decode_latents(latents, dtype)},
                     dev, key, cache_dir)

    @torch.no_grad()
    def __call__(self, fmri: torch.Tensor, num_samples: int = 1, num_inference_steps: int | None = None,
                 scheduler: str | None = None, seed: int | None = 0, latents: torch.Tensor | None = None,
                 batch_size: int | None = None, progress: bool = False, return_latents: bool = False,
                 precision: str = "fp32", timings: dict | None = None):
        """fmri (N, 1, V) or (N, V) -> images (N, num_samples, 3, H, W) in [0, 1].

        ``scheduler`` / ``num_inference_steps`` None: LCM at its default steps for a distilled student, else the
        original's PLMS 250. ``latents`` (N * num_samples, C, h, w) fixes the starting noise; otherwise it is drawn
        from ``seed`` (one generator for the whole call, and one per sample for noise added between steps, so
        results do not depend on ``batch_size``; None: :func:`auto_batch_size`). Each fMRI is conditioned once for all
        its samples.
        ``precision`` (fp32 | bf16 | fp16 | auto) sets the autocast type of conditioning, UNet steps and decoding
        (auto: measured per stage, see :mod:`mindvis.pipelines.precision`); the solver, the VQ codebook lookup and
        the images stay fp32. ``timings``, a dict, receives the seconds spent per stage.
        """
        import time

        m = self.model
        m.eval()
        scheduler, num_inference_steps = resolve_sampling(scheduler, num_inference_steps, m.sampler_config,
                                                          fallback=("plms", 250))
        sched = make_scheduler(scheduler, m.scheduler_config, m.sampler_config)
        fmri = fmri.unsqueeze(1) if fmri.ndim == 2 else fmri
        n = fmri.shape[0]
        c = m.unet.config
        shape = (n * num_samples, c.in_channels, c.sample_size, c.sample_size)
        if latents is None:
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            latents = torch.randn(shape, generator=g)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        dev = self.device
        batch_size = batch_size or auto_batch_size(m.image_size, shape[0])
        per = max(1, batch_size // num_samples)  # fMRI per batch of at most ~batch_size images
        prec = self.stage_precision(precision, fmri[:per], latents[:batch_size])
        clock = timings if timings is not None else {}
        for s in STAGES:
            clock.setdefault(s, 0.0)
        clock["precision"] = prec.names()
        outs, lats = [], []
        for start in tqdm(range(0, shape[0], batch_size), desc="sampling", disable=not progress, leave=False):
            stop = min(start + batch_size, shape[0])
            first, last = start // num_samples, (stop - 1) // num_samples + 1  # the fMRI these samples belong to
            t0 = time.perf_counter()
            with autocast(dev, prec.condition):
                context, time_emb = m.condition(fmri[first:last].to(dev))
            owner = torch.arange(start, stop, device=dev) // num_samples - first
            context = context.float()[owner]
            time_emb = None if time_emb is None else time_emb.float()[owner]
            t1 = time.perf_counter()
            x = denoise(sched, latents[start:stop].to(dev), num_inference_steps,
                        lambda x, t: m.predict_noise(x, t, context, time_emb), prec.unet,
                        sample_generators(seed, start, stop - start))
            t2 = time.perf_counter()
            lats.append(x.cpu())
            outs.append(((m.decode_latents(x, prec.decode) + 1) / 2).clamp(0, 1).cpu())
            t3 = time.perf_counter()
            clock["condition"] += t1 - t0
            clock["unet"] += t2 - t1
            clock["decode"] += t3 - t2
        images = torch.cat(outs).view(n, num_samples, *outs[0].shape[1:])
        return (images, torch.cat(lats)) if return_latents else images
