"""``mindvis-distill``: latent consistency distillation of a fine-tuned DC-LDM into a few-step student.

Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"), on the teacher's own conditioning:

* the **student** starts as a copy of the teacher's UNet and learns a consistency function
  ``f(x_t, t) = c_skip(t) x_t + c_out(t) x0(x_t, t)``, with LCM's boundary scalings ``c_skip = s^2 / ((10 t)^2 + s^2)``,
  ``c_out = 10 t / sqrt((10 t)^2 + s^2)`` (s = 0.5), so that f is the identity at t = 0;
* the **teacher** solves the probability-flow ODE one DDIM step back on a skipping-step schedule: ``N`` solver steps
  (``distill.solver_steps``) at timesteps ``k - 1, 2k - 1, ..., T - 1`` with ``k = T / N``; from ``x_{t_{n+1}}``
  (a training latent noised to ``t_{n+1}``) it gives ``x_{t_n}``;
* optional **classifier-free guidance** in the teacher (``distill.guidance`` = w, 1 = none):
  ``eps = eps_null + w (eps_cond - eps_null)``. A DC-LDM was not trained with condition dropout, so its
  unconditional branch is defined here: ``distill.uncond=mean_fmri`` = the conditioner of the mean training fMRI (an
  uninformative scan, inside the distribution the conditioner was trained on; both the cross-attention context
  and the time-embedding offset come from it), or ``zero_context`` = zero context tokens and no time offset. An
  embedding-conditioned generator has a null token trained with 10 % dropout, and uses it;
* the **target** network is an exponential moving average of the student (``distill.ema_decay``); the loss is
  ``d(f_student(x_{t_{n+1}}, t_{n+1}), f_target(x_{t_n}, t_n))`` with d = pseudo-Huber
  (``sqrt(diff^2 + c^2) - c``, mean) or L2 (``distill.loss``).

The conditioning is the teacher's and stays frozen: for a DC-LDM, the fMRI tokens through cross-attention and the
time-embedding offset (``DCLDM.condition`` / ``predict_noise``); for a generator, its embedding conditioner. The
student (the EMA target network) is saved as a normal model folder of the teacher's kind with a ``sampler/`` folder
(diffusers' ``LCMScheduler`` on the teacher's noise schedule and ``N``), which ``mindvis-sample`` uses by default
(``--steps 1|2|4``).

Like every stage: a resolved ``config.yaml``, ``train.log``, progress bars, checkpoints written atomically
(``checkpoints/epoch-NNNN/{model, online, training_state.pt}``), ``--resume`` that repeats the uninterrupted run's
losses exactly, validation on the run's validation split (carved from training, as the teacher's run), ``best/``
(by ``train.select_metric``), ``model/`` (the last epoch), ``summary.json``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mindvis.config import ConfigError, build_config, save_config, to_plain
from mindvis.data.fmri import DataError
from mindvis.evaluation.metrics import identification, pairwise_pcc
from mindvis.training import (STATE_NAME, EpochShuffleSampler, check_finite_loss, load_resume_checkpoint,
                              save_training_state, seed_epoch, start_run, write_checkpoint)
from mindvis.utils.io import atomic_dir, atomic_write_json
from mindvis.utils.plots import plot_loss_curves, save_image_grid

from .config import DistillConfig, validate_distill

log = logging.getLogger("mindvis.distill")

SIGMA_DATA = 0.5


# ----------------------------------------------------------------------------------------------- the algorithm
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


# ------------------------------------------------------------------------------------------------- teachers
class Teacher:
    """What distillation needs of a model: its UNet's noise prediction under a condition, a null condition, encoding,
    decoding, sampling and saving a student of the same kind."""

    kind: str
    unet: torch.nn.Module
    scheduler_config: dict
    input_key: str  # the batch key the condition is computed from

    def eps(self, unet, x, t, cond):
        raise NotImplementedError

    def condition(self, inputs: torch.Tensor):
        raise NotImplementedError

    def null(self, n: int):
        raise NotImplementedError


def _repeat(cond, n: int):
    return tuple(None if c is None else c.expand(n, *c.shape[1:]) for c in cond)


class DCLDMTeacher(Teacher):
    kind = "dcldm"
    input_key = "fmri"

    def __init__(self, model, null: str, mean_fmri: torch.Tensor):
        self.model = model.eval().requires_grad_(False)
        self.unet, self.scheduler_config = model.unet, model.scheduler_config
        with torch.no_grad():
            ctx, temb = model.condition(mean_fmri.view(1, 1, -1))
            if null == "zero_context":
                ctx, temb = torch.zeros_like(ctx), None if temb is None else torch.zeros_like(temb)
        self._null = (ctx, temb)

    def eps(self, unet, x, t, cond):
        context, time_emb = cond
        return unet(x, t, encoder_hidden_states=context, class_labels=time_emb).sample

    def condition(self, inputs):
        return self.model.condition(inputs)

    def null(self, n):
        return _repeat(self._null, n)

    def encode(self, images):
        return self.model.encode_images(images)

    def decode(self, latents):
        return self.model.decode_latents(latents)

    def student(self, unet, sampler_config: dict):
        from mindvis.models.dc_ldm import DCLDM

        m = self.model
        return DCLDM(unet, m.vae, m.conditioner, m.scheduler_config, sampler_config)

    def student_samples(self, unet, sampler_config, inputs, num_samples, steps, seed):
        from mindvis.pipelines import MindVisPipeline

        return MindVisPipeline(self.student(unet, sampler_config))(inputs, num_samples=num_samples,
                                                                    num_inference_steps=steps, scheduler="lcm",
                                                                    seed=seed, batch_size=64)

    def save_student(self, unet, sampler_config: dict, folder: Path) -> None:
        self.student(unet, sampler_config).save_pretrained(folder)


class GeneratorTeacher(Teacher):
    kind = "generator"
    input_key = "embedding"

    def __init__(self, folder: Path):
        from mindvis.models.embedding_conditioner import EmbeddingConditioner
        from mindvis.pipelines.embedding_pipeline import load_generator_parts

        self.folder = folder
        self.unet, self.vae, self.scheduler_config = load_generator_parts(folder)
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.conditioner = EmbeddingConditioner.from_pretrained(folder / "embedding_conditioner").eval()
        self.conditioner.requires_grad_(False)

    def eps(self, unet, x, t, cond):
        return unet(x, t, encoder_hidden_states=cond[0]).sample

    def condition(self, inputs):
        return (self.conditioner(inputs),)

    def null(self, n):
        return (self.conditioner.null.expand(n, 1, -1),)

    def encode(self, images):
        return self.vae.encode(images).latents * self.vae.config.scaling_factor

    def decode(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def student_samples(self, unet, sampler_config, inputs, num_samples, steps, seed):
        from mindvis.pipelines.embedding_pipeline import EmbeddingToImagePipeline

        pipe = EmbeddingToImagePipeline(unet, self.vae, self.conditioner, self.scheduler_config, sampler_config)
        return pipe(inputs, num_samples=num_samples, num_inference_steps=steps, scheduler="lcm", seed=seed)

    def save_student(self, unet, sampler_config: dict, folder: Path) -> None:
        import shutil

        from diffusers import DDPMScheduler

        from mindvis.models.dc_ldm import save_sampler

        folder = Path(folder)
        unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        DDPMScheduler(**{k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}).save_pretrained(
            folder / "scheduler")
        self.conditioner.save_pretrained(folder / "embedding_conditioner")
        if (self.folder / "prior_config.yaml").is_file():
            shutil.copy2(self.folder / "prior_config.yaml", folder / "prior_config.yaml")
        save_sampler(self.scheduler_config, sampler_config, folder / "sampler")


def teacher_kind(path: str | Path) -> str:
    """``generator`` for an embedding-conditioned generator folder, ``dcldm`` for a DC-LDM (run) folder."""
    p = Path(path)
    if (p / "embedding_conditioner" / "config.json").is_file():
        return "generator"
    from mindvis.pipelines.sample_cli import resolve_model_dir

    resolve_model_dir(p)  # a FileNotFoundError naming what is missing
    return "dcldm"


def teacher_run_config(path: str | Path) -> Path | None:
    """The ``config.yaml`` of the mindvis-finetune run a DC-LDM teacher comes from (None if there is none)."""
    from mindvis.pipelines.sample_cli import resolve_model_dir

    cfg = resolve_model_dir(path).parent / "config.yaml"
    return cfg if cfg.is_file() else None


def _fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------- data
class EmbeddingImages(Dataset):
    """(image, embedding) pairs a generator was trained on: ``{'image': (3, S, S) in [-1, 1], 'embedding', 'index'}``."""

    def __init__(self, images: np.ndarray, embeddings: np.ndarray, labels: np.ndarray):
        self.images, self.embeddings, self.labels = images, embeddings, labels

    def __len__(self):
        return len(self.images)

    def image_tensor(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1

    def __getitem__(self, i):
        return {"image": self.image_tensor(i), "embedding": torch.from_numpy(self.embeddings[i]), "index": i}


def _generator_data(folder: Path, cfg: DictConfig):
    """(train, validation) of a generator: the renders and embeddings it was trained on, ``data.val_fraction`` of
    its classes held out whole."""
    from mindvis.data.pairs import group_split
    from mindvis.models.image_embedders import cached_embeddings, load_embedder

    from .config import PriorConfig
    from .prior import prior_images

    pcfg_file = folder / "prior_config.yaml"
    if not pcfg_file.is_file():
        raise DataError(f"{pcfg_file} is missing: a generator folder written by mindvis-train-prior has it")
    pcfg = OmegaConf.to_object(build_config(PriorConfig, pcfg_file))
    imgs, classes = prior_images(pcfg)
    world = pcfg.synthetic if pcfg.images == "synthetic" else None
    emb = cached_embeddings(load_embedder(pcfg.target, world, cfg.data.cache_dir or pcfg.cache_dir or None), imgs,
                            cfg.data.cache_dir or pcfg.cache_dir or None, str(world.image_settings()) if world else "")
    tr, val = group_split(classes, cfg.data.val_fraction, cfg.data_seed)
    part = lambda idx: EmbeddingImages(imgs[idx], emb[idx].astype(np.float32), classes[idx])  # noqa: E731
    return part(tr), part(val), f"generator {folder}: {len(tr)} train / {len(val)} validation renders"


class Run:
    """The teacher, its data and the objective, built from a config (also by the benchmarks)."""

    def __init__(self, cfg: DictConfig):
        from mindvis.data.pairs import PairedDataset

        self.cfg = cfg
        teacher = Path(cfg.teacher)
        self.kind = teacher_kind(teacher)
        if self.kind == "dcldm":
            from mindvis.models.dc_ldm import DCLDM
            from mindvis.pipelines.sample_cli import resolve_model_dir

            from .data import build_stage_b_data

            self.teacher_dir = resolve_model_dir(teacher)
            model = DCLDM.from_pretrained(self.teacher_dir)
            if model.sampler_config:
                raise ConfigError(f"{self.teacher_dir} is a distilled student already; distil its teacher instead")
            enc = model.conditioner.mae.config
            data = build_stage_b_data(cfg.data, enc.patch_size, cfg.data_seed)
            if data.num_voxels != enc.num_voxels:
                raise DataError(f"the data has {data.num_voxels} voxels, the teacher takes {enc.num_voxels}: give the "
                                "teacher's data settings (its run's config.yaml is read when the teacher is a run)")
            size = cfg.data.image_size or model.image_size
            d = cfg.data
            self.train_ds = PairedDataset(data.train, size, train=True, zero_voxels=d.zero_voxels,
                                          crop_ratio=d.crop_ratio, crop_p=d.crop_p)
            self.val_ds = PairedDataset(data.val, size, train=False)
            self.description = data.description
            mean_fmri = torch.from_numpy(np.asarray(data.train.fmri, np.float32).mean(0))
            self.teacher: Teacher = DCLDMTeacher(model, cfg.distill.uncond, mean_fmri)
        else:
            self.teacher_dir = teacher
            self.teacher = GeneratorTeacher(teacher)
            self.train_ds, self.val_ds, self.description = _generator_data(teacher, cfg)
        self.lcd = LCD(self.teacher, cfg.distill)
        self.sampler_config = {"original_inference_steps": cfg.distill.solver_steps,
                               "timestep_scaling": cfg.distill.timestep_scaling, "guidance": cfg.distill.guidance,
                               "uncond": cfg.distill.uncond if self.kind == "dcldm" else "null_token",
                               "teacher": str(self.teacher_dir)}

    def new_student(self) -> torch.nn.Module:
        student = copy.deepcopy(self.teacher.unet)
        student.requires_grad_(True).train()
        return student

    def batch_loss(self, student, target, batch, gen=None) -> torch.Tensor:
        t = self.teacher
        with torch.no_grad():
            z0 = t.encode(batch["image"])
            cond = tuple(None if c is None else c.detach() for c in t.condition(batch[t.input_key]))
            null = t.null(len(z0)) if self.cfg.distill.guidance != 1 else None
        return self.lcd.loss(student, target, z0, cond, null, gen)


# -------------------------------------------------------------------------------------------------- validation
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


# ---------------------------------------------------------------------------------------------------- training
def distill(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Distil as ``cfg`` says; returns the summary."""
    t0 = time.time()
    validate_distill(cfg)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.distill")
    run = Run(cfg)
    log.info("teacher: %s (%s); data: %s", run.teacher_dir, run.kind, run.description)
    log.info("distillation: %d solver steps (k = %d), guidance %g, %s loss, EMA %g", cfg.distill.solver_steps,
             run.lcd.solver.k, cfg.distill.guidance, cfg.distill.loss, cfg.distill.ema_decay)
    teacher_fp = _fingerprint(run.teacher.unet)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    student = run.new_student()
    target = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    history, start_epoch, best = [], 0, {"metric": float("inf"), "epoch": 0}
    if resume:
        from diffusers import UNet2DConditionModel

        def load(folder: Path):
            return (UNet2DConditionModel.from_pretrained(folder.parent / "online"),
                    UNet2DConditionModel.from_pretrained(folder.parent / "target"))

        ckpt, (online, saved_target), state = load_resume_checkpoint(run_dir, load)
        if state.get("teacher") != teacher_fp:
            raise ConfigError(f"the teacher {run.teacher_dir} changed since the run began (its UNet's weights differ "
                              "from the ones distilled so far)")
        student.load_state_dict(online.state_dict())
        target.load_state_dict(saved_target.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], dict(state["best"])
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)
    validator = Validator(run, cfg) if main else None
    loader = DataLoader(run.train_ds, batch_size=tc.batch_size, sampler=EpochShuffleSampler(len(run.train_ds), tc.seed),
                        num_workers=cfg.data.num_workers, drop_last=len(run.train_ds) > tc.batch_size)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    raw = accelerator.unwrap_model(student)
    target.to(accelerator.device)
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-distill", config=to_plain(cfg))

    def save_model(folder: Path, unet):
        run.teacher.save_student(unet, run.sampler_config, folder)

    if main and not resume and len(run.val_ds):  # the starting point: the teacher's UNet sampled as a student
        before = {"val_loss": evaluate_loss(run, target, tc.seed, tc.batch_size)} | validator(target, None)
        atomic_write_json(run_dir / "undistilled.json", before)
        log.info("before distillation (the teacher's UNet with %d LCM steps): %s", tc.sample_steps,
                 ", ".join(f"{k} {v:.4f}" for k, v in before.items()))

    for epoch in range(start_epoch, tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        loader.set_epoch(epoch)
        student.train()
        losses = []
        for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not main)):
            with accelerator.accumulate(student):
                with accelerator.autocast():
                    loss = run.batch_loss(student, target, batch)
                check_finite_loss(loss, epoch, step, tc.lr)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.clip_grad > 0:
                    accelerator.clip_grad_norm_(student.parameters(), tc.clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                update_ema(target, raw, cfg.distill.ema_decay)
            losses.append(loss.item())
        mean = accelerator.gather(torch.tensor([np.mean(losses)], device=accelerator.device)).mean().item()
        entry = {"epoch": epoch + 1, "loss": mean, "time_s": round(time.time() - t0, 1)}
        last = epoch + 1 == tc.epochs
        if main and ((epoch + 1) % tc.val_every == 0 or last):
            entry["val_loss"] = evaluate_loss(run, target, tc.seed, tc.batch_size)
            entry |= validator(target, run_dir / "validation" / f"epoch-{epoch + 1:04d}.png")
            if tc.select_metric != "last":
                metric = entry.get(tc.select_metric)
                if metric is None:
                    raise KeyError(f"train.select_metric {tc.select_metric!r} is not logged; have {sorted(entry)}")
                metric = -metric if tc.select_metric == "val_pcc_identification" else metric  # lower is better
                if metric < best["metric"]:
                    best = {"metric": float(metric), "epoch": epoch + 1}
                    atomic_dir(run_dir / "best", lambda tmp: save_model(tmp, target))
                    log.info("new best %s %.4f at epoch %d", tc.select_metric, abs(metric), epoch + 1)
        history.append(entry)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in entry.items()
                                                        if k not in ("epoch", "time_s")))
        if tc.tracker != "none":
            accelerator.log({k: v for k, v in entry.items() if k != "epoch"}, step=epoch + 1)
        if (epoch + 1) % tc.checkpoint_every == 0 or last:
            accelerator.wait_for_everyone()
            if main:
                def fill(tmp: Path):
                    save_model(tmp / "model", target)
                    raw.save_pretrained(tmp / "online")
                    target.save_pretrained(tmp / "target")
                    save_training_state(tmp / STATE_NAME, optimizer, epoch + 1, history, best=best, teacher=teacher_fp)
                    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

                write_checkpoint(run_dir, epoch + 1, fill, tc.keep_checkpoints)
                _plot(run_dir, history)
            accelerator.wait_for_everyone()

    summary = {}
    if main:
        atomic_dir(run_dir / "model", lambda tmp: save_model(tmp, target))
        if tc.select_metric == "last" or not (run_dir / "best").is_dir():
            atomic_dir(run_dir / "best", lambda tmp: save_model(tmp, target))
            best = {"metric": None, "epoch": tc.epochs}
        summary = {"teacher": str(run.teacher_dir), "kind": run.kind, "selected_epoch": best["epoch"],
                   "select_metric": tc.select_metric,
                   "selected_value": None if best["metric"] is None else abs(best["metric"]),
                   "solver_steps": cfg.distill.solver_steps, "guidance": cfg.distill.guidance,
                   "epochs": tc.epochs, "seconds": round(time.time() - t0, 1), "data": run.description,
                   "first_loss": history[0]["loss"] if history else None,
                   "last_loss": history[-1]["loss"] if history else None,
                   "last_validation": next((h for h in reversed(history) if "val_loss" in h), None),
                   "undistilled_validation": (json.loads((run_dir / "undistilled.json").read_text())
                                              if (run_dir / "undistilled.json").is_file() else None)}
        atomic_write_json(run_dir / "summary.json", summary)
        _plot(run_dir, history)
        print(f"\ndistillation done: selected epoch {best['epoch']} ({tc.select_metric}); student: {run_dir / 'best'}\n"
              f"sample with: mindvis-sample --model {run_dir} --steps {tc.sample_steps} --out OUT", flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return summary


def _plot(run_dir: Path, history: list[dict]) -> None:
    ev = [h for h in history if "val_loss" in h]
    plot_loss_curves(run_dir / "loss_curve.png",
                     {"train loss": ([h["epoch"] for h in history], [h["loss"] for h in history]),
                      "validation loss": ([h["epoch"] for h in ev], [h["val_loss"] for h in ev])},
                     title="latent consistency distillation")


# ------------------------------------------------------------------------------------------------------- CLI
EPILOG = """\
overrides: any config key as key=value (mindvis-distill --print-config lists them all), e.g.
  distill.solver_steps=50 distill.guidance=1.5 distill.uncond=zero_context distill.loss=l2 distill.ema_decay=0.95
  train.epochs=40 train.lr=1e-4 train.sample_steps=2
The data settings default to the teacher run's (its config.yaml). Unknown keys and wrong types are errors.

examples:
  mindvis-distill --teacher runs/finetune/RUN                       # the synthetic preset
  mindvis-distill --teacher runs/finetune/RUN distill.guidance=1.5 distill.solver_steps=25
  mindvis-distill --teacher priors/synthetic-embedding               # an embedding-conditioned generator
  mindvis-distill --resume runs/distill/RUN
  mindvis-sample --model runs/distill/RUN --out runs/samples-student     # LCM, 4 steps by default
"""


def build_parser():
    import argparse

    from mindvis.training import add_run_arguments
    from mindvis.utils.cli import PlainHelpFormatter

    p = argparse.ArgumentParser(prog="mindvis-distill", epilog=EPILOG, formatter_class=PlainHelpFormatter,
                                description="Latent consistency distillation of a fine-tuned DC-LDM (or of an "
                                            "embedding-conditioned generator) into a student that samples in 1-4 "
                                            "steps.")
    p.add_argument("--teacher", metavar="DIR", help="a mindvis-finetune run (its best/), a DC-LDM folder, or a "
                                                    "generator folder (mindvis-train-prior --condition embedding); "
                                                    "sets teacher")
    add_run_arguments(p, "distill")
    return p


def resolve_config(args) -> DictConfig:
    """Defaults <- the teacher run's data settings <- preset (``--config``, default synthetic) <- overrides."""
    from mindvis.configs import preset_path

    if args.resume:
        return build_config(DistillConfig, Path(args.resume) / "config.yaml", list(args.overrides))
    preset = preset_path("distill", args.config or "synthetic")
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in (("teacher", args.teacher),
                                                                   ("output_dir", args.output_dir)) if v]
    first = build_config(DistillConfig, preset, overrides)
    defaults = None
    if first.teacher and teacher_kind(first.teacher) == "dcldm":
        run_cfg = teacher_run_config(first.teacher)
        if run_cfg is not None:
            from .config import FinetuneConfig

            teacher_cfg = build_config(FinetuneConfig, run_cfg)
            defaults = {"data": to_plain(teacher_cfg.data), "data_seed": teacher_cfg.train.seed}
    return build_config(DistillConfig, preset, overrides, defaults=defaults)


def main(argv=None) -> int:
    from mindvis.compat.ldm import PriorFormatError
    from mindvis.training import run_training_command

    return run_training_command("mindvis-distill", build_parser().parse_intermixed_args(argv), resolve_config, distill,
                                errors=(PriorFormatError,))


if __name__ == "__main__":
    sys.exit(main())
