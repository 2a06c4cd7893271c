"""The stage-A training engine: SC-MBM pretraining (A1) and tuning on a target dataset (A2).

accelerate handles devices, mixed precision, gradient accumulation and multi-process runs; the
seeding in :mod:`mindvis.training` makes a resumed run repeat the uninterrupted one exactly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mindvis.compat.original import load_original_mbm
from mindvis.config import save_config, to_plain
from mindvis.models.sc_mbm import MaskedBrainModel, MBMConfig
from mindvis.training import (CHECKPOINTS, STATE_NAME, EpochShuffleSampler, NonFiniteLossError, check_finite_loss,
                              decay_groups, latest_checkpoint, load_resume_checkpoint, lr_at, save_training_state,
                              seed_epoch, start_run, write_checkpoint)
from mindvis.utils.io import atomic_write_json, atomic_write_text
from mindvis.utils.plots import plot_fmri_reconstructions, plot_history

from .config import validate
from .data import build_stage_a_data
from .evaluate import evaluate_masked_modeling, masked_scores, summary_table, voxel_means

__all__ = ["NonFiniteLossError", "load_mbm", "pretrain"]

log = logging.getLogger("mindvis.pretrain")


def load_mbm(path: str | Path) -> MaskedBrainModel:
    """An SC-MBM from a mindvis model folder, a mindvis run folder, or an original MinD-Vis ``.pth``."""
    path = Path(path)
    if path.is_file():
        return load_original_mbm(path)[0]
    for candidate in (path, path / "model", latest_checkpoint(path) / "model" if (path / CHECKPOINTS).is_dir() else None):
        if candidate is not None and (candidate / "config.json").is_file():
            return MaskedBrainModel.from_pretrained(candidate)
    raise FileNotFoundError(f"no SC-MBM found at {path}: expected an original .pth file, a model folder with "
                            "config.json + model.safetensors, or a mindvis-pretrain run folder")


#: SC-MBM architecture fields shared by the run config's ``model`` section and :class:`MBMConfig`.
ARCH_FIELDS = tuple(f.name for f in fields(MBMConfig) if f.name != "num_voxels")


def _make_model(cfg: DictConfig, num_voxels: int, init: MaskedBrainModel | None) -> MaskedBrainModel:
    if init is not None:
        return init
    return MaskedBrainModel(MBMConfig(num_voxels=num_voxels, **{k: cfg.model[k] for k in ARCH_FIELDS}))


def pretrain(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Train an SC-MBM as ``cfg`` says; returns the held-out summary. ``resume``: a run folder."""
    t0 = time.time()
    validate(cfg)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.pretrain")

    init = load_mbm(cfg.init) if cfg.init else None
    if init is not None:  # the architecture is the checkpoint's
        for k in ARCH_FIELDS:
            cfg.model[k] = getattr(init.config, k)
    bar = (lambda it, **kw: tqdm(it, **kw)) if main else None
    data = build_stage_a_data(cfg.data, cfg.model.patch_size, tc.seed,
                              init.config.num_voxels if init is not None else None, progress=bar)
    log.info("data: %s", data.description)
    model = _make_model(cfg, data.num_voxels, init)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: SC-MBM %s, %.1fM trainable parameters", asdict(model.config), n_params / 1e6)
    if main and not resume:  # a resumed run keeps its config.yaml, whatever happens next
        save_config(cfg, run_dir / "config.yaml")

    optimizer = torch.optim.AdamW(decay_groups(model.named_parameters(), tc.weight_decay), lr=tc.lr,
                                  betas=tuple(tc.betas))
    history: list[dict] = []
    start_epoch = 0
    if resume:
        ckpt, saved, state = load_resume_checkpoint(run_dir, MaskedBrainModel.from_pretrained)
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)

    sampler = EpochShuffleSampler(len(data.train), tc.seed)
    loader = DataLoader(data.train, batch_size=tc.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        drop_last=len(data.train) >= tc.batch_size * accelerator.num_processes * 2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-pretrain", config=to_plain(cfg))
    raw_model: MaskedBrainModel = accelerator.unwrap_model(model)
    train_means = voxel_means(data.train)
    steps_per_epoch = len(loader)

    for epoch in range(start_epoch, tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        loader.set_epoch(epoch)  # accelerate's loader counts epochs itself and passes its count to the sampler
        model.train()
        losses, corrs = [], []
        it = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not main)
        for step, batch in enumerate(it):
            lr = lr_at(epoch + step / steps_per_epoch, tc.lr, tc.min_lr, tc.warmup_epochs, tc.epochs)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = batch["fmri"]
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, pred, mask = model(x, mask_ratio=cfg.model.mask_ratio)
                check_finite_loss(loss, epoch, step, lr)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.clip_grad > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tc.clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.item())
            corrs.append(masked_scores(pred.detach().float(), raw_model.patchify(x).float(), mask)[1].mean().item())
            it.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        # mean over processes, so every rank logs the same numbers
        stats = accelerator.gather(torch.tensor([[np.mean(losses), np.mean(corrs)]], device=accelerator.device))
        entry = {"epoch": epoch + 1, "loss": float(stats[:, 0].mean()), "corr": float(stats[:, 1].mean()),
                 "lr": lr, "time_s": round(time.time() - t0, 2)}
        last = epoch + 1 == tc.epochs
        if (epoch + 1) % tc.checkpoint_every == 0 or last:
            ev = evaluate_masked_modeling(raw_model, data.holdout, train_means, cfg.model.mask_ratio, tc.seed,
                                          device=accelerator.device)
            entry |= {"holdout_mse": ev["model"]["mse"], "holdout_corr": ev["model"]["corr"]}
        history.append(entry)
        log.info("epoch %d: loss %.4f corr %.4f lr %.2e%s", entry["epoch"], entry["loss"], entry["corr"], lr,
                 f" | held-out mse {entry['holdout_mse']:.4f} corr {entry['holdout_corr']:.4f}"
                 if "holdout_mse" in entry else "")
        if tc.tracker != "none":
            accelerator.log({k: v for k, v in entry.items() if k != "epoch"}, step=epoch + 1)
        if "holdout_mse" in entry:
            _save_checkpoint(accelerator, run_dir, raw_model, optimizer, cfg, epoch + 1, history, data)
        model.train()

    summary = {}
    if main:
        ev = evaluate_masked_modeling(raw_model, data.holdout, train_means, cfg.model.mask_ratio, tc.seed,
                                      device=accelerator.device)
        raw_model.save_pretrained(run_dir / "model")
        summary = {"holdout": ev, "num_voxels": data.num_voxels, "data": data.description, "epochs": tc.epochs,
                   "train_samples": len(data.train), "seconds": round(time.time() - t0, 1),
                   "beats_baselines": bool(ev["model"]["mse"] < min(ev["voxel_mean"]["mse"], ev["nearest_patch"]["mse"]))}
        atomic_write_json(run_dir / "summary.json", summary)
        table = summary_table(ev)
        atomic_write_text(run_dir / "summary.md", f"# SC-MBM held-out masked-patch reconstruction\n\n"
                          f"{ev['n_samples']} held-out samples, mask ratio {ev['mask_ratio']}, "
                          f"{data.num_voxels} voxels.\n\n{table}\n")
        plot_history(run_dir / "loss_curve.png", history, "SC-MBM training", "holdout_mse",
                     "train loss (masked patches)", "held-out masked-patch MSE")
        print(f"\nHeld-out masked-patch reconstruction ({ev['n_samples']} samples):\n{table}\n"
              f"run folder: {run_dir}", flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return summary


@torch.no_grad()
def _plot_reconstructions(path: Path, model: MaskedBrainModel, data, n: int, mask_ratio: float, seed: int) -> None:
    n = min(n, len(data.holdout))
    x = torch.stack([data.holdout[i]["fmri"] for i in range(n)])
    noise = torch.rand(n, model.config.num_patches, generator=torch.Generator().manual_seed(seed))
    dev = next(model.parameters()).device
    _, pred, mask = model(x.to(dev), mask_ratio, noise.to(dev))
    plot_fmri_reconstructions(path, x[:, 0].numpy(), model.unpatchify(pred.float()).cpu()[:, 0].numpy(),
                              mask.cpu().numpy(), model.config.patch_size, title=path.stem)


def _save_checkpoint(accelerator, run_dir: Path, model: MaskedBrainModel, optimizer, cfg: DictConfig, epoch: int,
                     history: list[dict], data) -> None:
    """Checkpoint (model, optimizer, history, config), reconstruction PNG and loss curve, on the main process."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        def fill(tmp: Path):
            model.save_pretrained(tmp / "model")
            save_training_state(tmp / STATE_NAME, optimizer, epoch, history)
            (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

        path = write_checkpoint(run_dir, epoch, fill, cfg.train.keep_checkpoints)
        _plot_reconstructions(run_dir / "reconstructions" / f"{path.name}.png", model, data, cfg.train.plot_samples,
                              cfg.model.mask_ratio, cfg.train.seed)
        plot_history(run_dir / "loss_curve.png", history, "SC-MBM training", "holdout_mse",
                     "train loss (masked patches)", "held-out masked-patch MSE")
        log.info("checkpoint %s", path)
    accelerator.wait_for_everyone()
