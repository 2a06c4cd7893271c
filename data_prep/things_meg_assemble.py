"""Assembling a THINGS-MEG subject from its prepared runs: the channels good in every run, robust scaling and
clamping over all runs, the images read and resized, and the files of ``--out`` (trials.npy, trials.csv, the images,
meta.json)."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mindvis.data.fmri import DataError, error_summary
from mindvis.data.meeg import concept_of
from mindvis.data.meeg_signal import robust_scale
from mindvis.releases import SYNTHETIC_GENERATOR
from mindvis.utils.io import atomic_write

from .common import item_record, write_meta
from .things_meg_release import ImageFinder, run_stem
from .things_meg_settings import MEGSettings


def _assemble(root: Path, subject: str, runs: list[Path], parts: Path, out: Path, s: MEGSettings,
              images: str | Path | None) -> Path:
    from PIL import Image

    from mindvis.models.brain_module_positions import normalise_positions

    records = [item_record(parts / run_stem(r)) for r in runs]
    common = [c for c in records[0]["ch_names"] if all(c in rec["ch_names"] for rec in records)]
    if not common:
        raise DataError(f"{subject}: no MEG sensor is good in every run")
    left_out = sorted({c for rec in records for c in rec["ch_names"]} - set(common))
    xs, rows, counts = [], [], {}
    for r, rec in zip(runs, records):
        folder = parts / run_stem(r)
        x = np.load(folder / "epochs.npy")
        xs.append(x[:, [rec["ch_names"].index(c) for c in common]])
        for e in json.loads((folder / "events.json").read_text()):
            image = e["image_path"]
            counts[image] = counts.get(image, 0) + 1
            rows.append({"trial": len(rows), "run": run_stem(r), "onset": e["onset"], "image": image,
                         "concept": concept_of(image), "split": "test" if e["trial_type"] == "test" else "train",
                         "repetition": counts[image] - 1})
    x = np.concatenate(xs)
    train = np.array([r["split"] == "train" for r in rows])
    ref = x[train] if train.any() else x
    median = np.median(ref, axis=(0, 2))
    q75, q25 = np.percentile(ref, [75, 25], axis=(0, 2))
    iqr = np.maximum(q75 - q25, 1e-30)
    names = sorted(counts)
    find = ImageFinder(root, Path(images) if images else None)
    found = {n: find(n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise DataError(f"{len(missing)} of {len(names)} images not found, e.g. {missing[0]} (sample attributes "
                        f"image_path): give --images, the THINGS images (<concept>/<file>.jpg), or put them under "
                        f"{root / 'stimuli'}")
    imgs = []
    for n in names:
        try:
            with Image.open(found[n]) as im:
                imgs.append(np.asarray(im.convert("RGB").resize((s.image_size, s.image_size), Image.BICUBIC)))
        except OSError as e:
            raise DataError(f"{found[n]}: not an image PIL reads ({error_summary(e)})") from None

    def write_trials(tmp: Path):
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=x.shape)
        arr[:] = robust_scale(x, median, iqr, s.clamp)
        arr.flush()
        del arr

    def write_rows(tmp: Path):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "trials.npy", write_trials)
    atomic_write(out / "trials.csv", write_rows)
    atomic_write(out / f"images_{s.image_size}.npy", lambda tmp: np.save(open(tmp, "wb"), np.stack(imgs)))
    (out / "image_ids.json").write_text(json.dumps(names))
    first = records[0]
    layout = np.array([[np.nan, np.nan] if p is None else p for p in
                       (first["layout"][first["ch_names"].index(c)] for c in common)], float)
    layout = normalise_positions(layout)  # over the channels kept
    extra = {"ch_names": common, "layout": [None if not np.isfinite(p).all() else [float(v) for v in p] for p in layout],
             "times": first["times"], "raw_sfreq": first["raw_sfreq"], "robust_median": median.tolist(),
             "robust_iqr": iqr.tolist(),
             "channels": {"bad_in_channels_tsv": sorted({c for rec in records for c in rec["bad_channels"]}),
                          "dropped": sorted({c for rec in records for c in rec["dropped_channels"]}),
                          "missing_or_bad_in_some_run": left_out, "reference_sensors_left_out":
                          max(rec["reference_sensors"] for rec in records),
                          "types_restored_from_the_recording": max(rec["restored_types"] for rec in records)},
             "value_mismatches": sum(rec["value_mismatches"] for rec in records),
             "catch_trials_dropped": sum(rec["catch_trials"] for rec in records)}
    source = root / "meta.json"  # a synthetic release records its world (for the world's embedding space)
    release = json.loads(source.read_text()) if source.is_file() else {}
    if release.get("generator") == SYNTHETIC_GENERATOR:
        extra["synthetic_world"] = release["config"]
    write_meta(out, "things-meg", {"root": str(root), "runs": [r.name for r in runs],
                                   "images": str(images) if images else str(root / "stimuli")},
               {subject: {"trials": len(x)}}, {**asdict(s), "subject": subject}, extra)
    shutil.rmtree(parts)
    return out
