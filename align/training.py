"""Fitting a decoder: ridge in closed form, the others by gradient descent on ``lambda * contrastive + (1 - lambda)
* MSE`` with the epoch selected on validation; and the multi-subject decoder's loop (``train_subjects``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mindvis.config import to_plain
from mindvis.contrastive import (Temperature, bimixco_loss, clip_loss, mindeye_schedule, mixco, mse_loss,
                                 soft_clip_loss)
from mindvis.evaluation.retrieval import cosine_similarity, embedding_correlation, top_k
from mindvis.finetune.data import StageBData
from mindvis.models.brain_module_loss import brainmagick_clip_loss
from mindvis.models.brain_decoders import MBMDecoder, SharedMLP
from mindvis.models.ridge import RidgeConfig, RidgeDecoder
from mindvis.training import (STATE_NAME, EpochShuffleSampler, check_finite_loss, decay_groups, load_resume_checkpoint, lr_at,
                              save_training_state, seed_epoch, write_checkpoint)
from mindvis.utils.io import atomic_dir

from .decoders import build_decoder, decode, load_decoder, subject_ids

log = logging.getLogger("mindvis.align")


def fit(cfg: DictConfig, data: StageBData, emb: dict, stage_a, accelerator, run_dir: Path, main: bool,
        resume: bool = False) -> tuple:
    """(selected model, history, best, selection note): ridge in closed form, the others by gradient descent with
    the epoch selected on validation."""
    tc, d = cfg.train, cfg.decoder
    dim = emb["train"].shape[1]
    if d.name == "ridge":
        if d.folds > len(data.train):
            from mindvis.config import ConfigError

            raise ConfigError(f"decoder.folds={d.folds} is not allowed: must be 2 to {len(data.train)} (the training "
                              "pairs, each fold holds at least one out)")
        model = RidgeDecoder.fit(data.train.fmri, emb["train"],
                                 RidgeConfig(data.num_voxels, dim, list(d.alphas), d.folds, d.per_target))
        alphas = np.unique(model.alpha.numpy())
        chosen = f"{alphas[0]:.4g}" if len(alphas) == 1 else f"{len(alphas)} distinct per-target values"
        if main:
            model.save_pretrained(run_dir / "model")
        return model, [], {"epoch": 0}, f"ridge penalty by {d.folds}-fold cross-validation on the training split: {chosen}"
    torch.manual_seed(tc.seed)  # the initialisation does not depend on what ran before (e.g. a cached target)
    model = build_decoder(cfg, data.num_voxels, dim, stage_a, data)
    log.info("decoder %s: %.2fM parameters", d.name, sum(p.numel() for p in model.parameters()) / 1e6)
    model, history, best = train_decoder(cfg, model, data.train.fmri, emb["train"], data.val.fmri, emb["val"],
                                         accelerator, run_dir, main, resume, data.train.subjects, data.val.subjects)
    stopped = history[-1]["epoch"] if history and history[-1]["epoch"] < tc.epochs else None
    return model, history, best, (f"epoch {best['epoch']} of {tc.epochs} by {tc.select_metric} on validation"
                                  + (f" (early stop at epoch {stopped}: patience {tc.patience})" if stopped else ""))


def contrastive_term(cfg: DictConfig, name: str, out: dict, y: torch.Tensor, mix, temperature) -> torch.Tensor:
    lo = cfg.loss
    if name == "clip":
        return clip_loss(out["contrastive"], y, temperature() if callable(temperature) else temperature)
    if name == "bimixco":
        return bimixco_loss(out["contrastive"], y, mix[0], mix[1], lo.bimixco_temperature)
    if name == "softclip":
        return soft_clip_loss(out["contrastive"], y, lo.softclip_temperature)
    if name == "brainmagick":
        return brainmagick_clip_loss(out["contrastive"], y)
    return out["contrastive"].sum() * 0.0


def validation_scores(model, fmri: np.ndarray, y: np.ndarray, cfg: DictConfig, temperature, subjects=None) -> dict:
    """Validation loss (the training objective; CLIP's for the MindEye losses) and retrieval among the validation
    items."""
    dec = decode(model, fmri, subjects=subjects)
    pred_c, pred_r, t = (torch.from_numpy(dec["contrastive"]), torch.from_numpy(dec["regression"]),
                         torch.from_numpy(y))
    sim = cosine_similarity(pred_c, t)
    with torch.no_grad():
        temp = temperature() if callable(temperature) else temperature
        contrastive = (brainmagick_clip_loss(pred_c.float(), t.float()) if cfg.loss.contrastive == "brainmagick" else
                       clip_loss(pred_c, t, temp))
        loss = (cfg.loss.contrastive_weight * contrastive + (1 - cfg.loss.contrastive_weight) * mse_loss(pred_r, t))
    return {"val_loss": float(loss), "val_top1": top_k(sim, 1), "val_top5": top_k(sim, 5),
            "val_correlation": embedding_correlation(pred_r, t)}


def train_decoder(cfg: DictConfig, model, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                  val_y: np.ndarray, accelerator, run_dir: Path, main: bool, resume: bool, train_subjects=None,
                  val_subjects=None) -> tuple:
    """Gradient training with validation selection (and early stopping after ``train.patience`` epochs without
    improvement); ``*_subjects`` (one name per sample) choose the brain module's subject layer and montage per
    sample. Returns (selected model, history, best)."""
    tc, lo = cfg.train, cfg.loss
    temperature = Temperature(lo.clip_temperature) if lo.learn_temperature else lo.clip_temperature
    enc_params = {id(p) for p in model.encoder.parameters()} if isinstance(model, MBMDecoder) else set()
    if enc_params and cfg.decoder.freeze_encoder:
        model.encoder.requires_grad_(False)
    named = list(model.named_parameters()) + (list(temperature.named_parameters()) if callable(temperature) else [])
    groups = []
    for g in decay_groups(named, tc.weight_decay):
        for is_enc in (False, True):
            params = [p for p in g["params"] if (id(p) in enc_params) == is_enc]
            if params:
                groups.append({"params": params, "weight_decay": g["weight_decay"],
                               "base_lr": (tc.encoder_lr or tc.lr) if is_enc else tc.lr})
    optimizer = torch.optim.AdamW(groups, lr=tc.lr)
    history, start_epoch = [], 0
    best = {"metric": float("inf"), "epoch": 0}
    if resume:
        ckpt, saved, state = load_resume_checkpoint(run_dir, load_decoder)
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        if callable(temperature):
            temperature.log_scale.data.fill_(float(state["log_temperature"]))
        start_epoch, history, best = state["epoch"], state["history"], dict(state["best"])
        if history and history[-1].get("early_stop"):
            start_epoch = tc.epochs  # stopped early: nothing left to train
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    x_all = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.float32))
    s_all = subject_ids(raw, train_subjects, len(x_all))  # None: one subject, or not a brain module
    n = len(x_all)
    steps = max(1, n // tc.batch_size)  # drop the last partial batch: contrastive losses need full batches
    sign = 1.0 if tc.select_metric == "val_loss" else -1.0
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-align", config=to_plain(cfg))
    sampler = EpochShuffleSampler(n, tc.seed)
    t0 = time.time()
    for epoch in tqdm(range(start_epoch, tc.epochs), desc="align", disable=not main, initial=start_epoch,
                      total=tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        sampler.set_epoch(epoch)
        perm = torch.tensor(list(sampler))
        name = mindeye_schedule(epoch / tc.epochs, lo.mixup_fraction) if lo.contrastive == "mindeye" else lo.contrastive
        model.train()
        losses = []
        for step in range(steps):
            for g in optimizer.param_groups:
                g["lr"] = (lr_at(epoch + step / steps, g["base_lr"], 0.0, tc.warmup_epochs, tc.epochs)
                           if tc.lr_schedule == "cosine" else g["base_lr"] * min(1.0, (epoch + step / steps) /
                                                                               tc.warmup_epochs if tc.warmup_epochs else 1.0))
            idx = perm[step * tc.batch_size:(step + 1) * tc.batch_size]
            x, y = x_all[idx].to(accelerator.device), y_all[idx].to(accelerator.device)
            mix = None
            if name == "bimixco":
                x, perm_mix, betas, _ = mixco(x, lo.mix_beta, lo.mix_p)
                mix = (perm_mix, betas)
            with accelerator.autocast():
                out = model(x) if s_all is None else model(x, s_all[idx].to(accelerator.device))
                loss = (lo.contrastive_weight * contrastive_term(cfg, name, out, y, mix, temperature) +
                        (1 - lo.contrastive_weight) * mse_loss(out["regression"], y))
            check_finite_loss(loss, epoch, step, tc.lr)
            accelerator.backward(loss)
            if tc.clip_grad > 0:
                accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], tc.clip_grad)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "contrastive": name,
                 "time_s": round(time.time() - t0, 1)}
        last = epoch + 1 == tc.epochs
        if main and len(val_x) >= 2 and ((epoch + 1) % tc.val_every == 0 or last):
            entry |= validation_scores(raw, val_x, val_y, cfg, temperature, val_subjects)
            metric = sign * entry[tc.select_metric]
            if metric < best["metric"]:
                best = {"metric": float(metric), "epoch": epoch + 1}
                atomic_dir(run_dir / "best", lambda tmp: raw.save_pretrained(tmp))
            if tc.patience and epoch + 1 - best["epoch"] >= tc.patience:  # brainmagick: solver.py early stopping
                last = True
                entry["early_stop"] = True
        history.append(entry)
        if tc.tracker != "none":
            accelerator.log({k: v for k, v in entry.items() if isinstance(v, float)}, step=epoch + 1)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in entry.items() if k != "epoch"))
        if main and ((epoch + 1) % tc.checkpoint_every == 0 or last):
            def fill(tmp: Path):
                raw.save_pretrained(tmp / "model")
                save_training_state(tmp / STATE_NAME, optimizer, epoch + 1, history, best=best,
                                    log_temperature=temperature.log_scale.item() if callable(temperature) else 0.0)
                (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

            write_checkpoint(run_dir, epoch + 1, fill, tc.keep_checkpoints)
        if last:
            break
    if main:
        raw.save_pretrained(run_dir / "model")
    selected = load_decoder(run_dir / "best") if (run_dir / "best").is_dir() else raw
    return selected, history, best


def train_subjects(model: SharedMLP, data: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int, lr: float = 3e-4,
                   batch_size: int = 32, contrastive_weight: float = 0.75, temperature: float = 0.07,
                   weight_decay: float = 0.01, seed: int = 0, val=None, val_every: int = 5) -> dict:
    """Fit a multi-subject decoder on ``data`` (subject -> (fMRI, target embeddings)): every epoch visits each
    subject's pairs in shuffled batches with loss = w * CLIP + (1 - w) * MSE. Only parameters that require gradients
    train (after ``add_subject``: the new adapter alone). ``val(model) -> score`` (higher is better), called every
    ``val_every`` epochs and after the last, selects the epoch: the model ends with that epoch's weights.
    Returns {"loss": mean loss per epoch, "val": [(epoch, score)], "best_epoch"}."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    tensors = {s: (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
               for s, (x, y) in data.items()}
    out = {"loss": [], "val": [], "best_epoch": epochs}
    best, best_state = -float("inf"), None
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for subject, (x, y) in tensors.items():
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                if len(idx) < 2:  # a contrastive loss needs two items
                    continue
                pred = model(x[idx], subject)
                loss = (contrastive_weight * clip_loss(pred["contrastive"], y[idx], temperature) +
                        (1 - contrastive_weight) * mse_loss(pred["regression"], y[idx]))
                check_finite_loss(loss, epoch - 1, len(losses), lr)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        out["loss"].append(float(np.mean(losses)))
        if val is not None and (epoch % val_every == 0 or epoch == epochs):
            model.eval()
            score = float(val(model))
            out["val"].append((epoch, score))
            if score > best:
                best, out["best_epoch"] = score, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return out
