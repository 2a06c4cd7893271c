"""The command line of ``mindvis-sample --model MINDEYE_MODEL`` (:mod:`mindvis.pipelines.mindeye_sample`): its
arguments, and the hook by which ``mindvis-sample`` hands a MindEye model over."""
from __future__ import annotations

import argparse
import logging
import sys

from ..data.fmri import DataError
from ..utils.cli import PlainHelpFormatter, int_at_least
from .mindeye_generators import GeneratorUnavailable
from .mindeye_recon_settings import ME1_GUIDANCE, ME1_SAMPLES, ME1_STEPS, ME1_STRENGTH, ME2_GUIDANCE, ME2_STEPS
from .mindeye_sample import run
from .mindeye_sample_inputs import is_mindeye_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mindvis-sample", formatter_class=PlainHelpFormatter, description="Reconstruct images from fMRI with a MindEye1 / "
                                "MindEye2 model (a folder with mindeye.json, or an align run holding one) and its "
                                "image generator; writes samples.npz for mindvis-eval --suite nsd --protocol.")
    p.add_argument("--model", required=True, help="MindEye model folder (mindeye.json) or an align run with one")
    p.add_argument("--generator", required=True, metavar="DIR",
                   help="the image generator: MindEye1 = a Versatile Diffusion snapshot (image_unet/, vae/, "
                        "scheduler/); MindEye2 = an unCLIP folder (mindvis-convert from-unclip); the synthetic "
                        "world: a mindvis-train-prior --condition embedding folder (a stand-in)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--split", choices=["test"], default="test", help="the run's test split (its config.yaml)")
    src.add_argument("--data-path", metavar="DIR", help="a prepared NSD subject (mindvis-prep nsd): its test split")
    src.add_argument("--fmri", metavar="FILE", help="fMRI to decode instead (.npy/.npz/.h5, (N, voxels)): no ground "
                                                    "truth")
    p.add_argument("--lowlevel", metavar="DIR", help="MindEye1: the low-level model (mindvis-train-lowlevel's or a "
                                                    "converted autoencoder folder); default: the model's own lowlevel/")
    p.add_argument("--blurry-vae", metavar="DIR", help="the AutoencoderKL that decodes low-level latents (MindEye2: "
                                                      "sd_image_var_autoenc, mindvis-convert from-sd-autoencoder; "
                                                      "MindEye1: default the generator's VAE)")
    p.add_argument("--target", metavar="SPACE", help="the token space for best-of-N and retrieval targets (default: "
                                                    "the run's; MindEye1 clip-vit-l-14-tokens:SRC, MindEye2 "
                                                    "openclip-bigg-14-tokens:SRC)")
    p.add_argument("--num-samples", type=int_at_least(1), help=f"MindEye1: candidates per image (published {ME1_SAMPLES}); "
                                                   "MindEye2: samples (published 1)")
    p.add_argument("--steps", type=int_at_least(1), help=f"generator steps (published: MindEye1 {ME1_STEPS} UniPC, MindEye2 "
                                             f"{ME2_STEPS} Euler)")
    p.add_argument("--guidance", type=float, help=f"classifier-free guidance (published {ME1_GUIDANCE} / "
                                                  f"{ME2_GUIDANCE})")
    p.add_argument("--strength", type=float, default=ME1_STRENGTH,
                   help="MindEye1 img2img strength from the blurry image (published 0.85; 1 = no img2img)")
    p.add_argument("--prior-steps", type=int_at_least(1), help="prior sampling steps (default: the prior's, MindEye1 100 "
                                                   "ancestral, MindEye2 20 DDIM)")
    p.add_argument("--adapter", type=int_at_least(0), default=0, help="MindEye2: the subject adapter (default 0)")
    p.add_argument("--refine", metavar="SDXL_DIR", help="MindEye2: refine with SDXL img2img guided by a caption (a "
                                                       "diffusers SDXL folder); needs --captioner and --git")
    p.add_argument("--captioner", metavar="FILE", help="MindEye2's bigG -> L converter (mindvis-convert "
                                                       "from-bigg-to-l)")
    p.add_argument("--git", metavar="DIR", help="GIT (microsoft/git-large-coco) folder with its processor")
    p.add_argument("--refine-size", type=int_at_least(8), default=768, help="--refine: the side the unrefined image is resized to "
                                                               "and refined at (published 768)")
    p.add_argument("--seed", type=int, help="seed (published 42 for both)")
    p.add_argument("--limit", type=int_at_least(1), metavar="N", help="decode only the first N test items, N >= 1")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the samples in an existing --out (its images/ folder is swapped once the new one is "
                        "complete); without it a non-empty --out is refused before anything is sampled")
    return p


def dispatch(argv=None) -> int | None:
    """``mindvis-sample``'s hook: run this module when ``--model`` names a MindEye model, else None."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model")
    known, _ = peek.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.model and is_mindeye_model(known.model):
        return main(argv)
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from ..config import ConfigError
    from ..compat.safe_pickle import CheckpointError

    try:
        return run(args)
    except (DataError, FileNotFoundError, GeneratorUnavailable, ConfigError, CheckpointError, ValueError) as e:
        print(f"mindvis-sample: error: {e}", file=sys.stderr)
        return 2
