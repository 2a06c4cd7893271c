"""MindEye's low-level path: fMRI -> a blurry image, and ``mindvis-train-lowlevel`` for MindEye1's model.

* MindEye1 (``train_autoencoder.py``; :class:`~mindvis.models.mindeye1.MindEye1LowLevel` = the reference's
  ``Voxel2StableDiffusionModel``, 4x mode): voxels -> Stable Diffusion VAE latents of the 512 px image (4 x 64 x 64,
  x 0.18215). Trained on the training images (every epoch once over the images, batch 8, 120 epochs): each batch
  combines each image's repetitions one way (``voxel_select``: with probability 0.5 a random convex combination,
  0.3 their mean, else one of them at random), loss ``L1(predicted, VAE.encode(2 x - 1).mode() x 0.18215) /
  0.18215`` plus, with a teacher, ``0.1 x`` a soft contrastive loss (temperature 0.075) between the model's maps
  projector and the teacher's feature maps of the image and of an augmented copy. AdamW (weight decay 1e-2 except
  names holding "bias"), OneCycle to 5e-4 (2 warm-up epochs, final division 1000), stepped per batch.
* MindEye2's blurry branch lives in :class:`~mindvis.models.mindeye2.MindEye2Network` (trained with the network by
  the MindEye2 recipe); its latents are of 224 px images (4 x 28 x 28).
* Both are decoded by a diffusers ``AutoencoderKL`` from a local folder: MindEye1 by Versatile Diffusion's VAE
  (``vae.decode(z / 0.18215) / 2 + 0.5``, not clamped where it starts img2img), MindEye2 by the Stable Diffusion
  image-variation VAE (``sd_image_var_autoenc.pth``, :func:`convert_sd_autoencoder`; clamped to [0, 1]).

The teacher: MindEye1's is MedARC's ConvNeXt-XL with a 2048 -> 512 -> 512 -> 512 MLP, loaded from a checkpoint that
is not public (and with ``strict=False`` inside a try/except, so which of its weights the reference used cannot be
known from the code): not available here. ``teacher=""`` leaves the term out (the log and ``lowlevel.json`` say so);
``teacher=synthetic`` uses the synthetic world's classifier (its last 8 x 8 feature map, 128 channels, at 32 px) as
a stand-in, with a small torch augmentation (colour jitter, grayscale, resized crop) in place of kornia's.

For the synthetic world (no VAE), ``target=pixels`` regresses the image itself at ``4 x grid_side`` px in [-1, 1]
(3 channels) and decodes it as ``x / 2 + 0.5``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from ..finetune.config import DataConfig
from ..models.mindeye1 import MindEye1LowLevel, MindEye1LowLevelConfig

log = logging.getLogger("mindvis.lowlevel")

SD_SCALE = 0.18215
ME1_LOWLEVEL_TEMPERATURE = 0.075
ME1_LOWLEVEL_CONT_WEIGHT = 0.1
IMAGENET_MEAN, CONVNEXT_STD = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)  # the reference's (note 0.228)


# ------------------------------------------------------------------------------------------------ decoding


def load_vae(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A diffusers ``AutoencoderKL`` from a local folder (config.json + weights), in eval mode."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers AutoencoderKL folder (config.json is missing)")
    return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype).eval()


class BlurryDecoder:
    """Low-level outputs -> images: ``vae`` latents (``decode(z / 0.18215) / 2 + 0.5``) or ``pixels``
    (``x / 2 + 0.5``). ``clamp``: to [0, 1] (MindEye2's blurry images, and what is saved); MindEye1 starts img2img
    from the unclamped image."""

    def __init__(self, vae=None, scale: float = SD_SCALE):
        self.vae, self.scale = vae, scale

    @property
    def kind(self) -> str:
        return "pixels" if self.vae is None else "vae"

    @torch.no_grad()
    def __call__(self, out: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        if self.vae is None:
            if out.shape[1] != 3:
                raise ValueError(f"the low-level output has {out.shape[1]} channels: VAE latents need a VAE folder")
            x = out.float() / 2 + 0.5
        else:
            x = self.vae.decode((out / self.scale).to(self.vae.dtype)).sample.float() / 2 + 0.5
        return x.clamp(0, 1) if clamp else x


def output_channels(module) -> int:
    """The channels a low-level decoder (a diffusers VAE ``Decoder``) outputs: 4 = VAE latents, 3 = pixels."""
    return int(module.conv_out.out_channels)


def convert_sd_autoencoder(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """MindEye2's ``sd_image_var_autoenc.pth`` (a diffusers ``AutoencoderKL`` state dict: 4 blocks 128/256/512/512,
    2 layers per block, sample size 256; read without running pickled code) -> a diffusers folder."""
    from diffusers import AutoencoderKL

    from ..compat.safe_pickle import CheckpointError, load_torch_checkpoint

    sd = load_torch_checkpoint(src, what="Stable Diffusion autoencoder")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or "decoder.conv_out.weight" not in sd:
        raise CheckpointError(f"{src}: not a diffusers AutoencoderKL state dict (no decoder.conv_out.weight)")
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks."))
    widths = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(n)]
    layers = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down_blocks.0.resnets."))
    vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                        block_out_channels=widths, layers_per_block=layers,
                        latent_channels=int(sd["decoder.conv_in.weight"].shape[1]), sample_size=256)
    missing, unexpected = vae.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{src}: does not fit an AutoencoderKL of widths {widths}: missing {sorted(missing)[:4]}, "
                              f"unexpected {sorted(unexpected)[:4]}")
    vae.save_pretrained(out)
    return Path(out)


# ------------------------------------------------------------------------------------------------ training


def _data_config_default() -> DataConfig:
    return DataConfig(dataset="nsd", nsd_train_trials="single", val_fraction=0.0, include_test_trials=False)


@dataclass
class LowLevelConfig:
    """``mindvis-train-lowlevel``: MindEye1's low-level model (defaults: the released ``autoencoder_subj01_4x_
    locont_no_reconst`` recipe; the model's sizes except the voxel count)."""

    data: DataConfig = field(default_factory=_data_config_default)
    target: str = ""  # a diffusers AutoencoderKL folder (Versatile Diffusion's / SD's VAE) | pixels
    image_size: int = 512  # the image the VAE encodes (MindEye1: 512); pixels: 4 x grid_side
    hidden: int = 4096
    n_blocks: int = 4
    latent_channels: int = 64
    grid_side: int = 16
    decoder_channels: List[int] = field(default_factory=lambda: [64, 128, 256])
    decoder_norm_groups: int = 32
    maps_hidden: int = 512
    maps_dim: int = 512
    teacher: str = ""  # "" (contrastive term off: MedARC's ConvNeXt-XL is not available) | synthetic (stand-in)
    cont_weight: float = ME1_LOWLEVEL_CONT_WEIGHT
    cont_temperature: float = ME1_LOWLEVEL_TEMPERATURE
    epochs: int = 120
    batch_size: int = 8
    max_lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup_epochs: float = 2.0  # OneCycle pct_start = warmup / epochs
    voxel_select: bool = True
    seed: int = 0
    output_dir: str = "runs/lowlevel"


def voxel_select(groups: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """MindEye1's ``utils.voxel_select`` for one batch: ``groups`` = each image's repetitions (R_i, V). One draw
    for the batch chooses: <= 0.5 a random convex combination per image (uniform weights), <= 0.8 the mean, else
    one repetition per image at random. Images with one repetition give it in every case."""
    choice = float(torch.rand(1, generator=gen))
    if choice <= 0.5:
        return torch.stack([(w := torch.rand(len(g), 1, generator=gen)).mul(g).sum(0) / w.sum() for g in groups])
    if choice <= 0.8:
        return torch.stack([g.mean(0) for g in groups])
    return torch.stack([g[int(torch.randint(0, len(g), (1,), generator=gen))] for g in groups])


def soft_cont_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_aug: torch.Tensor,
                   temperature: float = ME1_LOWLEVEL_TEMPERATURE) -> torch.Tensor:
    """The reference's ``soft_cont_loss`` (single process) on (B, n, C) maps flattened to rows, L2-normalised."""
    from ..contrastive import mindeye2_blurry_contrastive_loss

    return mindeye2_blurry_contrastive_loss(student, teacher, teacher_aug, temperature)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A small stand-in for the reference's kornia augmentation: colour jitter (brightness, contrast, saturation
    0.4, 0.4, 0.2; p 0.8), grayscale (p 0.2), random resized crop (scale 0.5-1) back to the size."""
    b, _, h, w = x.shape
    out = []
    for i in range(b):
        im = x[i]
        if float(torch.rand(1, generator=gen)) < 0.8:
            f = 1 + (torch.rand(3, generator=gen) * 2 - 1) * torch.tensor([0.4, 0.4, 0.2])
            im = (im * f[0]).clamp(0, 1)
            m = im.mean()
            im = ((im - m) * f[1] + m).clamp(0, 1)
            g = (im * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
            im = ((im - g) * f[2] + g).clamp(0, 1)
        if float(torch.rand(1, generator=gen)) < 0.2:
            im = (im * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True).expand(3, -1, -1)
        s = float(0.5 + 0.5 * torch.rand(1, generator=gen))
        ch, cw = max(1, int(round(h * s ** 0.5))), max(1, int(round(w * s ** 0.5)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        im = F.interpolate(im[None, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                           align_corners=False)[0]
        out.append(im)
    return torch.stack(out)


def synthetic_teacher(data_cfg, cache_dir=None):
    """The synthetic world's classifier as the teacher: (B, 3, H, W) in [0, 1] -> (B, 64, 128) maps at 32 px."""
    from ..evaluation.classifiers import synthetic_classifier
    from ..finetune.data import synthetic_world

    world = synthetic_world(data_cfg)
    if world is None:
        raise ValueError("teacher=synthetic needs data from the synthetic world")
    clf = synthetic_classifier(world, 32, cache_dir).eval()
    spatial = clf.net.body[:-2]  # without the pooling and flattening

    @torch.no_grad()
    def fn(x):
        x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return spatial((x - 0.5) / 0.5).flatten(2).transpose(1, 2)

    return fn


def lowlevel_targets(images: np.ndarray, target: str, image_size: int, batch: int = 16) -> torch.Tensor:
    """(N, C, h, w) regression targets of uint8 images (N, H, W, 3): ``pixels`` ([-1, 1] at ``image_size``) or the
    VAE latents ``mode() x 0.18215`` of the images resized to ``image_size`` (bilinear, antialiased: the reference's
    ``F.interpolate(..., antialias=True)``)."""
    vae = None if target == "pixels" else load_vae(target)
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        if vae is None:
            out.append(x * 2 - 1)
        else:
            with torch.no_grad():
                out.append(vae.encode(2 * x - 1).latent_dist.mode() * SD_SCALE)
    return torch.cat(out)


def image_groups(ids: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(first row of each distinct id, the rows of each id) in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, s in enumerate(ids):
        rows.setdefault(s, []).append(i)
    groups = [np.array(r) for r in rows.values()]
    return np.array([g[0] for g in groups]), groups


def train_lowlevel(cfg: LowLevelConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Train MindEye1's low-level model on ``cfg.data``'s training pairs; write ``out/lowlevel/`` (the model),
    ``out/lowlevel.json`` (what it regresses, the recipe, the loss per epoch) and ``out/loss_curve.png``."""
    from tqdm.auto import tqdm

    from ..finetune.data import build_stage_b_data
    from ..mindeye_recipe import mindeye_optimizer
    from ..utils.io import atomic_dir, atomic_write_json
    from ..utils.plots import plot_loss_curves

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if not 0 < cfg.warmup_epochs < cfg.epochs:
        raise ValueError(f"warmup_epochs={cfg.warmup_epochs} must be above 0 and below epochs={cfg.epochs} (OneCycle's "
                         "pct_start = warmup_epochs / epochs)")
    if not cfg.target:
        raise ValueError("target is empty: give a diffusers AutoencoderKL folder (the VAE whose latents the model "
                         "regresses) or pixels (the synthetic world)")
    data = build_stage_b_data(cfg.data, 1, cfg.seed)
    first, groups = image_groups(data.train.ids)
    images = data.train.images[first]
    fmri = torch.from_numpy(np.asarray(data.train.fmri, dtype=np.float32))
    size = 4 * cfg.grid_side if cfg.target == "pixels" else cfg.image_size
    targets = lowlevel_targets(images, cfg.target, size)
    teacher = synthetic_teacher(cfg.data, cfg.data.cache_dir or None) if cfg.teacher == "synthetic" else None
    if cfg.teacher not in ("", "synthetic"):
        raise ValueError(f"teacher={cfg.teacher!r}: '' (off) or synthetic")
    mcfg = MindEye1LowLevelConfig(num_voxels=fmri.shape[1], hidden=cfg.hidden, n_blocks=cfg.n_blocks,
                                  latent_channels=cfg.latent_channels, grid_side=cfg.grid_side,
                                  decoder_channels=list(cfg.decoder_channels),
                                  decoder_norm_groups=cfg.decoder_norm_groups, out_channels=int(targets.shape[1]),
                                  use_cont=teacher is not None, maps_hidden=cfg.maps_hidden, maps_dim=cfg.maps_dim)
    model = MindEye1LowLevel(mcfg)
    probe = model.decoder(torch.zeros(1, cfg.latent_channels, cfg.grid_side, cfg.grid_side))
    if probe.shape[1:] != targets.shape[1:]:
        raise ValueError(f"the model outputs {tuple(probe.shape[1:])} but the targets are {tuple(targets.shape[1:])} "
                         "(grid_side x 4 must be the latent / image side)")
    if teacher is not None:
        with torch.no_grad():
            t_maps = teacher(torch.from_numpy(np.ascontiguousarray(images[:1])).permute(0, 3, 1, 2).float() / 255)
            s_maps = model.forward_with_maps(fmri[:2])[1]
        if t_maps.shape[1:] != s_maps.shape[1:]:
            raise ValueError(f"teacher={cfg.teacher} gives maps {tuple(t_maps.shape[1:])}, the model's maps projector "
                             f"{tuple(s_maps.shape[1:])} (set grid_side and maps_dim to the teacher's grid and width)")
    steps = len(first) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"{len(first)} training images for batches of {cfg.batch_size}")
    opt = mindeye_optimizer([(model, "split")], cfg.max_lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=cfg.epochs * steps,
                                                final_div_factor=1000, last_epoch=-1,
                                                pct_start=cfg.warmup_epochs / cfg.epochs)
    scale = SD_SCALE if cfg.target != "pixels" else 1.0
    group_rows = [torch.from_numpy(g) for g in groups]
    history = []
    log.info("MindEye1 low-level: %d training images (%d trials), %d voxels, target %s %s, %.1fM parameters, "
             "contrastive term %s", len(first), len(fmri), fmri.shape[1], cfg.target, tuple(targets.shape[1:]),
             sum(p.numel() for p in model.parameters()) / 1e6,
             f"on ({cfg.teacher} teacher, x {cfg.cont_weight}, temperature {cfg.cont_temperature})" if teacher
             else "off (no teacher: MindEye1's ConvNeXt-XL is not available)")
    for epoch in tqdm(range(cfg.epochs), desc="low-level", disable=not progress):
        model.train()
        perm = torch.randperm(len(first), generator=gen)
        sums = {"l1": 0.0, "cont": 0.0, "loss": 0.0}
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            reps = [fmri[group_rows[i]] for i in idx.tolist()]
            x = voxel_select(reps, gen) if cfg.voxel_select else torch.stack([r.mean(0) for r in reps])
            opt.zero_grad()
            if teacher is not None:
                pred, maps = model.forward_with_maps(x)
                img = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).permute(0, 3, 1, 2).float() / 255
                cont = soft_cont_loss(maps, teacher(img), teacher(_augment(img, gen)), cfg.cont_temperature)
            else:
                pred, cont = model(x), torch.zeros(())
            l1 = F.l1_loss(pred, targets[idx])
            loss = l1 / scale + cfg.cont_weight * cont
            loss.backward()
            opt.step()
            sched.step()
            sums["l1"] += l1.item()
            sums["cont"] += cont.item()
            sums["loss"] += loss.item()
        history.append({k: v / steps for k, v in sums.items()} | {"epoch": epoch + 1})
    model.eval()
    out = Path(out)
    meta = {"family": "mindeye1", "component": "lowlevel", "target": cfg.target,
            "target_kind": "pixels" if cfg.target == "pixels" else "vae-latents",
            "target_shape": list(targets.shape[1:]), "image_size": size, "latent_scale": scale,
            "contrastive": (f"{cfg.teacher} teacher (stand-in for MindEye1's ConvNeXt-XL), x {cfg.cont_weight}, "
                            f"temperature {cfg.cont_temperature}") if teacher else
                           "off: MindEye1's ConvNeXt-XL teacher is not available (teacher='')",
            "train_images": int(len(first)), "train_trials": int(len(fmri)),
            "config": {k: v for k, v in asdict(cfg).items() if k != "data"}, "data": str(cfg.data.path),
            "history": history, "seconds": round(time.time() - t0, 1)}

    def fill(tmp: Path) -> None:  # the folder appears complete or not at all
        model.save_pretrained(tmp / "lowlevel")
        atomic_write_json(tmp / "lowlevel.json", meta)
        plot_loss_curves(tmp / "loss_curve.png", {"loss": ([h["epoch"] for h in history],
                                                           [h["loss"] for h in history])})

    atomic_dir(out, fill)
    log.info("low-level model written to %s (%.0f s)", out, meta["seconds"])
    return out


def main(argv=None) -> int:
    from omegaconf import OmegaConf

    from ..config import ConfigError, build_config
    from ..data.fmri import DataError
    from ..utils.cli import PlainHelpFormatter, check_output_folder

    p = argparse.ArgumentParser(
        prog="mindvis-train-lowlevel", description="Train MindEye1's low-level model (voxels -> Stable Diffusion VAE "
        "latents, or -> the image for the synthetic world) on a prepared NSD subject; the blurry images it gives "
        "start MindEye1's img2img (mindvis-sample --lowlevel).",
        epilog="overrides: LowLevelConfig fields as key=value, e.g. epochs=30 hidden=512 teacher=synthetic",
        formatter_class=PlainHelpFormatter)
    p.add_argument("--data-path", required=True, metavar="DIR", help="a folder mindvis-prep nsd wrote")
    p.add_argument("--target", required=True, metavar="VAE_DIR|pixels",
                   help="the diffusers AutoencoderKL folder whose latents are regressed (MindEye1: Versatile "
                        "Diffusion's vae/), or pixels (the synthetic world)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (lowlevel/, lowlevel.json): new or empty")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out once the new model is complete "
                                                            "(without it a non-empty --out is refused before training)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = OmegaConf.to_object(build_config(LowLevelConfig, overrides=[
            f"data.path={args.data_path}", f"target={args.target}", *args.overrides]))
        check_output_folder(args.out, args.overwrite)
        train_lowlevel(cfg, args.out)
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"mindvis-train-lowlevel: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
