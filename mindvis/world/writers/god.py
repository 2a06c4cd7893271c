"""The GOD part: the GOD-like stimuli and task subjects in the MinD-Vis GOD layout."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..brain import TASK_AREAS, Brain
from ..stimuli import SHAPES
from .meta import write_meta


def write(world, root: str | os.PathLike) -> Path:
    """The MinD-Vis GOD layout: ``sbj_N.npz``, ``images_256.npz``, class index and label csv files."""
    c = world.cfg
    train_imgs, train_cls, test_imgs, test_cls = world.god_stimuli()
    f_tr, e_tr = world.stimulus_features(train_imgs, train_cls)
    f_te, e_te = world.stimulus_features(test_imgs, test_cls)

    def fill(tmp: Path):
        np.savez(tmp / "images_256.npz", train_images=train_imgs, test_images=test_imgs)
        index = {str(k): [world.wnid(k), f"synthetic_{SHAPES[a['shape']]}_{k}"] for k, a in enumerate(world.classes)}
        (tmp / "imagenet_class_index.json").write_text(json.dumps(index, indent=1))
        for name, cls in (("imagenet_training_label.csv", train_cls), ("imagenet_testing_label.csv", test_cls)):
            with open(tmp / name, "w", newline="") as f:
                w = csv.writer(f)
                for i, k in enumerate(cls):
                    w.writerow([f"{90000000 + int(k)}.{i:06d}", f"{world.wnid(k)}_{i}.JPEG"])
        for s in range(c.god_subjects):
            brain = world.task_brain(TASK_AREAS, c.god_voxels, s, f_tr, e_tr)
            rng = np.random.default_rng([c.seed, 5, s])
            order = rng.permutation(len(train_imgs))  # presentation order of the training images
            train = world.responses(brain, f_tr[order], e_tr[order], rng)
            reps = np.concatenate([world.responses(brain, f_te, e_te, rng) for _ in range(c.test_repeats)])
            avg = reps.reshape(c.test_repeats, len(test_imgs), -1).mean(0)
            other = c.god_other_voxels  # non-visual voxels: noise only, outside every ROI
            pad = lambda a: np.concatenate([a, rng.normal(0, 1, (len(a), other)).astype(np.float32)], 1)
            masks = _roi_masks(brain, other)
            test_index = np.tile(np.arange(len(test_imgs)), c.test_repeats)  # arr_4: image of each arr_1 row
            np.savez(tmp / f"sbj_{s + 1}.npz", arr_0=pad(train), arr_1=pad(reps), arr_2=pad(avg),
                     arr_3=order, arr_4=test_index, **masks)
        write_meta(tmp, "god", c)

    return atomic_dir(root, fill)


def _roi_masks(brain: Brain, other: int) -> dict[str, np.ndarray]:
    n = brain.n_voxels + other
    masks = {}
    for area, sl in brain.roi_slices().items():
        m = np.zeros(n, bool)
        m[sl] = True
        masks[area] = m
    masks["LVC"] = masks["V1"] | masks["V2"] | masks["V3"]
    masks["HVC"] = masks["LOC"] | masks["FFA"] | masks["PPA"]
    masks["VC"] = masks["LVC"] | masks["V4"] | masks["HVC"]
    return masks
