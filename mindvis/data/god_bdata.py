"""GOD from the Kamitani lab's bdpy BData HDF5 files and the ImageNet stimulus images."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .bdata import read_bdata
from .fmri import DataError, normalize, pad_to_patch_size
from .god import stimulus_label
from .pairs import PairedSplit, concat_splits


def god_bdata_subject(h5_path: str | os.PathLike, image_dir: str | os.PathLike, roi: str = "VC",
                      image_size: int = 256):
    """One GOD subject from the Kamitani lab's HDF5 (bdpy BData: ``dataSet`` + ``metaData/{key,value}``)
    and the stimulus images (ImageNet names derived from stimulus ids: 1518878.005958 -> n01518878_5958).

    Returns raw (train fMRI, train ids, test-averaged fMRI, test ids) and a loader of images by id.
    """
    bd = read_bdata(h5_path)
    if roi not in bd["masks"]:
        raise DataError(f"{h5_path}: no metadata key 'ROI_{roi}' (ROIs: {sorted(bd['masks'])})")
    x, dtype, stim = bd["x"][:, bd["masks"][roi]], bd["dtype"], bd["stim"]
    train_rows, test_rows = np.nonzero(dtype == 1)[0], np.nonzero(dtype == 2)[0]
    test_stims = np.unique(stim[test_rows])
    test_avg = np.stack([x[test_rows[stim[test_rows] == s]].mean(0) for s in test_stims])
    fmt = lambda s: f"{s:.6f}"  # noqa: E731
    return (x[train_rows], [fmt(s) for s in stim[train_rows]], test_avg, [fmt(s) for s in test_stims],
            lambda ids: load_imagenet_images(image_dir, ids, image_size))


def imagenet_name(stim_id: str) -> str:
    synset, number = stim_id.split(".")
    return f"n{int(synset):08d}_{int(number)}"


def load_imagenet_images(folder: str | os.PathLike, stim_ids: list[str], size: int = 256) -> np.ndarray:
    """Images for GOD stimulus ids from a folder of ImageNet files (searched recursively, any extension)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = {p.stem: p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")}
    out = []
    for sid in stim_ids:
        name = imagenet_name(sid)
        if name not in files:
            raise DataError(f"no image {name}.JPEG (stimulus {sid}) under {folder}")
        with Image.open(files[name]) as im:
            out.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def god_pairs_bdata(h5_files: list[str], image_dir: str | os.PathLike, class_index: str | os.PathLike | None = None,
                    roi: str = "VC", patch_size: int = 16, pad_mode: str = "exact", image_size: int = 256):
    """(train, test) from BData HDF5 files (one per subject); labels from an ImageNet class index json."""
    syn = {}
    if class_index:
        index = json.loads(Path(class_index).read_text())
        syn = {int(w[1:]): int(k) for k, v in index.items() for w in v[:-1]}
    trains, tests = [], []
    for h5 in h5_files:
        tr, tr_ids, te, te_ids, images = god_bdata_subject(h5, image_dir, roi, image_size)
        tr, mean, std = normalize(tr)
        te = normalize(te, mean, std)[0]
        for arr, ids, out in ((tr, tr_ids, trains), (te, te_ids, tests)):
            out.append(PairedSplit(pad_to_patch_size(arr, patch_size, pad_mode), images(ids),
                                   np.array([stimulus_label(i, syn) for i in ids]), ids, ["god"] * len(ids)))
    return concat_splits(trains), concat_splits(tests)
