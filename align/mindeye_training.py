"""MindEye1 and MindEye2 training and test-time decoding, as the reference scripts run them.

One optimiser step (both families, the reference order): the batch's fMRI is mixed by BiMixCo during the first
``int(loss.mixup_fraction * epochs)`` epochs (MindEye2: each subject's rows within that subject), the network
decodes it into tokens (the diffusion prior's condition) and projected tokens (the contrastive head), and::

    loss = mindeye.clip_scale * contrastive + mindeye.prior_scale * prior
           (+ mindeye.blur_scale * (L1(blurry, target) + 0.1 * blurry contrastive), MindEye2's low-level branch)

with ``contrastive`` MindEye's BiMixCo (``mindeye_bimixco_loss``, temperature 0.006) and then SoftCLIP at the
cosine temperature schedule (0.004 -> 0.0075 over the SoftCLIP epochs); ``prior`` is the diffusion prior's x0 MSE
with the brain tokens as condition (its gradient reaches the network). AdamW with the reference's decay groups,
OneCycleLR stepped every batch, no gradient clipping. The references' data handling:

* MindEye1: a sample is an image with its repetitions; batch ``i`` of an epoch takes every image's repetition
  ``i % 3`` (``mindeye.repetitions=cycle``; an image with fewer repetitions cycles over those it has);
* MindEye2: a sample is one trial; a batch holds ``train.batch_size // subjects`` trials of every subject, each
  subject's share with distinct images (a share that repeats an image is skipped, as the reference skips it),
  drawn from that subject's own shuffled stream; every subject passes its own adapter, the rows are concatenated in
  subject order and go through one backbone.

Steps per epoch: MindEye1 ``images // batch``; MindEye2 ``target subject's trials // batch`` (the reference's
``750 * sessions // batch``, there counting the shared-1000 trials too).

Test time (:func:`decode_test`): MindEye1 decodes the fMRI averaged over the repetitions; MindEye2 decodes every
repetition and averages the model outputs (``mindeye.test_average``); the prior is sampled from the (averaged)
tokens with its family's sampler (100 ancestral DDPM steps / 20 strided DDIM steps).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from mindvis.config import to_plain
from mindvis.contrastive import (mindeye2_blurry_contrastive_loss, mindeye_bimixco_loss, mindeye_contrastive_at,
                                 mixco, mixco_subjects, soft_clip_loss, softclip_temperatures)
from mindvis.evaluation.retrieval import cosine_similarity, top_k
from mindvis.mindeye_recipe import mindeye_param_groups
from mindvis.models.mindeye1 import MindEye1Config, MindEye1Network
from mindvis.models.mindeye2 import MindEye2Config, MindEye2Network
from mindvis.models.mindeye_prior import MindEyePrior, MindEyePriorConfig
from mindvis.training import (STATE_NAME, check_finite_loss, load_resume_checkpoint, save_training_state, seed_epoch,
                              write_checkpoint)
from mindvis.utils.io import atomic_dir, atomic_write_json

log = logging.getLogger("mindvis.align")


# ------------------------------------------------------------------------------------------------ the data


@dataclass
class SubjectTrials:
    """One subject's training data: single trials, each pointing at its (unique) image."""

    name: str
    fmri: np.ndarray  # (trials, V) float32
    image_of_trial: np.ndarray  # (trials,) int64 rows of ``targets`` / ``images``
    targets: np.ndarray  # (images, T, D) (float16 or float32; may be memory-mapped)
    images: np.ndarray  # (images, H, W, 3) uint8
    blurry: np.ndarray | None = None  # (images, C, H', W') targets of the low-level branch
    trials_of_image: list[np.ndarray] = field(default_factory=list)  # per image, its trials in recording order

    def __post_init__(self):
        if not self.trials_of_image:
            order = np.argsort(self.image_of_trial, kind="stable")
            bounds = np.cumsum(np.bincount(self.image_of_trial, minlength=len(self.targets)))[:-1]
            self.trials_of_image = np.split(order, bounds)

    @property
    def num_voxels(self) -> int:
        return self.fmri.shape[1]


def image_groups(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids in first-seen order's rows: the first row of each id, row -> image index) of a list of ids."""
    uniq, first, inverse = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    order = np.argsort(first)  # images in first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse]


def repetition_batches(n_images: int, batch: int, epoch_perm: np.ndarray) -> list[np.ndarray]:
    """MindEye1: the image indices of each batch of an epoch (a permutation, the last partial batch dropped)."""
    steps = max(1, n_images // batch)
    return [epoch_perm[i * batch:(i + 1) * batch] for i in range(steps)]


def cycle_trials(subject: SubjectTrials, images: np.ndarray, step: int) -> np.ndarray:
    """MindEye1's repetition cycling: batch ``step`` takes repetition ``step % 3`` of each image (an image with
    fewer repetitions cycles over the ones it has)."""
    return np.array([subject.trials_of_image[i][(step % 3) % len(subject.trials_of_image[i])] for i in images])


def mindeye1_voxels(subject: SubjectTrials, images: np.ndarray, step: int, mode: str) -> np.ndarray:
    """(B, V) float32 fMRI of a MindEye1 batch: ``cycle`` (the reference, :func:`cycle_trials`) or ``average``
    (each image's repetitions averaged)."""
    if mode == "cycle":
        return np.ascontiguousarray(subject.fmri[cycle_trials(subject, images, step)], dtype=np.float32)
    return np.stack([subject.fmri[subject.trials_of_image[i]].mean(0) for i in images]).astype(np.float32)


class ShareStream:
    """A subject's stream of trials for MindEye2 batches: shuffled, reshuffled when exhausted; every share of
    ``size`` trials holds distinct images (a share that repeats one is skipped, as the reference skips it)."""

    def __init__(self, image_of_trial: np.ndarray, size: int, seed: int):
        self.images, self.size = image_of_trial, size
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(image_of_trial)), 0

    def _chunk(self) -> np.ndarray:
        if self.pos + self.size > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.images)), 0
        chunk = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return chunk

    def next(self) -> np.ndarray:
        for _ in range(1000):
            chunk = self._chunk()
            if len(np.unique(self.images[chunk])) == len(chunk):
                return chunk
        raise RuntimeError("could not draw a batch share of distinct images: the subject has too few images for "
                           f"shares of {self.size}")


def multi_subject_batches(subjects: list[SubjectTrials], batch_size: int, steps: int, seed: int,
                          epoch: int) -> list[list[np.ndarray]]:
    """MindEye2's batches of one epoch: ``steps`` lists of per-subject trial indices, ``batch_size // subjects``
    each (the equal share), from streams seeded by (seed, epoch, subject)."""
    share = batch_size // len(subjects)
    streams = [ShareStream(s.image_of_trial, share, seed * 1_000_003 + epoch * 1_009 + k)
               for k, s in enumerate(subjects)]
    return [[st.next() for st in streams] for _ in range(steps)]


def steps_per_epoch(family: str, subjects: list[SubjectTrials], batch_size: int) -> int:
    if family == "mindeye1":
        return max(1, len(subjects[0].targets) // batch_size)
    per_subject = batch_size // len(subjects)
    return max(1, len(subjects[0].fmri) // (per_subject * len(subjects)))


# ------------------------------------------------------------------------------------------------ the models


def prior_config(me: DictConfig, family: str, tokens: int, dim: int) -> MindEyePriorConfig:
    """The prior of ``mindeye.*`` for T x D tokens: heads = D // prior_dim_head, the family's scale and sampler."""
    kw = dict(dim=dim, num_tokens=tokens, depth=me.prior_depth, heads=max(1, dim // me.prior_dim_head),
              dim_head=me.prior_dim_head, timesteps=me.prior_timesteps, cond_drop_prob=me.prior_cond_drop)
    if family == "mindeye2":
        kw.update(embed_scale=1.0, sample_steps=20)
    if me.prior_embed_scale > 0:
        kw["embed_scale"] = float(me.prior_embed_scale)
    if me.prior_sample_steps > 0:
        kw["sample_steps"] = int(me.prior_sample_steps)
    kw["sample_steps"] = min(kw.get("sample_steps", me.prior_timesteps), me.prior_timesteps)
    return MindEyePriorConfig(**kw)


def build_network(me: DictConfig, family: str, num_voxels: list[int], tokens: int, dim: int,
                  subject_names: list[str] | None = None, blurry_out_channels: int = 4):
    if family == "mindeye1":
        return MindEye1Network(MindEye1Config(num_voxels[0], me.hidden, me.blocks, tokens, dim, me.projector_hidden,
                                              me.input_dropout, me.block_dropout))
    return MindEye2Network(MindEye2Config(
        num_voxels=list(num_voxels), hidden=me.hidden, n_blocks=me.blocks, seq_len=1, tokens=tokens, clip_dim=dim,
        dropout=me.block_dropout, blurry_recon=me.blurry, blurry_channels=me.blurry_channels,
        blurry_side=me.blurry_side, blurry_decoder_channels=list(me.blurry_decoder_channels),
        blurry_decoder_norm_groups=me.blurry_norm_groups, blurry_maps_hidden=me.blurry_maps_hidden,
        blurry_maps_dim=me.blurry_maps_dim, blurry_out_channels=blurry_out_channels, subjects=subject_names))


class _Part(torch.nn.Module):
    """A view of some of a network's submodules (for parameter groups)."""

    def __init__(self, modules: dict):
        super().__init__()
        for k, m in modules.items():
            self.add_module(k, m)


def optimizer_groups(family: str, network, prior, weight_decay: float) -> list[dict]:
    """The references' AdamW groups: MindEye1 [prior (decay, no decay), network (decay, no decay)]; MindEye2
    [adapters (all decayed), backbone (decay, no decay), prior (decay, no decay)]; no decay = names containing
    "bias" (``mindeye_param_groups``). Groups of parameters that do not train are left out."""
    if family == "mindeye1":
        parts = ([(prior.net, "split")] if prior is not None else []) + [(network, "split")]
    else:
        rest = _Part({k: m for k, m in network.named_children() if k != "adapters"})
        parts = [(network.adapters, "all"), (rest, "split")] + ([(prior.net, "split")] if prior is not None else [])
    groups = []
    for g in mindeye_param_groups(parts, weight_decay):
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append({"params": params, "weight_decay": g["weight_decay"]})
    return groups


def onecycle(optimizer, me: DictConfig, lr: float, epochs: int, steps: int):
    """OneCycleLR(max_lr=lr, total_steps=int(epochs * steps), final_div_factor, pct_start=warmup / epochs), the
    other arguments at torch's defaults (div_factor 25, cosine, beta1 cycled 0.95 -> 0.85 -> 0.95)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=int(epochs * steps),
                                               final_div_factor=me.final_div_factor, last_epoch=-1,
                                               pct_start=me.onecycle_warmup_epochs / epochs)


# ------------------------------------------------------------------------------------------------ model folders


def save_model_folder(folder: Path, family: str, network, prior=None, lowlevel=None, extra: dict | None = None) -> None:
    """The layout of mindvis.compat.mindeye's converted folders (see the module docstring)."""
    folder = Path(folder)
    comps = {k: m for k, m in (("network", network), ("prior", prior), ("lowlevel", lowlevel)) if m is not None}
    for name, module in comps.items():
        module.save_pretrained(folder / name)
    meta = {"family": family, "components": {k: type(m).__name__ for k, m in comps.items()},
            "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in comps.items()}, **(extra or {})}
    atomic_write_json(folder / "mindeye.json", meta)


def load_model_folder(folder: Path) -> dict:
    """{"family", "network", "prior" (or None), "lowlevel" (or None), "meta"} of a MindEye model folder."""
    from mindvis.compat.mindeye import load_converted
    from mindvis.data.fmri import DataError
    from mindvis.models.persistence import read_json

    folder = Path(folder)
    if not (folder / "mindeye.json").is_file():
        raise FileNotFoundError(f"{folder} is not a MindEye model folder (mindeye.json is missing)")
    meta = read_json(folder / "mindeye.json")
    comps = load_converted(folder)
    if "network" not in comps:
        raise DataError(f"{folder}: no network component (a MindEye1 low-level checkpoint alone cannot be scored)")
    return {"family": meta.get("family"), "network": comps["network"], "prior": comps.get("prior"),
            "lowlevel": comps.get("lowlevel"), "meta": meta}


# ------------------------------------------------------------------------------------------------ the low-level branch


def blur_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MindEye2's ``blur_augs`` on (B, 3, H, W) images in [0, 1], per sample: colour jitter (brightness 0.4,
    contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, grayscale with p 0.1, solarize with p 0.1, and a resized crop
    of 90 % of the area at ratio 1 (always). torchvision's operations (the reference uses kornia's)."""
    import torchvision.transforms.v2.functional as TF

    out = []
    h, w = images.shape[-2:]
    u = lambda: float(torch.rand((), generator=generator))
    for x in images:
        if u() < 0.8:
            ops = [lambda x: TF.adjust_brightness(x, 0.6 + 0.8 * u()), lambda x: TF.adjust_contrast(x, 0.6 + 0.8 * u()),
                   lambda x: TF.adjust_saturation(x, 0.8 + 0.4 * u()), lambda x: TF.adjust_hue(x, 0.2 * u() - 0.1)]
            for k in torch.randperm(4, generator=generator).tolist():
                x = ops[k](x).clamp(0, 1)
        if u() < 0.1:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if u() < 0.1:
            x = TF.solarize(x, 0.4 + 0.2 * u())
        side_h, side_w = int(round(h * math.sqrt(0.9))), int(round(w * math.sqrt(0.9)))
        top, left = int(u() * (h - side_h + 1)), int(u() * (w - side_w + 1))
        x = TF.resized_crop(x, top, left, side_h, side_w, [h, w], antialias=True)
        out.append(x)
    return torch.stack(out)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image hue rotation (fractions of a turn) through HSV, batched."""
    r, g, b = x.unbind(1)
    mx, arg = x.max(1)
    mn = x.min(1).values
    delta = mx - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(arg == 0, ((g - b) / safe) % 6, torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(mx > 0, delta / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    k = lambda n: (n + h * 6) % 6
    f = lambda n: mx - mx * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)
    return torch.stack((f(5), f(3), f(1)), dim=1)


def mindeye1_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MindEye1's training augmentation on (B, 3, S, S) images in [0, 1], per image, batched: RandomResizedCrop to
    S (scale 0.6-1, ratio 3/4-4/3, p 0.3; bilinear, else the image as is), horizontal flip (p 0.5), colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, p 0.3), grayscale (p 0.3) -- kornia's
    AugmentationSequential of the reference, written with torch."""
    b, _, hgt, wid = x.shape
    u = lambda: torch.rand(b, generator=generator)
    crop, area, logr = u() < 0.3, 0.6 + 0.4 * u(), math.log(3 / 4) + math.log(16 / 9) * u()
    w = torch.sqrt(area * logr.exp() * hgt / wid).clamp(max=1)  # the crop's fraction of the width / height
    h = torch.sqrt(area / logr.exp() * wid / hgt).clamp(max=1)
    w, h = torch.where(crop, w, torch.ones_like(w)), torch.where(crop, h, torch.ones_like(h))
    cx, cy = (2 * u() - 1) * (1 - w), (2 * u() - 1) * (1 - h)
    flip = torch.where(u() < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta.to(x), [b, 3, hgt, wid], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    jitter = (u() < 0.3).view(-1, 1, 1, 1)
    bright, contrast, sat, hue = 0.6 + 0.8 * u(), 0.6 + 0.8 * u(), 0.8 + 0.4 * u(), 0.2 * u() - 0.1
    y = (x * bright.view(-1, 1, 1, 1)).clamp(0, 1)
    m = _gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * contrast.view(-1, 1, 1, 1) + m).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * sat.view(-1, 1, 1, 1) + g).clamp(0, 1)
    y = _shift_hue(y, hue).clamp(0, 1)
    x = torch.where(jitter, y, x)
    return torch.where((u() < 0.3).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def teacher_images(subjects: list[SubjectTrials], imgs: list[np.ndarray], size: int) -> torch.Tensor:
    """The batch's images in [0, 1] at ``size`` px (MindEye2's images are 224 px), for the teacher and its
    augmented copy."""
    pics = torch.cat([torch.from_numpy(np.ascontiguousarray(subjects[k].images[i])) for k, i in enumerate(imgs)])
    pics = pics.permute(0, 3, 1, 2).float().div(255)
    if pics.shape[-1] != size or pics.shape[-2] != size:
        pics = F.interpolate(pics, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return pics.clamp(0, 1)


# ------------------------------------------------------------------------------------------------ forward passes


def forward_batch(family: str, network, xs: list[torch.Tensor], subjects: list[int]) -> dict:
    """Outputs of a batch made of per-subject parts (MindEye1: one part): tokens, projected tokens and (MindEye2
    with the low-level branch) blurry latents and maps, rows in part order."""
    if family == "mindeye1":
        tokens = network.forward_backbone(xs[0])
        return {"regression": tokens, "contrastive": network.forward_projector(tokens)}
    h = torch.cat([network.forward_adapter(x, s) for x, s in zip(xs, subjects)])
    trunk = network.forward_trunk(h)
    tokens = network.forward_backbone(trunk)
    out = {"regression": tokens, "contrastive": network.forward_clip_proj(tokens)}
    if network.config.blurry_recon:
        out["blurry"], out["blurry_maps"] = network.forward_blurry(trunk)
    return out


# ------------------------------------------------------------------------------------------------ training


def _f32(a: np.ndarray, idx) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a[idx], dtype=np.float32))


@dataclass
class Teacher:
    """Feature maps of images for the blurry branch's contrastive term: ``fn(images (B, 3, H, W) in [0, 1])`` ->
    (B, positions, channels)."""

    name: str
    fn: object


def train_mindeye(cfg: DictConfig, family: str, subjects: list[SubjectTrials], network, prior, accelerator,
                  run_dir: Path, main: bool, resume: bool, validate_fn=None, teacher: Teacher | None = None,
                  save_fn=None, online_target=None) -> tuple:
    """Train ``network`` (and ``prior``) on ``subjects`` (the first is the run's subject) with the recipe of
    ``cfg``; returns (network, prior, history, best). ``validate_fn(network, prior) -> scores`` runs every
    ``train.val_every`` epochs when ``mindeye.select=validation`` (the best epoch's models are kept in ``best/``);
    ``save_fn(folder, network, prior)`` writes a model folder. ``online_target`` (an ImageEmbedder): the targets
    are computed every step from augmented images (``mindeye.image_augment``, MindEye1) instead of read from the
    cache."""
    tc, lo, me = cfg.train, cfg.loss, cfg.mindeye
    if accelerator.num_processes > 1:
        raise RuntimeError("MindEye recipes train in one process (multi-GPU training is not implemented)")
    groups = optimizer_groups(family, network, prior, tc.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=tc.lr)
    steps = steps_per_epoch(family, subjects, tc.batch_size)
    scheduler = onecycle(optimizer, me, tc.lr, tc.epochs, steps)
    history, start_epoch, best = [], 0, {"metric": float("inf"), "epoch": 0}
    if resume:
        ckpt, saved, state = load_resume_checkpoint(run_dir, load_model_folder)
        network.load_state_dict(saved["network"].state_dict())
        if prior is not None:
            prior.load_state_dict(saved["prior"].state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"], state["history"], dict(state["best"])
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)
    mods = [network] + ([prior] if prior is not None else [])
    prepared = accelerator.prepare(*mods, optimizer)
    network, optimizer = prepared[0], prepared[-1]
    prior = prepared[1] if prior is not None else None
    dev = accelerator.device
    temps = softclip_temperatures(tc.epochs, lo.mixup_fraction, me.softclip_start, me.softclip_end)
    n_sub = len(subjects)
    sign = 1.0 if tc.select_metric == "val_loss" else -1.0
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-align", config=to_plain(cfg))
    t0 = time.time()
    for epoch in range(start_epoch, tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        name, temp = mindeye_contrastive_at(epoch, tc.epochs, lo.mixup_fraction, temps)
        aug_gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch)
        if family == "mindeye1":
            perm = np.random.default_rng([tc.seed, epoch]).permutation(len(subjects[0].targets))
            plan = [[b] for b in repetition_batches(len(subjects[0].targets), tc.batch_size, perm)]
        else:
            plan = multi_subject_batches(subjects, tc.batch_size, steps, tc.seed, epoch)
        network.train()
        if prior is not None:
            prior.train()
        sums: dict[str, float] = {}
        for step, parts in enumerate(plan):
            if family == "mindeye1":
                imgs = [parts[0]]
                xs = [torch.from_numpy(mindeye1_voxels(subjects[0], parts[0], step, me.repetitions)).to(dev)]
            else:
                imgs = [subjects[k].image_of_trial[t] for k, t in enumerate(parts)]
                xs = [_f32(subjects[k].fmri, t).to(dev) for k, t in enumerate(parts)]
            if online_target is not None:  # MindEye1: targets of augmented images, computed every step
                pics = teacher_images(subjects, imgs, online_target.size)
                y = online_target.embed_float(mindeye1_augment(pics, aug_gen)).float().to(dev)
            else:
                y = torch.cat([_f32(subjects[k].targets, i) for k, i in enumerate(imgs)]).to(dev)
            perm_mix = betas = None
            if name == "bimixco":
                if family == "mindeye1":
                    mixed, perm_mix, betas, _ = mixco(xs[0], lo.mix_beta, lo.mix_p)
                    xs = [mixed]
                else:
                    xs, perm_mix, betas, _ = mixco_subjects(xs, lo.mix_beta, lo.mix_p, me.reference_bug)
            with accelerator.autocast():
                out = forward_batch(family, network, xs, list(range(n_sub)))
                if name == "bimixco":
                    clip = mindeye_bimixco_loss(out["contrastive"], y, perm_mix, betas, lo.bimixco_temperature)
                else:
                    clip = soft_clip_loss(out["contrastive"], y, temp)
                loss = me.clip_scale * clip
                parts_log = {"contrastive": clip}
                if prior is not None:
                    prior_loss, _ = prior.loss(y, out["regression"])
                    loss = loss + me.prior_scale * prior_loss
                    parts_log["prior"] = prior_loss
                if "blurry" in out and subjects[0].blurry is not None:
                    target = torch.cat([_f32(subjects[k].blurry, i) for k, i in enumerate(imgs)]).to(dev)
                    l1 = F.l1_loss(out["blurry"].float(), target)
                    blur = l1
                    parts_log["blurry_l1"] = l1
                    if teacher is not None:
                        pics = teacher_images(subjects, imgs, me.blurry_image_size)
                        with torch.no_grad():
                            t_feat = teacher.fn(pics.to(dev))
                            t_aug = teacher.fn(blur_augment(pics, aug_gen).to(dev))
                        cont = mindeye2_blurry_contrastive_loss(out["blurry_maps"].float(), t_feat.float(),
                                                                t_aug.float(), me.blurry_temperature)
                        blur = blur + me.blurry_contrastive_weight * cont
                        parts_log["blurry_contrastive"] = cont
                    loss = loss + me.blur_scale * blur
            check_finite_loss(loss, epoch, step, scheduler.get_last_lr()[0])
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            for k, v in {"loss": loss, **parts_log}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        entry = {"epoch": epoch + 1, **{k: v / len(plan) for k, v in sums.items()}, "contrastive_loss": name,
                 "temperature": float(temp), "lr": float(scheduler.get_last_lr()[0]),
                 "time_s": round(time.time() - t0, 1)}
        raw_net, raw_prior = accelerator.unwrap_model(network), (accelerator.unwrap_model(prior) if prior is not None
                                                                  else None)
        last = epoch + 1 == tc.epochs
        if main and validate_fn is not None and me.select == "validation" and ((epoch + 1) % tc.val_every == 0 or last):
            entry |= validate_fn(raw_net, raw_prior)
            metric = sign * entry[tc.select_metric]
            if metric < best["metric"]:
                best = {"metric": float(metric), "epoch": epoch + 1}
                atomic_dir(run_dir / "best", lambda tmp: save_fn(tmp, raw_net, raw_prior))
        history.append(entry)
        if tc.tracker != "none":
            accelerator.log({k: v for k, v in entry.items() if isinstance(v, float)}, step=epoch + 1)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in entry.items() if k != "epoch"))
        if main and ((epoch + 1) % tc.checkpoint_every == 0 or last):
            def fill(tmp: Path):
                save_fn(tmp / "model", raw_net, raw_prior)
                save_training_state(tmp / STATE_NAME, optimizer, epoch + 1, history, best=best,
                                    scheduler=scheduler.state_dict())
                (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

            write_checkpoint(run_dir, epoch + 1, fill, tc.keep_checkpoints)
    raw_net = accelerator.unwrap_model(network)
    raw_prior = accelerator.unwrap_model(prior) if prior is not None else None
    return raw_net, raw_prior, history, best


# ------------------------------------------------------------------------------------------------ test time


@torch.no_grad()
def decode_outputs(family: str, network, fmri: np.ndarray, subject: int = 0, batch_size: int = 64) -> dict:
    """Network outputs of single fMRI rows: {"regression", "contrastive"[, "blurry"]} as float32 arrays."""
    network.eval()
    outs: dict[str, list] = {}
    dev = next(network.parameters()).device
    for i in range(0, len(fmri), batch_size):
        out = forward_batch(family, network, [_f32(fmri, slice(i, i + batch_size)).to(dev)], [subject])
        for k in ("regression", "contrastive", "blurry"):
            if k in out:
                outs.setdefault(k, []).append(out[k].float().cpu())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def average_outputs(family: str, network, trials: np.ndarray, groups: list[np.ndarray], subject: int = 0,
                    first: int | None = None) -> dict:
    """MindEye2's test-time averaging: every repetition (row of ``trials``) decoded and the outputs averaged per
    image (``groups[i]``: image i's rows, in repetition order; ``first``: only the first r of them)."""
    dec = decode_outputs(family, network, trials, subject)
    return {k: np.stack([v[g[:first]].mean(0) for g in groups]) for k, v in dec.items()}


def average_fmri(trials: np.ndarray, groups: list[np.ndarray], first: int | None = None) -> np.ndarray:
    return np.stack([trials[g[:first]].mean(0) for g in groups])


@torch.no_grad()
def sample_prior(prior: MindEyePrior, tokens: np.ndarray, seed: int, batch_size: int = 64) -> np.ndarray:
    """The prior's image tokens for brain tokens (N, T, D), with its default sampler, seeded."""
    prior.eval()
    dev = next(prior.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(tokens), batch_size):
        cond = torch.from_numpy(np.ascontiguousarray(tokens[i:i + batch_size], dtype=np.float32)).to(dev)
        draw = lambda shape: torch.randn(shape, generator=gen)
        out.append(prior.sample(cond, noise=draw).float().cpu())
    return torch.cat(out).numpy()


def retrieval_top(pred: np.ndarray, target: np.ndarray) -> dict:
    sim = cosine_similarity(torch.from_numpy(pred.reshape(len(pred), -1)),
                            torch.from_numpy(np.asarray(target, dtype=np.float32).reshape(len(target), -1)))
    return {"top1": top_k(sim, 1), "top5": top_k(sim, 5), "chance": 1 / len(pred)}
