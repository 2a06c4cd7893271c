"""The pairs and targets of an align run: the test rows split into repetition averages and single trials, the target
embeddings, the retrieval gallery, and M/EEG flattened for the decoders that read a vector."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mindvis.data.fmri import DataError
from mindvis.data.pairs import TRIAL_MARK, PairedSplit
from mindvis.finetune.data import StageBData, synthetic_world
from mindvis.models.image_embedders import cached_embeddings, load_embedder

log = logging.getLogger("mindvis.align")


def split_test_trials(test: PairedSplit) -> tuple[PairedSplit, np.ndarray | None]:
    """The repetition-averaged test rows, and the single trials as (N, R, V) aligned with them (None if absent);
    the trials of a row are those of the same stimulus and subject."""
    avg_idx = [i for i, s in enumerate(test.ids) if TRIAL_MARK not in s]
    avg = test.subset(avg_idx)
    trials: dict[tuple[str, str], list[int]] = {}
    for i, (s, subject) in enumerate(zip(test.ids, test.subjects)):
        if TRIAL_MARK in s:
            trials.setdefault((subject, s.split(TRIAL_MARK)[0]), []).append(i)
    if not trials:
        return avg, None
    keys = list(zip(avg.subjects, avg.ids))
    counts = {len(v) for v in trials.values()}
    missing = [k for k in keys if k not in trials]
    if len(counts) != 1 or missing:
        log.warning("test images have unequal repetitions (%s) or none (%d): no averaging curve", sorted(counts),
                    len(missing))
        return avg, None
    return avg, np.stack([test.fmri[trials[k]] for k in keys])  # (N, R, V)


def embed_images(cfg: DictConfig, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target embeddings of each named image set (cached by space and image digest)."""
    world = synthetic_world(cfg.data)
    embedder = load_embedder(cfg.target, world, cfg.data.cache_dir or None)
    key = str(world.image_settings()) if world else ""
    return {name: cached_embeddings(embedder, imgs, cfg.data.cache_dir or None, key) for name, imgs in images.items()}


def gallery_images(cfg: DictConfig, train: PairedSplit) -> np.ndarray:
    """Images for retrieval reconstructions: ``eval.gallery`` (a folder) or the unique training images."""
    if not cfg.eval.gallery:
        _, first = np.unique(np.asarray(train.ids), return_index=True)
        return train.images[np.sort(first)]
    from PIL import Image

    files = sorted(p for p in Path(cfg.eval.gallery).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise DataError(f"eval.gallery {cfg.eval.gallery}: no .png/.jpg images")
    size = train.images.shape[1]
    out = []
    for p in files:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def vectorised(cfg: DictConfig, data: StageBData) -> StageBData:
    """M/EEG for decoders that read a vector (ridge, mlp): channels x times flattened; fMRI and the brain module's
    input unchanged."""
    if data.layout is None or cfg.decoder.name == "brain-module":
        return data
    flat = lambda s: None if s is None else s.with_fmri(s.fmri.reshape(len(s), -1))
    return StageBData(flat(data.train), flat(data.val), flat(data.test), data.train.fmri[0].size, data.description,
                      data.layout, data.times, flat(data.large), data.montages)
