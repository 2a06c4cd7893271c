"""MindEye1 and MindEye2 runs of ``mindvis-align`` (``decoder.name=mindeye1|mindeye2``, the ``--recipe`` presets):
the networks and prior (fresh, or a MindEye2 model fine-tuned as a new subject), training, validation and the test
once. Its parts: the settings' rules (align/mindeye_settings.py), the data and targets (align/mindeye_data.py),
training (align/mindeye_training.py), test-time decoding, the report and scoring an existing MindEye folder
(align/mindeye_scoring.py), released checkpoints into run folders (align/mindeye_convert.py).

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
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mindvis.config import ConfigError, check_settings, save_config
from mindvis.data.fmri import DataError
from mindvis.data.pairs import TRIAL_MARK, PairedSplit
from mindvis.finetune.data import StageBData
from mindvis.training import start_run
from mindvis.utils.plots import plot_history

from .mindeye_data import (_embed, blurry_embedder, blurry_teacher, decode_items, load_subject, subject_trials,
                           test_groups, token_embedder, val_groups)
from .mindeye_scoring import _flat, _print_done, _write_report, score_test
from .mindeye_batches import SubjectTrials
from .mindeye_decode import retrieval_top
from .mindeye_models import build_network, load_model_folder, prior_config, save_model_folder
from .mindeye_training import Teacher, train_mindeye
from .scoring import score_split

log = logging.getLogger("mindvis.align")


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
            plot_history(run_dir / "loss_curve.png", history, f"mindvis-align ({family})", val_key=None)
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
