"""Validation of a distillation run: the target network's consistency loss on the validation split, and student
samples of a fixed grid of validation inputs scored against the ground truth and the teacher's samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mindvis.evaluation.metrics import identification, pairwise_pcc
from mindvis.utils.plots import save_image_grid

from .distill_data import Run


def _stack(ds, idx, key):
    return torch.stack([ds[int(i)][key] for i in idx])


@torch.no_grad()
def evaluate_loss(run: Run, target, seed: int, batch_size: int) -> float:
    """The consistency loss of the target network on the validation split with fixed noise and solver steps
    (the student term evaluated with the target network itself: how consistent it is along the teacher's ODE)."""
    if not len(run.val_ds):
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for start in range(0, len(run.val_ds), batch_size):
        idx = range(start, min(start + batch_size, len(run.val_ds)))
        batch = {"image": _stack(run.val_ds, idx, "image"),
                 run.teacher.input_key: _stack(run.val_ds, idx, run.teacher.input_key)}
        losses.append(run.batch_loss(target, target, batch, gen).item() * len(idx))
    return float(np.sum(losses) / len(run.val_ds))


class Validator:
    """Student samples of a fixed grid of validation inputs: pixel-correlation identification against the ground
    truth, and mean squared distance to the teacher's samples (its N-step guided DDIM) from the same noise."""

    def __init__(self, run: Run, cfg: DictConfig):
        tc = cfg.train
        self.run, self.tc = run, tc
        n = len(run.val_ds)
        rng = np.random.default_rng(tc.seed)
        self.idx = np.sort(rng.choice(n, min(tc.grid_samples, n), replace=False)) if n else np.array([], int)
        if not len(self.idx):
            return
        key = run.teacher.input_key
        self.inputs = _stack(run.val_ds, self.idx, key)
        self.truth = torch.stack([(run.val_ds.image_tensor(int(i)) if key == "embedding" else
                                   run.val_ds.image_tensor(int(i), False)) for i in self.idx])
        self.truth = (self.truth + 1) / 2
        t = run.teacher
        c = t.unet.config
        k = tc.num_samples
        g = torch.Generator().manual_seed(tc.seed)
        latents = torch.randn((len(self.idx) * k, c.in_channels, c.sample_size, c.sample_size), generator=g)
        cond = tuple(None if x is None else x.repeat_interleave(k, 0) for x in t.condition(self.inputs))
        null = t.null(len(latents)) if cfg.distill.guidance != 1 else None
        z = run.lcd.teacher_samples(cond, null, latents)
        self.teacher_images = ((t.decode(z) + 1) / 2).clamp(0, 1).view(len(self.idx), k, *self.truth.shape[1:])

    def __call__(self, unet, path: Path | None) -> dict:
        if not len(self.idx):
            return {}
        unet.eval()
        samples = self.run.teacher.student_samples(unet, self.run.sampler_config, self.inputs, self.tc.num_samples,
                                                   self.tc.sample_steps, self.tc.seed)
        if path is not None:
            rows = [np.concatenate([t[None], s, ts]).transpose(0, 2, 3, 1)
                    for t, s, ts in zip(self.truth.numpy(), samples.numpy(), self.teacher_images.numpy())]
            save_image_grid(path, rows)
        out = {"val_teacher_mse": float(((samples - self.teacher_images) ** 2).mean())}
        if len(self.idx) >= 2:
            out["val_pcc_identification"] = float(torch.stack([identification(pairwise_pcc(samples[:, j], self.truth))
                                                               for j in range(samples.shape[1])]).mean())
        return out
