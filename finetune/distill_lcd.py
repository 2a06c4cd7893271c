"""The latent consistency distillation objective (Luo et al. 2023): LCM's boundary scalings, the teacher's
skipping-step DDIM solver, the consistency loss and the exponential moving average of the target network
(``LCD``). See :mod:`mindvis.finetune.distill` for the whole method and the command."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distill_teachers import Teacher

SIGMA_DATA = 0.5


def boundary_scalings(t: torch.Tensor, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's (c_skip, c_out) at integer timesteps ``t``: c_skip(0) = 1, c_out(0) = 0."""
    s = timestep_scaling * t.float()
    return SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2), s / (s ** 2 + SIGMA_DATA ** 2) ** 0.5


class SkippingStepSolver:
    """The teacher's DDIM solver on ``N`` skipping steps: timesteps ``k - 1, 2k - 1, ..., T - 1`` (k = T // N); step
    ``n`` goes from timestep ``(n + 1) k - 1`` to ``n k - 1`` (to alpha_bar[0] for n = 0)."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int):
        T = len(alphas_cumprod)
        self.k = T // steps
        self.timesteps = torch.arange(1, steps + 1) * self.k - 1  # (N,)
        self.alphas_cumprod = alphas_cumprod.float()
        ac = self.alphas_cumprod
        self.prev_alphas_cumprod = torch.cat([ac[:1], ac[self.timesteps[:-1]]])  # alpha_bar at each step's end

    def ddim_step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        a = _expand(self.prev_alphas_cumprod[index], x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def predicted_x0(eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _expand(alphas_cumprod[t], x)
    return (x - (1 - a).sqrt() * eps) / a.sqrt()


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    if kind == "l2":
        return F.mse_loss(pred.float(), target.float())
    return (torch.sqrt((pred.float() - target.float()) ** 2 + huber_c ** 2) - huber_c).mean()


@torch.no_grad()
def update_ema(target: torch.nn.Module, online: torch.nn.Module, decay: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(decay).add_(o.detach(), alpha=1 - decay)


class LCD:
    """One latent consistency distillation objective: teacher, solver and settings (``distill.*``)."""

    def __init__(self, teacher: "Teacher", settings):
        self.teacher, self.s = teacher, settings
        from diffusers import DDPMScheduler

        self.noise = DDPMScheduler(**{k: v for k, v in teacher.scheduler_config.items() if not k.startswith("_")})
        self.alphas_cumprod = self.noise.alphas_cumprod.float()
        self.solver = SkippingStepSolver(self.alphas_cumprod, settings.solver_steps)

    def guided_eps(self, x, t, cond, null):
        eps = self.teacher.eps(self.teacher.unet, x, t, cond)
        if self.s.guidance != 1:
            eps_null = self.teacher.eps(self.teacher.unet, x, t, null)
            eps = eps_null + self.s.guidance * (eps - eps_null)
        return eps

    def loss(self, student, target, z0: torch.Tensor, cond, null, gen: torch.Generator | None = None) -> torch.Tensor:
        """The consistency loss of a batch of clean scaled latents ``z0`` under conditions ``cond``."""
        dev = z0.device
        ac = self.alphas_cumprod.to(dev)
        index = torch.randint(0, len(self.solver.timesteps), (len(z0),), generator=gen).to(dev)
        t_start = self.solver.timesteps.to(dev)[index]
        t_end = (t_start - self.solver.k).clamp(min=0)
        noise = torch.randn(z0.shape, generator=gen).to(dev, z0.dtype)
        x = self.noise.add_noise(z0, noise, t_start)
        skip_s, out_s = (_expand(v, z0) for v in boundary_scalings(t_start, self.s.timestep_scaling))
        skip_e, out_e = (_expand(v, z0) for v in boundary_scalings(t_end, self.s.timestep_scaling))
        eps_student = self.teacher.eps(student, x, t_start, cond)
        pred = skip_s * x + out_s * predicted_x0(eps_student.float(), x, t_start, ac)
        with torch.no_grad():
            eps = self.guided_eps(x, t_start, cond, null).float()
            x_prev = self.solver.ddim_step(predicted_x0(eps, x, t_start, ac), eps, index.cpu())
            eps_target = self.teacher.eps(target, x_prev, t_end, cond).float()
            tgt = skip_e * x_prev + out_e * predicted_x0(eps_target, x_prev, t_end, ac)
        return consistency_loss(pred, tgt, self.s.loss, self.s.huber_c)

    @torch.no_grad()
    def teacher_samples(self, cond, null, latents: torch.Tensor) -> torch.Tensor:
        """The teacher's guided DDIM samples (clean scaled latents) on the N-step solver from ``latents``."""
        x = latents
        ac = self.alphas_cumprod.to(x.device)
        for n in reversed(range(len(self.solver.timesteps))):
            t = self.solver.timesteps[n].repeat(len(x)).to(x.device)
            eps = self.guided_eps(x, t, cond, null).float()
            x = self.solver.ddim_step(predicted_x0(eps, x, t, ac), eps, torch.full((len(x),), n))
        return x
