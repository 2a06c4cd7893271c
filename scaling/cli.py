"""``mindvis-scaling``: decoding as a function of training pairs and test repetitions, per decoder, over seeds."""
from __future__ import annotations

import argparse
import logging
import sys

from mindvis.config import ConfigError, build_config
from mindvis.configs import preset_names, preset_path
from mindvis.data.fmri import DataError
from mindvis.finetune.config import DATASETS, MEEG_DATASETS
from mindvis.models.image_embedders import EmbedderUnavailable
from mindvis.world import DEVICE_PRESETS, WORLD_PRESETS, describe_devices, device_overrides
from mindvis.utils.cli import PlainHelpFormatter

from .config import ARMS, ScalingConfig
from .engine import scaling

EPILOG = f"""\
overrides: any key as key=value (--print-config lists them all), e.g.
  grid.fractions=[0.1,0.3,1.0] grid.trials=[50,100,200] grid.seeds=[0,1,2,3,4] grid.arms=[ridge,mlp,mbm-rest]
  grid.rest_encoder=runs/pretrain/RUN grid.target_encoder=runs/pretrain/A2RUN cell.train.epochs=40
  grid.subjects=[1,2,4] grid.subject_modes=[per-subject,total] grid.subject_trials=200
  cell.decoder.hidden=512 cell.target=clip:DIR
arms: {', '.join(ARMS)} (mbm-rest: grid.rest_encoder, SC-MBM pretrained on rest; mbm-target: grid.target_encoder,
  pretrained on the target dataset's fMRI alone). Every cell is a mindvis-align run with the cell.* settings.
subjects axis (grid.subjects, GOD-layout data): mlp-shared (a linear adapter per subject into one MLP backbone) trained
  on the first S subjects (grid.subject_ids, or sbj_1..sbj_S; the synthetic world needs
  cell.data.synthetic.god_subjects >= S), each subject's pairs fixed or their total fixed (grid.subject_modes),
  selected on and tested on the first subject. The loss is CLIP + MSE (w = cell.loss.contrastive_weight).

outputs in --out: config.yaml, cells/*.json (one per cell; a rerun skips them), runs/ (each cell's align run),
  scaling.json, scaling.md (curves, log-linear fits with bootstrap intervals, gaps, averaging, subjects),
  scaling.png, averaging.png, subjects.png.

examples:
  mindvis-scaling --dataset synthetic --out runs/scaling/synthetic
  mindvis-scaling --dataset synthetic --device 3t --out runs/scaling/3t grid.arms=[ridge,mlp]
  mindvis-scaling --dataset god --data-path data/Kamitani/npz --target clip:DIR --out runs/scaling/god \\
      grid.arms=[ridge,mlp,mbm-random,mbm-rest] grid.rest_encoder=pretrains/GOD/fmri_encoder.pth
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mindvis-scaling", description=__doc__, epilog=EPILOG,
                                formatter_class=PlainHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS + MEEG_DATASETS, default="synthetic",
                   help="brain-image pairs (as mindvis-align reads them: fMRI, or M/EEG with the brain-module arm); "
                        "picks the preset of that name when there is one and sets cell.data.dataset. Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets cell.data.path)")
    p.add_argument("--target", metavar="SPACE", help="image embedding space (sets cell.target)")
    p.add_argument("--config", metavar="PRESET", help=f"YAML preset: a file or a shipped name "
                                                       f"({', '.join(preset_names('scaling'))})")
    p.add_argument("--device", choices=sorted(DEVICE_PRESETS),
                   help="synthetic world only: fMRI at this field strength, the single-trial SNR and test repetitions "
                        "of " + describe_devices() + " (sets cell.data.synthetic.*)")
    p.add_argument("--world", choices=sorted(WORLD_PRESETS),
                   help="synthetic world only: the sizes of a release (god: 1,200 training pairs of 150 classes, 50 test "
                        "images, 4,640 voxels; sets cell.data.synthetic.*)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (rerun the same command to continue)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="study settings: grid.* (the grid) and cell.* (every cell's mindvis-align settings); see "
                        "below, --print-config lists every key")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        name = args.config or (args.dataset if preset_path("scaling", args.dataset).is_file() else None)
        if (args.device or args.world) and args.dataset != "synthetic":
            raise ConfigError(f"--device / --world set the synthetic world; --dataset is {args.dataset}")
        flags = [f"cell.data.dataset={args.dataset}"] + [f"{k}={v}" for k, v in (
            ("cell.data.path", args.data_path), ("cell.target", args.target)) if v]
        flags += device_overrides(args.device, args.world, "cell.data.synthetic.")
        cfg = build_config(ScalingConfig, preset_path("scaling", name) if name else None, flags + list(args.overrides))
        if args.print_config:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        report = scaling(cfg, args.out)
    except (ConfigError, DataError, FileNotFoundError, EmbedderUnavailable, ValueError) as e:
        print(f"mindvis-scaling: error: {e}", file=sys.stderr)
        return 2
    for arm, e in report["analysis"]["arms"].items():
        f = e["fits"]["top1"]
        fit = "" if f["slope"] is None else f", top-1 slope per decade {f['slope']:.3f} (R^2 {f['r2']:.2f})"
        print(f"{arm}: top-1 {e['curve'][-1]['top1']['mean']:.3f} at {e['curve'][-1]['n_train']:.0f} pairs{fit}")
    for mode, e in report["analysis"].get("subjects", {}).items():
        print(f"mlp-shared ({mode} pairs fixed): top-1 " + ", ".join(
            f"{r['top1']['mean']:.3f} with {r['subjects']}" for r in e["curve"]) + " subjects")
    print(f"chance {report['chance_top1']:.3f}; report: {args.out}/scaling.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
