"""M/EEG-image pairs: THINGS-MEG folders written by ``mindvis-prep things-meg`` and the THINGS-EEG2 release.

Both give trials x channels x times with the image of each trial, its subject, the channels' 2-D positions for the brain
module's spatial attention (``mne.find_layout``'s, as brainmagick takes them: see
:func:`mindvis.models.brain_module_positions.layout_positions`; NaN for a channel without one, which the module masks)
and the times. Test images are the releases' own (THINGS-MEG: ``trial_type`` test; THINGS-EEG2:
``preprocessed_eeg_test.npy``), averaged over their repetitions per subject; single test trials are kept (marked as the
fMRI readers mark them) for the averaging curve. Training trials are single presentations (THINGS-EEG2: each of the
image's repetitions, or their average with ``average_train``).

Several subjects (a folder of THINGS-MEG preparations, or several THINGS-EEG2 subjects) are read into one set of
splits over one channel list, the union of the subjects' channels in the order first seen: a subject's data are zero
on the channels it lacks and its montage (``MEEGData.montages``) has no position there, so the brain module masks them.

The readers are :mod:`mindvis.data.things_meg` (the preparations of ``mindvis-prep things-meg``) and
:mod:`mindvis.data.things_eeg2` (the release); the processing of one window and the robust scaling, which the
preparation and ``mindvis-stream`` share, are in :mod:`mindvis.data.meeg_signal`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..releases import SYNTHETIC_GENERATOR
from .fmri import DataError
from .pairs import PairedSplit


@dataclass
class MEEGData:
    train: PairedSplit  # fmri: (N, C, T) float32
    test: PairedSplit  # averaged test images first, then (optionally) their single trials
    ch_names: list[str]
    layout: np.ndarray  # (C, 2) positions on the plane (NaN: none); with several subjects, any subject's
    times: np.ndarray  # (T,) seconds from image onset
    description: str
    large: PairedSplit | None = None  # the held-out trials of the test concepts (THINGS-MEG), never trained on
    montages: dict | None = None  # {subject: (C, 2) positions}, NaN where the subject lacks the channel


def concept_of(image_path: str) -> str:
    """The THINGS concept of an image file: its name without the last ``_part`` (``aardvark_01b.jpg`` ->
    ``aardvark``; as Meta's reader of THINGS-MEG reads it: the test images share one folder)."""
    stem = Path(str(image_path)).stem
    return "_".join(stem.split("_")[:-1]) or stem


def montage_positions(info) -> np.ndarray:
    """(C, 2) brain-module positions of ``info``'s channels (NaN where there is none): ``mne.find_layout``'s 2-D
    positions matched by name (:func:`mindvis.models.brain_module_positions.layout_positions`); where MNE cannot draw
    a layout because some channels have no 3-D position, the layout of the others."""
    import mne

    from ..models.brain_module_positions import layout_positions

    try:
        return layout_positions(info)
    except (RuntimeError, ValueError):
        pass
    keep = [i for i, ch in enumerate(info["chs"]) if np.isfinite(ch["loc"][:3]).all() and np.abs(ch["loc"][:3]).sum()]
    out = np.full((len(info["ch_names"]), 2), np.nan, np.float32)
    if keep:
        out[keep] = layout_positions(mne.pick_info(info, keep))
    return out


def _with_trials(avg: PairedSplit, trials: list[PairedSplit]) -> PairedSplit:
    if not trials:
        return avg
    parts = [avg] + trials
    return PairedSplit(np.concatenate([p.fmri for p in parts]), np.concatenate([p.images for p in parts]),
                       np.concatenate([p.labels for p in parts]), [i for p in parts for i in p.ids],
                       [d for p in parts for d in p.dataset], [s for p in parts for s in p.subjects])


def combine(parts: list[MEEGData], description: str | None = None) -> MEEGData:
    """Several subjects' data over one channel list (the union, in the order first seen): zeros and no position on
    the channels a subject lacks. Times must agree."""
    if len(parts) == 1:
        return parts[0]
    for p in parts[1:]:
        if len(p.times) != len(parts[0].times) or not np.allclose(p.times, parts[0].times):
            raise DataError("the subjects' trials have different times: prepare them with the same settings")
    names: list[str] = []
    for p in parts:
        names += [c for c in p.ch_names if c not in names]
    montages, out = {}, {"train": [], "test": [], "large": []}
    for p in parts:
        idx = [names.index(c) for c in p.ch_names]
        for subject in sorted(set(p.train.subjects)):
            m = np.full((len(names), 2), np.nan, np.float32)
            m[idx] = (p.montages or {}).get(subject, p.layout)
            montages[subject] = m

        def pad(split: PairedSplit | None):
            if split is None:
                return None
            if p.ch_names == names:
                return split
            x = np.zeros((len(split), len(names), split.fmri.shape[-1]), np.float32)
            x[:, idx] = split.fmri
            return split.with_fmri(x)

        for k in out:
            split = pad(getattr(p, k))
            if split is not None:
                out[k].append(split)
    cat = lambda splits: _with_trials(splits[0], splits[1:]) if splits else None
    first = next(iter(montages.values()))
    layout = first.copy()
    for m in montages.values():  # any subject's position of each channel
        layout = np.where(np.isfinite(layout), layout, m)
    same = all(np.array_equal(m, first, equal_nan=True) for m in montages.values())
    return MEEGData(cat(out["train"]), cat(out["test"]), names, layout, parts[0].times,
                    description or "; ".join(p.description for p in parts), cat(out["large"]),
                    None if same else montages)


def meeg_world_settings(path: str | Path) -> dict | None:
    """The settings (:class:`mindvis.world.SyntheticWorldConfig` fields) of the synthetic world a THINGS-MEG
    preparation (or a folder of them) or THINGS-EEG2 folder came from, or None for real data."""
    meta = Path(path) / "meta.json"
    if not meta.is_file() and Path(path).is_dir():
        found = sorted(Path(path).glob("*/meta.json"))
        meta = found[0] if found else meta
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    world = m.get("config") if m.get("generator") == SYNTHETIC_GENERATOR else m.get("synthetic_world")
    return world if world else None
