"""``mindvis-align``: decode fMRI into an image embedding space (ridge, MindEye's MLP, the SC-MBM encoder) and score
retrieval."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mindvis.config import ConfigError, resolve_run_config
from mindvis.finetune.config import DATASETS, MEEG_DATASETS
from mindvis.models.image_embedders import EmbedderUnavailable
from mindvis.training import add_run_arguments, run_training_command
from mindvis.utils.cli import PlainHelpFormatter

from .config import AlignConfig, DECODERS, RECIPES
from .engine import align

EPILOG = """\
overrides: any config key as key=value (mindvis-align --print-config lists them all), e.g.
  decoder.hidden=1024 decoder.per_target=true decoder.freeze_encoder=true train.epochs=60 train.encoder_lr=5e-5
  loss.contrastive=clip loss.contrastive_weight=0.5 loss.learn_temperature=false data.subjects=[sbj_1,sbj_3]
Unknown keys and wrong types are errors.

targets: clip:SRC and dinov2:SRC (transformers; SRC a local folder or a hub id already in the cache),
  timm:NAME (timm's caches), synthetic (the synthetic world's classifier features); token spaces (MindEye):
  clip-vit-l-14-tokens:SRC (257 x 768), openclip-bigg-14-tokens:SRC (256 x 1664), synthetic-tokens (17 x 128).
  Nothing is downloaded.

outputs in the run folder: retrieval.json / retrieval.md (every metric with its chance level), retrieval_top5.png
  (test images retrieved among the test set), gallery_top5.png (nearest gallery images), averaging.png,
  test_embeddings.npz, model/ (and best/, the validation-selected epoch), config.yaml, train.log.

examples:
  mindvis-align --dataset synthetic --decoder ridge
  mindvis-align --dataset synthetic --decoder mbm --encoder runs/pretrain/RUN
  mindvis-align --dataset god --data-path data/Kamitani/npz --decoder mlp --target clip:openai/clip-vit-large-patch14
  mindvis-align --resume runs/align/RUN

MindEye recipes (presets configs/align/RECIPE.yaml: the references' settings; the -synthetic ones narrowed for
2 CPU cores on a synthetic NSD, see docs/guides/mindeye.md):
  mindvis-align --recipe mindeye1 --data-path data/NSD/subj01
  mindvis-align --recipe mindeye2 --data-path data/NSD/subj02 mindeye.subjects=[data/NSD/subj03,data/NSD/subj04]
  mindvis-align --recipe mindeye2 --data-path data/NSD/subj01 mindeye.init=runs/align/MULTI   # a new subject
  mindvis-align --score runs/me2-release --data-path data/NSD/subj01    # a trained run or a mindvis-convert folder
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-align", epilog=EPILOG, formatter_class=PlainHelpFormatter,
                                description="Decode fMRI into an image embedding space and score retrieval of the "
                                            "seen image (the MindEye / Meta family of decoders).")
    p.add_argument("--dataset", dest="selection", choices=DATASETS + MEEG_DATASETS, default=None,
                   help="fMRI-image pairs (as mindvis-finetune reads them), or M/EEG: things-meg (a folder mindvis-prep "
                        "things-meg wrote) or things-eeg2 (the release); sets data.dataset and, without --config, the "
                        "matching preset. Default: synthetic")
    p.add_argument("--data-path", metavar="DIR", help="dataset folder (sets data.path)")
    p.add_argument("--decoder", choices=DECODERS, help="ridge (closed form, cross-validated penalty), mlp (MindEye's "
                                                       "residual MLP), mbm (the SC-MBM encoder; fMRI), brain-module "
                                                       "(Meta's convolutional M/EEG decoder), mindeye1 or mindeye2 "
                                                       "(better through --recipe); sets decoder.name")
    p.add_argument("--windows", metavar="LEN:STEP", help="M/EEG time-resolved decoding: one decoder per window of LEN s "
                                                         "every STEP s (sets windows.length, windows.step), scored on "
                                                         "the test set: time_resolved.json / .png")
    p.add_argument("--encoder", metavar="CKPT", help="mbm: a mindvis-pretrain run or model folder, an original "
                                                     "fmri_encoder.pth, or 'random' (sets decoder.encoder)")
    p.add_argument("--target", metavar="SPACE", help="image embedding space (sets target; see below)")
    p.add_argument("--recipe", choices=RECIPES, help="MindEye1 / MindEye2 as their reference code trains them "
                                                     "(the preset of that name; the -synthetic ones are narrowed "
                                                     "for CPU)")
    p.add_argument("--score", metavar="RUN", help="score the test set with the MindEye model of RUN (a trained run "
                                                  "or a mindvis-convert from-mindeye1/2 folder) on the data of its "
                                                  "config.yaml, --data-path and the overrides; writes "
                                                  "RUN/scores/NAME/ (NAME: --run-name or the date and time)")
    add_run_arguments(p, "align")
    return p


def resolve_config(args):
    from mindvis.config import ConfigError, build_config

    if args.recipe:
        if args.config:
            raise ConfigError("--recipe and --config both name a preset: give one of them")
        args.config = args.recipe
    if args.score:
        if args.resume or args.recipe or args.config:
            raise ConfigError("--score reads RUN/config.yaml: it takes no --resume, --recipe or --config")
        saved = f"{args.score}/config.yaml"
        if not Path(saved).is_file():
            raise FileNotFoundError(f"{args.score} is not a MindEye run or converted folder ({saved} is missing)")
        flags = {"data.path": args.data_path, "target": args.target, "data.dataset": args.selection}
        return build_config(AlignConfig, saved, list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v])
    return resolve_run_config(AlignConfig, "align", args, "data.dataset",
                              {"data.path": args.data_path, "decoder.name": args.decoder,
                               "decoder.encoder": args.encoder, "target": args.target,
                               "output_dir": args.output_dir, **_windows(args.windows)})


def _windows(text: str | None) -> dict:
    if not text:
        return {}
    try:
        length, step = (float(v) for v in text.split(":"))
    except ValueError:
        length = step = float("nan")
    if not (length > 0 and step > 0):  # also NaN
        raise ConfigError(f"--windows takes LEN:STEP in seconds, both > 0 (e.g. 0.25:0.1), got {text!r}")
    return {"windows.length": length, "windows.step": step}


def _score(run: str):
    def score(cfg, resume=None, run_name=None):
        from .mindeye_scoring import score_folder
        from .settings import validate

        validate(cfg)
        return score_folder(cfg, run, run_name)

    return score


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    return run_training_command("mindvis-align", args, resolve_config, _score(args.score) if args.score else align,
                                errors=(EmbedderUnavailable, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
