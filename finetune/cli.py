"""``mindvis-finetune``: stage B of MinD-Vis, fine-tuning a double-conditioned LDM on fMRI-image pairs."""
from __future__ import annotations

import argparse
import sys

from mindvis.compat.ldm import PriorFormatError
from mindvis.config import resolve_run_config
from mindvis.training import add_run_arguments, run_training_command
from mindvis.utils.cli import PlainHelpFormatter

from .config import DATASETS, FinetuneConfig
from .engine import finetune

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
  mindvis-finetune --dataset nsd --data-path prepared/nsd/subj01 --encoder runs/pretrain/RUN --prior DIR
  accelerate launch --multi_gpu --num_processes 4 -m mindvis.finetune.cli --dataset god ...
  mindvis-finetune --resume runs/finetune/RUN
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-finetune", epilog=EPILOG,
                                description="Stage B of MinD-Vis: fine-tune a double-conditioned latent diffusion "
                                            "model on fMRI-image pairs.",
                                formatter_class=PlainHelpFormatter)
    p.add_argument("--dataset", dest="selection", choices=DATASETS, default=None,
                   help="pairs to train on; sets data.dataset and, without --config, the matching preset. "
                        "god+bold5000 trains jointly (voxels wrap-padded to the longer dataset; test metrics per "
                        "dataset). Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets data.path)")
    p.add_argument("--encoder", metavar="CKPT", help="stage-A SC-MBM: a mindvis-pretrain run or model folder, an "
                                                     "original .pth, or 'random' (sets model.encoder)")
    p.add_argument("--prior", metavar="DIR", help="pretrained LDM: CompVis folder (config.yaml + model.ckpt) or "
                                                  "diffusers-style folder (sets model.prior)")
    add_run_arguments(p, "finetune")
    return p


def resolve_config(args):
    return resolve_run_config(FinetuneConfig, "finetune", args, "data.dataset",
                              {"data.path": args.data_path, "model.encoder": args.encoder, "model.prior": args.prior,
                               "output_dir": args.output_dir})


def main(argv=None) -> int:
    return run_training_command("mindvis-finetune", build_parser().parse_intermixed_args(argv), resolve_config, finetune,
                                errors=(PriorFormatError,))


if __name__ == "__main__":
    sys.exit(main())
