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

The model folders and the test data are read by :mod:`mindvis.pipelines.mindeye_sample_inputs`, the command line is
:mod:`mindvis.pipelines.mindeye_sample_cli`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..data.fmri import DataError
from .mindeye_generators import StandInGenerator, load_generator
from .mindeye_recon import mindeye1_best_of, mindeye1_reconstruct, mindeye2_reconstruct, plain_resize
from .mindeye_recon_settings import (ME1_GUIDANCE, ME1_SAMPLES, ME1_SEED, ME1_STEPS, ME2_GUIDANCE, ME2_OFFSET_NOISE,
                                     ME2_SEED, ME2_STEPS)
from .mindeye_sample_inputs import (_embedder, _float_embed, _run_data_config, decode_item, find_mindeye_folder,
                                    load_lowlevel, test_items)

log = logging.getLogger("mindvis.sample")
SAVE_SIZE = 256  # both references resize their reconstructions to 256 px before scoring


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _save(images: torch.Tensor) -> torch.Tensor:
    return plain_resize(images, SAVE_SIZE) if images.shape[-1] > SAVE_SIZE else images


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
