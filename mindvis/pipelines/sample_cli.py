"""``mindvis-sample``: reconstruction grids and sample arrays from a trained DC-LDM."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..compat.ldm import PriorFormatError
from ..config import ConfigError
from ..data.fmri import DataError
from ..utils.cli import PlainHelpFormatter, check_output_folder, int_at_least
from ..utils.io import atomic_dir, atomic_write, atomic_write_json
from ..utils.plots import save_image_grid
from .sample_inputs import read_fmri_file, world_settings
from .mindvis_pipeline import (DEFAULT_LCM_STEPS, DEFAULT_SCHEDULER, DEFAULT_STEPS, PRECISIONS, SCHEDULERS,
                               MindVisPipeline, resolve_sampling)


def resolve_model_dir(path: str | Path) -> Path:
    """A DC-LDM folder: the given one, or a run folder's ``best/`` (validation-selected), else its ``model/``."""
    p = Path(path)
    for candidate in (p, p / "best", p / "model"):
        if (candidate / "mindvis_dcldm.json").is_file():
            return candidate
    raise FileNotFoundError(f"{p} is neither a DC-LDM folder (mindvis_dcldm.json, unet/, vae/, conditioner/, "
                            "scheduler/) nor a mindvis-finetune run folder with best/ or model/")


def split_from_run(model_dir: Path, split: str):
    """The ``split`` pairs of the run that trained ``model_dir``, prepared as in training; ``test-trials``: the
    single repetitions of the test stimuli (``test`` holds their averages)."""
    from ..config import build_config
    from ..data.pairs import single_trials
    from ..finetune.config import FinetuneConfig
    from ..finetune.data import build_stage_b_data

    cfg_path = model_dir.parent / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: --split needs the run folder's config (or use --fmri FILE)")
    from omegaconf import OmegaConf

    if "teacher" in OmegaConf.load(cfg_path):  # a mindvis-distill run: the teacher run's data and split seed
        from ..finetune.config import DistillConfig

        cfg = build_config(DistillConfig, cfg_path)
        seed = cfg.data_seed
    else:
        cfg = build_config(FinetuneConfig, cfg_path)
        seed = cfg.train.seed
    if split == "test-trials":
        cfg.data.include_test_trials = True
    enc = json.loads((model_dir / "conditioner" / "config.json").read_text())["encoder"]
    data = build_stage_b_data(cfg.data, enc["patch_size"], seed)
    world = world_settings(cfg.data)
    if split == "test-trials":
        return single_trials(data.test), world
    return {"test": data.test, "val": data.val, "train": data.train}[split], world


def _truth_images(split, image_size: int) -> np.ndarray:
    """The split's images as the model sees them: (N, S, S, 3) uint8 at ``image_size``."""
    from ..data.pairs import PairedDataset

    ds = PairedDataset(split, image_size, train=False)
    return np.stack([((ds.image_tensor(i, False) + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                     for i in range(len(split))])


def align_split(run: Path, split: str, patch_size: int):
    """The ``split`` pairs of a mindvis-align run (``test``: the repetition averages), and its synthetic world."""
    from ..align.config import AlignConfig
    from ..align.data import split_test_trials
    from ..config import build_config
    from ..data.pairs import single_trials
    from ..finetune.data import build_stage_b_data

    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: --split needs the align run's config (or use --fmri FILE)")
    cfg = build_config(AlignConfig, cfg_path)
    data = build_stage_b_data(cfg.data, patch_size, cfg.train.seed)
    world = world_settings(cfg.data)
    chosen = {"test": lambda: split_test_trials(data.test)[0], "test-trials": lambda: single_trials(data.test),
              "val": lambda: data.val, "train": lambda: data.train}[split]()
    return chosen, world


def _from_align_run(args):
    """Decode fMRI with a mindvis-align run's decoder, then draw images from the embedding generator."""
    from ..align.decoders import decode, load_decoder
    from .embedding_pipeline import EmbeddingToImagePipeline

    run = Path(args.model)
    folder = next((run / d for d in ("best", "model") if (run / d / "config.json").is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"{run} is not a mindvis-align run folder (no best/ or model/ decoder)")
    decoder = load_decoder(folder)
    if not hasattr(decoder.config, "num_voxels") and not hasattr(decoder.config, "encoder"):
        kind = "an M/EEG decoder" if type(decoder).__name__ == "BrainModule" else "not a one-subject fMRI decoder"
        raise DataError(f"{folder} holds a {type(decoder).__name__} ({kind}); mindvis-sample --generator decodes fMRI "
                        "(samples x voxels) with the ridge, mlp or mbm decoder of a mindvis-align run")
    pipe = EmbeddingToImagePipeline.from_pretrained(args.generator)
    n_vox = getattr(decoder.config, "num_voxels", None) or decoder.config.encoder["num_voxels"]
    world, truth, labels, datasets = None, None, None, None
    if args.fmri:
        fmri = read_fmri_file(args.fmri)
        ids = [str(i) for i in range(len(fmri))]
    else:
        split, world = align_split(run, args.split, getattr(decoder.config, "encoder", {}).get("patch_size", 16))
        fmri, ids, labels, datasets = split.fmri, split.ids, split.labels, split.dataset
        truth = _truth_images(split, pipe.image_size)
    if fmri.shape[1] != n_vox:
        raise DataError(f"{args.fmri or args.split}: {fmri.shape[1]} voxels, the decoder takes {n_vox}")
    n = min(len(fmri), args.limit or len(fmri))
    emb = torch.from_numpy(decode(decoder, fmri[:n])["regression"])
    want = pipe.conditioner.config.embed_dim
    if emb.shape[1] != want:
        raise DataError(f"the decoder in {folder} gives {emb.shape[1]}-dimensional embeddings but the generator "
                        f"{args.generator} takes {want} ({pipe.conditioner.config.target}): use a generator trained "
                        "on the align run's target space")
    args.scheduler, args.steps = resolve_sampling(args.scheduler, args.steps, pipe.sampler_config)
    t0 = time.time()
    images = pipe(emb, num_samples=args.num_samples, num_inference_steps=args.steps, scheduler=args.scheduler,
                  seed=args.seed, batch_size=args.batch_size, progress=True, precision=args.precision)
    return images, time.time() - t0, n, truth, ids, labels, datasets, world, str(folder)


def _from_dcldm(args):
    """Reconstruct with a DC-LDM (stage B)."""
    model_dir = resolve_model_dir(args.model)
    pipe = MindVisPipeline.from_pretrained(model_dir, args.device)
    world, truth, labels, datasets = None, None, None, None
    if args.fmri:
        fmri = read_fmri_file(args.fmri)
        ids = [str(i) for i in range(len(fmri))]
    else:
        split, world = split_from_run(model_dir, args.split)
        fmri, ids, labels, datasets = split.fmri, split.ids, split.labels, split.dataset
        truth = _truth_images(split, pipe.model.image_size)
    n_vox = pipe.model.conditioner.mae.config.num_voxels
    if fmri.shape[1] != n_vox:
        where = args.fmri or f"the {args.split} split of {model_dir.parent / 'config.yaml'}"
        raise DataError(f"{where}: {fmri.shape[1]} voxels, the model takes {n_vox} (another ROI, subject or "
                        "data.pad_mode?)")
    n = min(len(fmri), args.limit or len(fmri))
    args.scheduler, args.steps = resolve_sampling(args.scheduler, args.steps, pipe.model.sampler_config)
    t0 = time.time()
    images = pipe(torch.from_numpy(fmri[:n]), num_samples=args.num_samples, num_inference_steps=args.steps,
                  scheduler=args.scheduler, seed=args.seed, batch_size=args.batch_size, progress=True,
                  precision=args.precision, timings=args.timings)
    return images, time.time() - t0, n, truth, ids, labels, datasets, world, str(model_dir)


def main(argv=None) -> int:
    from .mindeye_sample_cli import dispatch

    if (rc := dispatch(argv)) is not None:  # a MindEye model: mindvis.pipelines.mindeye_sample
        return rc
    p = argparse.ArgumentParser(prog="mindvis-sample", description="Reconstruct images from fMRI with a trained DC-LDM "
                                "(or a mindvis-align decoder and an embedding generator): the paper's grid (ground "
                                "truth first, then the samples), one PNG per image, and an array file for mindvis-eval.",
                                formatter_class=PlainHelpFormatter)
    p.add_argument("--model", required=True, help="a mindvis-finetune run folder (uses best/) or a DC-LDM folder; with "
                                                  "--generator, a mindvis-align run folder; a MindEye model or run "
                                                  "(mindeye.json) has its own options: --model DIR --help")
    p.add_argument("--generator", metavar="DIR", help="an embedding-conditioned generator (mindvis-train-prior "
                                                      "--condition embedding): the align run's decoded embeddings "
                                                      "(its regression head) are drawn as images")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--split", choices=["test", "test-trials", "val", "train"], default="test",
                     help="pairs of the run's dataset, prepared as in training (default: test, the repetition "
                          "averages; test-trials: every single repetition of the test stimuli)")
    src.add_argument("--fmri", metavar="FILE", help="fMRI to decode instead: .npy/.npz/.h5, (N, voxels)")
    p.add_argument("--scheduler", choices=("auto", *SCHEDULERS), default="auto",
                   help="sampler (default auto: lcm for a student distilled by mindvis-distill, else "
                        f"{DEFAULT_SCHEDULER}; both chosen on validation as the fastest with the quality of the "
                        "paper's PLMS 250; the paper's protocol: --scheduler plms --steps 250 --precision fp32)")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help=f"denoising steps, >= 1 (default: {DEFAULT_LCM_STEPS} for lcm, {DEFAULT_STEPS} otherwise; "
                        "a student takes 1, 2, 4 ... up to its solver steps; paper: 250 PLMS)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of conditioning, UNet steps and decoding (autocast): fp32, bf16, fp16, or auto "
                        "(default: per stage the fastest type on this machine, measured once on this model size and "
                        "cached); the solver, the VQ codebook lookup and the images stay fp32")
    p.add_argument("--num-samples", type=int_at_least(1), default=5, help="images per fMRI, >= 1 (default 5; paper: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="images denoised at once, >= 1 (default: about a million output pixels, e.g. 1,024 images at 32 px "
                        "and 16 at 256 px: small models pay per call, large ones in memory)")
    p.add_argument("--limit", type=int_at_least(1), default=None, metavar="N",
                   help="decode only the first N fMRI samples, N >= 1 (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the DC-LDM (default: cuda when available)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the samples in an existing --out (its images/ folder is swapped once the new one is "
                        "complete); without it a non-empty --out is refused before anything is sampled")
    args = p.parse_args(argv)
    args.timings = {}
    try:
        check_output_folder(args.out, args.overwrite)
        images, seconds, n, truth, ids, labels, datasets, world, model_dir = (
            _from_align_run(args) if args.generator else _from_dcldm(args))
        samples = (images.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)  # (N, K, H, W, 3)
    except (DataError, FileNotFoundError, ConfigError, PriorFormatError) as e:
        print(f"mindvis-sample: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    from PIL import Image

    rows = [np.stack(([truth[i]] if truth is not None else []) + list(samples[i])) for i in range(n)]

    def write_images(folder: Path) -> None:  # a complete folder replaces an earlier one (--overwrite), never mixes
        for i in range(n):
            if truth is not None:
                Image.fromarray(truth[i]).save(folder / f"{i:04d}_gt.png")
            for k, img in enumerate(samples[i]):
                Image.fromarray(img).save(folder / f"{i:04d}_s{k}.png")

    atomic_dir(out / "images", write_images)
    save_image_grid(out / "grid.png", rows)
    arrays = {"samples": samples, "ids": np.array(ids[:n])}
    if truth is not None:
        arrays |= {"ground_truth": truth[:n], "labels": np.asarray(labels[:n]), "dataset": np.array(datasets[:n])}
    meta = {"model": model_dir, "generator": args.generator, "scheduler": args.scheduler, "steps": args.steps,
            "precision": args.precision, "num_samples": args.num_samples,
            "seed": args.seed, "split": None if args.fmri else args.split, "fmri_file": args.fmri,
            "stage_precision": args.timings.get("precision"),
            "stage_seconds": {k: round(v, 3) for k, v in args.timings.items() if isinstance(v, float)},
            "synthetic_world": world, "seconds": round(seconds, 2), "seconds_per_image": round(seconds / (n * args.num_samples), 4)}
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(out / "samples.npz", lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    atomic_write_json(out / "sample_config.json", meta)
    for report in ("eval.json", "eval.md", "nsd_eval.json", "nsd_eval.md"):  # --overwrite: they scored the old samples
        (out / report).unlink(missing_ok=True)
    print(f"{n} x {args.num_samples} samples in {seconds:.1f} s ({meta['seconds_per_image']} s/image); "
          f"grid: {out / 'grid.png'}; arrays: {out / 'samples.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
