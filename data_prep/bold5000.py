"""BOLD5000 GLMsingle betas -> the ROI-betas layout the stage-B reader expects.

Input: per-session 4-D NIfTI betas of a subject (x, y, z, trials; ``TYPED-FITHRF-GLMDENOISE-RR``),
the subject's ROI masks (NIfTI, names containing ``LHEarlyVis`` ... ``RHRSC``) on the same grid, and the
release's ``BOLD5000_Stimuli`` folder (presentation lists, the repeated-stimuli list, the presented
images). Output: ``BOLD5000_GLMsingle_ROI_betas/py/<sub>_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_<H><ROI>.npy``
(trials of all sessions x voxels), and ``BOLD5000_Stimuli`` with the lists and ``img_dict.npy`` (name ->
256 x 256 x 3 uint8 image).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError, check_finite
from mindvis.releases import BOLD5000_ROIS
from mindvis.utils.io import atomic_write

from .common import done, item_record, load_image, write_item, write_meta

HEMIS = ("LH", "RH")
BETA_TAG = "GLMbetas-TYPED-FITHRF-GLMDENOISE-RR"


def find_masks(folder: Path) -> dict[str, Path]:
    """``{'LHEarlyVis': path, ...}`` for the ten ROI masks under ``folder``."""
    files = [p for p in folder.rglob("*.nii*") if p.is_file()]
    out = {}
    for h in HEMIS:
        for r in BOLD5000_ROIS:
            hits = [p for p in files if re.search(rf"{h}{r}(?![A-Za-z])", p.name)]
            if len(hits) != 1:
                raise DataError(f"{folder}: expected one mask file named with {h}{r}, found {len(hits)}")
            out[h + r] = hits[0]
    return out


def read_session(path: Path, masks: dict[str, np.ndarray], chunk: int = 64) -> dict[str, np.ndarray]:
    img = load_image(path)
    if img.ndim != 4:
        raise DataError(f"{path}: expected 4-D betas (x, y, z, trials), got shape {img.shape}")
    first = next(iter(masks.values()))
    if tuple(img.shape[:3]) != first.shape:
        raise DataError(f"{path}: grid {img.shape[:3]} differs from the masks' {first.shape}")
    n = img.shape[3]
    out = {k: np.empty((n, int(m.sum())), np.float32) for k, m in masks.items()}
    for start in range(0, n, chunk):
        block = np.asarray(img.dataobj[..., start:start + chunk], dtype=np.float32)
        for k, m in masks.items():
            out[k][start:start + chunk] = block[m].T
    return out


def build_image_dict(presented: Path, size: int = 256) -> dict[str, np.ndarray]:
    from PIL import Image

    files = sorted(p for p in presented.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise DataError(f"no presented images under {presented}")
    out = {}
    for p in files:
        with Image.open(p) as im:
            out[p.name] = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    return out


def prepare_bold5000(betas: dict[str, list[str | Path]], masks: dict[str, str | Path], stimuli: str | Path,
                     out: str | Path, progress=None) -> Path:
    """``betas``: subject -> session NIfTI files (in session order); ``masks``: subject -> mask folder."""
    out, stimuli = Path(out), Path(stimuli)
    lists = stimuli / "Stimuli_Presentation_Lists"
    rep = stimuli / "Scene_Stimuli" / "repeated_stimuli_113_list.txt"
    if not lists.is_dir() or not rep.is_file():
        raise DataError(f"{stimuli}: not the BOLD5000_Stimuli folder (needs Stimuli_Presentation_Lists/ and "
                        "Scene_Stimuli/repeated_stimuli_113_list.txt)")
    py = out / "BOLD5000_GLMsingle_ROI_betas" / "py"
    py.mkdir(parents=True, exist_ok=True)
    items = {}
    for sub in (progress(sorted(betas), desc="BOLD5000 subjects") if progress else sorted(betas)):
        dst = out / f".{sub}.d"
        if not done(dst):
            mask_files = find_masks(Path(masks[sub]))
            mask_arrays = {k: np.asarray(load_image(p).dataobj) > 0 for k, p in mask_files.items()}
            sessions = [read_session(Path(f), mask_arrays) for f in betas[sub]]
            rois = {k: np.concatenate([s[k] for s in sessions]) for k in mask_arrays}
            for k, x in rois.items():
                check_finite(x, f"{sub} {k}")

            def fill(tmp: Path, rois=rois, sub=sub):
                for k, x in rois.items():
                    np.save(tmp / f"{sub}_{BETA_TAG}_allses_{k}.npy", x)
                return {"sessions": [str(f) for f in betas[sub]], "trials": int(next(iter(rois.values())).shape[0]),
                        "voxels": {k: int(x.shape[1]) for k, x in rois.items()},
                        "mean": float(np.mean([x.mean() for x in rois.values()]))}

            write_item(dst, fill)
        items[sub] = item_record(dst)
        for f in dst.glob("*.npy"):
            f.replace(py / f.name)
    st_out = out / "BOLD5000_Stimuli"
    if not (st_out / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy").is_file():
        images = build_image_dict(stimuli / "Scene_Stimuli" / "Presented_Stimuli")
        (st_out / "Scene_Stimuli" / "Presented_Stimuli").mkdir(parents=True, exist_ok=True)
        shutil.copytree(lists, st_out / "Stimuli_Presentation_Lists", dirs_exist_ok=True)
        shutil.copy2(rep, st_out / "Scene_Stimuli" / rep.name)
        atomic_write(st_out / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy",
                     lambda tmp: np.save(open(tmp, "wb"), images, allow_pickle=True))
    write_meta(out, "bold5000", {"betas": {k: [str(f) for f in v] for k, v in betas.items()},
                                 "masks": {k: str(v) for k, v in masks.items()}, "stimuli": str(stimuli)}, items,
               {"rois": [h + r for h in HEMIS for r in BOLD5000_ROIS], "image_size": 256})
    return out
