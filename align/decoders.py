"""The decoders of ``mindvis-align``: built from the settings, loaded from a saved folder, and applied to fMRI."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mindvis.data.fmri import DataError
from mindvis.finetune.data import StageBData
from mindvis.models.brain_decoders import MBMDecoder, MBMDecoderConfig, MindEyeMLP, MLPConfig, SharedMLP
from mindvis.models.brain_module import BrainModule
from mindvis.models.brain_module_config import BrainModuleConfig
from mindvis.models.persistence import read_json
from mindvis.models.ridge import RidgeDecoder

DECODER_CLASSES = {"RidgeDecoder": RidgeDecoder, "MindEyeMLP": MindEyeMLP, "MBMDecoder": MBMDecoder,
                   "SharedMLP": SharedMLP, "BrainModule": BrainModule}


def build_decoder(cfg: DictConfig, num_voxels: int, dim: int, stage_a: tuple | None = None,
                  data: StageBData | None = None):
    """The MLP, the SC-MBM decoder around ``stage_a`` (architecture, weights) from ``load_encoder``, or the brain
    module over ``data``'s sensor layout and window."""
    d = cfg.decoder
    if d.name == "brain-module":
        return BrainModule(brain_module_config(cfg, data, dim))
    if d.name == "mlp":
        return MindEyeMLP(MLPConfig(num_voxels, dim, d.hidden, d.blocks, d.input_dropout, d.block_dropout,
                                    d.projector_hidden))
    if d.name == "mbm":
        from mindvis.finetune.engine import build_encoder

        encoder = build_encoder(num_voxels, *stage_a)
        return MBMDecoder(MBMDecoderConfig(asdict(encoder.config), dim, d.projector_hidden, d.pool, d.token_dim,
                                           {"encoder": d.encoder}), encoder)
    raise ValueError(f"{d.name} is not trained by gradient descent")


def brain_module_config(cfg: DictConfig, data: StageBData, dim: int) -> BrainModuleConfig:
    """The brain module over ``data``: its montage (channels without a position masked), one subject layer per
    training subject, each subject's montage where they differ, and the ``decoder.brain_module`` settings."""
    subjects = sorted(set(data.train.subjects))
    nan_rows = lambda a: [None if not np.isfinite(p).all() else [float(v) for v in p] for p in np.asarray(a, float)]
    montages = {s: nan_rows(m) for s, m in (data.montages or {}).items() if s in subjects}
    return BrainModuleConfig(positions=nan_rows(data.layout), n_times=data.train.fmri.shape[-1], dim=dim,
                             subjects=subjects, subject_positions=montages,
                             **OmegaConf.to_container(cfg.decoder.brain_module))


def load_decoder(folder: str | Path):
    """A saved decoder of any kind (``model/`` or ``best/`` of an align run)."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder} is not a saved decoder (config.json is missing)")
    name = read_json(cfg_file).get("class")
    if name not in DECODER_CLASSES:
        raise DataError(f"{cfg_file}: unknown decoder class {name!r}; expected one of {sorted(DECODER_CLASSES)}")
    return DECODER_CLASSES[name].from_pretrained(folder)


def subject_ids(model, subjects, n: int) -> torch.Tensor | None:
    """The brain module's subject-layer indices of ``subjects`` (one name per sample); None for other decoders or
    no names. A subject the module has no layer for is an error naming the ones it has."""
    if not isinstance(model, BrainModule) or subjects is None or not len(subjects):
        return None
    if len(subjects) != n:
        raise ValueError(f"{len(subjects)} subject names for {n} samples")
    names = [str(s) for s in subjects]
    if set(names) == {""} and len(model.subject_index) == 1:  # data without subject names, a one-subject module
        return None
    return model.subject_ids(names, n, "cpu")


@torch.no_grad()
def decode(model, fmri: np.ndarray, batch_size: int = 256, subjects=None) -> dict[str, np.ndarray]:
    """Decoded embeddings {"contrastive", "regression"} (the same array for ridge); ``subjects`` (one name per
    sample) chooses the brain module's subject layer and montage (default: its first subject)."""
    model.eval()
    ids = subject_ids(model, subjects, len(fmri))
    outs = {"contrastive": [], "regression": []}
    for i in range(0, len(fmri), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(fmri[i:i + batch_size], dtype=np.float32))
        out = model(x) if ids is None else model(x, ids[i:i + batch_size])
        if isinstance(out, torch.Tensor):
            out = {"contrastive": out, "regression": out}
        if "features" in out:
            raise DataError("this brain module has aggregation none (brainmagick's time-resolved output): it gives no "
                            "embedding per trial")
        for k in outs:
            outs[k].append(out[k].float())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}
