"""A distillation run's inputs: the teacher, its training and validation data (a stage-B run's pairs or the renders a
generator was trained on) and the objective, built from a config (``Run``)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from mindvis.config import ConfigError, build_config
from mindvis.data.fmri import DataError

from .distill_lcd import LCD
from .distill_teachers import DCLDMTeacher, GeneratorTeacher, Teacher, teacher_kind


class EmbeddingImages(Dataset):
    """(image, embedding) pairs a generator was trained on: ``{'image': (3, S, S) in [-1, 1], 'embedding', 'index'}``."""

    def __init__(self, images: np.ndarray, embeddings: np.ndarray, labels: np.ndarray):
        self.images, self.embeddings, self.labels = images, embeddings, labels

    def __len__(self):
        return len(self.images)

    def image_tensor(self, i):
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1

    def __getitem__(self, i):
        return {"image": self.image_tensor(i), "embedding": torch.from_numpy(self.embeddings[i]), "index": i}


def _generator_data(folder: Path, cfg: DictConfig):
    """(train, validation) of a generator: the renders and embeddings it was trained on, ``data.val_fraction`` of
    its classes held out whole."""
    from mindvis.data.pairs import group_split
    from mindvis.models.image_embedders import cached_embeddings, load_embedder

    from .config import PriorConfig
    from .prior import prior_images

    pcfg_file = folder / "prior_config.yaml"
    if not pcfg_file.is_file():
        raise DataError(f"{pcfg_file} is missing: a generator folder written by mindvis-train-prior has it")
    pcfg = OmegaConf.to_object(build_config(PriorConfig, pcfg_file))
    imgs, classes = prior_images(pcfg)
    world = pcfg.synthetic if pcfg.images == "synthetic" else None
    emb = cached_embeddings(load_embedder(pcfg.target, world, cfg.data.cache_dir or pcfg.cache_dir or None), imgs,
                            cfg.data.cache_dir or pcfg.cache_dir or None, str(world.image_settings()) if world else "")
    tr, val = group_split(classes, cfg.data.val_fraction, cfg.data_seed)
    part = lambda idx: EmbeddingImages(imgs[idx], emb[idx].astype(np.float32), classes[idx])  # noqa: E731
    return part(tr), part(val), f"generator {folder}: {len(tr)} train / {len(val)} validation renders"


class Run:
    """The teacher, its data and the objective, built from a config (also by the benchmarks)."""

    def __init__(self, cfg: DictConfig):
        from mindvis.data.pairs import PairedDataset

        self.cfg = cfg
        teacher = Path(cfg.teacher)
        self.kind = teacher_kind(teacher)
        if self.kind == "dcldm":
            from mindvis.models.dc_ldm import DCLDM
            from mindvis.pipelines.sample_cli import resolve_model_dir

            from .data import build_stage_b_data

            self.teacher_dir = resolve_model_dir(teacher)
            model = DCLDM.from_pretrained(self.teacher_dir)
            if model.sampler_config:
                raise ConfigError(f"{self.teacher_dir} is a distilled student already; distil its teacher instead")
            enc = model.conditioner.mae.config
            data = build_stage_b_data(cfg.data, enc.patch_size, cfg.data_seed)
            if data.num_voxels != enc.num_voxels:
                raise DataError(f"the data has {data.num_voxels} voxels, the teacher takes {enc.num_voxels}: give the "
                                "teacher's data settings (its run's config.yaml is read when the teacher is a run)")
            size = cfg.data.image_size or model.image_size
            d = cfg.data
            self.train_ds = PairedDataset(data.train, size, train=True, zero_voxels=d.zero_voxels,
                                          crop_ratio=d.crop_ratio, crop_p=d.crop_p)
            self.val_ds = PairedDataset(data.val, size, train=False)
            self.description = data.description
            mean_fmri = torch.from_numpy(np.asarray(data.train.fmri, np.float32).mean(0))
            self.teacher: Teacher = DCLDMTeacher(model, cfg.distill.uncond, mean_fmri)
        else:
            self.teacher_dir = teacher
            self.teacher = GeneratorTeacher(teacher)
            self.train_ds, self.val_ds, self.description = _generator_data(teacher, cfg)
        self.lcd = LCD(self.teacher, cfg.distill)
        self.sampler_config = {"original_inference_steps": cfg.distill.solver_steps,
                               "timestep_scaling": cfg.distill.timestep_scaling, "guidance": cfg.distill.guidance,
                               "uncond": cfg.distill.uncond if self.kind == "dcldm" else "null_token",
                               "teacher": str(self.teacher_dir)}

    def new_student(self) -> torch.nn.Module:
        student = copy.deepcopy(self.teacher.unet)
        student.requires_grad_(True).train()
        return student

    def batch_loss(self, student, target, batch, gen=None) -> torch.Tensor:
        t = self.teacher
        with torch.no_grad():
            z0 = t.encode(batch["image"])
            cond = tuple(None if c is None else c.detach() for c in t.condition(batch[t.input_key]))
            null = t.null(len(z0)) if self.cfg.distill.guidance != 1 else None
        return self.lcd.loss(student, target, z0, cond, null, gen)
