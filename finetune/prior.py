"""``mindvis-train-prior``: train a small latent diffusion prior where no pretrained one can be had.

The prior has the parts stage B expects: a VQ-f4 autoencoder (diffusers VQModel) and a UNet with
cross-attention (UNet2DConditionModel), trained class-conditionally like the label2img prior MinD-Vis
starts from: a class embedding is the single cross-attention token (a null class is dropped in 10 %
of steps). The folder it writes (``unet/``, ``vae/``, ``scheduler/``, ``class_embedder/``) is a
diffusers-style prior folder for ``mindvis-finetune model.prior=DIR``.

With ``condition=embedding`` the single token is instead the image's own embedding in ``target`` (through an
:class:`~mindvis.models.embedding_conditioner.EmbeddingConditioner`, saved as ``embedding_conditioner/``): a
generator that turns decoded embeddings (``mindvis-align``) into images (``mindvis-sample --generator``).
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
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from mindvis.config import ConfigError, build_config, save_config
from mindvis.data.fmri import DataError
from mindvis.models.image_embedders import EmbedderUnavailable
from mindvis.models.priors import LDM_SCHEDULE
from mindvis.utils.cache import default_cache_dir
from mindvis.utils.cli import PlainHelpFormatter, check_output_folder
from mindvis.utils.io import atomic_dir, atomic_write_json
from mindvis.utils.plots import plot_loss_curves
from mindvis.world import SyntheticWorld, SyntheticWorldConfig

from .config import PriorConfig

log = logging.getLogger("mindvis.finetune.prior")  # shows in the finetune log when called from it


def prior_images(cfg: PriorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, S, S, 3), class ids) to train on."""
    from PIL import Image

    if cfg.images == "synthetic":
        world = SyntheticWorld(cfg.synthetic)
        classes = np.repeat(np.arange(world.n_classes), cfg.images_per_class)
        imgs = world.render(classes, stream=3)  # stream 3: never the GOD/BOLD5000 stimuli
    else:
        folder = Path(cfg.images)
        if not folder.is_dir():
            raise DataError(f"image folder not found: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise DataError(f"no .png/.jpg images under {folder}")
        names = sorted({p.parent.name for p in files})
        classes = np.array([names.index(p.parent.name) for p in files])
        imgs = []
        for p in files:
            with Image.open(p) as im:
                imgs.append(np.asarray(im.convert("RGB")))
        imgs = np.stack([np.asarray(Image.fromarray(i).resize((cfg.image_size,) * 2, Image.BICUBIC)) for i in imgs])
    if imgs.shape[1] != cfg.image_size:
        t = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(cfg.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        imgs = t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return imgs, classes


def build_prior_models(cfg: PriorConfig, n_classes: int):
    from diffusers import UNet2DConditionModel, VQModel

    n_levels = len(cfg.vq_channels)
    vae = VQModel(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n_levels,
                  up_block_types=["UpDecoderBlock2D"] * n_levels, block_out_channels=list(cfg.vq_channels),
                  layers_per_block=1, latent_channels=cfg.latent_channels, num_vq_embeddings=cfg.vq_codebook,
                  vq_embed_dim=cfg.latent_channels, norm_num_groups=min(32, min(cfg.vq_channels)),
                  sample_size=cfg.image_size, scaling_factor=1.0)
    k = len(cfg.unet_channels)
    unet = UNet2DConditionModel(sample_size=cfg.image_size // 2 ** (n_levels - 1), in_channels=cfg.latent_channels,
                                out_channels=cfg.latent_channels, block_out_channels=list(cfg.unet_channels),
                                down_block_types=["CrossAttnDownBlock2D"] * k, up_block_types=["CrossAttnUpBlock2D"] * k,
                                layers_per_block=1, cross_attention_dim=cfg.context_dim, attention_head_dim=8,
                                norm_num_groups=min(32, min(cfg.unet_channels)))
    embedder = torch.nn.Embedding(n_classes + 1, cfg.context_dim)  # last row: the null class
    return vae, unet, embedder


def _batches(n: int, batch: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch] for i in range(0, n, batch)]


def train_prior(cfg: PriorConfig, out: str | Path) -> Path:
    """Train the autoencoder, then the UNet on its latents; write the prior folder ``out``."""
    from diffusers import DDPMScheduler

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    imgs, classes = prior_images(cfg)
    n_classes = int(classes.max()) + 1
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, S, S)
    y_all = torch.from_numpy(classes).long()
    vae, unet, embedder = build_prior_models(cfg, n_classes)
    if cfg.condition not in ("class", "embedding"):
        raise ConfigError(f"condition={cfg.condition!r} is not allowed: must be class or embedding")
    if cfg.condition == "embedding":
        from mindvis.models.embedding_conditioner import EmbeddingConditioner, EmbeddingConditionerConfig
        from mindvis.models.image_embedders import cached_embeddings, load_embedder

        world = cfg.synthetic if cfg.images == "synthetic" else None
        target_model = load_embedder(cfg.target, world, cfg.cache_dir or None)
        cond_all = torch.from_numpy(cached_embeddings(target_model, imgs, cfg.cache_dir or None,
                                                      str(world.image_settings()) if world else ""))
        embedder = EmbeddingConditioner(EmbeddingConditionerConfig(cond_all.shape[1], cfg.context_dim, cfg.target))
        log.info("prior conditioned on %s embeddings (%d dims)", cfg.target, cond_all.shape[1])
    log.info("prior: %d images of %d classes at %dpx; VQ %.2fM, UNet %.2fM parameters", len(x_all), n_classes,
             cfg.image_size, sum(p.numel() for p in vae.parameters()) / 1e6,
             sum(p.numel() for p in unet.parameters()) / 1e6)
    history = {"vq": [], "ldm": []}

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vq_lr, weight_decay=0.0)
    for epoch in tqdm(range(cfg.vq_epochs), desc="VQ autoencoder"):
        losses = []
        for idx in _batches(len(x_all), cfg.batch_size, gen):
            x = x_all[idx]
            out_ = vae(x)
            loss = F.l1_loss(out_.sample, x) + F.mse_loss(out_.sample, x) + out_.commit_loss.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history["vq"].append(float(np.mean(losses)))
        log.info("VQ epoch %d: loss %.4f", epoch + 1, history["vq"][-1])
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i:i + 64]).latents for i in range(0, len(x_all), 64)])
    scale = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scale)  # unit-variance latents, as Stable Diffusion's 0.18215
    lat = lat * scale

    sched = DDPMScheduler(**LDM_SCHEDULE)
    params = list(unet.parameters()) + list(embedder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    for epoch in tqdm(range(cfg.ldm_epochs), desc="latent diffusion"):
        losses = []
        for idx in _batches(len(lat), cfg.batch_size, gen):
            z0 = lat[idx]
            drop = torch.rand(len(idx), generator=gen) < 0.1  # null condition for guidance-free training
            if cfg.condition == "embedding":
                context = embedder(cond_all[idx], drop)
            else:
                context = embedder(torch.where(drop, n_classes, y_all[idx]))[:, None]
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(z0),), generator=gen)
            pred = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=context).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
        history["ldm"].append(float(np.mean(losses)))
        log.info("LDM epoch %d: loss %.4f", epoch + 1, history["ldm"][-1])

    def fill(tmp: Path):
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        sched.save_pretrained(tmp / "scheduler")
        if cfg.condition == "embedding":
            embedder.save_pretrained(tmp / "embedding_conditioner")
        else:
            (tmp / "class_embedder").mkdir()
            from safetensors.torch import save_file

            save_file({"weight": embedder.weight.detach().contiguous()}, tmp / "class_embedder" / "model.safetensors")
            atomic_write_json(tmp / "class_embedder" / "config.json", {"num_classes": n_classes,
                                                                      "null_class": n_classes,
                                                                      "context_dim": cfg.context_dim})
        save_config(OmegaConf.structured(cfg), tmp / "prior_config.yaml")
        atomic_write_json(tmp / "history.json", {**history, "seconds": round(time.time() - t0, 1), "images": len(x_all)})
        plot_loss_curves(tmp / "loss_curve.png",
                         {"VQ autoencoder": (list(range(1, len(history["vq"]) + 1)), history["vq"]),
                          "latent diffusion": (list(range(1, len(history["ldm"]) + 1)), history["ldm"])},
                         title="prior training")

    out = atomic_dir(out, fill)
    log.info("prior written to %s (%.0f s)", out, time.time() - t0)
    return out


@torch.no_grad()
def sample_classes(prior: str | Path, class_ids, num_samples: int = 5, steps: int = 25, seed: int = 0,
                   batch_size: int = 64) -> torch.Tensor:
    """Images the prior draws for its own class labels: (N, num_samples, 3, H, W) in [0, 1]. Scored like
    reconstructions, they are the ceiling of what decoding through this prior can reach."""
    from safetensors.torch import load_file

    from mindvis.pipelines.embedding_pipeline import load_generator_parts, sample_with_context
    from mindvis.pipelines.mindvis_pipeline import make_scheduler

    prior = Path(prior)
    if not (prior / "class_embedder" / "model.safetensors").is_file():
        raise FileNotFoundError(f"{prior} is not a class-conditional prior written by mindvis-train-prior "
                                "(no class_embedder/)")
    unet, vae, scheduler_config = load_generator_parts(prior)
    table = load_file(prior / "class_embedder" / "model.safetensors")["weight"]
    sched = make_scheduler("dpm++", scheduler_config)
    y = torch.as_tensor(np.asarray(class_ids)).long()
    if y.min() < 0 or y.max() >= len(table) - 1:
        raise ValueError(f"class ids must lie in [0, {len(table) - 1}) for {prior}")
    return sample_with_context(unet, vae, sched, table[y][:, None], num_samples, steps, seed, batch_size)


def prior_fingerprint(cfg: PriorConfig) -> str:
    """A short hash of the prior's settings; of the world, only what decides the images counts."""
    import hashlib

    settings = OmegaConf.to_container(OmegaConf.structured(cfg))
    if settings["condition"] == "class":  # the fingerprint of class priors cached before these settings existed
        settings.pop("condition"), settings.pop("target")
    world = SyntheticWorldConfig(**settings.pop("synthetic"))
    settings["synthetic_images"] = world.image_settings()
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


#: priors trained by ``mindvis-train-prior`` with the default settings, shipped with mindvis: ``synthetic-<fingerprint>``
SHIPPED = Path(__file__).parent / "shipped"


def shipped_prior(fingerprint: str) -> Path | None:
    """The shipped prior folder with this fingerprint, or None."""
    folder = SHIPPED / f"synthetic-{fingerprint}"
    return folder if (folder / "unet" / "config.json").is_file() else None


def install_shipped(src: Path, out: Path) -> Path:
    """Copy a shipped prior into the cache folder ``out`` with its weights in float32 (they may be stored in half
    precision to keep the package small), so that it is an ordinary prior folder from then on."""
    import shutil

    from safetensors.torch import load_file, save_file

    def fill(tmp: Path):
        for f in src.rglob("*"):
            if f.is_dir() or f.name == "README.md":
                continue
            dest = tmp / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".safetensors":
                save_file({k: v.float().contiguous() for k, v in load_file(f).items()}, dest)
            else:
                shutil.copy2(f, dest)

    return atomic_dir(out, fill)


def ensure_synthetic_prior(world_cfg, cache_dir=None) -> Path:
    """The cached prior of the synthetic world with the default recipe: the one shipped with mindvis when its
    fingerprint (the world's image settings and the training recipe) matches, otherwise trained on first use."""
    cfg = PriorConfig(synthetic=world_cfg)
    fp = prior_fingerprint(cfg)
    out = Path(cache_dir or default_cache_dir()) / "priors" / f"synthetic-{fp}"
    if not (out / "unet" / "config.json").is_file():
        shipped = shipped_prior(fp)
        if shipped is not None:
            log.info("using the synthetic world's prior shipped with mindvis (fingerprint %s) -> %s", fp, out)
            install_shipped(shipped, out)
        else:
            log.info("training the synthetic world's prior once into %s (mindvis-train-prior; no shipped prior has "
                     "fingerprint %s)", out, fp)
            train_prior(cfg, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="mindvis-train-prior", description="Train a small latent diffusion prior (VQ-f4 autoencoder + "
        "class-conditional UNet) on the synthetic world or an image folder (one subfolder per class).",
        epilog="overrides: PriorConfig fields as key=value, e.g. image_size=64 ldm_epochs=50 synthetic.seed=1",
        formatter_class=PlainHelpFormatter)
    p.add_argument("--images", default="synthetic", help="'synthetic' or an image folder (default: synthetic)")
    p.add_argument("--condition", choices=["class", "embedding"], default="class",
                   help="class (the label2img-like prior stage B fine-tunes; default) or embedding (a generator for "
                        "embeddings decoded by mindvis-align)")
    p.add_argument("--target", default="synthetic", metavar="SPACE",
                   help="--condition embedding: the embedding space (as mindvis-align --target; default synthetic)")
    p.add_argument("--out", required=True, metavar="DIR", help="prior folder to write: new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing prior folder (once the new one is complete)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="PriorConfig settings (see below)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.propagate = True
    try:
        cfg = OmegaConf.to_object(build_config(PriorConfig, overrides=[
            f"images={args.images}", f"condition={args.condition}", f"target={args.target}", *args.overrides]))
        check_output_folder(args.out, args.overwrite)
        train_prior(cfg, args.out)
    except (ConfigError, DataError, EmbedderUnavailable) as e:
        print(f"mindvis-train-prior: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
