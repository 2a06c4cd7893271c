"""The two samplers of MindEye's diffusion prior as diffusers schedulers: dalle2-pytorch's ancestral DDPM
(MindEye1, the full chain) and its strided DDIM (MindEye2, fewer steps). Each takes the denoiser's ``x_0`` and
reproduces dalle2-pytorch's float64-derived coefficients (see :mod:`mindvis.models.mindeye_prior`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler


class DalleDDPMScheduler(DDPMScheduler):
    """dalle2-pytorch's ancestral DDPM step (``DiffusionPrior.p_sample``), which MindEye1 samples with.

    ``x_{t-1} = c1_t x_0 + c2_t x_t + exp(log_var_t / 2) z`` with the posterior coefficients and the clipped log
    posterior variance computed in float64 and rounded to float32, as dalle2-pytorch's buffers are; ``z`` is drawn
    at every step, the last (t = 0) included, where it is multiplied by 0. diffusers' own DDPMScheduler takes the
    same step but derives the coefficients from float32 cumulative products (~1e-5 off at the last steps) and does
    not take the noise from the caller."""

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device)
        betas = torch.tensor(self.config.trained_betas, dtype=torch.float64)  # the config keeps full precision
        ac = torch.cumprod(1.0 - betas, dim=0)
        ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self._coef1 = (betas * torch.sqrt(ac_prev) / (1.0 - ac)).float()
        self._coef2 = ((1.0 - ac_prev) * torch.sqrt(1.0 - betas) / (1.0 - ac)).float()
        self._log_var = torch.log(post_var.clamp(min=1e-20)).float()

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        t = int(timestep)
        mean = self._coef1[t] * model_output + self._coef2[t] * sample
        z = variance_noise if variance_noise is not None else torch.randn(sample.shape, generator=generator,
                                                                           dtype=sample.dtype)
        prev = mean + (0.0 if t == 0 else 1.0) * (0.5 * self._log_var[t]).exp() * z
        if not return_dict:
            return prev, model_output
        from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
        return DDPMSchedulerOutput(prev_sample=prev, pred_original_sample=model_output)


class DalleDDIMScheduler(DDIMScheduler):
    """dalle2-pytorch's strided DDIM (``DiffusionPrior.p_sample_loop_ddim``), which MindEye2 samples with.

    Steps ``t`` are ``int(linspace(-1, T, steps + 1)[:-1])`` in reverse (T = 100, 20 steps: 94, 89, ..., 4, then -1).
    From ``t`` to the next step ``s`` it takes ``eps = (x_t / sqrt(a_t) - x_0) / sqrt(1 / a_t - 1)`` with the
    cumulative alpha ``a_t`` of step t, but the DDIM coefficients from the cumulative alphas *of the step before*
    (``alpha = a_{t-1}``, ``alpha_next = a_{s-1}``, with ``a_{-1} = 1``)::

        c1 = eta * sqrt((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)),  c2 = sqrt(1 - alpha_next - c1^2)
        x_s = sqrt(alpha_next) x_0 + c1 z + c2 eps

    drawing ``z`` only while ``s > 0``; at the last step it returns ``x_0``. diffusers' DDIMScheduler reads ``a_t``
    and ``a_s`` for both, so it samples a slightly different chain. Coefficients as dalle2-pytorch computes them:
    float64 tables rounded to float32, then float32 arithmetic.
    """

    def set_timesteps(self, num_inference_steps: int, device=None):
        total = self.config.num_train_timesteps
        times = torch.linspace(-1.0, total, steps=num_inference_steps + 1)[:-1]
        times = list(reversed(times.int().tolist()))
        self._next = dict(zip(times[:-1], times[1:]))
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.tensor(times[:-1], dtype=torch.long, device=device)
        betas = torch.tensor(self.config.trained_betas, dtype=torch.float64)  # the config keeps them in full precision
        ac64 = torch.cumprod(1.0 - betas, dim=0)
        self._ac_prev = torch.cat((torch.ones(1, dtype=torch.float64), ac64[:-1])).float()
        self._sqrt_recip = torch.sqrt(1.0 / ac64).float()
        self._sqrt_recipm1 = torch.sqrt(1.0 / ac64 - 1).float()

    def needs_noise(self, timestep: int) -> bool:
        return self._next[int(timestep)] > 0

    def step(self, model_output, timestep, sample, eta: float = 1.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        t = int(timestep)
        t_next = self._next[t]
        x0 = model_output
        eps = (self._sqrt_recip[t] * sample - x0) / self._sqrt_recipm1[t]
        if t_next < 0:
            prev = x0
        else:
            alpha, alpha_next = self._ac_prev[t], self._ac_prev[t_next]
            c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c2 = ((1 - alpha_next) - torch.square(c1)).sqrt()
            if t_next > 0:
                z = variance_noise if variance_noise is not None else torch.randn(
                    sample.shape, generator=generator, dtype=sample.dtype)
                prev = x0 * alpha_next.sqrt() + c1 * z + c2 * eps
            else:
                prev = x0 * alpha_next.sqrt() + c2 * eps
        if not return_dict:
            return prev, x0
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
