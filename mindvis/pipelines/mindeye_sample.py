"""``mindvis-sample --model MINDEYE_MODEL``: MindEye1 / MindEye2 reconstructions into the usual ``samples.npz``.

A MindEye model is a folder with ``mindeye.json`` (``network/``, ``prior/``, optionally ``lowlevel/``): what
``mindvis.compat.mindeye.convert_mindeye1/2`` write from the released checkpoints, or an align run folder holding
one as ``best/`` or ``model/`` (the MindEye recipes). Per test image (module docstring of
:mod:`mindvis.pipelines.mindeye_recon` for the procedures):

* MindEye1: the fMRI averaged over the repetitions -> backbone tokens, projector output, low-level latents; the
  prior's N samples (default 16) from one generator seeded per image; the blurry image; N img2img candidates; each
  candidate's similarity to the projector output (``best_of_n_scores``, what ``mindvis-eval --protocol mindeye1``
  selects by);
* MindEye2: each of the image's repetitions (padded to 3 as the reference: one -> a a a, two -> a a b) through the
  subject's adapter, the network's outputs averaged; the prior (20 DDIM steps); unCLIP (38 steps, CFG 5); the
  blurry image; optionally the caption and the SDXL refinement (``--refine``).

``samples.npz`` holds, beyond ``samples`` (N, K, S, S, 3), ``ground_truth``, ``ids``: ``blurry`` (N, h, w, 3),
``embeddings_pred`` (the retrieval head's output, flattened) and, where the target space's embedder is available,
``embeddings_target`` (the ground truths' tokens, flattened), ``best_of_n_scores`` (MindEye1), ``captions`` and
``unrefined`` (MindEye2 with refinement). Images larger than 256 px are saved at 256 (torchvision's tensor
``Resize`` without antialiasing, as both references resize before scoring). Metadata names the family, the
generator (published or stand-in) and every sampling setting, for ``mindvis-eval --protocol``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data.fmri import DataError
from ..utils.cli import PlainHelpFormatter, int_at_least
from .mindeye_generators import GeneratorUnavailable, StandInGenerator, load_generator
from .mindeye_recon import mindeye1_best_of, mindeye1_reconstruct, mindeye2_reconstruct, plain_resize
from .mindeye_recon_settings import (ME1_GUIDANCE, ME1_SAMPLES, ME1_SEED, ME1_STEPS, ME1_STRENGTH, ME2_GUIDANCE,
                                     ME2_OFFSET_NOISE, ME2_SEED, ME2_STEPS)

log = logging.getLogger("mindvis.sample")
SAVE_SIZE = 256  # both references resize their reconstructions to 256 px before scoring


def find_mindeye_folder(path: str | Path) -> Path | None:
    """The folder holding ``mindeye.json``: ``path`` itself, or an align run's ``best/`` or ``model/``."""
    p = Path(path)
    for candidate in (p, p / "best", p / "model"):
        if (candidate / "mindeye.json").is_file():
            return candidate
    return None


def is_mindeye_model(path: str | Path) -> bool:
    return find_mindeye_folder(path) is not None


def load_lowlevel(folder: str | Path):
    """(MindEye1LowLevel, description) of a low-level folder: ``mindvis-train-lowlevel``'s (``lowlevel/`` +
    ``lowlevel.json``), a converted MindEye1 autoencoder (``mindeye.json`` + ``lowlevel/``), or the module folder."""
    from ..models.mindeye1 import MindEye1LowLevel

    p = Path(folder)
    for candidate in (p / "lowlevel", p):
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            meta = {}
            for m in (p / "lowlevel.json", p / "mindeye.json"):
                if m.is_file():
                    meta = json.loads(m.read_text())
                    break
            return MindEye1LowLevel.from_pretrained(candidate).eval(), meta
    raise FileNotFoundError(f"{p} is not a MindEye1 low-level folder (lowlevel/ with config.json and "
                            "model.safetensors)")


def _run_data_config(run: Path, data_path: str | None, include_trials: bool):
    """(DataConfig, target space or None) for the test split: ``--data-path`` (a prepared NSD folder), or the
    ``data`` section of the run's config.yaml."""
    from omegaconf import OmegaConf

    from ..config import build_config
    from ..finetune.config import DataConfig

    target = None
    if data_path:
        cfg = build_config(DataConfig, defaults={"dataset": "nsd", "path": str(data_path), "val_fraction": 0.0})
    else:
        path = run / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: give --data-path (a prepared NSD folder) or --fmri FILE")
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        cfg = build_config(DataConfig, defaults=raw.get("data", {}))
        target = raw.get("target")
    cfg.include_test_trials = include_trials
    return cfg, target


def test_items(split, family: str):
    """(the repetition-averaged rows, per item the fMRI rows to decode). MindEye1: the averaged fMRI itself;
    MindEye2: the item's single trials in repetition order, padded to three as the reference pads them."""
    from ..data.pairs import TRIAL_MARK

    avg_idx = [i for i, s in enumerate(split.ids) if TRIAL_MARK not in s]
    avg = split.subset(avg_idx)
    if family == "mindeye1":
        return avg, [split.fmri[[i]] for i in avg_idx], "fMRI averaged over the repetitions, then decoded"
    trials: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(split.ids):
        if TRIAL_MARK in s:
            stim, rep = s.split(TRIAL_MARK)
            trials.setdefault(stim, []).append((int(rep) if rep.isdigit() else 0, i))
    if not all(s in trials for s in avg.ids):
        log.warning("single test trials are missing: decoding the repetition-averaged fMRI instead of averaging "
                    "the outputs of each repetition")
        return avg, [split.fmri[[i]] for i in avg_idx], "fMRI averaged over the repetitions (no single trials)"
    groups = []
    for s in avg.ids:
        rows = [i for _, i in sorted(trials[s])]
        rows = (rows * 3)[:3] if len(rows) == 1 else (np.repeat(rows, 2)[:3].tolist() if len(rows) == 2 else rows[:3])
        groups.append(split.fmri[rows])
    return avg, groups, "outputs of each of 3 repetitions averaged (1 -> a a a, 2 -> a a b)"


@torch.no_grad()
def decode_item(family: str, network, fmri: np.ndarray, adapter: int = 0) -> dict:
    """The network's outputs for one test item: ``regression`` (1, T, D) tokens, ``contrastive`` (1, T, D),
    ``blurry`` (1, C, h, w) for MindEye2 with a low-level branch; MindEye2's averaged over the rows."""
    x = torch.from_numpy(np.asarray(fmri, dtype=np.float32))
    if family == "mindeye1":
        tokens = network.forward_backbone(x)
        return {"regression": tokens, "contrastive": network.forward_projector(tokens)}
    outs = [network(x[[r]], adapter) for r in range(len(x))]
    keys = ["regression", "contrastive"] + (["blurry"] if "blurry" in outs[0] else [])
    return {k: sum(o[k] for o in outs) / len(outs) for k in keys}


def _embedder(space: str | None, data_cfg):
    from ..finetune.data import synthetic_world
    from ..models.image_embedders import EmbedderUnavailable, load_embedder

    if not space:
        return None, "no target space given (--target SPACE)"
    try:
        return load_embedder(space, synthetic_world(data_cfg) if data_cfg is not None else None,
                             (data_cfg.cache_dir or None) if data_cfg is not None else None), None
    except (EmbedderUnavailable, ValueError) as e:
        return None, f"{space}: {str(e).splitlines()[0]}"


def _float_embed(embedder):
    """Float images (B, 3, H, W) in [0, 1] -> the embedder's outputs (as its uint8 path, without quantising)."""
    return lambda x: embedder.fn(embedder._prepare(x.float())).float()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _save(images: torch.Tensor) -> torch.Tensor:
    return plain_resize(images, SAVE_SIZE) if images.shape[-1] > SAVE_SIZE else images


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


def _family_settings(family: str, args, gen) -> dict:
    me1 = family == "mindeye1"
    return {"num_samples": args.num_samples or (ME1_SAMPLES if me1 else 1),
            "steps": args.steps or (ME1_STEPS if me1 else ME2_STEPS),
            "guidance": args.guidance if args.guidance is not None else (ME1_GUIDANCE if me1 else ME2_GUIDANCE),
            "strength": args.strength if me1 else None,
            "offset_noise": None if me1 else ME2_OFFSET_NOISE,
            "seed": ME1_SEED if args.seed is None and me1 else (ME2_SEED if args.seed is None else args.seed),
            "generator": gen.name, "stand_in": isinstance(gen, StandInGenerator)}


def run(args) -> int:
    from ..compat.mindeye import load_converted
    from ..utils.cli import check_output_folder
    from ..utils.io import atomic_dir, atomic_write, atomic_write_json
    from ..utils.plots import save_image_grid
    from .mindeye_lowlevel import BlurryDecoder, load_vae, output_channels
    from .sample_inputs import read_fmri_file, world_settings

    check_output_folder(args.out, args.overwrite)
    folder = find_mindeye_folder(args.model)
    meta_in = json.loads((folder / "mindeye.json").read_text())
    family = meta_in.get("family")
    if family not in ("mindeye1", "mindeye2"):
        raise DataError(f"{folder / 'mindeye.json'}: family {family!r} (mindeye1 or mindeye2)")
    comps = load_converted(folder)
    network, prior = comps.get("network"), comps.get("prior")
    if network is None or prior is None:
        raise DataError(f"{folder}: a MindEye model needs network/ and prior/ to reconstruct (has {sorted(comps)})")
    for m in comps.values():
        m.eval()
    gen = load_generator(args.generator, family)
    s = _family_settings(family, args, gen)
    # the low-level path
    lowlevel, low_meta = comps.get("lowlevel"), {}
    if family == "mindeye1" and args.lowlevel:
        lowlevel, low_meta = load_lowlevel(args.lowlevel)
        lowlevel.eval()
    low_module = (lowlevel.decoder if lowlevel is not None else
                  getattr(network, "blurry_decoder", None) if family == "mindeye2" else None)
    blurry_decoder = None
    if low_module is not None:
        if output_channels(low_module) == 3:
            blurry_decoder = BlurryDecoder(None)
        elif args.blurry_vae:
            blurry_decoder = BlurryDecoder(load_vae(args.blurry_vae))
        elif family == "mindeye1" and hasattr(gen, "vae") and not isinstance(gen, StandInGenerator):
            blurry_decoder = BlurryDecoder(gen.vae)  # Versatile Diffusion's VAE, as the reference
        else:
            raise DataError("the low-level path outputs VAE latents: give --blurry-vae DIR (an AutoencoderKL folder)")
    # the data
    data_cfg, space, world, truth, labels, datasets = None, args.target, None, None, None, None
    if args.fmri:
        fmri = read_fmri_file(args.fmri)
        groups = [fmri[[i]] for i in range(len(fmri))]
        ids, averaging = [str(i) for i in range(len(fmri))], "as given"
    else:
        from ..finetune.data import build_stage_b_data

        run_dir = folder.parent if folder.name in ("best", "model") else folder
        data_cfg, run_target = _run_data_config(run_dir, args.data_path, include_trials=family == "mindeye2")
        space = space or run_target
        data = build_stage_b_data(data_cfg, 1, 0)
        world = world_settings(data_cfg)
        avg, groups, averaging = test_items(data.test, family)
        ids, labels, datasets = avg.ids, avg.labels, avg.dataset
        truth = avg.images
    n = min(len(groups), args.limit or len(groups))
    n_vox = network.config.num_voxels if family == "mindeye1" else network.config.num_voxels[args.adapter]
    if groups[0].shape[1] != n_vox:
        raise DataError(f"{args.fmri or 'the test split'}: {groups[0].shape[1]} voxels, the network takes {n_vox}")
    embedder, why = _embedder(space, data_cfg) if not args.fmri or space else (None, "no target space")
    if embedder is None:
        log.warning("no token embedder (%s): %s", why, "no best-of-N scores and no retrieval targets"
                    if family == "mindeye1" else "no retrieval targets")
    refiner = captioner = None
    if args.refine:
        if family != "mindeye2" or not (args.captioner and args.git):
            raise DataError("--refine is MindEye2's and needs --captioner FILE and --git DIR")
        from .mindeye_refine import Captioner, SDXLRefiner

        refiner, captioner = SDXLRefiner.from_pretrained(args.refine), Captioner.from_pretrained(args.captioner,
                                                                                                  args.git)
    t0 = time.time()
    samples, blurry, pred, scores, captions, unrefined = [], [], [], [], [], []
    resized = None  # MindEye1: the blurry image resized to the generator's resolution for img2img
    run_gen = torch.Generator().manual_seed(s["seed"])  # MindEye2: one random stream for the whole run
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc=f"{family} reconstructions"):
        out = decode_item(family, network, groups[i], args.adapter)
        pred.append(out["contrastive"].reshape(1, -1).float())
        low = None
        if family == "mindeye1" and lowlevel is not None:
            with torch.no_grad():
                low = blurry_decoder(lowlevel(torch.from_numpy(np.asarray(groups[i], np.float32))), clamp=False)
        elif family == "mindeye2" and "blurry" in out and blurry_decoder is not None:
            low = blurry_decoder(out["blurry"], clamp=True)
        if low is not None:
            blurry.append(low.clamp(0, 1))
            if family == "mindeye1" and low.shape[-1] != gen.image_size:
                resized = f"{low.shape[-1]} px -> {gen.image_size} px (plain bilinear) before the VAE encodes it"
        if family == "mindeye1":
            g = torch.Generator().manual_seed(s["seed"])  # the reference seeds one generator per test image
            k = s["num_samples"]
            tokens = prior.sample(out["regression"].repeat(k, 1, 1), steps=args.prior_steps, generator=g)
            cand = mindeye1_reconstruct(gen, tokens, low, s["steps"], s["guidance"], s["strength"], g)
            if embedder is not None:
                scores.append(mindeye1_best_of(cand, out["contrastive"][0], _float_embed(embedder)))
            samples.append(_save(cand))
        else:
            tokens = prior.sample(out["regression"], steps=args.prior_steps, generator=run_gen)
            imgs = _save(mindeye2_reconstruct(gen, tokens, s["num_samples"], s["steps"], s["guidance"],
                                              s["offset_noise"], run_gen))
            if refiner is not None:
                caption = captioner(tokens)[0]
                captions.append(caption)
                unrefined.append(imgs)
                imgs = torch.cat([_save(refiner(im[None], caption, size=args.refine_size, generator=run_gen))
                                  for im in imgs])
            samples.append(imgs)
    seconds = time.time() - t0
    samples_u8 = np.stack([_to_uint8(x) for x in samples])  # (N, K, S, S, 3)
    arrays = {"samples": samples_u8, "ids": np.array(ids[:n]),
              "embeddings_pred": torch.cat(pred).numpy().astype(np.float32)}
    if blurry:
        arrays["blurry"] = _to_uint8(torch.cat(blurry))
    if scores:
        arrays["best_of_n_scores"] = torch.stack(scores).numpy()
    if captions:
        arrays["captions"] = np.array(captions)
        arrays["unrefined"] = np.stack([_to_uint8(x) for x in unrefined])
    if truth is not None:
        arrays |= {"ground_truth": np.asarray(truth[:n]), "labels": np.asarray(labels[:n]),
                   "dataset": np.array(datasets[:n])}
        if embedder is not None:
            tgt = embedder(np.asarray(truth[:n]))
            arrays["embeddings_target"] = tgt.reshape(len(tgt), -1).astype(np.float32)
    meta = {"model": str(folder), "family": family, "generator_folder": str(args.generator),
            "generator": s["generator"], "stand_in": s["stand_in"], "num_samples": s["num_samples"],
            "steps": s["steps"], "guidance": s["guidance"], "strength": s["strength"],
            "offset_noise": s["offset_noise"], "seed": s["seed"],
            "prior_steps": args.prior_steps or prior.config.sample_steps,
            "prior_sampler": "ancestral DDPM" if (args.prior_steps or prior.config.sample_steps) >= prior.config.timesteps
            else "strided DDIM (dalle2-pytorch)",
            "lowlevel": None if not blurry else {"decoder": blurry_decoder.kind, "source": args.lowlevel or "model",
                                                   **({"contrastive": low_meta.get("contrastive")} if low_meta else {})},
            "blurry_vae": args.blurry_vae, "blurry_resized": resized, "refined": bool(captions), "refine_folder": args.refine,
            "refine_size": args.refine_size if captions else None,
            "target_space": space if embedder is not None else None, "test_average": averaging,
            "split": None if args.fmri else ("data-path" if args.data_path else "test"),
            "data_path": args.data_path, "fmri_file": args.fmri, "adapter": args.adapter if family == "mindeye2" else None,
            "synthetic_world": world, "saved_size": int(samples_u8.shape[2]), "precision": "fp32",
            "seconds": round(seconds, 2), "seconds_per_image": round(seconds / max(1, n), 4)}
    arrays["meta"] = np.array(json.dumps(meta))
    out_dir = Path(args.out)
    from PIL import Image

    rows = []
    for i in range(n):
        row = ([arrays["ground_truth"][i]] if truth is not None else []) + \
              ([_pad_to(arrays["blurry"][i], samples_u8.shape[2])] if blurry else []) + list(samples_u8[i])
        rows.append(np.stack([_pad_to(r, samples_u8.shape[2]) for r in row]))

    def write_images(folder: Path) -> None:
        for i in range(n):
            if truth is not None:
                Image.fromarray(arrays["ground_truth"][i]).save(folder / f"{i:04d}_gt.png")
            if blurry:
                Image.fromarray(arrays["blurry"][i]).save(folder / f"{i:04d}_blurry.png")
            for k, img in enumerate(samples_u8[i]):
                Image.fromarray(img).save(folder / f"{i:04d}_s{k}.png")

    atomic_dir(out_dir / "images", write_images)
    save_image_grid(out_dir / "grid.png", rows[:16])
    atomic_write(out_dir / "samples.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    atomic_write_json(out_dir / "sample_config.json", meta)
    print(f"{n} x {s['num_samples']} {family} reconstructions in {seconds:.1f} s ({meta['seconds_per_image']} s per "
          f"test image, {s['generator']}{' (stand-in)' if s['stand_in'] else ''}); arrays: {out_dir / 'samples.npz'}")
    return 0


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """An (h, w, 3) image resized (nearest) to size x size for the grid."""
    if img.shape[0] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.NEAREST))


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
