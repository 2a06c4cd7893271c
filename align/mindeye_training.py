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

The batches are in align/mindeye_batches.py, the networks, optimiser and model folders in align/mindeye_models.py,
the augmentations in align/mindeye_augment.py, the forward passes and test-time decoding in align/mindeye_decode.py.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from mindvis.config import to_plain
from mindvis.contrastive import (mindeye2_blurry_contrastive_loss, mindeye_bimixco_loss, mindeye_contrastive_at,
                                 mixco, mixco_subjects, soft_clip_loss, softclip_temperatures)
from mindvis.training import (STATE_NAME, check_finite_loss, load_resume_checkpoint, save_training_state, seed_epoch,
                              write_checkpoint)
from mindvis.utils.io import atomic_dir

from .mindeye_augment import blur_augment, mindeye1_augment, teacher_images
from .mindeye_batches import (SubjectTrials, _f32, mindeye1_voxels, multi_subject_batches, repetition_batches,
                              steps_per_epoch)
from .mindeye_decode import forward_batch
from .mindeye_models import load_model_folder, onecycle, optimizer_groups

log = logging.getLogger("mindvis.align")


# ------------------------------------------------------------------------------------------------ training


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
