"""THINGS-MEG pairs from the folders written by ``mindvis-prep things-meg`` (one subject each, or a folder of them).

**Large retrieval set** (THINGS-MEG, Benchetrit et al. 2024): the training trials of the test images' concepts
(THINGS-MEG shows 12 images of every concept once; the test images are other images of 200 of the concepts) are taken
out of training and form the large set: each trial is retrieved among all of that subject's large-set images. The
paper's own definition could not be read here (only its abstract); this follows Meta's reader of the release
(facebookresearch/neuroai hebart2023things.py, ``is_test_category``): UNVERIFIED against the paper's text.
THINGS-EEG2's test concepts are not among its training concepts, so it has no large set.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from .fmri import DataError
from .meeg import MEEGData, _with_trials, combine
from .pairs import TRIAL_MARK, PairedSplit


def _prepared(folder: Path) -> dict | None:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_file}: not JSON ({e})") from None
    if meta.get("preparation") != "things-meg":
        raise DataError(f"{meta_file}: preparation {meta.get('preparation')!r}, expected 'things-meg'")
    return meta


def _subject_key(name) -> str:
    m = re.fullmatch(r"(?:sub-)?(?:BIGMEG)?0*(\d+)", str(name))
    return f"sub-BIGMEG{int(m.group(1))}" if m else str(name)


def things_meg_folders(path: str | Path, subjects=None) -> list[tuple[Path, dict]]:
    """(folder, meta) of a THINGS-MEG preparation, or of every preparation in a folder of them (one per subject),
    ``subjects`` (1, BIGMEG1, sub-BIGMEG1 or a folder name) choosing among them."""
    root = Path(path)
    meta = _prepared(root)
    if meta is not None:
        found = [(root, meta)]
    else:
        found = [(d, m) for d in sorted(p for p in root.iterdir() if p.is_dir()) if (m := _prepared(d)) is not None] \
            if root.is_dir() else []
        if not found:
            raise DataError(f"{root} is not a folder written by mindvis-prep things-meg, nor a folder of them "
                            "(meta.json is missing)")
    if subjects:
        want = {_subject_key(s) for s in subjects} | {str(s) for s in subjects}
        chosen = [(d, m) for d, m in found if m["settings"].get("subject") in want or d.name in want]
        have = [m["settings"].get("subject") for _, m in found]
        if len(chosen) != len(set(subjects)):
            raise DataError(f"data.subjects {list(subjects)}: {root} holds the preparations of {have}")
        found = chosen
    names = [m["settings"].get("subject", d.name) for d, m in found]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: several preparations of the same subject ({names})")
    return found


def things_meg_pairs(path: str | Path, include_test_trials: bool = False, subjects=None,
                     large_set: bool = True) -> MEEGData:
    """Pairs from a folder written by ``mindvis-prep things-meg``, or from a folder of them (several subjects, one
    set of splits; ``subjects`` chooses). With ``large_set`` the training trials of the test concepts are held out
    as the large retrieval set (see the module docstring)."""
    found = things_meg_folders(path, subjects)
    tables = []
    for folder, meta in found:
        with open(folder / "trials.csv", newline="") as f:
            tables.append(list(csv.DictReader(f)))
    concepts = sorted({r["concept"] for rows in tables for r in rows})
    label = {c: i for i, c in enumerate(concepts)}
    parts = [_things_meg_subject(folder, meta, rows, label, include_test_trials, large_set)
             for (folder, meta), rows in zip(found, tables)]
    return combine(parts)


def _things_meg_subject(root: Path, meta: dict, rows: list[dict], label: dict, include_test_trials: bool,
                        large_set: bool) -> MEEGData:
    x = np.load(root / "trials.npy", mmap_mode="r")
    if len(rows) != len(x):
        raise DataError(f"{root}: trials.npy has {len(x)} trials but trials.csv {len(rows)} rows")
    subject = meta["settings"].get("subject", root.name)
    images = np.load(root / f"images_{meta['settings']['image_size']}.npy", mmap_mode="r")
    names = json.loads((root / "image_ids.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    img = np.array([index[r["image"]] for r in rows])
    lab = np.array([label[r["concept"]] for r in rows])
    test = np.array([r["split"] == "test" for r in rows])
    test_concepts = {rows[i]["concept"] for i in np.flatnonzero(test)}
    held = ~test & np.array([large_set and r["concept"] in test_concepts for r in rows])
    tag = "things-meg"

    def split(idx, ids=None) -> PairedSplit:
        return PairedSplit(np.asarray(x[idx], np.float32), images[img[idx]], lab[idx],
                           ids or [rows[i]["image"] for i in idx], [tag] * len(idx), [subject] * len(idx))

    train = split(np.flatnonzero(~test & ~held))
    large = split(np.flatnonzero(held)) if held.any() else None
    avg_ids = sorted({rows[i]["image"] for i in np.flatnonzero(test)})
    by_image = {n: np.flatnonzero(test & (img == index[n])) for n in avg_ids}
    avg = PairedSplit(np.stack([np.asarray(x[by_image[n]], np.float32).mean(0) for n in avg_ids])
                      if avg_ids else np.zeros((0,) + x.shape[1:], np.float32),
                      images[[index[n] for n in avg_ids]], np.array([lab[by_image[n][0]] for n in avg_ids], int),
                      avg_ids, [tag] * len(avg_ids), [subject] * len(avg_ids))
    singles = []
    if include_test_trials:
        for n in avg_ids:
            k = by_image[n]
            singles.append(split(k, [f"{n}{TRIAL_MARK}{j}" for j in range(len(k))]))
    layout = np.array([[np.nan, np.nan] if p is None else p for p in meta["layout"]], np.float32)
    reps = len(by_image[avg_ids[0]]) if avg_ids else 0
    desc = (f"THINGS-MEG {subject} ({root}): {len(train)} training trials, {len(avg)} test images x {reps} "
            f"repetitions, {len(large) if large is not None else 0} held-out trials of the test concepts (large set), "
            f"{x.shape[1]} sensors x {x.shape[2]} samples at {meta['settings']['sfreq']:g} Hz")
    return MEEGData(train, _with_trials(avg, singles), meta["ch_names"], layout, np.array(meta["times"]), desc, large,
                    {subject: layout})
