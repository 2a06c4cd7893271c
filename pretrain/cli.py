"""``mindvis-pretrain``: stage A of MinD-Vis, SC-MBM pretraining (A1) or tuning on a target dataset (A2)."""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from mindvis.compat.original import OriginalCheckpointError
from mindvis.config import ConfigError, build_config
from mindvis.configs import preset_names, preset_path
from mindvis.data.fmri import DataError

from .config import DATA_SOURCES, PretrainConfig
from .engine import NonFiniteLossError, pretrain

DEFAULT_PRESET = {"hcp": "hcp", "god": "god", "synthetic": "synthetic", "synthetic-god": "synthetic-god"}

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
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=DATA_SOURCES, default=None,
                   help="fMRI source: hcp (HCP resting state), god (GOD fMRI, stage A2), synthetic (the synthetic "
                        "world's resting state, generated on first use), synthetic-god (its GOD-like fMRI). "
                        "Sets data.source and, without --config, the matching preset. Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets data.path); not needed for synthetic")
    p.add_argument("--config", metavar="PRESET",
                   help=f"YAML preset: a file or a shipped name ({', '.join(preset_names('pretrain'))})")
    p.add_argument("--init", metavar="CKPT",
                   help="start from an SC-MBM (stage A2): a mindvis run or model folder, or an original .pth")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint, "
                                                       "with its saved config (overrides still apply)")
    p.add_argument("--output-dir", metavar="DIR", help="parent folder of run folders (sets output_dir)")
    p.add_argument("--run-name", metavar="NAME", help="run folder name (default: date and time)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    return p


def resolve_config(args) -> "OmegaConf":
    overrides = list(args.overrides)
    if args.resume:
        preset = f"{args.resume}/config.yaml"
    else:
        source = args.data or "synthetic"
        preset = str(preset_path("pretrain", args.config or DEFAULT_PRESET[source]))
        overrides = [f"data.source={source}"] * (args.data is not None or args.config is None) + overrides
    if args.data_path:
        overrides.append(f"data.path={args.data_path}")
    if args.init:
        overrides.append(f"init={args.init}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    return build_config(PretrainConfig, preset, overrides)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        pretrain(cfg, resume=args.resume, run_name=args.run_name)
    except (ConfigError, DataError, FileNotFoundError, OriginalCheckpointError) as e:
        print(f"mindvis-pretrain: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mindvis-pretrain: training stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
