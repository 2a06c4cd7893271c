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
from mindvis.models.brain_module import BrainModule, BrainModuleConfig
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
        return BrainModule(BrainModuleConfig(positions=data.layout.tolist(), n_times=data.train.fmri.shape[-1], dim=dim,
                                             **OmegaConf.to_container(d.brain_module)))
    if d.name == "mlp":
        return MindEyeMLP(MLPConfig(num_voxels, dim, d.hidden, d.blocks, d.input_dropout, d.block_dropout,
                                    d.projector_hidden))
    if d.name == "mbm":
        from mindvis.finetune.engine import build_encoder

        encoder = build_encoder(num_voxels, *stage_a)
        return MBMDecoder(MBMDecoderConfig(asdict(encoder.config), dim, d.projector_hidden, d.pool, d.token_dim,
                                           {"encoder": d.encoder}), encoder)
    raise ValueError(f"{d.name} is not trained by gradient descent")


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


@torch.no_grad()
def decode(model, fmri: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Decoded embeddings {"contrastive", "regression"} (the same array for ridge)."""
    model.eval()
    outs = {"contrastive": [], "regression": []}
    for i in range(0, len(fmri), batch_size):
        out = model(torch.from_numpy(np.ascontiguousarray(fmri[i:i + batch_size], dtype=np.float32)))
        if isinstance(out, torch.Tensor):
            out = {"contrastive": out, "regression": out}
        for k in outs:
            outs[k].append(out[k].float())
    return {k: torch.cat(v).numpy() for k, v in outs.items()}
