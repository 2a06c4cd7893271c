"""The stage-B training engine: fine-tune a DC-LDM on fMRI-image pairs.

As the paper by default: the conditioner (SC-MBM encoder + mappers + time map) and the UNet's
cross-attention and its norm train; everything else is frozen. Model selection uses a validation
split carved from the training data (never the test set); the test set is evaluated once, at the
end, with the selected model.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mindvis.config import save_config, to_plain
from mindvis.data.fmri import DataError
from mindvis.data.pairs import PairedDataset, PairedSplit
from mindvis.evaluation.metrics import identification, pairwise_pcc
from mindvis.models.conditioner import ConditionerConfig, FMRIConditioner
from mindvis.models.dc_ldm import DCLDM
from mindvis.models.priors import load_prior
from mindvis.models.sc_mbm import FMRIEncoder, MBMConfig, mbm_config
from mindvis.pipelines import MindVisPipeline
from mindvis.training import (STATE_NAME, EpochShuffleSampler, check_finite_loss, load_resume_checkpoint,
                              record_epoch, save_training_state, seed_epoch, start_run, write_checkpoint)
from mindvis.utils.io import atomic_dir, atomic_write_json
from mindvis.utils.plots import plot_history, save_image_grid

from .config import validate
from .data import build_stage_b_data, synthetic_world

log = logging.getLogger("mindvis.finetune")


def load_encoder(encoder: str, variant: str = "tiny", setting: str = "model.encoder") -> tuple[MBMConfig, dict | None]:
    """The stage-A encoder's architecture and weights (None for a random encoder).

    ``encoder``: a mindvis-pretrain run or model folder, an original ``fmri_encoder.pth``, or ``random`` (the
    ``variant`` architecture, untrained); ``setting`` names the key in error messages.
    """
    if not encoder:
        raise FileNotFoundError(f"{setting} is empty: give the stage-A SC-MBM (--encoder RUN_DIR, a model folder or "
                                "an original .pth), or --encoder random for an untrained encoder")
    if encoder == "random":
        return mbm_config(variant, 16 * 16), None
    from mindvis.pretrain.engine import load_mbm

    mbm = load_mbm(encoder)
    return mbm.config, mbm.state_dict()


def resolve_prior(cfg: DictConfig) -> str:
    """The prior folder: ``model.prior``, or for the synthetic world its cached prior (trained on first use)."""
    if cfg.model.prior:
        return cfg.model.prior
    world = synthetic_world(cfg.data)
    if world is None:
        raise FileNotFoundError("model.prior is empty: give the pretrained LDM folder (--prior DIR)")
    from .prior import ensure_synthetic_prior

    return str(ensure_synthetic_prior(world, cfg.data.cache_dir or None))


def build_encoder(num_voxels: int, enc_cfg: MBMConfig, enc_weights: dict | None, global_pool: bool = False,
                  interpolate_positions: bool = True, original_norm_filter: bool = False) -> FMRIEncoder:
    """The SC-MBM encoder for ``num_voxels`` voxels, with the stage-A weights (positions resized if allowed;
    ``original_norm_filter``: see :meth:`FMRIEncoder.load_mbm_state_dict`)."""
    if num_voxels % enc_cfg.patch_size or num_voxels // enc_cfg.patch_size < 2:
        raise DataError(f"the encoder (patch size {enc_cfg.patch_size}) cannot take {num_voxels} voxels: it needs a "
                        "multiple of the patch size with at least two patches")
    if enc_weights is not None and num_voxels != enc_cfg.num_voxels and not interpolate_positions:
        raise DataError(f"the data has {num_voxels} voxels but the encoder was trained on {enc_cfg.num_voxels}; "
                        "set model.interpolate_positions=true to resize its positions (as the original does)")
    encoder = FMRIEncoder(MBMConfig(**{**asdict(enc_cfg), "num_voxels": num_voxels}), global_pool=global_pool)
    if enc_weights is not None:
        encoder.load_mbm_state_dict(enc_weights, drop_norms=original_norm_filter)
    return encoder


def build_model(cfg: DictConfig, num_voxels: int, enc_cfg: MBMConfig, enc_weights: dict | None) -> DCLDM:
    m = cfg.model
    encoder = build_encoder(num_voxels, enc_cfg, enc_weights, m.global_pool, m.interpolate_positions,
                            m.original_norm_filter)
    unet, vae, sched = load_prior(resolve_prior(cfg), time_conditioned=m.time_cond, cache_dir=cfg.data.cache_dir or None)
    ccfg = ConditionerConfig(encoder=asdict(encoder.config), context_dim=unet.config.cross_attention_dim,
                             time_embed_dim=unet.time_embedding.linear_2.out_features, global_pool=m.global_pool,
                             use_time_cond=m.time_cond)
    return DCLDM(unet, vae, FMRIConditioner(ccfg, encoder), sched)


@torch.no_grad()
def evaluate_loss(model: DCLDM, split: PairedSplit, image_size: int, seed: int, batch_size: int, device,
                  repeats: int = 4) -> dict[str, float]:
    """Noise-prediction loss with fixed noise and timesteps (``repeats`` per sample), overall and per dataset."""
    model.eval()
    ds = PairedDataset(split, image_size, train=False)
    gen = torch.Generator(device=device).manual_seed(seed)
    per_sample = np.zeros(len(ds))
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        imgs, fmri = batch["image"].to(device), batch["fmri"].to(device)
        losses = []
        for _ in range(repeats):
            z0 = model.encode_images(imgs)
            noise = torch.randn(z0.shape, generator=gen, device=device)
            t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (len(z0),), generator=gen,
                              device=device)
            context, time_emb = model.condition(fmri)
            pred = model.predict_noise(model.noise_scheduler.add_noise(z0, noise, t), t, context, time_emb)
            losses.append(((pred - noise) ** 2).mean(dim=(1, 2, 3)))
        per_sample[batch["index"].numpy()] = torch.stack(losses).mean(0).cpu().numpy()
    out = {"loss": float(per_sample.mean())}
    for name in sorted(set(split.dataset)):
        mask = np.array([d == name for d in split.dataset])
        out[f"loss_{name}"] = float(per_sample[mask].mean())
    return out


def sample_grid(path: Path, model: DCLDM, split: PairedSplit, image_size: int, cfg: DictConfig,
                indices: np.ndarray) -> float | None:
    """Reconstruct ``indices`` of ``split`` and write the grid (ground truth first); returns the pixel-correlation
    identification of the samples (None with fewer than two images)."""
    ds = PairedDataset(split, image_size, train=False)
    fmri = torch.stack([ds[int(i)]["fmri"] for i in indices])
    truth = torch.stack([(ds.image_tensor(int(i), False) + 1) / 2 for i in indices])
    samples = MindVisPipeline(model)(fmri, num_samples=cfg.train.num_samples, num_inference_steps=cfg.train.sample_steps,
                                     scheduler=cfg.train.sampler, seed=cfg.train.seed)
    rows = [np.concatenate([t[None], s]).transpose(0, 2, 3, 1) for t, s in zip(truth.numpy(), samples.numpy())]
    save_image_grid(path, rows)
    if len(indices) < 2:
        return None
    return float(torch.stack([identification(pairwise_pcc(samples[:, k], truth))
                              for k in range(samples.shape[1])]).mean())


def finetune(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Fine-tune as ``cfg`` says; returns the summary (validation-selected model, test metrics)."""
    t0 = time.time()
    validate(cfg)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.finetune")

    enc_cfg, enc_weights = load_encoder(cfg.model.encoder, cfg.model.encoder_variant)
    data = build_stage_b_data(cfg.data, enc_cfg.patch_size, tc.seed)
    log.info("data: %s", data.description)
    model = build_model(cfg, data.num_voxels, enc_cfg, enc_weights)
    image_size = cfg.data.image_size or model.image_size
    trainable = model.set_trainable(tc.unet, tc.train_encoder)
    log.info("model: prior UNet %.1fM parameters, %s; %d trainable tensors (%.2fM parameters)",
             sum(p.numel() for p in model.unet.parameters()) / 1e6, type(model.vae).__name__, len(trainable),
             sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    if main and not resume:  # a resumed run keeps its config.yaml, whatever happens next
        save_config(cfg, run_dir / "config.yaml")

    params = [p for p in model.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in model.conditioner.mae.parameters()}
    groups = [{"params": [p for p in params if id(p) not in enc_ids], "lr": tc.lr},
              {"params": [p for p in params if id(p) in enc_ids], "lr": tc.encoder_lr or tc.lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=tc.weight_decay)
    history, start_epoch, best = [], 0, {"metric": float("inf"), "epoch": 0}
    if resume:
        ckpt, saved, state = load_resume_checkpoint(run_dir, DCLDM.from_pretrained)
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], dict(state["best"])
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)

    train_ds = PairedDataset(data.train, image_size, train=True, zero_voxels=cfg.data.zero_voxels,
                             crop_ratio=cfg.data.crop_ratio, crop_p=cfg.data.crop_p)
    loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=EpochShuffleSampler(len(train_ds), tc.seed),
                        num_workers=cfg.data.num_workers, drop_last=len(train_ds) > tc.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    raw: DCLDM = accelerator.unwrap_model(model)
    if tc.tracker != "none":
        accelerator.init_trackers("mindvis-finetune", config=to_plain(cfg))
    rng = np.random.default_rng(tc.seed)
    grid_idx = np.sort(rng.choice(len(data.val), min(tc.grid_samples, len(data.val)), replace=False)) \
        if len(data.val) else np.array([], int)

    for epoch in range(start_epoch, tc.epochs):
        seed_epoch(tc.seed, epoch, accelerator.process_index)
        loader.set_epoch(epoch)
        model.train()
        raw.vae.eval()
        losses = []
        for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not main)):
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(batch["image"], batch["fmri"])  # through the (DDP) wrapper: gradients sync
                check_finite_loss(loss, epoch, step, tc.lr)
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.clip_grad > 0:
                    accelerator.clip_grad_norm_(params, tc.clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.item())
        mean = accelerator.gather(torch.tensor([np.mean(losses)], device=accelerator.device)).mean().item()
        entry = {"epoch": epoch + 1, "loss": mean, "time_s": round(time.time() - t0, 1)}
        last = epoch + 1 == tc.epochs
        if main and len(data.val) and ((epoch + 1) % tc.val_every == 0 or last):
            val = evaluate_loss(raw, data.val, image_size, tc.seed, tc.batch_size, accelerator.device)
            entry |= {f"val_{k}": v for k, v in val.items()}
            pcc_id = sample_grid(run_dir / "validation" / f"epoch-{epoch + 1:04d}.png", raw, data.val, image_size,
                                 cfg, grid_idx)
            if pcc_id is not None:
                entry["val_pcc_identification"] = pcc_id
            metric = entry.get(tc.select_metric)
            if metric is None:
                raise KeyError(f"train.select_metric {tc.select_metric!r} is not logged; have {sorted(entry)}")
            metric = metric if tc.select_metric.startswith("val_loss") else -metric  # stored as lower-is-better
            if metric < best["metric"]:
                best = {"metric": float(metric), "epoch": epoch + 1}
                atomic_dir(run_dir / "best", lambda tmp: raw.save_pretrained(tmp))
                log.info("new best %s %.4f at epoch %d", tc.select_metric, abs(metric), epoch + 1)
        record_epoch(history, entry, log, accelerator, tc.tracker)
        if (epoch + 1) % tc.checkpoint_every == 0 or last:
            accelerator.wait_for_everyone()
            if main:
                def fill(tmp: Path):
                    raw.save_pretrained(tmp / "model")
                    save_training_state(tmp / STATE_NAME, optimizer, epoch + 1, history, best=best)
                    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

                write_checkpoint(run_dir, epoch + 1, fill, tc.keep_checkpoints)
                plot_history(run_dir / "loss_curve.png", history, "DC-LDM fine-tuning")
            accelerator.wait_for_everyone()

    summary = {}
    if main:
        raw.save_pretrained(run_dir / "model")  # the last epoch; best/ is the validation-selected one
        selected = DCLDM.from_pretrained(run_dir / "best") if (run_dir / "best").is_dir() else raw
        selected.to(accelerator.device)
        test = evaluate_loss(selected, data.test, image_size, tc.seed, tc.batch_size, accelerator.device)
        idx = np.arange(min(tc.grid_samples, len(data.test)))
        sample_grid(run_dir / "test_grid.png", selected, data.test, image_size, cfg, idx)
        summary = {"selected_epoch": best["epoch"], "select_metric": tc.select_metric,
                   "selected_value": abs(best["metric"]), "test": test, "data": data.description,
                   "num_voxels": data.num_voxels, "prior": resolve_prior(cfg), "epochs": tc.epochs,
                   "seconds": round(time.time() - t0, 1),
                   "first_loss": history[0]["loss"] if history else None,
                   "last_loss": history[-1]["loss"] if history else None}
        atomic_write_json(run_dir / "summary.json", summary)
        plot_history(run_dir / "loss_curve.png", history, "DC-LDM fine-tuning")
        print(f"\nstage B done: selected epoch {best['epoch']} by {tc.select_metric}; test loss {test['loss']:.4f}\n"
              f"run folder: {run_dir}", flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return summary


