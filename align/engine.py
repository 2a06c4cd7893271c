"""The alignment engine: fit a decoder from fMRI to an image embedding space, select it on validation, and score
retrieval on the test set once.

Ridge is fitted in closed form (penalty by k-fold cross-validation on the training split). The MLP and SC-MBM
decoders train by gradient descent on ``lambda * contrastive + (1 - lambda) * MSE``; the epoch is selected on the
validation split (whole classes carved from training, as stage B). Test-time averaging: the test fMRI of the
first r repetitions is averaged, r = 1..R, and decoded.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mindvis.config import MIXED_PRECISIONS, TRACKERS, check_settings, save_config, to_plain
from mindvis.contrastive import (Temperature, bimixco_loss, clip_loss, mindeye_schedule, mixco, mse_loss,
                                 soft_clip_loss)
from mindvis.data.fmri import DataError
from mindvis.data.pairs import TRIAL_MARK, PairedSplit
from mindvis.evaluation.retrieval import (cosine_similarity, embedding_correlation, embedding_cosine,
                                          embedding_report, large_set_retrieval, relative_median_rank, top_k)
from mindvis.finetune.config import MEEG_DATASETS
from mindvis.finetune.data import StageBData, build_stage_b_data, synthetic_world
from mindvis.models.brain_decoders import MBMDecoder, MBMDecoderConfig, MindEyeMLP, MLPConfig, SharedMLP
from mindvis.models.brain_module import AGGREGATIONS, BrainModule, BrainModuleConfig
from mindvis.models.image_embedders import cached_embeddings, load_embedder, valid_target
from mindvis.models.persistence import read_json
from mindvis.models.ridge import RidgeConfig, RidgeDecoder
from mindvis.training import (STATE_NAME, EpochShuffleSampler, check_finite_loss, decay_groups, load_resume_checkpoint, lr_at,
                              save_training_state, seed_epoch, start_run, write_checkpoint)
from mindvis.utils.io import atomic_dir, atomic_write, atomic_write_json, atomic_write_text
from mindvis.utils.plots import plot_loss_curves, save_image_grid

from .config import CONTRASTIVE, DECODERS

log = logging.getLogger("mindvis.align")

DECODER_CLASSES = {"RidgeDecoder": RidgeDecoder, "MindEyeMLP": MindEyeMLP, "MBMDecoder": MBMDecoder,
                   "SharedMLP": SharedMLP, "BrainModule": BrainModule}


def validate(cfg: DictConfig) -> None:
    """Every setting checked before anything runs; a ConfigError names the key, the value and what is allowed."""
    d, lo, t = cfg.decoder, cfg.loss, cfg.train
    meeg = cfg.data.dataset in MEEG_DATASETS
    bm = d.brain_module
    checks = [
        (d.name != "brain-module" or meeg, "decoder.name", d.name,
         f"ridge, mlp or mbm for fMRI (brain-module reads M/EEG: data.dataset {MEEG_DATASETS})"),
        (d.name != "mbm" or not meeg, "decoder.name", d.name, "ridge, mlp or brain-module for M/EEG (mbm reads fMRI)"),
        (bm.aggregation in AGGREGATIONS, "decoder.brain_module.aggregation", bm.aggregation, f"one of {AGGREGATIONS}"),
        (min(bm.merger_channels, bm.fourier_harmonics, bm.hidden, bm.features, bm.dilation_period) > 0 and bm.blocks >= 0
         and 0 <= bm.spatial_dropout < 1 and 0 <= bm.conv_dropout < 1, "decoder.brain_module",
         dict(bm), "positive sizes, dropouts in [0, 1)"),
        (cfg.windows.length >= 0 and cfg.windows.step > 0, "windows.length/step", (cfg.windows.length, cfg.windows.step),
         "length >= 0 (0: off), step > 0"),
        (cfg.windows.length == 0 or meeg, "windows.length", cfg.windows.length, "0 for fMRI (windows cut M/EEG time)"),
        (valid_target(cfg.target), "target", cfg.target,
         "an embedding space (unknown target space otherwise): clip:SRC, dinov2:SRC, timm:NAME or synthetic"),
        (d.name in DECODERS, "decoder.name", d.name, f"one of {DECODERS}"),
        (lo.contrastive in CONTRASTIVE, "loss.contrastive", lo.contrastive, f"one of {CONTRASTIVE}"),
        (0 <= lo.contrastive_weight <= 1, "loss.contrastive_weight", lo.contrastive_weight, "in [0, 1]"),
        (all(a > 0 for a in d.alphas) and len(d.alphas) > 0, "decoder.alphas", list(d.alphas), "positive numbers"),
        (d.folds >= 2, "decoder.folds", d.folds, ">= 2"),
        (d.pool in ("flatten", "mean") and d.token_dim > 0, "decoder.pool/token_dim", (d.pool, d.token_dim),
         "pool flatten or mean, token_dim > 0"),
        (d.hidden > 0 and d.blocks >= 0 and d.projector_hidden > 0, "decoder.hidden/blocks/projector_hidden",
         (d.hidden, d.blocks, d.projector_hidden), "positive sizes"),
        (0 <= d.input_dropout < 1 and 0 <= d.block_dropout < 1, "decoder.*_dropout",
         (d.input_dropout, d.block_dropout), "in [0, 1)"),
        (min(lo.clip_temperature, lo.bimixco_temperature, lo.softclip_temperature) > 0, "loss.*_temperature",
         (lo.clip_temperature, lo.bimixco_temperature, lo.softclip_temperature), "> 0"),
        (0 <= lo.mixup_fraction <= 1 and 0 <= lo.mix_p <= 1 and lo.mix_beta > 0, "loss.mixup_fraction/mix_p/mix_beta",
         (lo.mixup_fraction, lo.mix_p, lo.mix_beta), "fractions in [0, 1] and beta > 0"),
        (t.epochs > 0, "train.epochs", t.epochs, "> 0"),
        (t.batch_size >= 2, "train.batch_size", t.batch_size, ">= 2 (contrastive losses compare within a batch)"),
        (t.lr > 0 and t.encoder_lr >= 0, "train.lr/encoder_lr", (t.lr, t.encoder_lr), "lr > 0, encoder_lr >= 0"),
        (t.weight_decay >= 0 and t.warmup_epochs >= 0 and t.clip_grad >= 0, "train.weight_decay/warmup_epochs/clip_grad",
         (t.weight_decay, t.warmup_epochs, t.clip_grad), ">= 0"),
        (t.val_every > 0 and t.checkpoint_every > 0 and t.keep_checkpoints > 0, "train.val_every/checkpoint_every/"
         "keep_checkpoints", (t.val_every, t.checkpoint_every, t.keep_checkpoints), "> 0"),
        (t.select_metric in ("val_top1", "val_top5", "val_correlation", "val_loss"), "train.select_metric",
         t.select_metric, "val_top1, val_top5, val_correlation or val_loss"),
        (t.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", t.mixed_precision, f"one of {MIXED_PRECISIONS}"),
        (t.tracker in TRACKERS, "train.tracker", t.tracker, f"one of {TRACKERS}"),
        (cfg.eval.mindeye_subset >= 2 and cfg.eval.mindeye_draws >= 1 and cfg.eval.show >= 0,
         "eval.mindeye_subset/mindeye_draws/show", (cfg.eval.mindeye_subset, cfg.eval.mindeye_draws, cfg.eval.show),
         "subset >= 2, draws >= 1, show >= 0"),
    ]
    check_settings(checks)


# ----------------------------------------------------------------------------- data and targets
def split_test_trials(test: PairedSplit) -> tuple[PairedSplit, np.ndarray | None]:
    """The repetition-averaged test rows, and the single trials as (N, R, V) aligned with them (None if absent)."""
    avg_idx = [i for i, s in enumerate(test.ids) if TRIAL_MARK not in s]
    avg = test.subset(avg_idx)
    trials: dict[str, list[int]] = {}
    for i, s in enumerate(test.ids):
        if TRIAL_MARK in s:
            trials.setdefault(s.split(TRIAL_MARK)[0], []).append(i)
    if not trials:
        return avg, None
    counts = {len(v) for v in trials.values()}
    missing = [s for s in avg.ids if s not in trials]
    if len(counts) != 1 or missing:
        log.warning("test images have unequal repetitions (%s) or none (%d): no averaging curve", sorted(counts),
                    len(missing))
        return avg, None
    return avg, np.stack([test.fmri[trials[s]] for s in avg.ids])  # (N, R, V)


def embed_images(cfg: DictConfig, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target embeddings of each named image set (cached by space and image digest)."""
    world = synthetic_world(cfg.data)
    embedder = load_embedder(cfg.target, world, cfg.data.cache_dir or None)
    key = str(world.image_settings()) if world else ""
    return {name: cached_embeddings(embedder, imgs, cfg.data.cache_dir or None, key) for name, imgs in images.items()}


# ----------------------------------------------------------------------------- decoders
def build_decoder(cfg: DictConfig, num_voxels: int, dim: int, stage_a: tuple | None = None,
                  data: StageBData | None = None):
    """The MLP, the SC-MBM decoder around ``stage_a`` (architecture, weights) from ``load_encoder``, or the brain
    module over ``data``'s sensor layout and window."""
    d = cfg.decoder
    if d.name == "brain-module":
        return BrainModule(BrainModuleConfig(positions=data.layout.tolist(), n_times=data.train.fmri.shape[-1], dim=dim,
                                             **OmegaConf.to_container(d.brain_module)))
    if d.name == "mlp":
        return MindEyeMLP(MLPConfig(num_voxels, dim, d.hidden, d.blocks, d.input_dropout, d.block_dropout,
                                    d.projector_hidden))
    if d.name == "mbm":
        from mindvis.finetune.engine import build_encoder

        encoder = build_encoder(num_voxels, *stage_a)
        return MBMDecoder(MBMDecoderConfig(asdict(encoder.config), dim, d.projector_hidden, d.pool, d.token_dim,
                                           {"encoder": d.encoder}), encoder)
    raise ValueError(f"{d.name} is not trained by gradient descent")


def load_decoder(folder: str | Path):
    """A saved decoder of any kind (``model/`` or ``best/`` of an align run)."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder} is not a saved decoder (config.json is missing)")
    name = read_json(cfg_file).get("class")
    if name not in DECODER_CLASSES:
        raise DataError(f"{cfg_file}: unknown decoder class {name!r}; expected one of {sorted(DECODER_CLASSES)}")
    return DECODER_CLASSES[name].from_pretrained(folder)


@torch.no_grad()
def decode(model, fmri: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Decoded embeddings {"contrastive", "regression"} (the same array for ridge)."""
    model.eval()
    outs = {"contrastive": [], "regression": []}
    for i in range(0, len(fmri), batch_size):
        out = model(torch.from_numpy(np.ascontiguousarray(fmri[i:i + batch_size], dtype=np.float32)))
        if isinstance(out, torch.Tensor):
            out = {"contrastive": out, "regression": out}
        for k in outs:
            outs[k].append(out[k].float())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def contrastive_term(cfg: DictConfig, name: str, out: dict, y: torch.Tensor, mix, temperature) -> torch.Tensor:
    lo = cfg.loss
    if name == "clip":
        return clip_loss(out["contrastive"], y, temperature() if callable(temperature) else temperature)
    if name == "bimixco":
        return bimixco_loss(out["contrastive"], y, mix[0], mix[1], lo.bimixco_temperature)
    if name == "softclip":
        return soft_clip_loss(out["contrastive"], y, lo.softclip_temperature)
    return out["contrastive"].sum() * 0.0


def validation_scores(model, fmri: np.ndarray, y: np.ndarray, cfg: DictConfig, temperature) -> dict:
    dec = decode(model, fmri)
    pred_c, pred_r, t = (torch.from_numpy(dec["contrastive"]), torch.from_numpy(dec["regression"]),
                         torch.from_numpy(y))
    sim = cosine_similarity(pred_c, t)
    with torch.no_grad():
        temp = temperature() if callable(temperature) else temperature
        loss = (cfg.loss.contrastive_weight * clip_loss(pred_c, t, temp) +
                (1 - cfg.loss.contrastive_weight) * mse_loss(pred_r, t))
    return {"val_loss": float(loss), "val_top1": top_k(sim, 1), "val_top5": top_k(sim, 5),
            "val_correlation": embedding_correlation(pred_r, t)}


def train_decoder(cfg: DictConfig, model, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                  val_y: np.ndarray, accelerator, run_dir: Path, main: bool, resume: bool) -> tuple:
    """Gradient training with validation selection; returns (selected model, history, best)."""
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
        log.info("resumed from %s (epoch %d done)", ckpt, start_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    x_all = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    y_all = torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.float32))
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
                g["lr"] = lr_at(epoch + step / steps, g["base_lr"], 0.0, tc.warmup_epochs, tc.epochs)
            idx = perm[step * tc.batch_size:(step + 1) * tc.batch_size]
            x, y = x_all[idx].to(accelerator.device), y_all[idx].to(accelerator.device)
            mix = None
            if name == "bimixco":
                x, perm_mix, betas, _ = mixco(x, lo.mix_beta, lo.mix_p)
                mix = (perm_mix, betas)
            with accelerator.autocast():
                out = model(x)
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
            entry |= validation_scores(raw, val_x, val_y, cfg, temperature)
            metric = sign * entry[tc.select_metric]
            if metric < best["metric"]:
                best = {"metric": float(metric), "epoch": epoch + 1}
                atomic_dir(run_dir / "best", lambda tmp: raw.save_pretrained(tmp))
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
    if main:
        raw.save_pretrained(run_dir / "model")
    selected = load_decoder(run_dir / "best") if (run_dir / "best").is_dir() else raw
    return selected, history, best


# ----------------------------------------------------------------------------- reports
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


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_report(report: dict) -> str:
    lines = [f"# Retrieval: {report['decoder']} -> {report['target']}", "", report["data"], ""]
    for split in ("val", "test"):
        if split not in report:
            continue
        lines += [f"## {split} ({report[f'{split}_items']} items)", "", "| metric | value | std | chance |",
                  "|---|---|---|---|"]
        for name, m in report[split].items():
            lines.append(f"| {name} | {_fmt(m['value'])} | {_fmt(m.get('std'))} | {_fmt(m['chance'])} |")
        lines.append("")
    if report.get("averaging"):
        lines += ["## test-time averaging (test fMRI of the first r repetitions averaged)", "",
                  "| repetitions | top-1 | top-5 | chance top-1 |", "|---|---|---|---|"]
        for row in report["averaging"]:
            lines.append(f"| {row['repetitions']} | {row['top1']:.4f} | {row['top5']:.4f} | {row['chance']:.4f} |")
        lines.append("")
    if report.get("time_resolved"):
        lines += ["## time-resolved decoding (one decoder per window; test images averaged)", "",
                  "| window (s) | top-1 | top-5 | median rank | chance top-5 |", "|---|---|---|---|---|"]
        for r in report["time_resolved"]:
            lines.append(f"| {r['start']:+.2f} to {r['stop']:+.2f} | {r['top1']:.4f} | {r['top5']:.4f} | "
                         f"{r['median_rank']:.3f} | {r['chance_top5']:.4f} |")
        lines.append("")
    lines.append(f"selected: {report['selection']}")
    return "\n".join(lines) + "\n"


def _thumb(images: np.ndarray, size: int = 64) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t.clamp(0, 255) / 255).permute(0, 2, 3, 1).numpy()


def retrieval_grid(path: Path, pred: np.ndarray, truth_images: np.ndarray, gallery_emb: np.ndarray,
                   gallery_images: np.ndarray, show: int, k: int = 5, own: np.ndarray | None = None) -> None:
    """Rows: the seen image, then the ``k`` gallery images nearest to its decoded embedding; where ``own[i]`` is
    the gallery index of row i's own image, that image is framed in green."""
    if show == 0:
        return
    sim = cosine_similarity(torch.from_numpy(pred[:show]), torch.from_numpy(gallery_emb)).numpy()
    best = np.argsort(-sim, axis=1)[:, :k]
    rows = []
    for i in range(len(best)):
        thumbs = _thumb(gallery_images[best[i]])
        for j in np.nonzero(best[i] == own[i])[0] if own is not None else []:
            for edge in (np.s_[:3], np.s_[-3:], np.s_[:, :3], np.s_[:, -3:]):
                thumbs[j][edge] = (0.1, 0.85, 0.1)
        rows.append(np.concatenate([_thumb(truth_images[i:i + 1]), thumbs]))
    save_image_grid(path, rows)


def plot_averaging(path: Path, curve: list[dict]) -> None:
    r = [c["repetitions"] for c in curve]
    plot_loss_curves(path, {"top-1": (r, [c["top1"] for c in curve]), "top-5": (r, [c["top5"] for c in curve]),
                            "chance top-1": (r, [c["chance"] for c in curve])},
                     title="test-time averaging", xlabel="repetitions averaged", ylabel="retrieval accuracy")


def gallery_images(cfg: DictConfig, train: PairedSplit) -> np.ndarray:
    """Images for retrieval reconstructions: ``eval.gallery`` (a folder) or the unique training images."""
    if not cfg.eval.gallery:
        _, first = np.unique(np.asarray(train.ids), return_index=True)
        return train.images[np.sort(first)]
    from PIL import Image

    files = sorted(p for p in Path(cfg.eval.gallery).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise DataError(f"eval.gallery {cfg.eval.gallery}: no .png/.jpg images")
    size = train.images.shape[1]
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def score_split(dec: dict[str, np.ndarray], target: np.ndarray, ev: DictConfig, seed: int) -> dict:
    """Every embedding metric of decoded embeddings against the split's targets. Retrieval uses the contrastive
    head; correlation and cosine measure the regression head, the embedding a generator receives (for ridge the
    two are the same)."""
    tgt = torch.from_numpy(target)
    rep = embedding_report(torch.from_numpy(dec["contrastive"]), tgt, ev.mindeye_subset, ev.mindeye_draws, seed)
    reg = torch.from_numpy(dec["regression"])
    rep["embedding_correlation"]["value"] = embedding_correlation(reg, tgt)
    rep["embedding_cosine"]["value"] = embedding_cosine(reg, tgt)
    return rep


def averaging_curve(model, trials: np.ndarray, target: np.ndarray) -> list[dict]:
    """Test-time averaging: top-1/top-5 of the first r repetitions' mean fMRI ((N, R, V) trials), r = 1..R."""
    curve = []
    for r in range(1, trials.shape[1] + 1):
        pred = torch.from_numpy(decode(model, trials[:, :r].mean(1))["contrastive"])
        sim = cosine_similarity(pred, torch.from_numpy(target))
        curve.append({"repetitions": r, "top1": top_k(sim, 1), "top5": top_k(sim, 5), "chance": 1 / len(trials)})
    return curve


def vectorised(cfg: DictConfig, data: StageBData) -> StageBData:
    """M/EEG for decoders that read a vector (ridge, mlp): channels x times flattened; fMRI and the brain module's
    input unchanged."""
    if data.layout is None or cfg.decoder.name == "brain-module":
        return data
    flat = lambda s: PairedSplit(s.fmri.reshape(len(s), -1), s.images, s.labels, s.ids, s.dataset)
    return StageBData(flat(data.train), flat(data.val), flat(data.test), data.train.fmri[0].size, data.description,
                      data.layout, data.times)


def fit(cfg: DictConfig, data: StageBData, emb: dict, stage_a, accelerator, run_dir: Path, main: bool,
        resume: bool = False) -> tuple:
    """(selected model, history, best, selection note): ridge in closed form, the others by gradient descent with
    the epoch selected on validation."""
    tc, d = cfg.train, cfg.decoder
    dim = emb["train"].shape[1]
    if d.name == "ridge":
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
                                         accelerator, run_dir, main, resume)
    return model, history, best, f"epoch {best['epoch']} of {tc.epochs} by {tc.select_metric} on validation"


def crop(data: StageBData, start: float, stop: float) -> StageBData:
    """M/EEG trials cut to the samples with ``start <= t < stop`` (s from image onset)."""
    keep = np.flatnonzero((data.times >= start - 1e-9) & (data.times < stop - 1e-9))
    cut = lambda s: PairedSplit(np.ascontiguousarray(s.fmri[..., keep]), s.images, s.labels, s.ids, s.dataset)
    return StageBData(cut(data.train), cut(data.val), cut(data.test), data.num_voxels, data.description,
                      data.layout, data.times[keep])


def time_resolved(cfg: DictConfig, full: StageBData, emb: dict, accelerator, run_dir: Path, main: bool) -> list[dict]:
    """One decoder per window (``cfg.windows``), each selected as the full one is and scored on the averaged test
    set: top-1 / top-5 / relative median rank per window, with chance."""
    w = cfg.windows
    t = full.times
    starts = np.arange(t[0], t[-1] - w.length + 1e-9 + 1 / (2 * max(1, len(t))), w.step)
    if len(starts) == 0:
        raise DataError(f"windows.length {w.length} s is longer than the trials ({t[0]:.3f} to {t[-1]:.3f} s)")
    rows = []
    quiet = OmegaConf.merge(cfg, {"train": {"checkpoint_every": 10**6}})
    for start in tqdm(starts, desc="windows", disable=not main):
        part = vectorised(cfg, crop(full, float(start), float(start + w.length)))
        folder = run_dir / "windows" / f"{start:+.3f}s"
        folder.mkdir(parents=True, exist_ok=True)
        model, _, _, _ = fit(quiet, part, emb, None, accelerator, folder, main)
        test, _ = split_test_trials(part.test)
        sim = cosine_similarity(torch.from_numpy(decode(model, test.fmri)["contrastive"]), torch.from_numpy(emb["test"]))
        n = len(test)
        rows.append({"start": float(start), "stop": float(start + w.length), "centre": float(start + w.length / 2),
                     "top1": top_k(sim, 1), "top5": top_k(sim, 5), "median_rank": relative_median_rank(sim),
                     "chance_top1": 1 / n, "chance_top5": min(1.0, 5 / n)})
        log.info("window %+.3f to %+.3f s: top-5 %.3f (chance %.3f)", start, start + w.length, rows[-1]["top5"],
                 rows[-1]["chance_top5"])
    return rows


def plot_time_resolved(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["centre"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(c, [r["top5"] for r in rows], "o-", label="top-5")
    ax.plot(c, [r["top1"] for r in rows], "s-", label="top-1")
    ax.plot(c, [r["chance_top5"] for r in rows], ":", color="gray", label="chance top-5")
    ax.plot(c, [r["chance_top1"] for r in rows], "--", color="gray", lw=0.8, label="chance top-1")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="window centre (s from image onset)", ylabel="test retrieval", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the command
def align(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """Fit, select on validation, score the test set once; returns the report."""
    t0 = time.time()
    validate(cfg)
    tc = cfg.train
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.align")
    stage_a = None  # the SC-MBM encoder (architecture, weights), read once
    if cfg.decoder.name == "mbm":
        from mindvis.finetune.engine import load_encoder

        stage_a = load_encoder(cfg.decoder.encoder, cfg.decoder.encoder_variant, "decoder.encoder")
    full = build_stage_b_data(cfg.data, stage_a[0].patch_size if stage_a else 16, tc.seed)
    data = vectorised(cfg, full)
    test, trials = split_test_trials(data.test)
    log.info("data: %s", data.description)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    gallery = gallery_images(cfg, data.train)
    emb = embed_images(cfg, {"train": data.train.images, "val": data.val.images, "test": test.images,
                             "gallery": gallery})
    dim = emb["train"].shape[1]
    log.info("target %s: %d dims; %d train / %d val / %d test images", cfg.target, dim, len(emb["train"]),
             len(emb["val"]), len(emb["test"]))
    model, history, best, selection = fit(cfg, data, emb, stage_a, accelerator, run_dir, main, bool(resume))
    report = {}
    if main:
        ev = cfg.eval
        scores = {}
        for split, s in (("val", data.val), ("test", test)):
            if len(s) < 2:
                continue
            scores[split] = decode(model, s.fmri)
            report[split] = score_split(scores[split], emb[split], ev, tc.seed)
            report[f"{split}_items"] = len(s)
        if "test" in scores:  # Meta's large retrieval set: the test images among the gallery's
            large = large_set_retrieval(torch.from_numpy(scores["test"]["contrastive"]), torch.from_numpy(emb["test"]),
                                        torch.from_numpy(emb["gallery"]))
            for m in ("top1", "top5", "median_rank"):
                name = {"top1": "top1_large_set", "top5": "top5_large_set", "median_rank": "relative_median_rank_large_set"}[m]
                report["test"][name] = {"value": large[m], "chance": large["chance"][m], "candidates": large["candidates"]}
        curve = []
        if trials is not None:
            curve = averaging_curve(model, trials, emb["test"])
            plot_averaging(run_dir / "averaging.png", curve)
        if cfg.windows.length > 0:
            report["time_resolved"] = time_resolved(cfg, full, emb, accelerator, run_dir, main)
            plot_time_resolved(run_dir / "time_resolved.png", report["time_resolved"],
                               f"time-resolved decoding ({cfg.decoder.name}, {cfg.windows.length:g}-s windows)")
            atomic_write_json(run_dir / "time_resolved.json", report["time_resolved"])
        report |= {"decoder": cfg.decoder.name, "target": cfg.target, "data": data.description,
                   "selection": selection, "selected_epoch": best["epoch"], "averaging": curve,
                   "seconds": round(time.time() - t0, 1), "history": history}
        atomic_write_json(run_dir / "retrieval.json", report)
        atomic_write_text(run_dir / "retrieval.md", markdown_report(report))
        if "test" in scores:
            dec = scores["test"]
            arrays = {"contrastive": dec["contrastive"], "regression": dec["regression"], "target": emb["test"],
                      "ids": np.array(test.ids)}
            atomic_write(run_dir / "test_embeddings.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
            retrieval_grid(run_dir / "retrieval_top5.png", dec["contrastive"], test.images, emb["test"], test.images,
                           ev.show, own=np.arange(len(test)))
            retrieval_grid(run_dir / "gallery_top5.png", dec["contrastive"], test.images, emb["gallery"], gallery,
                           ev.show)
        if history:
            ev_rows = [h for h in history if "val_top1" in h]
            plot_loss_curves(run_dir / "loss_curve.png", {"train loss": ([h["epoch"] for h in history],
                                                                         [h["loss"] for h in history]),
                                                          "validation loss": ([h["epoch"] for h in ev_rows],
                                                                              [h["val_loss"] for h in ev_rows])},
                             title=f"mindvis-align ({cfg.decoder.name})")
        t1 = report.get("test", {}).get("top1_brain_to_image", {})
        print(f"\nalign done ({cfg.decoder.name} -> {cfg.target}): test top-1 brain->image "
              f"{_fmt(t1.get('value'))} (chance {_fmt(t1.get('chance'))}); {selection}\nrun folder: {run_dir}",
              flush=True)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return report
