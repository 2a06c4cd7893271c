"""``mindvis-pretrain``: stage A of MinD-Vis, SC-MBM pretraining (A1) or tuning on a target dataset (A2)."""
from __future__ import annotations

import argparse
import sys

from mindvis.config import resolve_run_config
from mindvis.training import add_run_arguments, run_training_command
from mindvis.utils.cli import PlainHelpFormatter

from .config import DATA_SOURCES, PretrainConfig
from .engine import pretrain

EPILOG = """\
overrides: any config key as key=value, e.g. train.batch_size=200 data.window_frames=12
  model.*   SC-MBM architecture (patch_size, embed_dim, depth, num_heads, decoder_*, mlp_ratio, mask_ratio)
  data.*    source, path, roi, subjects, window_frames, pad_mode (exact|original), aug_times, zero_voxels,
            include_god, god_path, god_subjects, god_include_test, holdout_subjects, holdout_fraction,
            fit_to_init, cache_dir, num_workers, synthetic.* (the synthetic world's size and noise)
  train.*   batch_size, epochs, warmup_epochs, lr, min_lr, weight_decay, betas, clip_grad, accum_iter,
            mixed_precision (no|fp16|bf16), seed, checkpoint_every, keep_checkpoints, plot_samples,
            tracker (none|tensorboard|wandb)
Unknown keys and wrong types are errors. --print-config shows every key with its value.

examples:
  mindvis-pretrain --data synthetic                         # the synthetic world, minutes on a CPU
  mindvis-pretrain --data hcp --data-path data/HCP/npz      # the paper's stage A1
  accelerate launch --multi_gpu --num_processes 8 -m mindvis.pretrain.cli --data hcp --data-path DIR
  mindvis-pretrain --data god --data-path data/Kamitani/npz --init runs/pretrain/RUN   # stage A2
  mindvis-pretrain --resume runs/pretrain/RUN               # continue a stopped run
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mindvis-pretrain", description="Stage A of MinD-Vis: SC-MBM pretraining (A1) or tuning on a target dataset (A2).", epilog=EPILOG,
        formatter_class=PlainHelpFormatter)
    p.add_argument("--data", dest="selection", choices=DATA_SOURCES, default=None,
                   help="fMRI source: hcp (HCP resting state), god / nsd (GOD fMRI, NSD trials from mindvis-prep nsd: "
                        "stage A2), synthetic (the synthetic "
                        "world's resting state, generated on first use), synthetic-god (its GOD-like fMRI). "
                        "Sets data.source and, without --config, the matching preset. Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets data.path); not needed for synthetic")
    p.add_argument("--init", metavar="CKPT",
                   help="start from an SC-MBM (stage A2): a mindvis run or model folder, or an original .pth")
    add_run_arguments(p, "pretrain")
    return p


def resolve_config(args):
    return resolve_run_config(PretrainConfig, "pretrain", args, "data.source",
                              {"data.path": args.data_path, "init": args.init, "output_dir": args.output_dir})


def main(argv=None) -> int:
    return run_training_command("mindvis-pretrain", build_parser().parse_intermixed_args(argv), resolve_config, pretrain)


if __name__ == "__main__":
    sys.exit(main())
