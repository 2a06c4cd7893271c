"""MindEye2's generator files -> diffusers folders: the unCLIP checkpoint, the blurry VAE, the bigG -> L converter.

**unCLIP** (``unclip6_epoch0_step110000.ckpt``, Stability's ``sgm`` ``DiffusionEngine`` trained by MindEye2's
authors; config ``generative_models/configs/unclip6.yaml``): a ``state_dict`` with

* ``model.diffusion_model.*`` -- sgm's ``UNetModel`` in SDXL's layout (model channels 320, multipliers 1/2/4, two
  res blocks per level, spatial transformers with linear projections at the two lower resolutions of depth 2 and
  10, and 10 in the middle; cross-attention width 1664 = bigG's token width; ``num_classes: sequential`` with
  ``adm_in_channels`` 1024: the "vector" = four 256-wide sinusoidal embeddings of original size (h, w) and crop
  (top, left)). **Maps exactly** onto diffusers' ``UNet2DConditionModel`` as diffusers maps SDXL:
  ``addition_embed_type="text_time"`` with ``addition_time_embed_dim=256`` and a zero-width ``text_embeds`` (the
  vector holds no pooled text embedding), ``label_emb.0.{0,2}`` -> ``add_embedding.linear_{1,2}``, every block by
  diffusers' own LDM key map (``convert_ldm_unet_checkpoint``). Not stored in the tensors and taken from the config:
  64 channels per attention head (``num_head_channels``).
* ``first_stage_model.*`` -- the SDXL VAE (``ch`` 128, multipliers 1/2/4/4, 2 res blocks, 4 latent channels).
  **Maps exactly** onto diffusers' ``AutoencoderKL`` (``convert_ldm_vae_checkpoint``; scale factor 0.13025).
* ``conditioner.embedders.0.*`` -- the frozen OpenCLIP ViT-bigG/14 image embedder that made the training condition.
  **Not converted**: MindEye2 feeds the prior's predicted tokens, never an image (its weights are
  laion2b_s39b_b160k's, which ``openclip-bigg-14-tokens:SRC`` loads when ground-truth tokens are wanted). The two
  ``ConcatTimestepEmbedderND`` have no weights (their sinusoids are diffusers' time-id embedding).
* ``denoiser.sigmas`` -- the 1000 discrete sigmas of the scaled-linear schedule (0.00085 -> 0.012): checked against
  the schedule, not copied (the sampler recomputes them).
* any other key is an error (named).

What the sampler needs beyond the weights is in ``unclip.json`` (``settings``): the schedule, the scale factor, the
size condition (768, 768) / crop (0, 0), 38 Euler steps, CFG 5, offset noise 0.04 and the output mapping
``x * 0.8 + 0.2`` of MindEye2's ``utils.unclip_recon``.

**Blurry VAE** (``sd_image_var_autoenc.pth``): already a diffusers ``AutoencoderKL`` state dict ->
:func:`mindvis.pipelines.mindeye_lowlevel.convert_sd_autoencoder`.

**bigG -> L converter** (``bigG_to_L_epoch8.pth``: ``{"model_state_dict": {linear1.*, linear2.*}}``) -> a
safetensors file (:class:`mindvis.pipelines.mindeye_refine.BigGToL`).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from .safe_pickle import CheckpointError, load_torch_checkpoint

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
SKIPPED_PREFIXES = ("conditioner.embedders.0.",)
CHECKED_KEYS = ("denoiser.sigmas",)


def read_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a ``.safetensors`` file or of a torch checkpoint's ``state_dict`` (no pickled code run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    ckpt = load_torch_checkpoint(path, what="unCLIP checkpoint")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: not a checkpoint with a state_dict")
    return sd


def _levels(sd: dict) -> tuple[int, int, list[int], list[int], int]:
    """(model channels, res blocks per level, channel multipliers, transformer depth per level (0: none), middle
    depth) of an sgm / LDM UNet state dict (keys without the prefix)."""
    ch = int(sd["input_blocks.0.0.weight"].shape[0])
    n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    downs = [i for i in range(n_in) if f"input_blocks.{i}.0.op.weight" in sd]
    per_level = downs[0] - 1 if downs else n_in - 1
    levels = len(downs) + 1
    mult, depth = [], []
    for lev in range(levels):
        first = 1 + lev * (per_level + 1)
        mult.append(int(sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]) // ch)
        blocks = {int(m.group(1)) for k in sd
                  if (m := re.match(rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.", k))}
        depth.append(len(blocks))
    mid = len({int(m.group(1)) for k in sd if (m := re.match(r"middle_block\.1\.transformer_blocks\.(\d+)\.", k))})
    return ch, per_level, mult, depth, mid


def unet_config(sd: dict, num_head_channels: int = 64, sample_size: int = 96, size_values: int = 4) -> dict:
    """The diffusers ``UNet2DConditionModel`` config of an SDXL-layout sgm UNet (keys without the prefix);
    ``size_values``: how many numbers the "vector" embeds (unCLIP: original size and crop, 4), each in
    ``adm_in_channels / size_values`` sinusoids."""
    ch, per_level, mult, depth, mid = _levels(sd)
    widths = [ch * m for m in mult]
    attn = [d > 0 for d in depth]
    k0 = next(k for k in sd if k.endswith("attn2.to_k.weight"))
    proj = next(k for k in sd if k.endswith(".proj_in.weight"))
    cfg = {
        "sample_size": sample_size, "in_channels": int(sd["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(sd["out.2.weight"].shape[0]), "layers_per_block": per_level,
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": [max(d, 1) for d in depth],
        "attention_head_dim": [w // num_head_channels for w in widths],  # diffusers' name for the number of heads
        "cross_attention_dim": int(sd[k0].shape[1]), "use_linear_projection": sd[proj].ndim == 2,
        "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
        "center_input_sample": False,
    }
    if mid and mid != depth[-1]:
        raise CheckpointError(f"middle-block transformer depth {mid} differs from the last level's {depth[-1]}: "
                              "not a layout diffusers' UNet2DConditionModel expresses")
    if "label_emb.0.0.weight" in sd:
        adm = int(sd["label_emb.0.0.weight"].shape[1])
        if adm % size_values:
            raise CheckpointError(f"adm_in_channels {adm} is not {size_values} size embeddings")
        cfg |= {"addition_embed_type": "text_time", "addition_time_embed_dim": adm // size_values,
                "projection_class_embeddings_input_dim": adm}
    return cfg


def vae_config(sd: dict, scaling_factor: float = 0.13025, sample_size: int = 768) -> dict:
    """The diffusers ``AutoencoderKL`` config of an LDM first stage (keys without the prefix)."""
    ch = int(sd["encoder.conv_in.weight"].shape[0])
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    widths = [int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(n)]
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    return {"in_channels": int(sd["encoder.conv_in.weight"].shape[1]), "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": widths, "layers_per_block": blocks, "act_fn": "silu",
            "latent_channels": int(sd["decoder.conv_in.weight"].shape[1]), "norm_num_groups": 32,
            "sample_size": sample_size, "scaling_factor": scaling_factor} if ch == widths[0] else {}  # noqa: E501


def convert_unclip(src: str | os.PathLike | dict, out: str | os.PathLike, num_head_channels: int = 64,
                   settings=None, latent_size: int = 96) -> dict:
    """Write ``out/unet``, ``out/vae`` and ``out/unclip.json`` from an sgm unCLIP checkpoint (module docstring).
    ``latent_size``: the start latent's side (``unclip_recon`` draws 96 x 96: 768 px), the UNet's ``sample_size``.
    Returns the report written into ``unclip.json`` (what was converted, skipped, checked)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from ..pipelines.mindeye_generators import UnclipSettings
    from ..pipelines.mindeye_schedules import discrete_sigma_table, scaled_linear_alphas_cumprod
    from ..utils.io import atomic_write_json

    sd = src if isinstance(src, dict) else read_state_dict(src)
    name = "state dict" if isinstance(src, dict) else str(src)
    settings = settings or UnclipSettings()
    unet_sd = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    vae_sd = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if not unet_sd or not vae_sd:
        raise CheckpointError(f"{name}: no {UNET_PREFIX}* or {VAE_PREFIX}* keys: not an sgm DiffusionEngine "
                              "checkpoint")
    skipped = sorted(k for k in sd if k.startswith(SKIPPED_PREFIXES))
    checked = [k for k in CHECKED_KEYS if k in sd]
    other = sorted(set(sd) - set(skipped) - set(checked)
                   - {k for k in sd if k.startswith((UNET_PREFIX, VAE_PREFIX))})
    if other:
        raise CheckpointError(f"{name}: keys this converter does not know: {other[:6]}"
                              + (f" (+{len(other) - 6} more)" if len(other) > 6 else ""))
    ac = scaled_linear_alphas_cumprod(settings.num_timesteps, settings.linear_start, settings.linear_end)
    if "denoiser.sigmas" in sd:
        table = discrete_sigma_table(ac)
        got = sd["denoiser.sigmas"].float()
        if got.shape != table.shape or not torch.allclose(got, table, rtol=1e-5, atol=1e-6):
            raise CheckpointError(f"{name}: denoiser.sigmas is not the scaled-linear schedule "
                                  f"{settings.linear_start} -> {settings.linear_end} of {settings.num_timesteps} steps")
    ucfg = unet_config(unet_sd, num_head_channels, latent_size, len(settings.original_size)
                       + len(settings.crop_coords_top_left))
    unet = UNet2DConditionModel(**ucfg)
    converted = convert_ldm_unet_checkpoint({UNET_PREFIX + k: v for k, v in unet_sd.items()}, dict(unet.config))
    _load_strict(unet, converted, name, "UNet")
    vcfg = vae_config(vae_sd, settings.scale_factor)
    if not vcfg:
        raise CheckpointError(f"{name}: first stage of an unexpected layout")
    vae = AutoencoderKL(**vcfg)
    vconverted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae_sd.items()}, dict(vae.config))
    _load_strict(vae, vconverted, name, "VAE")
    # every source tensor of the two parts must have been used: sizes agree one to one
    for part, src_sd, dst in (("UNet", unet_sd, converted), ("VAE", vae_sd, vconverted)):
        if sum(v.numel() for v in src_sd.values()) != sum(v.numel() for v in dst.values()):
            raise CheckpointError(f"{name}: the {part}'s tensors were not all converted "
                                  f"({len(src_sd)} keys in, {len(dst)} out)")
    out = Path(out)
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    report = {"source": name, "settings": asdict(settings),
              "converted": {"unet": f"{len(unet_sd)} tensors ({UNET_PREFIX}*) -> UNet2DConditionModel",
                            "vae": f"{len(vae_sd)} tensors ({VAE_PREFIX}*) -> AutoencoderKL"},
              "not_converted": {"conditioner.embedders.0.*": f"{len(skipped)} tensors: the OpenCLIP bigG image "
                                "embedder (unused: the prior's tokens condition the UNet)"} if skipped else {},
              "checked": {k: "equals the scaled-linear schedule" for k in checked},
              "assumed": {"num_head_channels": num_head_channels, "latent_size": latent_size}}
    atomic_write_json(out / "unclip.json", report)
    return report


def _load_strict(module, sd: dict, name: str, part: str) -> None:
    expected = module.state_dict()
    missing, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{name}: the {part} does not map onto diffusers: missing {missing[:4]}, "
                              f"unexpected {extra[:4]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            # diffusers' VAE attention is linear where the LDM one is a 1x1 convolution
            if v.numel() == expected[k].numel():
                sd[k] = v.reshape(expected[k].shape)
            else:
                raise CheckpointError(f"{name}: {part} weight {k} has shape {tuple(v.shape)}, expected "
                                      f"{tuple(expected[k].shape)}")
    module.load_state_dict(sd, strict=True)


def convert_bigg_to_l(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """MindEye2's ``bigG_to_L_epoch8.pth`` -> a safetensors file of ``linear1.*``, ``linear2.*``."""
    from safetensors.torch import save_file

    from ..utils.io import atomic_write

    ckpt = load_torch_checkpoint(src, what="bigG -> L converter")
    sd = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    need = {"linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"}
    if not isinstance(sd, dict) or set(sd) != need:
        raise CheckpointError(f"{src}: expected model_state_dict with exactly {sorted(need)}")
    return atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in sd.items()}, tmp))


def add_convert_commands(sub) -> dict:
    """``mindvis-convert`` subcommands for MindEye2's generator files; returns {command: handler(args, dst)}
    (``dst`` the folder or file to write, ``args.dst`` the name to report)."""
    a = sub.add_parser("from-unclip", help="MindEye2's unCLIP checkpoint (sgm) -> diffusers folder (unet/, vae/, "
                                           "unclip.json) for mindvis-sample --generator")
    a.add_argument("src", help="unclip6_epoch0_step110000.ckpt (or .safetensors); read with a restricted unpickler")
    a.add_argument("dst", help="output folder")
    a.add_argument("--num-head-channels", type=int, default=64, help="channels per attention head (unclip6: 64; "
                                                                     "not stored in the weights)")
    a.add_argument("--latent-size", type=int, default=96, help="start latent side (unclip_recon: 96, i.e. 768 px)")
    b = sub.add_parser("from-sd-autoencoder", help="MindEye2's sd_image_var_autoenc.pth -> AutoencoderKL folder "
                                                   "(mindvis-sample --blurry-vae)")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("from-bigg-to-l", help="MindEye2's bigG_to_L_epoch8.pth -> safetensors (mindvis-sample "
                                              "--captioner)")
    c.add_argument("src")
    c.add_argument("dst", help="output .safetensors file")

    def unclip(args, dst):
        report = convert_unclip(args.src, dst, args.num_head_channels, latent_size=args.latent_size)
        print(f"unCLIP converted into {args.dst}: {report['converted']}; not converted: "
              f"{list(report['not_converted']) or 'nothing'}")

    def sd_autoencoder(args, dst):
        from ..pipelines.mindeye_lowlevel import convert_sd_autoencoder

        convert_sd_autoencoder(args.src, dst)
        print(f"autoencoder written to {args.dst}")

    def bigg(args, dst):
        convert_bigg_to_l(args.src, dst)
        print(f"converter written to {args.dst}")

    return {"from-unclip": unclip, "from-sd-autoencoder": sd_autoencoder, "from-bigg-to-l": bigg}


__all__ = ["add_convert_commands", "convert_bigg_to_l", "convert_unclip", "read_state_dict", "unet_config",
           "vae_config"]
