"""Read and write checkpoints in the formats of the original MinD-Vis release, safely.

The release's ``.pth`` files are pickles holding instances of the original's ``config.Config_*``
classes. They are read with the restricted unpickler of :mod:`mindvis.compat.safe_pickle`
(``torch.load(weights_only=True)``), which admits the config classes only as inert stand-ins whose pickled
state must be plain data (numbers, strings, None, lists, tuples, dicts), so no code from the file is ever run.
"""
from __future__ import annotations

import os
import re

import torch

from ..models.sc_mbm import FMRIEncoder, MaskedBrainModel, MBMConfig
from ..utils.io import atomic_write
from .safe_pickle import CheckpointError, Inert, load_torch_checkpoint

#: Config classes that pickled MinD-Vis checkpoints name (module ``config``).
ORIGINAL_CONFIG_CLASSES = ("Config_MBM_fMRI", "Config_MAE_fMRI", "Config_MBM_finetune",
                           "Config_MAE_finetune", "Config_Generative_Model")

_PLAIN = (bool, int, float, str, bytes, type(None))


def _check_plain(value, where: str):
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; only plain data is admitted from original configs")


class OriginalCheckpointError(CheckpointError):
    """A file is not a readable MinD-Vis checkpoint of the expected kind."""


def load_original_checkpoint(path: str | os.PathLike) -> dict:
    """Load a MinD-Vis ``.pth`` checkpoint without executing pickled code.

    Returns the checkpoint dict with its ``config`` (if any) converted to a plain ``dict``.
    """
    admit = tuple(f"config.{name}" for name in ORIGINAL_CONFIG_CLASSES)
    try:
        ckpt = load_torch_checkpoint(path, what="MinD-Vis checkpoint", admit=admit)
    except CheckpointError as e:
        raise OriginalCheckpointError(str(e)) from None
    if not isinstance(ckpt, dict):
        raise OriginalCheckpointError(f"{path}: expected a dict at the top level, got {type(ckpt).__name__}")
    config = ckpt.get("config")
    if isinstance(config, Inert):
        if not isinstance(config.state, dict):
            raise OriginalCheckpointError(f"{path}: the pickled {config.name} holds a "
                                          f"{type(config.state).__name__}, expected its attributes as a dict")
        try:
            _check_plain(config.state, "config")
        except TypeError as e:
            raise OriginalCheckpointError(f"{path}: {e}") from None
        ckpt["config"] = dict(config.state)
    return ckpt


def mbm_config_from_original(state_dict: dict, config: dict | None) -> MBMConfig:
    """Infer the :class:`MBMConfig` of an original ``MAEforFMRI`` state dict (+ its pickled config)."""
    config = config or {}
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key not in state_dict:
            raise OriginalCheckpointError(f"state dict has no {key!r}: not an SC-MBM checkpoint")
    embed_dim, _, patch_size = state_dict["patch_embed.proj.weight"].shape
    num_patches = state_dict["pos_embed"].shape[1] - 1
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    dec = [int(m.group(1)) for k in state_dict if (m := re.match(r"decoder_blocks\.(\d+)\.", k))]
    hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
    return MBMConfig(
        num_voxels=num_patches * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=int(config.get("num_heads", 16)),
        decoder_embed_dim=(state_dict["decoder_embed.weight"].shape[0] if "decoder_embed.weight" in state_dict
                           else int(config.get("decoder_embed_dim", 512))),
        decoder_depth=(1 + max(dec)) if dec else 0,
        decoder_num_heads=int(config.get("decoder_num_heads", 16)),
        mlp_ratio=hidden / embed_dim,
    )


def load_original_mbm(path: str | os.PathLike) -> tuple[MaskedBrainModel, dict]:
    """Load an original stage-A checkpoint (``{'model', 'config', ...}``) into a :class:`MaskedBrainModel`.

    Returns the model (eval mode) and the original config as a plain dict.
    """
    ckpt = load_original_checkpoint(path)
    if "model" not in ckpt:
        raise OriginalCheckpointError(f"{path}: no 'model' entry (keys: {sorted(ckpt)}); not a stage-A checkpoint")
    sd, config = ckpt["model"], ckpt.get("config") or {}
    cfg = mbm_config_from_original(sd, config)
    model = MaskedBrainModel(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing:
        raise OriginalCheckpointError(f"{path}: missing weights {missing[:5]}")
    if any(not k.startswith("nature_img_") for k in unexpected):
        raise OriginalCheckpointError(f"{path}: unexpected weights {unexpected[:5]}")
    return model.eval(), config


def load_original_encoder(path: str | os.PathLike, global_pool: bool = False,
                          num_voxels: int | None = None) -> FMRIEncoder:
    """The encoder of an original stage-A checkpoint, optionally for another voxel count
    (positions are interpolated with nearest neighbours, as the original)."""
    mbm, _ = load_original_mbm(path)
    cfg = mbm.config
    if num_voxels is not None and num_voxels != cfg.num_voxels:
        cfg = MBMConfig(**{**cfg.__dict__, "num_voxels": num_voxels})
    enc = FMRIEncoder(cfg, global_pool=global_pool)
    enc.load_mbm_state_dict(mbm.state_dict())
    return enc.eval()


def export_original_mbm(model: MaskedBrainModel, path: str | os.PathLike, extra_config: dict | None = None,
                        epoch: int = 0) -> None:
    """Write ``model`` as the original writes stage-A checkpoints, with the config as a plain dict.

    The original code reads ``checkpoint['model']`` and the config attributes of the architecture;
    here they are dict entries, so nothing needs unpickling beyond plain data.
    """
    cfg = model.config
    config = {**(extra_config or {}), **cfg.__dict__}
    ckpt = {"model": model.state_dict(), "optimizer": {}, "epoch": epoch, "scaler": {}, "config": config}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
