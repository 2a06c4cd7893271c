"""The data of a MindEye run: each subject's pairs, the token targets (and MindEye2's low-level targets and
teacher), every subject's trials grouped by image, and the test and validation items with their repetitions, decoded
by averaging the fMRI (MindEye1) or the outputs (MindEye2)."""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from mindvis.data.fmri import DataError
from mindvis.data.pairs import TRIAL_MARK, PairedSplit
from mindvis.finetune.data import StageBData, build_stage_b_data, synthetic_world
from mindvis.models.image_embedders import ImageEmbedder, cached_embeddings, load_embedder

from .mindeye_batches import SubjectTrials, image_groups
from .mindeye_decode import average_fmri, average_outputs, decode_outputs
from .mindeye_training import Teacher


def _subject_config(cfg: DictConfig, path: str | None, val_fraction: float | None = None) -> DictConfig:
    import copy

    data = copy.deepcopy(cfg.data)
    if path is not None:
        data.path = path
    if val_fraction is not None:
        data.val_fraction = val_fraction
    return data


def load_subject(cfg: DictConfig, path: str | None = None, val_fraction: float | None = None) -> StageBData:
    """A subject's pairs with MindEye's voxel counts (no padding to a patch size)."""
    return build_stage_b_data(_subject_config(cfg, path, val_fraction), 1, cfg.train.seed)


def token_embedder(cfg: DictConfig) -> ImageEmbedder:
    return load_embedder(cfg.target, synthetic_world(cfg.data), cfg.data.cache_dir or None)


def _embed(embedder: ImageEmbedder, images: np.ndarray, cfg: DictConfig) -> np.ndarray:
    world = synthetic_world(cfg.data)
    key = str(world.image_settings()) if world else ""
    return cached_embeddings(embedder, images, cfg.data.cache_dir or None, key, mmap=True)


def blurry_embedder(cfg: DictConfig) -> ImageEmbedder | None:
    """Targets of MindEye2's low-level branch: Stable Diffusion VAE latents (``mode() * 0.18215`` of the image in
    [-1, 1] at ``blurry_image_size``, as MindEye2) or, for the synthetic world (no VAE), ``pixels``: the image
    itself at the decoder's output size (4 x blurry_side) in [-1, 1]."""
    import torch.nn.functional as F

    me = cfg.mindeye
    if cfg.decoder.name != "mindeye2" or not me.blurry:
        return None
    if me.blurry_target == "pixels":
        side = 4 * me.blurry_side
        resize = lambda x: F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        return ImageEmbedder(f"pixels-{side}", lambda x: x.clamp(0, 1) * 2 - 1, side, (0, 0, 0), (1, 1, 1),
                             preprocess=resize)
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(me.blurry_target, local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise DataError(f"mindeye.blurry_target {me.blurry_target}: not a diffusers AutoencoderKL folder "
                        f"({str(e).splitlines()[0]})") from None
    size = me.blurry_image_size
    resize = lambda x: F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return ImageEmbedder(f"sd-vae-latents-{size}:{me.blurry_target}",
                         lambda x: vae.encode(2 * x.clamp(0, 1) - 1).latent_dist.mode() * 0.18215, size,
                         (0, 0, 0), (1, 1, 1), batch_size=16, preprocess=resize)


def blurry_teacher(cfg: DictConfig) -> Teacher | None:
    """Feature maps for the low-level branch's contrastive term. ``synthetic``: the world's classifier's last
    feature map (8 x 8 x 128 at 32 px). MindEye2's own teacher (MedARC's ConvNeXt-XL with a 2048 -> 512 MLP) is
    not available in mindvis: with an empty ``blurry_teacher`` the term is left out (and said so in the log)."""
    me = cfg.mindeye
    if cfg.decoder.name != "mindeye2" or not me.blurry or not me.blurry_teacher:
        return None
    import torch.nn.functional as F

    from mindvis.evaluation.classifiers import synthetic_classifier

    world = synthetic_world(cfg.data)
    if world is None:
        raise DataError("mindeye.blurry_teacher=synthetic needs data from the synthetic world")
    clf = synthetic_classifier(world, 32, cfg.data.cache_dir or None).eval()
    spatial = clf.net.body[:-2]

    def fn(x):
        x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return spatial((x - 0.5) / 0.5).flatten(2).transpose(1, 2)

    return Teacher("synthetic", fn)


def subject_trials(split: PairedSplit, targets_fn, name: str, blurry_fn=None) -> SubjectTrials:
    first, image_of_trial = image_groups(split.ids)
    images = split.images[first]
    return SubjectTrials(name, split.fmri, image_of_trial, targets_fn(images), images,
                         blurry_fn(images) if blurry_fn else None)


def test_groups(test: PairedSplit) -> tuple[PairedSplit, np.ndarray, list[np.ndarray], bool]:
    """(the repetition-averaged test rows, fMRI rows to decode, per test image its rows in repetition order, whether
    those are single trials). Without single trials the averaged rows are the groups (one row each)."""
    avg_idx = [i for i, s in enumerate(test.ids) if TRIAL_MARK not in s]
    avg = test.subset(avg_idx)
    trial_rows: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(test.ids):
        if TRIAL_MARK in s:
            stim, rep = s.split(TRIAL_MARK)
            trial_rows.setdefault(stim, []).append((int(rep) if rep.isdigit() else 0, i))
    if trial_rows and all(s in trial_rows for s in avg.ids):
        rows = test.fmri
        groups = [np.array([i for _, i in sorted(trial_rows[s])]) for s in avg.ids]
        return avg, rows, groups, True
    return avg, avg.fmri, [np.array([i]) for i in range(len(avg))], False


def val_groups(val: PairedSplit) -> tuple[PairedSplit, list[np.ndarray]]:
    """Validation carved from training: single trials grouped by image (first row per image as the item)."""
    first, image_of_trial = image_groups(val.ids)
    groups = [np.nonzero(image_of_trial == k)[0] for k in range(len(first))]
    return val.subset(first), groups


def decode_items(family: str, network, rows: np.ndarray, groups: list[np.ndarray], average: str,
                 first: int | None = None) -> dict:
    """Per-item outputs: fMRI of each item's rows averaged then decoded (``fmri``, MindEye1), or every row decoded
    and the outputs averaged (``outputs``, MindEye2)."""
    if average == "fmri":
        return decode_outputs(family, network, average_fmri(rows, groups, first))
    return average_outputs(family, network, rows, groups, first=first)
