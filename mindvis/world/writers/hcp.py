"""The HCP part: every subject's resting state, as the MinD-Vis HCP release (``HCP_visual_voxel.npz``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..brain import HCP_AREAS, make_brain
from ..resting_state import resting_state
from .meta import write_meta


def write(world, root: str | os.PathLike) -> Path:
    """``root/<subject>/HCP_visual_voxel.npz`` with V1..V4 as (frames, voxels) float32."""
    c = world.cfg
    rng = np.random.default_rng([c.seed, 2])
    ref_imgs, _, _, _ = world.god_stimuli()
    ref_cls = np.repeat(np.arange(c.n_train_classes), c.images_per_class)
    feats, cats = world.stimulus_features(ref_imgs, ref_cls)
    stats = world.feature_stats(feats)
    template = make_brain(HCP_AREAS, c.hcp_voxels, c.grid, c.category_dim, rng, cfg=c)

    def fill(tmp: Path):
        for s in range(c.hcp_subjects):
            srng = np.random.default_rng([c.seed, 3, s])
            brain = make_brain(HCP_AREAS, c.hcp_voxels, c.grid, c.category_dim, srng, template,
                               c.subject_variability, cfg=c)
            brain.calibrate(feats, cats)
            ts = resting_state(brain, c.hcp_frames, c, srng, stats)
            sub = tmp / f"{100206 + s}"
            sub.mkdir()
            np.savez(sub / "HCP_visual_voxel.npz", **{a: ts[:, sl] for a, sl in brain.roi_slices().items()})
        write_meta(tmp, "hcp", c)

    return atomic_dir(root, fill)
