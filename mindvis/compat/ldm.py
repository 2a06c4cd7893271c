"""CompVis latent-diffusion checkpoints (the label2img prior MinD-Vis starts from, and MinD-Vis's
fine-tuned stage-B checkpoint) converted into diffusers components with diffusers' own converters.

What the converters leave out is added here: the VQ codebook (``quantize.embedding.weight``), the
VQ-f4 scale factor 1.0 (diffusers' default is 0.18215), the noise schedule of the config, and
MinD-Vis's time conditioning (``time_embed_condtion``), which becomes the conditioner's
``time_mapper`` feeding the UNet's identity class embedding.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from ..data.fmri import error_summary
from ..models.conditioner import ConditionerConfig, FMRIConditioner
from .original import OriginalCheckpointError, load_original_checkpoint, mbm_config_from_original

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class PriorFormatError(ValueError):
    """A folder or file is not a latent-diffusion prior of a known layout."""


def _load_compvis_config(folder: Path) -> dict:
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        raise PriorFormatError(f"{folder} is not a CompVis LDM folder: config.yaml is missing")
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path))
    except Exception as e:  # noqa: BLE001 - yaml and OmegaConf raise many error types; nothing in the file runs
        raise PriorFormatError(f"{cfg_path}: not a plain YAML config ({error_summary(e)}); python tags are not "
                               "loaded") from None
    try:
        cfg["model"]["params"]["unet_config"]["params"]
        cfg["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
    except (KeyError, TypeError):
        raise PriorFormatError(f"{cfg_path}: not a LatentDiffusion config (model.params.unet_config / "
                               "first_stage_config.params.ddconfig missing)") from None
    return cfg


def scheduler_config_from_ldm(cfg: dict) -> dict:
    """diffusers scheduler settings equal to the LDM's noise schedule (LDM 'linear' = diffusers 'scaled_linear')."""
    p = cfg["model"]["params"]
    schedule = p.get("beta_schedule", "linear")
    if schedule != "linear":
        raise PriorFormatError(f"unsupported LDM beta_schedule {schedule!r} (only 'linear')")
    return dict(num_train_timesteps=int(p.get("timesteps", 1000)), beta_start=float(p.get("linear_start", 0.00085)),
                beta_end=float(p.get("linear_end", 0.012)), beta_schedule="scaled_linear",
                prediction_type="v_prediction" if p.get("parameterization") == "v" else "epsilon")


def convert_unet(cfg: dict, state_dict: dict, time_conditioned: bool):
    """A diffusers UNet2DConditionModel from an LDM state dict (keys ``model.diffusion_model.*``).

    With ``time_conditioned`` the UNet gets an identity class embedding: the conditioner's time
    offset is passed as ``class_labels`` and added to the timestep embedding.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    uc = create_unet_diffusers_config_from_ldm(cfg, state_dict)
    up = cfg["model"]["params"]["unet_config"]["params"]
    uc["sample_size"] = int(up.get("image_size", cfg["model"]["params"].get("image_size", 64)))
    if time_conditioned:
        uc["class_embed_type"] = "identity"
    unet_sd = convert_ldm_unet_checkpoint(state_dict, uc)
    unet = UNet2DConditionModel(**uc)
    missing, unexpected = unet.load_state_dict(unet_sd, strict=False)
    if missing or unexpected:
        raise PriorFormatError(f"UNet conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return unet


def convert_first_stage(cfg: dict, state_dict: dict):
    """A diffusers VQModel (VQ priors, scale factor 1.0, with its codebook) or AutoencoderKL."""
    from diffusers import AutoencoderKL, VQModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm

    fs = cfg["model"]["params"]["first_stage_config"]
    scale = float(cfg["model"]["params"].get("scale_factor", 1.0))
    vc = create_vae_diffusers_config_from_ldm(cfg, state_dict, scaling_factor=scale)
    vae_sd = convert_ldm_vae_checkpoint(state_dict, vc)
    is_vq = "VQ" in fs["target"].split(".")[-1] or f"{VAE_PREFIX}quantize.embedding.weight" in state_dict
    if is_vq:
        codebook = state_dict.get(f"{VAE_PREFIX}quantize.embedding.weight")
        if codebook is None:
            raise PriorFormatError("VQ first stage without quantize.embedding.weight in the checkpoint")
        vae = VQModel(in_channels=vc["in_channels"], out_channels=vc["out_channels"],
                      down_block_types=vc["down_block_types"], up_block_types=vc["up_block_types"],
                      block_out_channels=vc["block_out_channels"], layers_per_block=vc["layers_per_block"],
                      latent_channels=vc["latent_channels"], sample_size=vc["sample_size"],
                      num_vq_embeddings=codebook.shape[0], vq_embed_dim=fs["params"]["embed_dim"],
                      scaling_factor=scale)
        vae_sd["quantize.embedding.weight"] = codebook  # diffusers' converter drops the codebook
    else:
        vae = AutoencoderKL(**vc)
    missing, unexpected = vae.load_state_dict(vae_sd, strict=False)
    if missing or unexpected:
        raise PriorFormatError(f"first-stage conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return vae


def load_compvis_ldm(folder: str | os.PathLike, state_dict: dict | None = None, time_conditioned: bool = False):
    """(unet, vae, scheduler_config) from a CompVis LDM folder (``config.yaml`` + ``model.ckpt``).

    ``state_dict`` replaces the folder's weights (e.g. a MinD-Vis fine-tuned state dict).
    """
    folder = Path(folder)
    cfg = _load_compvis_config(folder)
    if state_dict is None:
        ckpt_path = folder / "model.ckpt"
        if not ckpt_path.is_file():
            raise PriorFormatError(f"{folder} is not a CompVis LDM folder: model.ckpt is missing")
        ckpt = load_original_checkpoint(ckpt_path)
        if "state_dict" not in ckpt:
            raise PriorFormatError(f"{ckpt_path}: no 'state_dict' entry (keys: {sorted(ckpt)})")
        state_dict = ckpt["state_dict"]
    if not any(k.startswith(UNET_PREFIX) for k in state_dict):
        raise PriorFormatError(f"{folder}: the weights hold no {UNET_PREFIX}* entries")
    unet = convert_unet(cfg, state_dict, time_conditioned)
    vae = convert_first_stage(cfg, state_dict)
    return unet, vae, scheduler_config_from_ldm(cfg)


def load_original_conditioner(state_dict: dict, config: dict, unet, mbm_config: dict) -> FMRIConditioner:
    """The ``cond_stage_model.*`` and ``time_embed_condtion`` weights of a MinD-Vis stage-B state dict.

    ``mbm_config`` is the stage-A config (head counts cannot be read off the weights).
    """
    mae = {k[len("cond_stage_model.mae."):]: v for k, v in state_dict.items() if k.startswith("cond_stage_model.mae.")}
    if not mae:
        raise OriginalCheckpointError("no cond_stage_model.mae.* weights: not a MinD-Vis stage-B checkpoint")
    global_pool = bool(config.get("global_pool", False))
    use_time_cond = bool(config.get("use_time_cond", True))
    mbm_cfg = mbm_config_from_original(mae, mbm_config)
    ccfg = ConditionerConfig(encoder=mbm_cfg.__dict__, context_dim=unet.config.cross_attention_dim,
                             time_embed_dim=unet.config.block_out_channels[0] * 4, global_pool=global_pool,
                             use_time_cond=use_time_cond)
    cond = FMRIConditioner(ccfg)
    sd = {f"mae.{k}": v for k, v in mae.items()}
    sd |= {k[len("cond_stage_model."):]: v for k, v in state_dict.items()
           if k.startswith("cond_stage_model.") and not k.startswith("cond_stage_model.mae.")}
    sd |= {"time_mapper." + k[len(UNET_PREFIX + "time_embed_condtion."):]: v for k, v in state_dict.items()
           if k.startswith(UNET_PREFIX + "time_embed_condtion.")}
    missing, unexpected = cond.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise OriginalCheckpointError(f"conditioner weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return cond


def load_original_stage_b(checkpoint: str | os.PathLike, ldm_folder: str | os.PathLike,
                          mbm_checkpoint: str | os.PathLike | None = None, num_heads: int | None = None):
    """Components of a MinD-Vis stage-B checkpoint (``finetuned.pth``), with the architecture of the
    pretrained LDM folder it was fine-tuned from (``config.yaml``).

    The encoder's number of attention heads is not stored in the stage-B file; as the original, it
    is read from the stage-A checkpoint (``mbm_checkpoint``, e.g. ``pretrains/GOD/fmri_encoder.pth``),
    or given as ``num_heads``; the paper's 16 otherwise.
    Returns a dict with ``conditioner``, ``unet``, ``vae``, ``scheduler_config`` and the original ``config``.
    """
    if mbm_checkpoint is not None:
        mbm_config = load_original_checkpoint(mbm_checkpoint).get("config") or {}
    else:
        mbm_config = {"num_heads": num_heads or 16, "decoder_num_heads": 16}
    if num_heads is not None:
        mbm_config = {**mbm_config, "num_heads": num_heads}
    ckpt = load_original_checkpoint(checkpoint)
    if "model_state_dict" not in ckpt:
        raise OriginalCheckpointError(f"{checkpoint}: no 'model_state_dict' (keys: {sorted(ckpt)}); "
                                      "not a MinD-Vis stage-B checkpoint")
    sd, config = ckpt["model_state_dict"], ckpt.get("config") or {}
    use_time_cond = bool(config.get("use_time_cond", True))
    unet, vae, sched = load_compvis_ldm(ldm_folder, state_dict=sd, time_conditioned=use_time_cond)
    conditioner = load_original_conditioner(sd, config, unet, mbm_config)
    return {"conditioner": conditioner.eval(), "unet": unet.eval(), "vae": vae.eval(), "scheduler_config": sched,
            "config": config}


ORIGINAL_DATASETS = {"GOD": "god", "BOLD5000": "bold5000"}


def original_stage_b_settings(config: dict, data_path: str | None = None,
                              bold5000_path: str | None = None) -> dict:
    """The ``mindvis-finetune`` settings (nested dict) a MinD-Vis stage-B ``config`` was trained with: dataset,
    subjects, ROI, the original's padding, image size and training numbers, so that ``mindvis-sample --split``
    prepares the same test pairs. ``data_path`` / ``bold5000_path`` replace the original's (repository-relative)
    ``kam_path`` / ``bold5000_path``."""
    name = config.get("dataset", "GOD")
    if name not in ORIGINAL_DATASETS:
        raise OriginalCheckpointError(f"the checkpoint's dataset {name!r} is not one of {sorted(ORIGINAL_DATASETS)}")
    data = {"dataset": ORIGINAL_DATASETS[name], "path": str(data_path or config.get("kam_path", "")),
            "bold5000_path": str(bold5000_path or config.get("bold5000_path", "")),
            "roi": config.get("roi", "VC"), "pad_mode": "original", "val_fraction": 0.0,
            "crop_ratio": float(config.get("crop_ratio", 0.2)), "image_size": int(config.get("img_size", 256))}
    if config.get("kam_subs"):
        data["subjects"] = list(config["kam_subs"])
    if config.get("bold5000_subs"):
        data["bold5000_subjects"] = list(config["bold5000_subs"])
    train = {k: type_(config[o]) for k, o, type_ in (("seed", "seed", int), ("batch_size", "batch_size", int),
                                                      ("lr", "lr", float), ("epochs", "num_epoch", int))
             if config.get(o) is not None}
    return {"model": {"global_pool": bool(config.get("global_pool", False)),
                      "time_cond": bool(config.get("use_time_cond", True))},
            "data": data, "train": train | {"sampler": "plms", "sample_steps": int(config.get("ddim_steps") or 250)}}


def convert_original_stage_b(checkpoint: str | os.PathLike, ldm_folder: str | os.PathLike, out: str | os.PathLike,
                             mbm_checkpoint: str | os.PathLike | None = None, num_heads: int | None = None,
                             data_path: str | None = None, bold5000_path: str | None = None) -> Path:
    """A released stage-B checkpoint as a mindvis run folder: ``out/model/`` (the DC-LDM) and ``out/config.yaml``
    (:func:`original_stage_b_settings`), plus ``out/original_config.json`` (the checkpoint's own settings and
    where it came from). Written atomically; an existing ``out`` is replaced only when the new one is complete."""
    import json

    from ..config import build_config, save_config
    from ..finetune.config import FinetuneConfig, validate
    from ..models.dc_ldm import DCLDM
    from ..utils.io import atomic_dir

    parts = load_original_stage_b(checkpoint, ldm_folder, mbm_checkpoint, num_heads)
    given = {k: os.path.abspath(v) if v else None for k, v in (("ldm", ldm_folder), ("encoder", mbm_checkpoint),
                                                                  ("data", data_path), ("bold5000", bold5000_path))}
    settings = original_stage_b_settings(parts["config"], given["data"], given["bold5000"])
    settings["model"] |= {"prior": given["ldm"], "encoder": given["encoder"] or ""}
    cfg = build_config(FinetuneConfig, defaults=settings)
    validate(cfg)
    model = DCLDM(parts["unet"], parts["vae"], parts["conditioner"], parts["scheduler_config"])

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        save_config(cfg, tmp / "config.yaml")
        source = {"checkpoint": os.path.abspath(checkpoint), "ldm": given["ldm"], "encoder": given["encoder"]}
        (tmp / "original_config.json").write_text(json.dumps({"source": source, "config": parts["config"]},
                                                             indent=2, sort_keys=True, default=str) + "\n")

    return atomic_dir(out, fill)
