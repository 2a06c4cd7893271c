"""The NSD part: the experiment design, the stimulus brick, the nsdgeneral ROI and per-session betas in NSD's
release layout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mindvis.utils.io import atomic_dir

from ..brain import TASK_AREAS
from .meta import write_meta

NSD_TRIALS_PER_SESSION = 750


def experiment_design(world):
    """(masterordering, subjectim, sharedix, brick classes) of the NSD-like experiment, 1-based as the release."""
    c = world.cfg
    rng = np.random.default_rng([c.seed, 8])
    n_trials = c.nsd_sessions * NSD_TRIALS_PER_SESSION
    if n_trials % 3:
        raise ValueError("nsd_sessions x 750 trials must be divisible by 3 (each image is shown three times)")
    per_subject = n_trials // 3
    if not 0 < c.nsd_shared < per_subject:
        raise ValueError(f"nsd_shared must be in (0, {per_subject}), got {c.nsd_shared}")
    own = per_subject - c.nsd_shared
    n_brick = c.nsd_shared + c.nsd_subjects * own
    subjectim = np.zeros((8, per_subject), np.int64)  # the release has 8 subjects; unused rows reuse images
    for s in range(8):
        pool = (np.arange(c.nsd_shared + s * own, c.nsd_shared + (s + 1) * own) if s < c.nsd_subjects
                else rng.choice(np.arange(c.nsd_shared, n_brick), own))
        subjectim[s] = np.concatenate([np.arange(c.nsd_shared), pool]) + 1
    masterordering = rng.permutation(np.repeat(np.arange(1, per_subject + 1), 3))
    classes = rng.integers(0, world.n_classes, n_brick)
    return masterordering, subjectim, np.arange(1, c.nsd_shared + 1), classes


def write(world, root: str | os.PathLike) -> Path:
    """The NSD release layout: per-session betas (NIfTI int16, percent signal change x 300), the nsdgeneral
    ROI, ``nsd_expdesign.mat`` and the stimulus brick ``nsd_stimuli.hdf5``."""
    import h5py
    import nibabel as nib
    from scipy.io import savemat

    c = world.cfg
    order, subjectim, sharedix, classes = experiment_design(world)
    brick = world.render(classes, 3)
    feats, cats = world.stimulus_features(brick, classes)
    shape = tuple(c.nsd_volume)
    n_roi = sum(c.nsd_voxels)
    if n_roi >= int(np.prod(shape)):
        raise ValueError(f"nsd_voxels ({n_roi}) must be fewer than the volume's {int(np.prod(shape))} voxels")
    affine = np.diag([1.8, 1.8, 1.8, 1.0])

    def fill(tmp: Path):
        design = tmp / "nsddata" / "experiments" / "nsd"
        design.mkdir(parents=True)
        savemat(design / "nsd_expdesign.mat", {"masterordering": order[None].astype(float),
                                                "subjectim": subjectim.astype(float),
                                                "sharedix": sharedix[None].astype(float)})
        stim = tmp / "nsddata_stimuli" / "stimuli" / "nsd"
        stim.mkdir(parents=True)
        with h5py.File(stim / "nsd_stimuli.hdf5", "w") as f:
            f.create_dataset("imgBrick", data=brick, chunks=(1, *brick.shape[1:]))
        for s in range(c.nsd_subjects):
            sub = f"subj{s + 1:02d}"
            rng = np.random.default_rng([c.seed, 9, s])
            brain = world.task_brain(TASK_AREAS, c.nsd_voxels, 200 + s, feats, cats)
            # nsdgeneral: a block at the back of the volume (C order of the betas' axes); 1 in the ROI, 0 cortical
            # outside it, -1 not a cortical voxel
            roi = np.full(shape, -1, np.int16)
            flat = roi.reshape(-1)
            inside = np.arange(flat.size // 10, flat.size)
            flat[inside] = 0
            flat[np.sort(rng.choice(inside, n_roi, replace=False))] = 1
            roi_dir = tmp / "nsddata" / "ppdata" / sub / "func1pt8mm" / "roi"
            roi_dir.mkdir(parents=True)
            nib.save(nib.Nifti1Image(roi, affine), roi_dir / "nsdgeneral.nii.gz")
            betas_dir = tmp / "nsddata_betas" / "ppdata" / sub / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
            betas_dir.mkdir(parents=True)
            images = subjectim[s, order - 1] - 1  # the brick index of every trial
            for sess in range(c.nsd_sessions):
                t = images[sess * NSD_TRIALS_PER_SESSION:(sess + 1) * NSD_TRIALS_PER_SESSION]
                vol = rng.normal(0, 1, (len(t), flat.size)).astype(np.float32)  # outside nsdgeneral: noise
                vol[:, flat == 1] = world.responses(brain, feats[t], cats[t], rng)
                offset = rng.normal(0, c.nsd_session_drift, flat.size)
                gain = np.exp(rng.normal(0, c.nsd_session_drift / 2, flat.size))
                pct = vol * gain + offset  # percent signal change
                data = np.clip(np.round(pct * 300), -32768, 32767).astype(np.int16)
                data = data.reshape(len(t), *shape).transpose(1, 2, 3, 0)  # (X, Y, Z, trials)
                nib.save(nib.Nifti1Image(data, affine), betas_dir / f"betas_session{sess + 1:02d}.nii.gz")
        write_meta(tmp, "nsd", c)

    return atomic_dir(root, fill)
