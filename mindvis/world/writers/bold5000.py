"""The BOLD5000 part: GLMsingle ROI betas, presentation lists and the image dictionary."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.releases import BOLD5000_ROIS
from mindvis.utils.io import atomic_dir

from .meta import write_meta


def write(world, root: str | os.PathLike) -> Path:
    """The BOLD5000 GLMsingle ROI-betas layout with stimulus lists and an image dictionary."""
    c = world.cfg
    rng = np.random.default_rng([c.seed, 6])
    n_img = c.bold5000_train_images + c.bold5000_test_images
    cls = rng.integers(0, world.n_classes, n_img)
    imgs = world.render(cls, 2)
    names = [f"synthetic_{i:05d}.jpg" for i in range(n_img)]
    test_names = names[c.bold5000_train_images:]
    feats, cats = world.stimulus_features(imgs, cls)
    areas = [f"{h}{r}" for h in ("LH", "RH") for r in BOLD5000_ROIS]

    def fill(tmp: Path):
        stim = tmp / "BOLD5000_Stimuli" / "Scene_Stimuli"
        (stim / "Presented_Stimuli").mkdir(parents=True)
        np.save(stim / "Presented_Stimuli" / "img_dict.npy", dict(zip(names, imgs)), allow_pickle=True)
        (stim / "repeated_stimuli_113_list.txt").write_text("\n".join(test_names) + "\n")
        betas = tmp / "BOLD5000_GLMsingle_ROI_betas" / "py"
        betas.mkdir(parents=True)
        for s in range(c.bold5000_subjects):
            sub = f"CSI{s + 1}"
            srng = np.random.default_rng([c.seed, 7, s])
            brain = world.task_brain([a[2:] for a in areas], c.bold5000_voxels * 2, 100 + s, feats, cats)
            trials = list(range(c.bold5000_train_images)) + \
                [i for i in range(c.bold5000_train_images, n_img) for _ in range(c.bold5000_test_repeats)]
            trials = list(srng.permutation(trials))
            resp = world.responses(brain, feats[trials], cats[trials], srng)
            bounds = np.cumsum([0] + brain.area_sizes)  # ROI names repeat across hemispheres
            for area, start, stop in zip(areas, bounds[:-1], bounds[1:]):
                np.save(betas / f"{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{area}.npy", resp[:, start:stop])
            seen, lists = set(), tmp / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / sub
            per_run = 37
            for r, start in enumerate(range(0, len(trials), per_run)):
                run_names = []
                for i in trials[start:start + per_run]:
                    run_names.append(("rep_" if names[i] in seen else "") + names[i])
                    seen.add(names[i])
                sess = lists / f"{sub}_sess{r // 10 + 1:02d}"
                sess.mkdir(parents=True, exist_ok=True)
                (sess / f"{sub}_sess{r // 10 + 1:02d}_run{r % 10 + 1:02d}.txt").write_text("\n".join(run_names) + "\n")
        write_meta(tmp, "bold5000", c)

    return atomic_dir(root, fill)
