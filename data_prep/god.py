"""GOD (Kamitani lab) -> the MinD-Vis GOD layout, so both stage-B GOD readers see the same data.

Input: the per-subject preprocessed HDF5 files (bdpy BData: ``dataSet`` + ``metaData/{key,value}``;
``DataType`` 1 = training, 2 = test, 3 = imagery; ``stimulus_id``; ``ROI_*`` voxel flags) and the
stimulus images (ImageNet file names from the stimulus ids). Output: ``sbj_N.npz`` (``arr_0`` training
trials, ``arr_1`` test trials, ``arr_2`` test averaged per image, ``arr_3`` training trial -> image index,
one boolean mask per ROI over the voxel columns), ``images_256.npz``, ``imagenet_training_label.csv``,
``imagenet_testing_label.csv`` and ``imagenet_class_index.json``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mindvis.data.bdata import read_bdata
from mindvis.data.fmri import DataError
from mindvis.data.god_bdata import imagenet_name, load_imagenet_images

from .common import done, item_record, require_file, write_item, write_meta


def prepare_god(h5_files: list[str | Path], image_dir: str | Path, out: str | Path, class_index: str | Path | None = None,
                image_size: int = 256, progress=None) -> Path:
    """Write the MinD-Vis GOD layout from BData files (subject k of the list becomes ``sbj_k``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = [read_bdata(Path(p)) for p in h5_files]
    fmt = lambda s: f"{s:.6f}"  # noqa: E731
    train_ids = sorted({fmt(s) for d in subjects for s in d["stim"][d["dtype"] == 1]})
    test_ids = sorted({fmt(s) for d in subjects for s in d["stim"][d["dtype"] == 2]})
    if not train_ids or not test_ids:
        raise DataError("the HDF5 files hold no training (DataType 1) or no test (DataType 2) trials")
    if not (out / "images_256.npz").is_file():
        train_imgs = load_imagenet_images(image_dir, train_ids, image_size)
        test_imgs = load_imagenet_images(image_dir, test_ids, image_size)
        from mindvis.utils.io import atomic_write

        atomic_write(out / "images_256.npz", lambda tmp: np.savez(open(tmp, "wb"), train_images=train_imgs,
                                                                 test_images=test_imgs))
    for name, ids in (("imagenet_training_label.csv", train_ids), ("imagenet_testing_label.csv", test_ids)):
        with open(out / name, "w", newline="") as f:
            csv.writer(f).writerows([[i, imagenet_name(i) + ".JPEG"] for i in ids])
    if class_index:
        index = json.loads(require_file(Path(class_index), "class index").read_text())
    else:  # one class per synset seen, as the release's format (wnid..., description)
        synsets = sorted({i.split(".")[0] for i in train_ids + test_ids}, key=int)
        index = {str(k): [f"n{int(s):08d}", f"n{int(s):08d}"] for k, s in enumerate(synsets)}
    (out / "imagenet_class_index.json").write_text(json.dumps(index))

    items = {}
    train_pos = {s: i for i, s in enumerate(train_ids)}
    test_pos = {s: i for i, s in enumerate(test_ids)}
    for k, (path, d) in enumerate(progress(list(zip(h5_files, subjects)), desc="GOD subjects") if progress
                                  else zip(h5_files, subjects)):
        name = f"sbj_{k + 1}"
        dst = out / f".{name}.d"
        if done(dst):
            items[name] = item_record(dst)
            continue
        tr, te = d["dtype"] == 1, d["dtype"] == 2
        test_stim = np.array([fmt(s) for s in d["stim"][te]])
        order = np.argsort([test_pos[s] for s in test_stim], kind="stable")  # trials grouped by image order
        arr_1 = d["x"][te][order]
        arr_4 = np.array([test_pos[s] for s in test_stim], dtype=np.int64)[order]  # the image of each arr_1 row
        arr_2 = np.stack([d["x"][te][test_stim == s].mean(0) for s in test_ids if (test_stim == s).any()])
        arr_3 = np.array([train_pos[fmt(s)] for s in d["stim"][tr]])

        def fill(tmp: Path, d=d, arr_1=arr_1, arr_2=arr_2, arr_3=arr_3, arr_4=arr_4, name=name, path=path):
            np.savez(tmp / f"{name}.npz", arr_0=d["x"][tr], arr_1=arr_1, arr_2=arr_2, arr_3=arr_3, arr_4=arr_4,
                     **d["masks"])
            return {"source": str(path), "bdata_layout": d["layout"], "train_trials": int(tr.sum()),
                    "test_trials": int(te.sum()),
                    "voxels": int(d["x"].shape[1]), "roi_voxels": {r: int(m.sum()) for r, m in d["masks"].items()},
                    "train_mean": float(d["x"][tr].mean()), "train_std": float(d["x"][tr].std())}

        items[name] = write_item(dst, fill)
    for name in items:  # subject files live at the top of the layout; their .d folders keep the done marks
        src = out / f".{name}.d" / f"{name}.npz"
        if src.exists():
            src.replace(out / f"{name}.npz")
    write_meta(out, "god", {"h5_files": [str(p) for p in h5_files], "image_dir": str(image_dir),
                            "class_index": str(class_index) if class_index else None}, items,
               {"image_size": image_size, "train_images": len(train_ids), "test_images": len(test_ids)})
    return out
