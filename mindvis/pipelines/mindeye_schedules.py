"""The noise schedules of MindEye's generators as float64 cumulative alphas (scaled-linear, or a diffusers scheduler
config's) and sgm's discretisation of them into sigmas (``LegacyDDPMDiscretization``, the ``DiscreteDenoiser``'s
table)."""
from __future__ import annotations

import numpy as np
import torch


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
