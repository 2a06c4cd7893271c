"""MindEye1 and MindEye2 runs of ``mindvis-align`` (``decoder.name=mindeye1|mindeye2``, the ``--recipe`` presets):
the data of every subject, the token targets, the networks and prior, training (align/mindeye_training.py),
test-time decoding and the report; and scoring an existing MindEye folder (``mindvis-align --score RUN``: a
trained run or a ``mindvis-convert from-mindeye1/2`` folder).

A MindEye run folder (and a converted one) holds::

    config.yaml      the resolved AlignConfig (decoder.name mindeye1 | mindeye2, the recipe's settings)
    model/           mindeye.json {"family", "components": {name: class}, "parameters", "subjects", ...}
                     network/ (MindEye1Network | MindEye2Network), prior/ (MindEyePrior), [lowlevel/ (MindEye1LowLevel)]
                     each a save_pretrained folder (config.json + model.safetensors); mindvis.compat.mindeye.load_converted
                     reads it
    best/            the same layout, the validation-selected epoch (mindeye.select=validation only)
    retrieval.json / retrieval.md, test_embeddings.npz, retrieval_top5.png, averaging.png, loss_curve.png,
    checkpoints/, train.log
    scores/NAME/     what ``mindvis-align --score`` writes (never over an existing NAME)

``test_embeddings.npz``: ``contrastive`` and ``target`` (N, T * D) flattened (what retrieval compares, as
``mindvis-eval --suite nsd --embeddings`` reads), ``regression`` (N, T, D) the backbone's tokens (the prior's
condition), ``prior`` (N, T, D) the prior's sampled image tokens (what an image generator is conditioned on),
``blurry`` (MindEye2's low-level latents) and ``ids``; token arrays in float16. An image pipeline (unCLIP /
Versatile Diffusion conditioned on ``prior``, img2img from ``blurry``) can be added on this layout.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mindvis.config import ConfigError, check_settings, save_config
from mindvis.data.fmri import DataError
from mindvis.data.pairs import TRIAL_MARK, PairedSplit
from mindvis.finetune.data import StageBData, build_stage_b_data, synthetic_world
from mindvis.finetune.config import MEEG_DATASETS
from mindvis.models.image_embedders import TOKEN_KINDS, ImageEmbedder, cached_embeddings, load_embedder
from mindvis.training import start_run
from mindvis.utils.io import atomic_dir, atomic_write, atomic_write_json, atomic_write_text
from mindvis.utils.plots import plot_loss_curves

from .config import MINDEYE_DECODERS
from .mindeye_training import (SubjectTrials, Teacher, average_fmri, average_outputs, build_network, decode_outputs,
                               image_groups, load_model_folder, prior_config, retrieval_top, sample_prior,
                               save_model_folder, train_mindeye)
from .reports import _fmt, markdown_report, plot_averaging, retrieval_grid
from .scoring import score_split

log = logging.getLogger("mindvis.align")



# ------------------------------------------------------------------------------------------------ settings


def mindeye_checks(cfg: DictConfig) -> list:
    """Rules (ok, key, value, allowed) for the MindEye settings (align/settings.py runs them)."""
    me, d, t = cfg.mindeye, cfg.decoder, cfg.train
    if d.name not in MINDEYE_DECODERS:
        return [(not me.subjects and not me.init, "mindeye.subjects/init", (list(me.subjects), me.init),
                 "empty unless decoder.name is mindeye2")]
    me2 = d.name == "mindeye2"
    return [
        (cfg.data.dataset not in MEEG_DATASETS, "decoder.name", d.name, "ridge, mlp or brain-module for M/EEG "
                                                                        "(MindEye reads fMRI)"),
        (cfg.target == "synthetic-tokens" or cfg.target.partition(":")[0] in TOKEN_KINDS, "target", cfg.target,
         "a token space for MindEye: clip-vit-l-14-tokens:SRC, openclip-bigg-14-tokens:SRC or synthetic-tokens"),
        (cfg.loss.contrastive == "mindeye", "loss.contrastive", cfg.loss.contrastive,
         "mindeye for the MindEye recipes (BiMixCo for loss.mixup_fraction of the epochs, then SoftCLIP; 0 or 1 "
         "gives one of them alone)"),
        (cfg.data.dataset != "nsd" or cfg.data.nsd_train_trials == "single", "data.nsd_train_trials",
         cfg.data.nsd_train_trials, "single for the MindEye recipes (they read every trial)"),
        (me2 or (not me.subjects and not me.init), "mindeye.subjects/init", (list(me.subjects), me.init),
         "empty for mindeye1 (multiple subjects and new-subject fine-tuning are MindEye2's)"),
        (not me.subjects or cfg.data.dataset == "nsd", "mindeye.subjects", list(me.subjects),
         "prepared NSD folders, with data.dataset=nsd"),
        (me.onecycle_warmup_epochs < t.epochs, "train.epochs", t.epochs,
         "> mindeye.onecycle_warmup_epochs (OneCycle's pct_start = warmup / epochs must stay below 1)"),
        (t.batch_size >= 2 * (1 + len(me.subjects)), "train.batch_size", t.batch_size,
         f">= 2 per subject ({1 + len(me.subjects)} subjects: every subject's share is batch_size // subjects)"),
        (min(me.hidden, me.blocks + 1, me.projector_hidden, me.prior_depth, me.prior_dim_head, me.prior_timesteps) > 0,
         "mindeye.hidden/blocks/projector_hidden/prior_*", (me.hidden, me.blocks, me.prior_depth, me.prior_dim_head),
         "positive sizes"),
        (0 <= me.prior_cond_drop < 1 and me.prior_embed_scale >= 0 and me.prior_sample_steps >= 0,
         "mindeye.prior_cond_drop/prior_embed_scale/prior_sample_steps",
         (me.prior_cond_drop, me.prior_embed_scale, me.prior_sample_steps), "drop in [0, 1), scale and steps >= 0"),
        (min(me.clip_scale, me.prior_scale, me.blur_scale, me.blurry_contrastive_weight) >= 0,
         "mindeye.*_scale", (me.clip_scale, me.prior_scale, me.blur_scale), ">= 0"),
        (0 < me.softclip_start and 0 < me.softclip_end and me.blurry_temperature > 0, "mindeye.softclip_start/end",
         (me.softclip_start, me.softclip_end), "> 0"),
        (me.final_div_factor > 0 and me.onecycle_warmup_epochs > 0, "mindeye.final_div_factor/onecycle_warmup_epochs",
         (me.final_div_factor, me.onecycle_warmup_epochs), "> 0"),
        (me.repetitions in ("cycle", "average"), "mindeye.repetitions", me.repetitions, "cycle or average"),
        (me.test_average in ("outputs", "fmri"), "mindeye.test_average", me.test_average, "outputs or fmri"),
        (me.select in ("last", "validation"), "mindeye.select", me.select, "last (the references) or validation"),
        (me.select == "last" or cfg.data.val_fraction > 0, "data.val_fraction", cfg.data.val_fraction,
         "> 0 with mindeye.select=validation (validation is carved from training)"),
        (me.finetune in ("full", "adapter"), "mindeye.finetune", me.finetune, "full (the reference) or adapter"),
        (me.finetune == "full" or me.init, "mindeye.finetune", me.finetune,
         "full unless mindeye.init names a model to fine-tune"),
        (me.blurry_teacher in ("", "synthetic"), "mindeye.blurry_teacher", me.blurry_teacher,
         "synthetic (the world's classifier) or empty (the blurry contrastive term off)"),
        (min(me.blurry_channels, me.blurry_side, me.blurry_norm_groups, me.blurry_maps_hidden, me.blurry_maps_dim,
             me.blurry_image_size) > 0 and len(me.blurry_decoder_channels) > 0, "mindeye.blurry_*",
         (me.blurry_channels, me.blurry_side, list(me.blurry_decoder_channels)), "positive sizes"),
    ]


# ------------------------------------------------------------------------------------------------ data


def _subject_config(cfg: DictConfig, path: str | None, val_fraction: float | None = None) -> DictConfig:
    import copy

    data = copy.deepcopy(cfg.data)
    if path is not None:
        data.path = path
    if val_fraction is not None:
        data.val_fraction = val_fraction
    return data


def load_subject(cfg: DictConfig, path: str | None = None, val_fraction: float | None = None) -> StageBData:
    """A subject's pairs with MindEye's voxel counts (no padding to a patch size)."""
    return build_stage_b_data(_subject_config(cfg, path, val_fraction), 1, cfg.train.seed)


def token_embedder(cfg: DictConfig) -> ImageEmbedder:
    return load_embedder(cfg.target, synthetic_world(cfg.data), cfg.data.cache_dir or None)


def _embed(embedder: ImageEmbedder, images: np.ndarray, cfg: DictConfig) -> np.ndarray:
    world = synthetic_world(cfg.data)
    key = str(world.image_settings()) if world else ""
    return cached_embeddings(embedder, images, cfg.data.cache_dir or None, key, mmap=True)


def blurry_embedder(cfg: DictConfig) -> ImageEmbedder | None:
    """Targets of MindEye2's low-level branch: Stable Diffusion VAE latents (``mode() * 0.18215`` of the image in
    [-1, 1] at ``blurry_image_size``, as MindEye2) or, for the synthetic world (no VAE), ``pixels``: the image
    itself at the decoder's output size (4 x blurry_side) in [-1, 1]."""
    import torch.nn.functional as F

    me = cfg.mindeye
    if cfg.decoder.name != "mindeye2" or not me.blurry:
        return None
    if me.blurry_target == "pixels":
        side = 4 * me.blurry_side
        resize = lambda x: F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        return ImageEmbedder(f"pixels-{side}", lambda x: x.clamp(0, 1) * 2 - 1, side, (0, 0, 0), (1, 1, 1),
                             preprocess=resize)
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(me.blurry_target, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise DataError(f"mindeye.blurry_target {me.blurry_target}: not a diffusers AutoencoderKL folder "
                        f"({str(e).splitlines()[0]})") from None
    size = me.blurry_image_size
    resize = lambda x: F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return ImageEmbedder(f"sd-vae-latents-{size}:{me.blurry_target}",
                         lambda x: vae.encode(2 * x.clamp(0, 1) - 1).latent_dist.mode() * 0.18215, size,
                         (0, 0, 0), (1, 1, 1), batch_size=16, preprocess=resize)


def blurry_teacher(cfg: DictConfig) -> Teacher | None:
    """Feature maps for the low-level branch's contrastive term. ``synthetic``: the world's classifier's last
    feature map (8 x 8 x 128 at 32 px). MindEye2's own teacher (MedARC's ConvNeXt-XL with a 2048 -> 512 MLP) is
    not available in mindvis: with an empty ``blurry_teacher`` the term is left out (and said so in the log)."""
    me = cfg.mindeye
    if cfg.decoder.name != "mindeye2" or not me.blurry or not me.blurry_teacher:
        return None
    import torch.nn.functional as F

    from mindvis.evaluation.classifiers import synthetic_classifier

    world = synthetic_world(cfg.data)
    if world is None:
        raise DataError("mindeye.blurry_teacher=synthetic needs data from the synthetic world")
    clf = synthetic_classifier(world, 32, cfg.data.cache_dir or None).eval()
    spatial = clf.net.body[:-2]

    def fn(x):
        x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return spatial((x - 0.5) / 0.5).flatten(2).transpose(1, 2)

    return Teacher("synthetic", fn)


def subject_trials(split: PairedSplit, targets_fn, name: str, blurry_fn=None) -> SubjectTrials:
    first, image_of_trial = image_groups(split.ids)
    images = split.images[first]
    return SubjectTrials(name, split.fmri, image_of_trial, targets_fn(images), images,
                         blurry_fn(images) if blurry_fn else None)


def test_groups(test: PairedSplit) -> tuple[PairedSplit, np.ndarray, list[np.ndarray], bool]:
    """(the repetition-averaged test rows, fMRI rows to decode, per test image its rows in repetition order, whether
    those are single trials). Without single trials the averaged rows are the groups (one row each)."""
    avg_idx = [i for i, s in enumerate(test.ids) if TRIAL_MARK not in s]
    avg = test.subset(avg_idx)
    trial_rows: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(test.ids):
        if TRIAL_MARK in s:
            stim, rep = s.split(TRIAL_MARK)
            trial_rows.setdefault(stim, []).append((int(rep) if rep.isdigit() else 0, i))
    if trial_rows and all(s in trial_rows for s in avg.ids):
        rows = test.fmri
        groups = [np.array([i for _, i in sorted(trial_rows[s])]) for s in avg.ids]
        return avg, rows, groups, True
    return avg, avg.fmri, [np.array([i]) for i in range(len(avg))], False


def val_groups(val: PairedSplit) -> tuple[PairedSplit, list[np.ndarray]]:
    """Validation carved from training: single trials grouped by image (first row per image as the item)."""
    first, image_of_trial = image_groups(val.ids)
    groups = [np.nonzero(image_of_trial == k)[0] for k in range(len(first))]
    return val.subset(first), groups


def decode_items(family: str, network, rows: np.ndarray, groups: list[np.ndarray], average: str,
                 first: int | None = None) -> dict:
    """Per-item outputs: fMRI of each item's rows averaged then decoded (``fmri``, MindEye1), or every row decoded
    and the outputs averaged (``outputs``, MindEye2)."""
    if average == "fmri":
        return decode_outputs(family, network, average_fmri(rows, groups, first))
    return average_outputs(family, network, rows, groups, first=first)


# ------------------------------------------------------------------------------------------------ scoring


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).reshape(len(a), -1)


def score_test(cfg: DictConfig, family: str, network, prior, test: PairedSplit, targets: np.ndarray,
               blurry_targets: np.ndarray | None, run_dir: Path) -> dict:
    """Decode the test set (MindEye's averaging), score retrieval of the contrastive head and of the prior's
    samples, the averaging curve; write test_embeddings.npz and retrieval_top5.png. Returns the report's parts."""
    me, ev = cfg.mindeye, cfg.eval
    avg, rows, groups, singles = test_groups(test)
    average = me.test_average if singles else "fmri"
    if me.test_average == "outputs" and not singles:
        log.warning("the test split has no single trials (data.include_test_trials=false): decoding the "
                    "repetition-averaged fMRI instead of averaging the outputs of every repetition")
    dec = decode_items(family, network, rows, groups, average)
    tgt = _flat(targets)
    out = {"test": score_split({"contrastive": _flat(dec["contrastive"]), "regression": _flat(dec["regression"])},
                               tgt, ev, cfg.train.seed),
           "test_items": len(avg), "test_average": ("model outputs of every repetition averaged" if average == "outputs"
                                                     else "fMRI averaged over the repetitions, then decoded")}
    arrays = {"contrastive": _flat(dec["contrastive"]).astype(np.float16), "target": tgt.astype(np.float16),
              "regression": dec["regression"].astype(np.float16), "ids": np.array(avg.ids)}
    if prior is not None and me.prior_sample_test:
        t0 = time.time()
        samples = sample_prior(prior, dec["regression"], cfg.train.seed)
        out["test_prior"] = score_split({"contrastive": _flat(samples), "regression": _flat(samples)}, tgt, ev,
                                        cfg.train.seed)
        out["prior_sampler"] = (f"{prior.config.sample_steps} "
                                f"{'ancestral DDPM' if prior.config.sample_steps >= prior.config.timesteps else 'strided DDIM'}"
                                f" steps, {time.time() - t0:.1f} s")
        arrays["prior"] = samples.astype(np.float16)
    if "blurry" in dec:
        arrays["blurry"] = dec["blurry"].astype(np.float32)
        if blurry_targets is not None:
            bt = np.asarray(blurry_targets, dtype=np.float32)
            out["test_blurry"] = {"l1": float(np.abs(dec["blurry"] - bt).mean()),
                                  "pixel_correlation": float(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1]
                                                                      for a, b in zip(dec["blurry"], bt)]))}
    counts = {len(g) for g in groups}
    curve = []
    if singles and len(counts) == 1 and counts.pop() > 1:
        for r in range(1, len(groups[0]) + 1):
            d = decode_items(family, network, rows, groups, average, first=r)
            curve.append({"repetitions": r, **{k: v for k, v in retrieval_top(d["contrastive"], targets).items()}})
        plot_averaging(run_dir / "averaging.png", curve)
    out["averaging"] = curve
    atomic_write(run_dir / "test_embeddings.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    retrieval_grid(run_dir / "retrieval_top5.png", _flat(dec["contrastive"]), avg.images, tgt, avg.images, ev.show,
                   own=np.arange(len(avg)))
    return out


def mindeye_markdown(report: dict) -> str:
    text = markdown_report(report)
    extra = []
    if "test_prior" in report:
        extra += ["", f"## test, the diffusion prior's samples ({report.get('prior_sampler', '')}) against the targets",
                  "", "| metric | value | std | chance |", "|---|---|---|---|"]
        for name, m in report["test_prior"].items():
            extra.append(f"| {name} | {_fmt(m['value'])} | {_fmt(m.get('std'))} | {_fmt(m['chance'])} |")
    if "test_blurry" in report:
        b = report["test_blurry"]
        extra += ["", f"low-level branch on the test set: L1 {b['l1']:.4f}, pixel correlation "
                      f"{b['pixel_correlation']:.4f}"]
    extra += ["", f"test-time averaging: {report.get('test_average')}"]
    return text + "\n".join(extra) + "\n"


def _write_report(report: dict, run_dir: Path) -> None:
    atomic_write_json(run_dir / "retrieval.json", report)
    atomic_write_text(run_dir / "retrieval.md", mindeye_markdown(report))


def _print_done(report: dict, run_dir: Path) -> None:
    t1 = report.get("test", {}).get("top1_brain_to_image", {})
    p1 = report.get("test_prior", {}).get("top1_brain_to_image", {})
    prior = f"; prior samples {_fmt(p1.get('value'))}" if p1 else ""
    print(f"\nalign done ({report['decoder']} -> {report['target']}): test top-1 brain->image "
          f"{_fmt(t1.get('value'))} (chance {_fmt(t1.get('chance'))}){prior}; {report['selection']}\n"
          f"run folder: {run_dir}", flush=True)


# ------------------------------------------------------------------------------------------------ training runs


def _init_network(cfg: DictConfig, subjects: list[SubjectTrials], tokens: int, dim: int, blurry_channels: int):
    """(network, prior, note): fresh from the settings, or (mindeye.init) a MindEye2 model, its sizes kept, whose
    subjects are replaced by this run's: the reference's new-subject loading keeps every weight except the adapters'
    weights (a new adapter's bias starts as the model's first adapter's bias, as its ``load_ckpt(...,
    multisubj_loading=True)`` leaves it)."""
    import dataclasses

    from mindvis.models.mindeye2 import MindEye2Network
    from mindvis.models.mindeye_prior import MindEyePrior

    me, family = cfg.mindeye, cfg.decoder.name
    names = [s.name for s in subjects]
    voxels = [s.num_voxels for s in subjects]
    if not me.init:
        network = build_network(me, family, voxels, tokens, dim, names, blurry_channels)
        prior = MindEyePrior(prior_config(me, family, tokens, dim)) if me.prior else None
        return network, prior, "trained from a random initialisation"
    src = Path(me.init)
    src = src / "model" if (src / "model" / "mindeye.json").is_file() else src
    saved = load_model_folder(src)
    if saved["family"] != "mindeye2":
        raise DataError(f"mindeye.init {me.init}: a {saved['family']} model; new-subject fine-tuning loads MindEye2")
    old = saved["network"]
    if (old.config.tokens, old.config.clip_dim) != (tokens, dim):
        raise DataError(f"mindeye.init {me.init}: its network outputs {old.config.tokens} x {old.config.clip_dim} "
                        f"tokens, target={cfg.target} gives {tokens} x {dim}")
    network = MindEye2Network(dataclasses.replace(old.config, num_voxels=voxels, subjects=names))
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("adapters.")}
    fresh = network.state_dict()
    for k in range(len(network.adapters)):
        state[f"adapters.{k}.weight"] = fresh[f"adapters.{k}.weight"]
        state[f"adapters.{k}.bias"] = old.adapters[0].bias.detach().clone()
    network.load_state_dict(state)
    prior = None
    if me.prior:
        if saved["prior"] is None:
            raise DataError(f"mindeye.init {me.init}: the model has no prior (set mindeye.prior=false)")
        prior = saved["prior"]
    if me.finetune == "adapter":
        for name, p in network.named_parameters():
            p.requires_grad_(name.startswith("adapters."))
        if prior is not None:
            prior.requires_grad_(False)
    return network, prior, (f"fine-tuned from {me.init} as a new subject "
                            f"({'every parameter' if me.finetune == 'full' else 'the adapter alone'} trained; sizes "
                            "of the saved model)")


def align_mindeye(cfg: DictConfig, resume: str | Path | None = None, run_name: str | None = None) -> dict:
    """A MindEye1 / MindEye2 run: train with the recipe, test once, report (see the module docstring)."""
    t0 = time.time()
    tc, me, family = cfg.train, cfg.mindeye, cfg.decoder.name
    check_settings([(family != "mindeye2" or not me.blurry or me.blurry_target, "mindeye.blurry_target",
                     me.blurry_target, "a diffusers AutoencoderKL folder (Stable Diffusion's VAE) or pixels (the "
                                       "synthetic world), or mindeye.blurry=false")])
    accelerator, run_dir, main = start_run(tc, cfg.output_dir, resume, run_name, "mindvis.align")
    target = load_subject(cfg)
    others = [load_subject(cfg, p, 0.0) for p in me.subjects]
    log.info("data: %s", target.description)
    for p, o in zip(me.subjects, others):
        log.info("subject %s: %s", p, o.description)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    embedder = token_embedder(cfg)
    emb = lambda images: _embed(embedder, images, cfg)
    blur_emb = blurry_embedder(cfg)
    blur = (lambda images: _embed(blur_emb, images, cfg)) if blur_emb is not None else None
    names = [cfg.data.path or cfg.data.dataset] + list(me.subjects)
    subjects = [subject_trials(s.train, emb, n, blur) for s, n in zip([target] + others, names)]
    tokens, dim = subjects[0].targets.shape[1:] if subjects[0].targets.ndim == 3 else (1, subjects[0].targets.shape[1])
    if subjects[0].targets.ndim == 2:
        raise ConfigError(f"target={cfg.target} gives pooled vectors; MindEye regresses tokens: use "
                          "clip-vit-l-14-tokens:SRC, openclip-bigg-14-tokens:SRC or synthetic-tokens")
    blur_channels = int(subjects[0].blurry.shape[1]) if subjects[0].blurry is not None else 4
    teacher = blurry_teacher(cfg)
    torch.manual_seed(tc.seed)  # the initialisation does not depend on what ran before (a cached target, say)
    network, prior, how = _init_network(cfg, subjects, tokens, dim, blur_channels)
    _check_blurry(network, subjects[0], teacher)
    if family == "mindeye2" and me.blurry and teacher is None:
        log.warning("the low-level branch's contrastive term is off (mindeye.blurry_teacher is empty: MindEye2's "
                    "ConvNeXt-XL teacher is not available in mindvis); its L1 term trains")
    counts = {"network": sum(p.numel() for p in network.parameters()),
              "prior": sum(p.numel() for p in prior.parameters()) if prior is not None else 0}
    log.info("%s: network %.2fM parameters, prior %.2fM; %s; %d subject(s); targets %s (%d x %d)", family,
             counts["network"] / 1e6, counts["prior"] / 1e6, how, len(subjects), cfg.target, tokens, dim)
    extra = {"subjects": names, "target": cfg.target}
    save_fn = lambda folder, net, pr: save_model_folder(folder, family, net, pr, extra=extra)
    val_fn = validation_scorer(family, target.val, emb, me) if len(target.val) >= 2 else None
    online = embedder.to(accelerator.device) if me.image_augment else None
    network, prior, history, best = train_mindeye(cfg, family, subjects, network, prior, accelerator, run_dir, main,
                                                  bool(resume), val_fn, teacher, save_fn, online)
    embedder.to("cpu")
    report = {}
    if main:
        save_fn(run_dir / "model", network, prior)
        if me.select == "validation" and (run_dir / "best" / "mindeye.json").is_file():
            sel = load_model_folder(run_dir / "best")
            network, prior = sel["network"], sel["prior"]
            selection = f"epoch {best['epoch']} of {tc.epochs} by {tc.select_metric} on validation"
        else:
            best = {"epoch": tc.epochs}
            selection = f"the last epoch ({tc.epochs}), as the reference"
        test, _ = _test_split(target)
        test_items = test_groups(test)[0]
        tgt = emb(test_items.images)
        blur_t = blur(test_items.images) if blur is not None else None
        if val_fn is not None:
            items = val_groups(target.val)[0]
            report["val"] = score_split(_val_scores(family, network, target, me), _flat(emb(items.images)), cfg.eval,
                                        tc.seed)
            report["val_items"] = len(items)
        report |= score_test(cfg, family, network, prior, test, tgt, blur_t, run_dir)
        report |= {"decoder": family, "target": cfg.target, "data": target.description,
                   "subjects": names, "initialisation": how, "selection": selection, "selected_epoch": best["epoch"],
                   "parameters": counts, "seconds": round(time.time() - t0, 1), "history": history}
        _write_report(report, run_dir)
        if history:
            plot_loss_curves(run_dir / "loss_curve.png", {"train loss": ([h["epoch"] for h in history],
                                                                         [h["loss"] for h in history])},
                             title=f"mindvis-align ({family})")
        _print_done(report, run_dir)
    accelerator.wait_for_everyone()
    if tc.tracker != "none":
        accelerator.end_training()
    return report


def validation_scorer(family: str, val: PairedSplit, emb, me: DictConfig):
    """``(network, prior) -> {"val_top1", "val_top5", "val_correlation", "val_loss"}`` on validation carved from
    training (each image's trials grouped as at test time); val_loss is SoftCLIP at the last temperature."""
    from mindvis.contrastive import soft_clip_loss
    from mindvis.evaluation.retrieval import embedding_correlation

    items, groups = val_groups(val)
    targets = torch.from_numpy(_flat(emb(items.images)))

    def scores(net, pr):
        d = decode_items(family, net, val.fmri, groups, me.test_average)
        pred = torch.from_numpy(_flat(d["contrastive"]))
        r = retrieval_top(d["contrastive"], targets.numpy())
        return {"val_top1": r["top1"], "val_top5": r["top5"],
                "val_correlation": embedding_correlation(torch.from_numpy(_flat(d["regression"])), targets),
                "val_loss": float(soft_clip_loss(pred, targets, me.softclip_end))}

    return scores


def _val_scores(family, network, target: StageBData, me) -> dict:
    _, groups = val_groups(target.val)
    d = decode_items(family, network, target.val.fmri, groups, me.test_average)
    return {"contrastive": _flat(d["contrastive"]), "regression": _flat(d["regression"])}


def _test_split(data: StageBData) -> tuple[PairedSplit, None]:
    if len([s for s in data.test.ids if TRIAL_MARK not in s]) < 2:
        raise DataError("the test split has fewer than 2 images")
    return data.test, None


def _check_blurry(network, subject: SubjectTrials, teacher: Teacher | None) -> None:
    """The low-level targets and teacher must fit the branch's output (one-line error otherwise)."""
    if not getattr(network.config, "blurry_recon", False) or subject.blurry is None:
        return
    c = network.config
    with torch.no_grad():
        trunk = torch.zeros(1, c.hidden * c.seq_len)
        latents, maps = network.forward_blurry(trunk)
    if tuple(latents.shape[1:]) != tuple(subject.blurry.shape[1:]):
        raise ConfigError(f"mindeye.blurry_*: the low-level branch outputs {tuple(latents.shape[1:])} but its targets "
                          f"are {tuple(subject.blurry.shape[1:])} (the decoder upsamples blurry_side 4x)")
    if teacher is not None:
        img = torch.from_numpy(np.ascontiguousarray(subject.images[:1])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            t = teacher.fn(img)
        if tuple(t.shape[1:]) != tuple(maps.shape[1:]):
            raise ConfigError(f"mindeye.blurry_teacher={teacher.name} gives feature maps {tuple(t.shape[1:])}, the "
                              f"branch's maps are {tuple(maps.shape[1:])} (set mindeye.blurry_side and blurry_maps_dim)")


# ------------------------------------------------------------------------------------------------ scoring a folder


def score_folder(cfg: DictConfig, run: str | Path, name: str | None = None) -> dict:
    """``mindvis-align --score RUN``: decode the test set of ``cfg``'s data with RUN's MindEye model (a trained run
    or a mindvis-convert folder) and write the report into RUN/scores/NAME/ (NAME: date and time by default)."""
    t0 = time.time()
    run = Path(run)
    model_dir = run / "model" if (run / "model" / "mindeye.json").is_file() else run
    saved = load_model_folder(model_dir)
    family = saved["family"]
    if family not in MINDEYE_DECODERS:
        raise DataError(f"{model_dir / 'mindeye.json'}: unknown family {family!r}")
    out = run / "scores" / (name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if out.exists():
        raise FileExistsError(f"{out} exists already: give another --run-name (scores are never replaced)")
    cfg.decoder.name = family
    if not cfg.data.path and cfg.data.dataset == "nsd":
        raise DataError("give the prepared NSD subject to score on: --data-path DIR (mindvis-prep nsd)")
    data = load_subject(cfg, val_fraction=0.0)
    network, prior = saved["network"], saved["prior"]
    voxels = network.config.num_voxels if family == "mindeye1" else network.config.num_voxels[0]
    if data.num_voxels != voxels:
        raise DataError(f"{cfg.data.path}: {data.num_voxels} voxels, but the model's (first) adapter reads "
                        f"{voxels}; score a subject with the model's voxel selection")
    embedder = token_embedder(cfg)
    test_items = test_groups(data.test)[0]
    tgt = _embed(embedder, test_items.images, cfg)
    shape = (network.config.tokens, network.config.clip_dim)
    if tgt.ndim != 3 or tuple(tgt.shape[1:]) != shape:
        raise ConfigError(f"target={cfg.target} gives {tuple(tgt.shape[1:])} per image; the model outputs {shape} "
                          "tokens (MindEye1: clip-vit-l-14-tokens, MindEye2: openclip-bigg-14-tokens)")
    blur_t = None
    if family == "mindeye2" and network.config.blurry_recon and cfg.mindeye.blurry and cfg.mindeye.blurry_target:
        blur_emb = blurry_embedder(cfg)
        blur_t = _embed(blur_emb, test_items.images, cfg) if blur_emb is not None else None
    out.mkdir(parents=True)
    report = score_test(cfg, family, network.eval(), prior.eval() if prior is not None else None, data.test, tgt,
                        blur_t, out)
    report |= {"decoder": family, "target": cfg.target, "data": data.description, "model": str(model_dir),
               "source": saved["meta"].get("source", str(run)), "selection": "the model as saved",
               "selected_epoch": saved["meta"].get("epoch"), "seconds": round(time.time() - t0, 1)}
    save_config(cfg, out / "config.yaml")
    _write_report(report, out)
    _print_done(report, out)
    return report


# ------------------------------------------------------------------------------------------------ released checkpoints


def convert_to_run(family: str, ckpt: str | Path, out: str | Path, lowlevel: str | Path | None = None,
                   subject: int | None = None, data_path: str | None = None, target: str | None = None,
                   overwrite: bool = False) -> str:
    """``mindvis-convert from-mindeye1 / from-mindeye2``: a released checkpoint (read without running pickled code,
    strict key mapping, sizes from the tensors) into a MindEye run folder that ``mindvis-align --score OUT`` scores:
    ``model/`` (the components), ``config.yaml`` (the recipe's preset with the checkpoint's sizes, the data path
    and target space when given). Refuses an existing OUT unless ``overwrite`` (then replaced only once the new
    folder is complete). Returns a one-line summary (the parameter counts)."""
    from mindvis.compat.mindeye import load_mindeye1, load_mindeye2
    from mindvis.config import build_config
    from mindvis.configs import preset_path

    from .config import AlignConfig

    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists already: give --overwrite to replace it (or another folder)")
    if family == "mindeye1":
        ck = load_mindeye1(ckpt)
        if ck.network is None:
            raise DataError(f"{ckpt} is a MindEye1 low-level (autoencoder) checkpoint: give the prior checkpoint "
                            "(prior_*/last.pth) as CKPT and this one as --lowlevel")
        low = None
        if lowlevel:
            low = load_mindeye1(lowlevel).lowlevel
            if low is None:
                raise DataError(f"--lowlevel {lowlevel} is not a MindEye1 low-level (autoencoder) checkpoint")
    else:
        ck, low = load_mindeye2(ckpt, subject=subject), None
    net, prior = ck.network, ck.prior
    c = net.config
    sizes = {"mindeye.hidden": c.hidden, "mindeye.blocks": c.n_blocks}
    if family == "mindeye1":
        sizes["mindeye.projector_hidden"] = c.projector_hidden
    else:
        sizes["mindeye.blurry"] = c.blurry_recon
        if c.blurry_recon:
            sizes |= {"mindeye.blurry_channels": c.blurry_channels, "mindeye.blurry_side": c.blurry_side,
                      "mindeye.blurry_decoder_channels": "[" + ",".join(map(str, c.blurry_decoder_channels)) + "]",
                      "mindeye.blurry_maps_hidden": c.blurry_maps_hidden, "mindeye.blurry_maps_dim": c.blurry_maps_dim}
    if prior is not None:
        pc = prior.config
        sizes |= {"mindeye.prior_depth": pc.depth, "mindeye.prior_dim_head": pc.dim_head,
                  "mindeye.prior_timesteps": pc.timesteps}
    else:
        sizes["mindeye.prior"] = False
    flags = {"data.path": data_path, "target": target}
    overrides = [f"{k}={v}" for k, v in {**sizes, **flags}.items() if v is not None and v != ""]
    cfg = build_config(AlignConfig, preset_path("align", family), overrides)
    extra = {"source": str(ckpt), "epoch": ck.epoch, "subjects": (ck.subjects if family == "mindeye2" else [0]),
             "converted_from": {"checkpoint": str(ckpt), **({"lowlevel": str(lowlevel)} if lowlevel else {}),
                                **({"subject": subject} if subject is not None else {})}}

    def fill(tmp: Path):
        save_model_folder(tmp / "model", family, net, prior, low, extra)
        save_config(cfg, tmp / "config.yaml")

    atomic_dir(out, fill)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("network", net), ("prior", prior), ("lowlevel", low)) if m is not None}
    return (f"{Path(ckpt).name}: {family}, epoch {ck.epoch}, parameters: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + f" (total {sum(counts.values()):,})")
