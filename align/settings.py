"""Every setting of ``mindvis-align`` checked before anything runs."""
from __future__ import annotations

from omegaconf import DictConfig

from mindvis.config import MIXED_PRECISIONS, TRACKERS, check_settings, check_unused
from mindvis.data.fmri import PAD_MODES
from mindvis.finetune.config import DATASETS, MEEG_DATASETS
from mindvis.models.brain_module_config import AGGREGATIONS
from mindvis.models.image_embedders import valid_target

from .config import CONTRASTIVE, DECODERS, LR_SCHEDULES, AlignConfig

VECTOR_AGGREGATIONS = tuple(a for a in AGGREGATIONS if a != "none")


#: settings of the shared data schema that mindvis-align never reads (mindvis-finetune's image augmentation, its
#: image size and loader workers): setting one is refused, not silently ignored
UNUSED = {"data.zero_voxels": "mindvis-finetune's voxel dropout", "data.crop_ratio": "mindvis-finetune's image crop",
          "data.crop_p": "mindvis-finetune's image crop", "data.image_size": "mindvis-finetune's image size",
          "data.num_workers": "mindvis-finetune's data loader"}


def validate(cfg: DictConfig, prefix: str = "") -> None:
    """Every setting checked before anything runs; a ConfigError names the key (after ``prefix``, e.g. ``cell.``
    for a scaling study's cells), the value and what is allowed."""
    check_unused(cfg, AlignConfig, UNUSED, "mindvis-align", prefix)
    d, lo, t = cfg.decoder, cfg.loss, cfg.train
    da = cfg.data
    meeg = cfg.data.dataset in MEEG_DATASETS
    bm = d.brain_module
    checks = [
        (d.name != "brain-module" or meeg, "decoder.name", d.name,
         f"ridge, mlp or mbm for fMRI (brain-module reads M/EEG: data.dataset {MEEG_DATASETS})"),
        (d.name != "mbm" or not meeg, "decoder.name", d.name, "ridge, mlp or brain-module for M/EEG (mbm reads fMRI)"),
        (bm.aggregation in VECTOR_AGGREGATIONS, "decoder.brain_module.aggregation", bm.aggregation,
         f"one of {VECTOR_AGGREGATIONS} (none is brainmagick's time-resolved output; align decodes one vector per trial)"),
        (min(bm.merger_channels, bm.fourier_harmonics, bm.hidden, bm.features, bm.depth, bm.kernel_size,
             bm.dilation_growth) > 0 and min(bm.blocks, bm.dilation_period, bm.glu, bm.glu_context) >= 0
         and bm.glu_dilation > 0 and bm.kernel_size % 2 == 1 and (bm.initial_linear is None or bm.initial_linear >= 0)
         and bm.fourier_margin >= 0 and 0 <= bm.spatial_dropout < 1 and 0 <= bm.channel_dropout < 1
         and 0 <= bm.conv_dropout < 1 and 0 <= bm.dropout_input < 1, "decoder.brain_module",
         dict(bm), "positive sizes, an odd kernel_size, dropouts and radii in [0, 1)"),
        (cfg.windows.length >= 0 and cfg.windows.step > 0, "windows.length/step", (cfg.windows.length, cfg.windows.step),
         "length >= 0 (0: off), step > 0"),
        (cfg.windows.length == 0 or meeg, "windows.length", cfg.windows.length, "0 for fMRI (windows cut M/EEG time)"),
        (valid_target(cfg.target), "target", cfg.target,
         "an embedding space (unknown target space otherwise): clip:SRC, dinov2:SRC, timm:NAME, synthetic, or the "
         "token spaces clip-vit-l-14-tokens:SRC, openclip-bigg-14-tokens:SRC, synthetic-tokens"),
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
        (t.patience >= 0, "train.patience", t.patience, ">= 0 (0: no early stopping)"),
        (t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", t.lr_schedule, f"one of {LR_SCHEDULES}"),
        (t.mixed_precision in MIXED_PRECISIONS, "train.mixed_precision", t.mixed_precision, f"one of {MIXED_PRECISIONS}"),
        (t.tracker in TRACKERS, "train.tracker", t.tracker, f"one of {TRACKERS}"),
        (cfg.eval.mindeye_subset >= 2 and cfg.eval.mindeye_draws >= 1 and cfg.eval.show >= 0,
         "eval.mindeye_subset/mindeye_draws/show", (cfg.eval.mindeye_subset, cfg.eval.mindeye_draws, cfg.eval.show),
         "subset >= 2, draws >= 1, show >= 0"),
        (da.dataset in DATASETS + MEEG_DATASETS, "data.dataset", da.dataset, f"one of {DATASETS + MEEG_DATASETS}"),
        (da.pad_mode in PAD_MODES, "data.pad_mode", da.pad_mode, f"one of {PAD_MODES}"),
        (da.god_layout in ("mindvis", "bdata"), "data.god_layout", da.god_layout, "mindvis or bdata"),
        (da.nsd_train_trials in ("single", "average"), "data.nsd_train_trials", da.nsd_train_trials,
         "single or average"),
        (0 <= da.val_fraction < 1, "data.val_fraction", da.val_fraction, "in [0, 1)"),
        (da.max_train >= 0, "data.max_train", da.max_train, ">= 0 (0: all training pairs)"),
        (da.meeg_subject >= 1, "data.meeg_subject", da.meeg_subject, ">= 1"),
    ]
    from .mindeye_settings import mindeye_checks

    check_settings([(ok, prefix + key, value, allowed) for ok, key, value, allowed in checks + mindeye_checks(cfg)])
