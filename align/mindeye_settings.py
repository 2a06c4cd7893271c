"""The rules of the MindEye settings (``decoder.name=mindeye1|mindeye2`` and ``mindeye.*``) that align/settings.py
checks with the rest of mindvis-align's settings."""
from __future__ import annotations

from omegaconf import DictConfig

from mindvis.finetune.config import MEEG_DATASETS
from mindvis.models.image_embedders import TOKEN_KINDS

from .config import MINDEYE_DECODERS


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
