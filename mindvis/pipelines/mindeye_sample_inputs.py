"""What ``mindvis-sample --model MINDEYE_MODEL`` reads: the MindEye model folder (and a low-level folder), the test
split of the run's data (or ``--data-path``) grouped per test image, each item decoded by the network, and the target
space's embedder."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("mindvis.sample")


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
