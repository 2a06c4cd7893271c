"""``mindvis-finetune``: stage B of MinD-Vis, fine-tuning a double-conditioned LDM on fMRI-image pairs."""
from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from mindvis.compat.ldm import PriorFormatError
from mindvis.compat.original import OriginalCheckpointError
from mindvis.config import ConfigError, build_config
from mindvis.configs import preset_names, preset_path
from mindvis.data.fmri import DataError
from mindvis.training import NonFiniteLossError

from .config import DATASETS, FinetuneConfig
from .engine import finetune

DEFAULT_PRESET = {"god": "god", "bold5000": "bold5000", "god+bold5000": "god+bold5000", "synthetic": "synthetic"}

EPILOG = """\
overrides: any config key as key=value (mindvis-finetune --print-config lists them all), e.g.
  train.epochs=100 train.batch_size=8 train.unet=all train.train_encoder=false model.time_cond=false
  data.subjects=[sbj_1,sbj_3] data.include_test_trials=true data.val_fraction=0.1
Unknown keys and wrong types are errors.

examples:
  mindvis-finetune --dataset synthetic --encoder runs/pretrain/RUN       # the synthetic world, minutes on a CPU
  mindvis-finetune --dataset god --data-path data/Kamitani/npz --encoder pretrains/GOD/fmri_encoder.pth \\
      --prior pretrains/ldm/label2img                                     # the paper's GOD setting
  mindvis-finetune --dataset bold5000 --data-path data/BOLD5000 --encoder pretrains/BOLD5000/fmri_encoder.pth \\
      --prior pretrains/ldm/label2img
  accelerate launch --multi_gpu --num_processes 4 -m mindvis.finetune.cli --dataset god ...
  mindvis-finetune --resume runs/finetune/RUN
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-finetune", epilog=EPILOG,
                                description="Stage B of MinD-Vis: fine-tune a double-conditioned latent diffusion "
                                            "model on fMRI-image pairs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="pairs to train on; sets data.dataset and, without --config, the matching preset. "
                        "god+bold5000 trains jointly (voxels wrap-padded to the longer dataset; test metrics per "
                        "dataset). Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets data.path)")
    p.add_argument("--encoder", metavar="CKPT", help="stage-A SC-MBM: a mindvis-pretrain run or model folder, an "
                                                     "original .pth, or 'random' (sets model.encoder)")
    p.add_argument("--prior", metavar="DIR", help="pretrained LDM: CompVis folder (config.yaml + model.ckpt) or "
                                                  "diffusers-style folder (sets model.prior)")
    p.add_argument("--config", metavar="PRESET",
                   help=f"YAML preset: a file or a shipped name ({', '.join(preset_names('finetune'))})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--output-dir", metavar="DIR", help="parent folder of run folders (sets output_dir)")
    p.add_argument("--run-name", metavar="NAME", help="run folder name (default: date and time)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
    return p


def resolve_config(args):
    overrides = list(args.overrides)
    if args.resume:
        preset = f"{args.resume}/config.yaml"
    else:
        dataset = args.dataset or "synthetic"
        preset = str(preset_path("finetune", args.config or DEFAULT_PRESET[dataset]))
        overrides = [f"data.dataset={dataset}"] * (args.dataset is not None or args.config is None) + overrides
    for flag, key in ((args.data_path, "data.path"), (args.encoder, "model.encoder"), (args.prior, "model.prior"),
                      (args.output_dir, "output_dir")):
        if flag:
            overrides.append(f"{key}={flag}")
    return build_config(FinetuneConfig, preset, overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        finetune(cfg, resume=args.resume, run_name=args.run_name)
    except (ConfigError, DataError, FileNotFoundError, OriginalCheckpointError, PriorFormatError) as e:
        print(f"mindvis-finetune: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"mindvis-finetune: training stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
