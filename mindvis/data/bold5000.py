"""BOLD5000 fMRI-image pairs from the GLMsingle ROI-betas release."""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from ..releases import BOLD5000_ROIS
from .fmri import DataError, check_finite, normalize, pad_to_patch_size
from .pairs import PairedSplit, concat_splits, single_trial_id


class _ArrayDictUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of numpy arrays needs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "dict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an image dictionary")


def load_image_dict(path: str | os.PathLike) -> dict:
    """BOLD5000's ``img_dict.npy`` (a pickled dict name -> image array) read without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"BOLD5000 image dictionary not found: {path}")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise DataError(f"{path}: unsupported .npy version {version}")
        shape, _, dtype = reader[version](f)
        if dtype != object:
            raise DataError(f"{path}: expected a pickled dictionary, found a {dtype} array")
        try:
            obj = _ArrayDictUnpickler(io.BytesIO(f.read())).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"{path}: refused ({e})") from e
    if isinstance(obj, np.ndarray):
        obj = obj.item() if obj.shape == () else obj
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of images, got {type(obj).__name__}")
    return obj


def bold5000_stimulus_list(root: Path, subject: str) -> list[str]:
    folder = root / "BOLD5000_Stimuli" / "Stimuli_Presentation_Lists" / subject
    if not folder.is_dir():
        raise DataError(f"BOLD5000 presentation lists not found: {folder}")
    names = []
    for sess in sorted(p for p in folder.iterdir() if p.is_dir()):
        for run in sorted(sess.glob("*.txt")):
            names += [n[4:] if n.startswith("rep_") else n for n in run.read_text().split()]
    return names


def bold5000_pairs(root: str | os.PathLike, subjects=("CSI1",), patch_size: int = 16, pad_mode: str = "exact",
                   include_test_trials: bool = False, image_size: int = 256) -> tuple[PairedSplit, PairedSplit]:
    """(train, test) of the GLMsingle ROI-betas release: ROIs of both hemispheres concatenated, the
    repeated images (averaged over repetitions) as test, every other trial as training."""
    from PIL import Image

    root = Path(root)
    betas = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    if not betas.is_dir():
        raise DataError(f"BOLD5000 ROI betas not found: {betas}")
    stim = root / "BOLD5000_Stimuli" / "Scene_Stimuli"
    images = load_image_dict(stim / "Presented_Stimuli" / "img_dict.npy")
    rep_file = stim / "repeated_stimuli_113_list.txt"
    if not rep_file.is_file():
        raise DataError(f"BOLD5000 repeated-stimuli list not found: {rep_file}")
    repeated = rep_file.read_text().split()
    files = sorted(p.name for p in betas.glob("*.npy"))

    def img(name):
        if name not in images:
            raise DataError(f"image {name!r} is not in the BOLD5000 image dictionary")
        a = np.asarray(images[name])
        if a.shape[:2] != (image_size, image_size):
            a = np.asarray(Image.fromarray(a.astype(np.uint8)).resize((image_size, image_size), Image.BICUBIC))
        return a.astype(np.uint8)

    trains, tests = [], []
    for sub in subjects:
        parts = []
        for roi in BOLD5000_ROIS:
            matched = [f for f in files if f.startswith(sub + "_") and f.endswith(f"{roi}.npy")]
            if not matched:
                raise DataError(f"no ROI file for {sub} {roi} in {betas}")
            parts += [np.load(betas / f).astype(np.float32) for f in matched]  # LH then RH
        x = np.concatenate(parts, axis=1)
        check_finite(x, f"{betas} {sub}")
        names = bold5000_stimulus_list(root, sub)
        if len(names) != len(x):
            raise DataError(f"{sub}: {len(x)} beta rows but {len(names)} presented stimuli in the lists")
        x, mean, std = normalize(x)
        groups = [[i for i, n in enumerate(names) if n == r] for r in repeated]
        groups = [g for g in groups if g]
        test_rows = {i for g in groups for i in g}
        train_idx = [i for i in range(len(names)) if i not in test_rows]
        test_fmri = [np.stack([x[g].mean(0) for g in groups])]
        test_names = [names[g[0]] for g in groups]
        row_ids = list(test_names)
        if include_test_trials:
            flat = [i for g in groups for i in g]
            test_fmri.append(x[flat])
            test_names += [names[i] for i in flat]
            row_ids += [single_trial_id(names[i], r) for g in groups for r, i in enumerate(g)]
        trains.append(PairedSplit(pad_to_patch_size(x[train_idx], patch_size, pad_mode),
                                  np.stack([img(names[i]) for i in train_idx]), np.full(len(train_idx), -1),
                                  [names[i] for i in train_idx], ["bold5000"] * len(train_idx)))
        tests.append(PairedSplit(pad_to_patch_size(np.concatenate(test_fmri), patch_size, pad_mode),
                                 np.stack([img(n) for n in test_names]), np.full(len(test_names), -1), row_ids,
                                 ["bold5000"] * len(test_names)))
    return concat_splits(trains), concat_splits(tests)
